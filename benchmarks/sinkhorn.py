"""
Benchmark :func:`pyro_relax.ops.log_sinkhorn` and :func:`pyro_relax.ops.matching`.

``log_sinkhorn`` (batched, log space) is compared with

- POT's batched log-domain Bregman projection ``ot.batch.bregman_log_projection_batch``,
- POT's log-domain Sinkhorn ``ot.bregman.sinkhorn_log`` looped over the batch (it is not
  batched),
- a naive exp-space Sinkhorn loop (batched; it under/overflows at low temperatures),

all with the same number of row+column rounds and no early stop (POT's solvers still
compute the marginal error every 10 rounds, which they cannot skip; ``stopThr``/``tol``
are set so that it never stops them). ``matching`` is compared with a Python loop of
``scipy.optimize.linear_sum_assignment`` calls. Times are medians over repeats, in ms.

Example::

    python -m benchmarks.sinkhorn --threads 1 --device cpu

Reference:

[1] G. Mena, D. Belanger, S. Linderman, J. Snoek. "Learning Latent Permutations with
    Gumbel-Sinkhorn Networks." ICLR 2018.
[2] R. Flamary et al. "POT: Python Optimal Transport." JMLR 2021.
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from models.cli import add_common_arguments
from pyro_relax.ops import log_sinkhorn, matching

__all__ = ["main", "naive_sinkhorn", "pot_batched", "pot_loop", "scipy_loop"]


def naive_sinkhorn(log_alpha, num_iters):
    """Exp-space Sinkhorn: alternately divide by row and column sums."""
    p = torch.exp(log_alpha - log_alpha.amax((-2, -1), keepdim=True))
    for _ in range(num_iters):
        p = p / p.sum(-1, keepdim=True)
        p = p / p.sum(-2, keepdim=True)
    return p


def pot_loop(log_alpha, num_iters):
    """POT's ``sinkhorn_log`` per matrix, with unit marginals and ``M = -log_alpha``."""
    import ot

    n = log_alpha.size(-1)
    ones = log_alpha.new_ones(n)
    return torch.stack(
        [
            ot.bregman.sinkhorn_log(
                ones, ones, -m, 1.0, numItermax=num_iters, stopThr=-1.0, warn=False
            )
            for m in log_alpha.reshape(-1, n, n)
        ]
    ).reshape(log_alpha.shape)


def pot_batched(log_alpha, num_iters):
    """POT's batched ``bregman_log_projection_batch`` with unit marginals."""
    from ot.batch import bregman_log_projection_batch

    n = log_alpha.size(-1)
    flat = log_alpha.reshape(-1, n, n)
    ones = flat.new_ones(flat.shape[:2])
    out = bregman_log_projection_batch(flat, ones, ones, max_iter=num_iters, tol=-1.0)
    return out["T"].reshape(log_alpha.shape)


def scipy_loop(log_alpha):
    """A plain Python loop of scipy assignment calls returning permutation matrices."""
    n = log_alpha.size(-1)
    out = []
    for m in log_alpha.reshape(-1, n, n).detach().cpu().numpy():
        rows, cols = linear_sum_assignment(m, maximize=True)
        p = np.zeros((n, n), dtype=m.dtype)
        p[rows, cols] = 1
        out.append(p)
    return torch.from_numpy(np.stack(out)).to(log_alpha).reshape(log_alpha.shape)


def _time(fn, repeats, device):
    times = []
    for _ in range(repeats + 1):  # the first call is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[1:])


def main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    warnings.filterwarnings("ignore", module="ot")
    print(
        f"# sinkhorn benchmark: device={device} threads={torch.get_num_threads()} "
        f"dtype={args.dtype} batch={args.batch} iters={args.iters} "
        f"repeats={args.repeats} (median ms)"
    )
    print(f"{'N':>5} {'method':<34} {'ms':>10} {'ratio':>15} {'max |diff|':>11}")
    rows = []
    for n in args.n:
        x = torch.randn(args.batch, n, n, device=device, dtype=dtype)
        ours = log_sinkhorn(x, args.iters).exp()
        methods = [
            ("log_sinkhorn (ours, batched)", lambda: log_sinkhorn(x, args.iters)),
            ("POT bregman_log_projection_batch", lambda: pot_batched(x, args.iters)),
            ("POT sinkhorn_log, loop", lambda: pot_loop(x, args.iters)),
            ("naive exp-space (batched)", lambda: naive_sinkhorn(x, args.iters)),
        ]
        base = None
        for name, fn in methods:
            ms = _time(fn, args.repeats, device)
            out = fn()
            out = out.exp() if name.startswith("log_sinkhorn") else out
            diff = (out - ours).abs().max().item()
            base = ms if base is None else base
            rows.append(dict(n=n, method=name, ms=ms))
            print(f"{n:>5} {name:<34} {ms:>10.2f} {ms / base:>15.2f} {diff:>11.1e}")
        ms_ours = _time(lambda: matching(x), args.repeats, device)
        ms_loop = _time(lambda: scipy_loop(x), args.repeats, device)
        same = torch.equal(matching(x), scipy_loop(x))
        for name, ms in [("matching (ours)", ms_ours), ("scipy loop", ms_loop)]:
            rows.append(dict(n=n, method=name, ms=ms))
            print(
                f"{n:>5} {name:<34} {ms:>10.2f} {ms / ms_ours:>15.2f} "
                f"{'same' if same else 'DIFFERENT':>11}"
            )
    print("# ratio: time / time of the group's first method (log_sinkhorn, matching)")
    return rows


def make_parser():
    parser = argparse.ArgumentParser(description="log_sinkhorn and matching benchmark")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    add_common_arguments(parser)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
