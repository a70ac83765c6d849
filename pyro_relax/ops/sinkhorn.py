"""Log-space Sinkhorn normalization of square matrices."""

import torch

__all__ = ["log_sinkhorn", "MASK_VALUE"]

#: Recommended value for forbidden entries of a log-matrix. It is large enough that
#: ``exp`` of it underflows to zero next to any sensible score, and finite, so a row or
#: column whose entries are all forbidden still normalizes to a uniform row instead of
#: ``-inf - (-inf) = nan``. :func:`log_sinkhorn` and :func:`~pyro_relax.ops.matching`
#: replace ``-inf`` entries by this value.
MASK_VALUE = -1e9

# On CPU, batches are normalized in chunks of about this many entries (1 MB in float32,
# at least one matrix): small working sets stay in cache and reuse allocator blocks,
# whereas one huge batched tensor per step costs cache misses and page faults (about
# 2x faster for batch 64 with N = 100 or N = 500, one thread).
_CPU_CHUNK_ELEMENTS = 2**18


def _check_square(name, x):
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.size(-1) != x.size(-2):
        raise ValueError(
            f"{name} must have shape batch_shape + (N, N) with square last two dims, "
            f"got shape {tuple(x.shape)}"
        )


def _check_no_nan(name, x):
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")


def _check_and_mask(name, x, allow_posinf=True):
    """
    Raise on NaN (and on ``+inf`` unless allowed) and replace ``-inf`` entries by the
    finite :data:`MASK_VALUE` (see its note). One reduction when everything is finite:
    a NaN or infinite entry makes the sum non-finite (an overflowing sum of finite
    entries only falls through to the exact checks below).
    """
    if bool(torch.isfinite(x.sum())):
        return x
    _check_no_nan(name, x)
    if not allow_posinf and torch.isposinf(x).any():
        raise ValueError(f"{name} contains +inf")
    neginf = torch.isneginf(x)
    if neginf.any():
        x = torch.where(neginf, x.new_tensor(MASK_VALUE), x)
    return x


def log_sinkhorn(log_alpha, num_iters=20, tol=None):
    r"""
    Sinkhorn normalization in log space: alternately subtract the row and the column
    ``logsumexp`` from ``log_alpha``, so that :math:`\exp` of the result approaches a
    doubly stochastic matrix (Sinkhorn, 1964). Each iteration is one row step followed
    by one column step, so the columns of the result sum to one exactly and the rows
    approximately. Batched over all leading dimensions (on CPU, large batches are
    processed in chunks of about 2^18 entries; each step is one fused log-softmax,
    :func:`torch.nn.functional.log_softmax`).

    The result is ``log_alpha + r[..., :, None] + c[..., None, :]`` for some row and
    column offsets, hence its hard :func:`~pyro_relax.ops.matching` equals that of
    ``log_alpha``; as ``num_iters`` grows, ``exp(log_sinkhorn(log_alpha / tau))`` tends
    to that matching when ``tau -> 0`` (Mena et al., 2018, Theorem 1).

    **Masking.** Encode a forbidden entry ``(i, j)`` by a large finite negative value
    such as :data:`MASK_VALUE` (``-1e9``), not ``-inf``: an all-``-inf`` row would give
    ``nan``. ``-inf`` entries are replaced by :data:`MASK_VALUE` here for safety; their
    gradient is zero.

    Reference:

    [1] G. Mena, D. Belanger, S. Linderman, J. Snoek. "Learning Latent Permutations with
        Gumbel-Sinkhorn Networks." ICLR 2018.

    :param torch.Tensor log_alpha: scores of shape ``batch_shape + (N, N)``.
    :param int num_iters: (maximal) number of row+column normalization rounds, ``>= 1``.
    :param float tol: optional early stop: stop once the largest absolute deviation of
        the row sums from one (the column sums are exact after each round) is below
        ``tol`` (checked per CPU chunk). ``None`` (default) always runs ``num_iters``
        rounds without any host synchronization.
    :returns: the log of an approximately doubly stochastic matrix, same shape, dtype
        and device as ``log_alpha``.
    :rtype: torch.Tensor
    :raises ValueError: if ``log_alpha`` is not square in its last two dims or contains
        NaN, or if ``num_iters < 1`` or ``tol`` is negative.
    """
    _check_square("log_alpha", log_alpha)
    if not isinstance(num_iters, int) or isinstance(num_iters, bool) or num_iters < 1:
        raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be None or >= 0, got {tol!r}")
    log_alpha = _check_and_mask("log_alpha", log_alpha)
    n = log_alpha.size(-1)
    per_chunk = max(1, _CPU_CHUNK_ELEMENTS // max(1, n * n))
    if log_alpha.device.type != "cpu" or log_alpha.dim() == 2:
        return _log_sinkhorn(log_alpha, num_iters, tol)
    flat = log_alpha.reshape((-1, n, n))
    if flat.size(0) <= per_chunk:
        return _log_sinkhorn(log_alpha, num_iters, tol)
    chunks = [_log_sinkhorn(c, num_iters, tol) for c in flat.split(per_chunk)]
    return torch.cat(chunks).reshape(log_alpha.shape)


def _log_sinkhorn(log_alpha, num_iters, tol):
    # x - logsumexp(x) is log_softmax(x): one fused kernel forward and backward
    for _ in range(num_iters):
        log_alpha = torch.log_softmax(log_alpha, dim=-1)
        log_alpha = torch.log_softmax(log_alpha, dim=-2)
        if tol is not None:
            with torch.no_grad():
                row_err = (log_alpha.exp().sum(-1) - 1).abs()
                if row_err.numel() == 0 or row_err.max().item() <= tol:
                    break
    return log_alpha
