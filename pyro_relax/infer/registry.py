"""One registry of the estimators by name, for command lines, benchmarks and tests:
``make_elbo("disarm", max_plate_nesting=1)`` is ``ARSM_ELBO(bernoulli="disarm", max_plate_nesting=1)``."""

from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Tuple

from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

from .arms import ARMS_ELBO
from .arsm import ARSM_ELBO, COUPLED_OPTIONS
from .reinforce_loo import ReinforceLOO_ELBO
from .double_cv import DoubleCV_ELBO
from .relax import REBAR_ELBO, RELAX_ELBO
from .rodeo import RODEO_ELBO
from .vargrad import VarGrad_ELBO
from .vimco import VIMCO_ELBO

__all__ = ["ESTIMATORS", "Estimator", "estimators_for", "make_elbo"]


class Estimator(NamedTuple):
    """A named estimator.

    :ivar str name: its name (``--estimator NAME`` in the command lines).
    :ivar str description: one line.
    :ivar build: ``build(**options) -> ELBO``.
    :ivar tuple kinds: the discrete site families it estimates itself: ``"bernoulli"``,
        ``"categorical"`` (Categorical and OneHotCategorical); ``()`` for any family.
    :ivar int num_particles: its default ``num_particles`` if its cost per step is that many
        model evaluations, else None (its cost is fixed by the estimator; ``num_particles``
        then averages independent estimates).
    :ivar int min_particles: the smallest ``num_particles`` it accepts.
    :ivar float temperature: its default temperature if it takes one, else None.
    :ivar bool num_pairs: whether it takes ``num_pairs``.
    :ivar str guide: what the guide must do for it: ``""`` (nothing), ``"straight-through"``
        (sample Pyro's straight-through relaxations) or ``"enumerate"`` (mark the discrete
        sites for enumeration).
    """

    name: str
    description: str
    build: Callable
    kinds: Tuple[str, ...] = ()
    num_particles: Optional[int] = None
    min_particles: int = 1
    temperature: Optional[float] = None
    num_pairs: bool = False
    guide: str = ""


def _arsm(**fixed):
    return lambda **kw: ARSM_ELBO(**dict(fixed, **kw))


