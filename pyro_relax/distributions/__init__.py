from .gumbel_sinkhorn import GumbelSinkhorn, gumbel_sinkhorn_kl

__all__ = [
    "GumbelSinkhorn",
    "gumbel_sinkhorn_kl",
]
