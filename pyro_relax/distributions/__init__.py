from .birkhoff_rounding import BirkhoffRounding
from .birkhoff_stick_breaking import BirkhoffStickBreaking, BirkhoffStickBreakingTransform
from .constraints import doubly_stochastic
from .gumbel_sinkhorn import GumbelSinkhorn, gumbel_sinkhorn_kl
from .relaxed_conditioned import (
    RebarSample,
    RelaxedBernoulliConditioned,
    RelaxedOneHotCategoricalConditioned,
)

__all__ = [
    "BirkhoffRounding",
    "BirkhoffStickBreaking",
    "BirkhoffStickBreakingTransform",
    "doubly_stochastic",
    "GumbelSinkhorn",
    "gumbel_sinkhorn_kl",
    "RebarSample",
    "RelaxedBernoulliConditioned",
    "RelaxedOneHotCategoricalConditioned",
]
