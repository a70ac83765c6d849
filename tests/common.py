"""Small helpers shared by several test modules."""

import torch


def is_permutation(p):
    """True iff every matrix in ``p`` (shape ``batch + (N, N)``) is a 0/1 permutation matrix."""
    ones = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    return (
        bool(((p == 0) | (p == 1)).all())
        and torch.equal(p.sum(-1), ones)
        and torch.equal(p.sum(-2), ones)
    )