ESTIMATORS = OrderedDict(
    (e.name, e)
    for e in [
        Estimator("trace", "Trace_ELBO (REINFORCE)", Trace_ELBO, num_particles=1),
        Estimator("tracegraph", "TraceGraph_ELBO (+ decaying-average baseline where the guide "
                  "sets infer={'baseline': ...})", TraceGraph_ELBO, num_particles=1),
        Estimator("rloo", "ReinforceLOO_ELBO", ReinforceLOO_ELBO, num_particles=2, min_particles=2),
        Estimator("vargrad", "VarGrad_ELBO", VarGrad_ELBO, num_particles=2, min_particles=2),
        Estimator("vimco", "VIMCO_ELBO (the K-sample bound, not the ELBO: loss and gradient)",
                  VIMCO_ELBO, num_particles=2, min_particles=2),
        Estimator("arm", "ARSM_ELBO(bernoulli='arm')", _arsm(bernoulli="arm"), ("bernoulli",)),
        Estimator("disarm", "ARSM_ELBO(bernoulli='disarm')", _arsm(bernoulli="disarm"),
                  ("bernoulli",)),
        Estimator("arms", "ARMS_ELBO (K antithetic samples; K = 2 is DisARM)", ARMS_ELBO,
                  ("bernoulli",), num_particles=2, min_particles=2),
        Estimator("double-cv", "DoubleCV_ELBO (RLOO with local and global control variates)",
                  DoubleCV_ELBO, ("bernoulli",), num_particles=2, min_particles=2),
        Estimator("rodeo", "RODEO_ELBO (RLOO with discrete-Stein control variates)", RODEO_ELBO,
                  ("bernoulli",), num_particles=2, min_particles=2),
        Estimator("ar", "ARSM_ELBO(categorical='ar') (AR, no extra evaluation)",
                  _arsm(categorical="ar"), ("categorical",)),
        Estimator("ars", "ARSM_ELBO(categorical='ars') (ARS, one random reference)",
                  _arsm(categorical="ars"), ("categorical",)),
        Estimator("arsm", "ARSM_ELBO (categorical: ARSM, all swaps)", _arsm(categorical="arsm"),
                  ("categorical",)),
        Estimator("ars+", "ARSM_ELBO(categorical='ars+') (ARS, Rao-Blackwellized)",
                  _arsm(categorical="ars+"), ("categorical",)),
        Estimator("arsm+", "ARSM_ELBO(categorical='arsm+') (ARSM, Rao-Blackwellized)",
                  _arsm(categorical="arsm+"), ("categorical",)),
        Estimator("disarm-iw", "ARSM_ELBO(categorical='disarm-iw') (coupled, importance-"
                  "weighted; num_pairs)", _arsm(categorical="disarm-iw"), ("categorical",),
                  num_pairs=True),
        Estimator("disarm-sb", "ARSM_ELBO(categorical='disarm-sb') (coupled, DisARM on the "
                  "stick-breaking tree; num_pairs)", _arsm(categorical="disarm-sb"),
                  ("categorical",), num_pairs=True),
        Estimator("disarm-tree", "ARSM_ELBO(categorical='disarm-tree') (coupled, DisARM on a "
                  "balanced tree; num_pairs)", _arsm(categorical="disarm-tree"),
                  ("categorical",), num_pairs=True),
        Estimator("rebar", "REBAR_ELBO", REBAR_ELBO, ("bernoulli", "categorical"),
                  temperature=0.5),
        Estimator("relax", "RELAX_ELBO", RELAX_ELBO, ("bernoulli", "categorical"),
                  temperature=0.5),
        Estimator("relax-neural", "RELAX_ELBO(control_variate='neural')",
                  lambda **kw: RELAX_ELBO(control_variate="neural", **kw),
                  ("bernoulli", "categorical"), temperature=0.5),
        Estimator("st", "straight-through Gumbel + Trace_ELBO (biased)", Trace_ELBO,
                  ("bernoulli", "categorical"), num_particles=1, temperature=1.0,
                  guide="straight-through"),
        Estimator("enum", "TraceEnum_ELBO, the discrete sites enumerated", TraceEnum_ELBO,
                  num_particles=1, guide="enumerate"),
    ]
)


def estimators_for(kind, exclude=("enum",)):
    """The names of the estimators that apply to guides whose discrete sites are of ``kind``
    (``"bernoulli"`` or ``"categorical"``), in registry order."""
    return tuple(n for n, e in ESTIMATORS.items()
                 if (not e.kinds or kind in e.kinds) and n not in exclude)


def make_elbo(name, num_particles=None, temperature=None, num_pairs=None, **options):
    """The ELBO of estimator ``name`` (see :data:`ESTIMATORS`), with the class's own defaults
    for every option not given.

    :param str name: the estimator's name.
    :param int num_particles: particles (default: the estimator's; the fixed-cost estimators
        average ``num_particles`` independent estimates).
    :param float temperature: for the estimators that take one (default: theirs; ``st``'s is
        the guide's, not the ELBO's, and is not passed).
    :param int num_pairs: antithetic pairs, for the coupled estimators.
    :param options: passed to the ELBO's constructor (e.g. ``max_plate_nesting``,
        ``vectorize_particles``).
    :raises ValueError: for an unknown name, or an option the estimator does not take.
    """
    if name not in ESTIMATORS:
        raise ValueError("estimator: unknown name {!r}; choose from {}".format(
            name, ", ".join(ESTIMATORS)))
    e = ESTIMATORS[name]
    if num_particles is not None and num_particles < e.min_particles:
        raise ValueError("num_particles: estimator {!r} needs num_particles >= {}, got {}".format(
            name, e.min_particles, num_particles))
    if temperature is not None and e.temperature is None:
        raise ValueError("temperature: estimator {!r} does not take it".format(name))
    if num_pairs is not None and not e.num_pairs:
        raise ValueError("num_pairs: estimator {!r} does not take it (only {})".format(
            name, ", ".join(COUPLED_OPTIONS)))
    if num_particles is not None or e.num_particles is not None:
        options["num_particles"] = e.num_particles if num_particles is None else num_particles
    if temperature is not None and e.guide != "straight-through":
        options["temperature"] = temperature
    if num_pairs is not None:
        options["num_pairs"] = num_pairs
    return e.build(**options)
