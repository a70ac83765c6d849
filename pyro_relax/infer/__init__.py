"""Drop-in ELBOs for guides with discrete latent variables."""

from .arsm import ARSM_ELBO
from .discrete_elbo import DiscreteELBO, Particle
from .reinforce_loo import ReinforceLOO_ELBO
from .relax import REBAR_ELBO, RELAX_ELBO, ControlVariateMLP
from .vargrad import VarGrad_ELBO

__all__ = [
    "ARSM_ELBO",
    "ControlVariateMLP",
    "DiscreteELBO",
    "Particle",
    "REBAR_ELBO",
    "RELAX_ELBO",
    "ReinforceLOO_ELBO",
    "VarGrad_ELBO",
]
