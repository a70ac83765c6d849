"""pyro-relax: low-variance gradient estimators and permutation distributions for Pyro."""

__version__ = "0.1.0"

__all__ = ["__version__"]
