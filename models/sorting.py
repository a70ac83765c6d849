"""
Learning to sort numbers with a Gumbel-Sinkhorn permutation network.

This is the number-sorting experiment of Mena et al. (2018, Sec. 6.1, Table 1). Each of
the ``N`` numbers of a sequence drawn uniformly from ``[0, 1]`` goes through the same
small network (fully connected 1-32-N, ReLU) that outputs one row of ``log_alpha``; the
relaxed permutation ``S ~ GumbelSinkhorn(log_alpha, temperature)`` soft-permutes the
input, and the loss is the squared error between ``S^T x`` and the sorted ``x``.
Held-out sequences are evaluated without noise with the hard matching of ``log_alpha``: the
proportion of wrongly placed numbers, the proportion of sequences with any error, and
Kendall's tau between the predicted and the true ranking.

The whole experiment runs once per seed of ``--seeds`` (default ``0 1 2``): one seeded run is
not reproducible across CPUs, so results are reported as mean and spread over seeds. Each
seed's table is printed, then a Markdown summary with every column as ``mean ± sd`` (sample
standard deviation over the seeds) and the total wall time.

Examples::

    python -m models.sorting --n 5 10 15 80 100 120
    python -m models.sorting --n 5 10 --seeds 0 1 2 3 4

Reference:

[1] G. Mena, D. Belanger, S. Linderman, J. Snoek. "Learning Latent Permutations with
    Gumbel-Sinkhorn Networks." ICLR 2018.
"""

import time

import pyro
import torch
from torch import nn

from models import cli
from pyro_relax.distributions import GumbelSinkhorn
from pyro_relax.ops import matching

__all__ = ["SortingNetwork", "evaluate", "kendall_tau", "main", "make_parser", "run", "train"]


class SortingNetwork(nn.Module):
    """
    Per-number scorer: maps each number of a sequence to a row of ``log_alpha``.

    :param int n: sequence length ``N`` (number of output columns).
    :param int hidden: hidden units.
    """

    def __init__(self, n, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, n))

    def forward(self, x):
        """
        :param torch.Tensor x: sequences of shape ``batch + (N,)``.
        :returns: ``log_alpha`` of shape ``batch + (N, N)``; row ``i`` scores the
            positions of number ``i``.
        """
        return self.net(x.unsqueeze(-1))


def soft_permute(perm, x):
    """``perm^T x``: position ``j`` receives ``sum_i perm[i, j] x_i``."""
    return (perm.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1)


def kendall_tau(pred_rank, true_rank):
    """
    Kendall's tau between two rankings without ties, per sequence.

    :param torch.Tensor pred_rank: ranks of shape ``batch + (N,)``.
    :param torch.Tensor true_rank: ranks of the same shape.
    :returns: tau of shape ``batch``.
    """
    n = pred_rank.size(-1)
    a = torch.sign(pred_rank.unsqueeze(-1) - pred_rank.unsqueeze(-2))
    b = torch.sign(true_rank.unsqueeze(-1) - true_rank.unsqueeze(-2))
    return (a * b).sum((-2, -1)) / (n * (n - 1))


def evaluate(net, x):
    """
    Noise-free evaluation with the hard matching of ``log_alpha``.

    :param SortingNetwork net: trained network.
    :param torch.Tensor x: held-out sequences ``(num_sequences, N)``.
    :returns: dict with ``prop_wrong``, ``prop_any_wrong`` and ``kendall_tau``.
    """
    with torch.no_grad():
        perm = matching(net(x))
        wrong = soft_permute(perm, x) != x.sort(-1).values
        pred_rank = perm.argmax(-1).to(x.dtype)  # position assigned to each number
        true_rank = x.argsort(-1).argsort(-1).to(x.dtype)
        tau = kendall_tau(pred_rank, true_rank)
    return {
        "prop_wrong": wrong.to(x.dtype).mean().item(),
        "prop_any_wrong": wrong.any(-1).to(x.dtype).mean().item(),
        "kendall_tau": tau.mean().item(),
    }


def train(n, args, device, dtype=torch.float32):
    """
    Train a :class:`SortingNetwork` on fresh uniform sequences of length ``n``.

    :returns: the trained network.
    """
    net = SortingNetwork(n, args.hidden).to(device=device, dtype=dtype)
    optim = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    # learning rate: constant, then cosine decay to lr * lr_final over the last steps
    decay_start = int(args.num_steps * (1 - args.decay_fraction))

    def lr_lambda(step):
        if step < decay_start:
            return 1.0
        t = (step - decay_start) / max(1, args.num_steps - decay_start)
        cos = 0.5 * (1 + torch.cos(torch.tensor(torch.pi * t)).item())
        return args.lr_final + (1 - args.lr_final) * cos

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda)
    for _ in range(args.num_steps):
        x = torch.rand(args.batch_size, n, device=device, dtype=dtype)
        target = x.sort(-1).values
        d = GumbelSinkhorn(net(x), args.temperature, num_iters=args.sinkhorn_iters)
        perm = d.rsample((args.num_samples,))
        loss = (soft_permute(perm, x) - target).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return net


