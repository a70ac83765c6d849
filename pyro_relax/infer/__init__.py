"""Drop-in ELBOs for guides with discrete latent variables, and the core to write more."""

from .alternatives import Alternatives, AlternativesError, ProgramError
from .arm import ARM, DisARM
from .arms import ARMS_ELBO
from .arsm import ARSM_ELBO
from .control_variates import ControlVariateMLP, ControlVariates
from .coupled_family import DisARM_IW, DisARM_SB, DisARM_Tree
from .discrete_elbo import DiscreteELBO, DiscreteELBOModule
from .double_cv import DoubleCV_ELBO
from .particle import Particle
from .particle_elbo import ParticleELBO
from .reinforce_loo import ReinforceLOO_ELBO
from .registry import ESTIMATORS, Estimator, estimators_for, make_elbo
from .relax import REBAR_ELBO, RELAX_ELBO
from .rodeo import RODEO_ELBO, SteinControlNet
from .signal_gradient import SignalGradientELBO
from .site_plan import SitePlan
from .strategy import SiteStrategy
from .swap import AR, ARS, ARSM, ARSMPlus, ARSPlus
from .vargrad import VarGrad_ELBO
from .vimco import VIMCO_ELBO

__all__ = [
    "AR",
    "ARM",
    "ARS",
    "ARSM",
    "ARSMPlus",
    "ARMS_ELBO",
    "ARSM_ELBO",
    "ARSPlus",
    "Alternatives",
    "AlternativesError",
    "ControlVariateMLP",
    "ControlVariates",
    "DisARM",
    "DisARM_IW",
    "DisARM_SB",
    "DisARM_Tree",
    "DiscreteELBO",
    "DiscreteELBOModule",
    "DoubleCV_ELBO",
    "ESTIMATORS",
    "Estimator",
    "Particle",
    "ParticleELBO",
    "ProgramError",
    "REBAR_ELBO",
    "RODEO_ELBO",
    "RELAX_ELBO",
    "ReinforceLOO_ELBO",
    "SitePlan",
    "SignalGradientELBO",
    "SiteStrategy",
    "SteinControlNet",
    "VIMCO_ELBO",
    "VarGrad_ELBO",
    "estimators_for",
    "make_elbo",
]
