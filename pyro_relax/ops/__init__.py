"""Numerical operations on square matrices: Sinkhorn normalization and hard matching."""

from .matching import matching
from .sinkhorn import MASK_VALUE, log_sinkhorn

__all__ = ["MASK_VALUE", "log_sinkhorn", "matching"]