#: the numeric columns of the table: key, Markdown header, format
COLUMNS = (
    ("prop_wrong", "prop wrong", ".4f"),
    ("prop_any_wrong", "prop any wrong", ".3f"),
    ("kendall_tau", "kendall tau", ".4f"),
    ("seconds", "train s", ".1f"),
)


def run(seed, args, device):
    """
    One seed's experiment: seeds with ``pyro.set_rng_seed(seed)``, then trains and
    evaluates one network per length in ``args.n`` (each from ``seed``), and prints the
    seed's table.

    :returns: list of dicts, one per ``N``, with ``n``, ``seconds`` (training time) and the
        metrics of :func:`evaluate`.
    """
    pyro.set_rng_seed(seed)
    print(f"# seed {seed}")
    print(f"{'N':>5} {'prop wrong':>11} {'prop any wrong':>15} {'kendall tau':>12} "
          f"{'train s':>8}")
    rows = []
    for n in args.n:
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        net = train(n, args, device)
        seconds = time.perf_counter() - start
        x_test = torch.rand(args.num_test, n, device=device, dtype=torch.float32)
        row = dict(n=n, seconds=seconds, **evaluate(net, x_test))
        rows.append(row)
        print(
            f"{n:>5} {row['prop_wrong']:>11.4f} {row['prop_any_wrong']:>15.3f} "
            f"{row['kendall_tau']:>12.4f} {seconds:>8.1f}",
            flush=True,
        )
    return rows


def main(args):
    """
    Run the experiment once per seed in ``args.seeds`` (see :func:`run`), print each
    seed's table, then a Markdown summary table with every numeric column as ``mean ± sd``
    over the seeds (sample standard deviation) and the total wall time.

    :returns: dict with ``seeds`` (the list of seeds), ``runs`` (one list of rows per seed,
        in the order of ``seeds``, as returned by :func:`run`), ``mean`` and ``sd`` (one
        row per ``N`` with the key ``n`` and the mean, resp. sample standard deviation, of
        each numeric column over the seeds; ``sd`` is 0 for a single seed) and ``seconds``
        (total wall time).
    """
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seeds = list(args.seeds)
    print(
        f"# sorting: steps={args.num_steps} lr={args.learning_rate} "
        f"(cosine to x{args.lr_final} over last {args.decay_fraction:.0%}) "
        f"batch={args.batch_size} samples={args.num_samples} tau={args.temperature} "
        f"sinkhorn_iters={args.sinkhorn_iters} hidden={args.hidden} "
        f"test={args.num_test} seeds={','.join(map(str, seeds))} device={device} "
        f"threads={args.threads}"
    )
    runs = [run(seed, args, device) for seed in seeds]
    means, sds = cli.seed_summary(runs, args.n, COLUMNS, "N", str, seeds)
    seconds = time.perf_counter() - start
    print(f"# total wall time: {seconds:.1f} s", flush=True)
    return {"seeds": seeds, "runs": runs, "mean": means, "sd": sds, "seconds": seconds}


def make_parser():
    parser = cli.make_parser(
        "sorting",
        "Learning to sort numbers (Mena et al. 2018, Sec. 6.1): for each sequence length N, "
        "train a per-number network whose scores define a Gumbel-Sinkhorn relaxed "
        "permutation of N uniform numbers, then print the proportion of misplaced numbers, "
        "of sequences with any error, and Kendall's tau on held-out sequences. The data "
        "are synthetic (drawn afresh at each step).",
    )
    parser.add_argument("--n", type=int, nargs="+", default=[5, 10, 15, 80, 100, 120],
                        help="sequence lengths N, one network per length")
    parser.add_argument("--num-steps", type=int, default=1000, help="Adam steps per network")
    parser.add_argument("--learning-rate", type=float, default=0.1, help="Adam learning rate")
    parser.add_argument("--lr-final", type=float, default=0.01,
                        help="final learning rate as a fraction of --learning-rate")
    parser.add_argument("--decay-fraction", type=float, default=0.5,
                        help="fraction of the steps with cosine learning-rate decay")
    parser.add_argument("--batch-size", type=int, default=10, help="sequences per step")
    parser.add_argument("--num-samples", type=int, default=5,
                        help="Gumbel samples per sequence")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="Gumbel-Sinkhorn temperature tau")
    parser.add_argument("--sinkhorn-iters", type=int, default=10,
                        help="Sinkhorn normalization iterations")
    parser.add_argument("--hidden", type=int, default=32,
                        help="hidden units of the per-number network")
    parser.add_argument("--num-test", type=int, default=1000, help="held-out sequences per N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="random seeds: the whole experiment runs once per seed, and the "
                        "summary table reports the mean and sample standard deviation over them")
    cli.add_common_arguments(parser, seed=False)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
