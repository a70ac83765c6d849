"""pyro-relax: low-variance gradient estimators and permutation distributions for Pyro."""

from pyro_relax import distributions, infer, ops

__version__ = "0.1.0"

__all__ = ["__version__", "distributions", "infer", "ops"]
