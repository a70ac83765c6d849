"""Hard maximum-weight matching (linear assignment) of batched square matrices."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .sinkhorn import _check_no_nan, _check_square, _mask_neginf

__all__ = ["matching"]


def matching(log_alpha):
    r"""
    Hard permutation matrices :math:`P` maximizing :math:`\langle P, \alpha\rangle =
    \sum_{ij} P_{ij}\,\alpha_{ij}` for each matrix in a batch: the zero-temperature limit
    of the Sinkhorn operator (Mena et al., 2018, Theorem 1), solved exactly with the
    Hungarian-type algorithm :func:`scipy.optimize.linear_sum_assignment`. Leading
    dimensions are flattened and the matrices solved one after another; the result is
    not differentiable (it carries no gradient).

    **Device.** CUDA inputs are moved to the host, solved with scipy and moved back. A
    batched GPU assignment solver only pays off for many small matrices: published
    reports show a one-thread-per-matrix CUDA solver 15-20x slower than scipy for a few
    ``N = 1000`` matrices, so we choose scipy on every device.

    **Masking.** Encode forbidden entries by a large finite negative value such as
    :data:`~pyro_relax.ops.sinkhorn.MASK_VALUE` (``-1e9``); ``-inf`` entries are replaced
    by it, so an infeasible mask (e.g. a fully masked row) still returns a permutation
    instead of raising.

    Reference:

    [1] G. Mena, D. Belanger, S. Linderman, J. Snoek. "Learning Latent Permutations with
        Gumbel-Sinkhorn Networks." ICLR 2018.

    :param torch.Tensor log_alpha: scores of shape ``batch_shape + (N, N)``.
    :returns: 0/1 permutation matrices with the shape, dtype and device of
        ``log_alpha``; ``P[..., i, j] = 1`` iff row ``i`` is assigned to column ``j``.
    :rtype: torch.Tensor
    :raises ValueError: if ``log_alpha`` is not square in its last two dims or contains
        NaN.
    """
    _check_square("log_alpha", log_alpha)
    _check_no_nan("log_alpha", log_alpha)
    if torch.isposinf(log_alpha).any():
        raise ValueError("log_alpha contains +inf")
    n = log_alpha.size(-1)
    scores = _mask_neginf(log_alpha.detach())
    flat = scores.reshape(-1, n, n).to(device="cpu", dtype=torch.float64).numpy()
    cols = np.empty(flat.shape[:2], dtype=np.int64)
    for b in range(flat.shape[0]):
        _, cols[b] = linear_sum_assignment(flat[b], maximize=True)
    index = torch.from_numpy(cols).to(log_alpha.device).reshape(log_alpha.shape[:-1])
    perm = torch.zeros_like(log_alpha, requires_grad=False)
    return perm.scatter_(-1, index.unsqueeze(-1), 1)
