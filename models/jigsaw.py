"""
Solving jigsaw puzzles of Fashion-MNIST images with a Gumbel-Sinkhorn network.

The jigsaw experiment of Mena et al. (2018, Sec. 6.2) on Fashion-MNIST: an image is cut
into a ``k x k`` grid of pieces (``k = 2``: 14x14 pieces; ``k = 3``: the image is
cropped to 27x27 and cut into 9x9 pieces), the pieces are shuffled, and a shared
per-piece CNN maps each scrambled piece to one row of ``log_alpha`` (a score for each of
the ``k^2`` positions). The relaxed permutation ``S ~ GumbelSinkhorn(log_alpha, tau)``
soft-unscrambles the pieces (position ``j`` receives ``sum_i S[i, j] piece_i``) and the
loss is the squared error against the original image. Evaluation is noise-free with the
hard matching of ``log_alpha`` on held-out test images: the proportion of pieces put in
their own position (by identity, and by content: a blank piece put where another blank
piece belongs counts as correct), and the proportion of fully solved puzzles.

The idx files are read from ``--data-dir`` (default: where the Debian package
``dataset-fashion-mnist`` installs them); nothing is downloaded.

The whole experiment runs once per seed of ``--seeds`` (default ``0 1 2``; the data are
loaded once): one seeded run is not reproducible across CPUs, so results are reported as
mean and spread over seeds. Each seed's table is printed, then a Markdown summary with every
column as ``mean ± sd`` (sample standard deviation over the seeds) and the total wall time.

Examples::

    python -m models.jigsaw --grid 2 3
    python -m models.jigsaw --data-dir ~/fashion-mnist --grid 2 --num-steps 500 --seeds 0 1 2 3 4

Reference:

[1] G. Mena, D. Belanger, S. Linderman, J. Snoek. "Learning Latent Permutations with
    Gumbel-Sinkhorn Networks." ICLR 2018.
"""

import time

import numpy as np
import pyro
import torch
from torch import nn

from models import cli
from models.data import load_fashion_mnist
from pyro_relax.distributions import GumbelSinkhorn
from pyro_relax.ops import matching

__all__ = [
    "PieceNetwork",
    "evaluate",
    "main",
    "make_parser",
    "run",
    "scramble",
    "to_pieces",
    "train",
]


def to_pieces(images, k):
    """
    Cut images into a ``k x k`` grid of square pieces, in raster order (the images are
    cropped to ``(28 // k) * k`` pixels first).

    :param torch.Tensor images: ``(batch, H, W)``.
    :param int k: grid size.
    :returns: ``(batch, k * k, p, p)`` with ``p = min(H, W) // k``.
    """
    p = min(images.shape[-2:]) // k
    x = images[..., : p * k, : p * k]
    x = x.reshape(x.shape[0], k, p, k, p).transpose(2, 3)
    return x.reshape(x.shape[0], k * k, p, p)


def scramble(pieces, generator=None):
    """
    Shuffle the pieces of each puzzle independently.

    :returns: ``(scrambled, perm)`` where ``scrambled = perm @ pieces``: the permutation
        matrix ``perm[b, i, j] = 1`` iff scrambled piece ``i`` belongs at position ``j``.
    """
    b, n = pieces.shape[:2]
    keys = torch.rand(b, n, generator=generator).to(pieces.device)
    order = keys.argsort(-1)  # scrambled piece i is original piece order[i]
    perm = torch.zeros(b, n, n, dtype=pieces.dtype, device=pieces.device)
    perm.scatter_(-1, order.unsqueeze(-1), 1)
    scrambled = torch.gather(
        pieces, 1, order[..., None, None].expand_as(pieces)
    )
    return scrambled, perm


def unscramble(perm, scrambled):
    """Position ``j`` receives ``sum_i perm[i, j] scrambled_i``."""
    return torch.einsum("bij,bi...->bj...", perm, scrambled)


class PieceNetwork(nn.Module):
    """
    Shared per-piece CNN: each ``p x p`` piece to a row of ``n`` position scores.

    :param int p: piece side in pixels.
    :param int n: number of positions (``k * k``).
    :param int channels: convolution channels.
    :param int hidden: hidden units of the fully connected layer.
    """

    def __init__(self, p, n, channels=32, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(channels * (p // 2) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n),
        )

    def forward(self, pieces):
        """
        :param torch.Tensor pieces: ``(batch, n, p, p)``.
        :returns: ``log_alpha`` of shape ``(batch, n, n)``.
        """
        b, n, p, _ = pieces.shape
        return self.net(pieces.reshape(b * n, 1, p, p)).reshape(b, n, -1)


def evaluate(net, images, k, generator=None, batch_size=500):
    """
    Noise-free evaluation with the hard matching on scrambled ``images``.

    :returns: dict with ``prop_correct`` (by piece identity), ``prop_correct_content``
        (the placed piece equals the true one pixelwise) and ``prop_solved``.
    """
    correct, content, solved = [], [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pieces = to_pieces(images[start : start + batch_size], k)
            scrambled, perm = scramble(pieces, generator)
            hard = matching(net(scrambled))
            correct.append((hard * perm).sum(-1))
            same = (unscramble(hard, scrambled) == pieces).flatten(2).all(-1)
            content.append(same.to(pieces.dtype))
            solved.append(same.all(-1).to(pieces.dtype))
    return {
        "prop_correct": torch.cat(correct).mean().item(),
        "prop_correct_content": torch.cat(content).mean().item(),
        "prop_solved": torch.cat(solved).mean().item(),
    }


def train(images, k, args):
    """
    Train a :class:`PieceNetwork` on scrambled ``images`` (fresh scrambles each step).

    :returns: the trained network.
    """
    p = min(images.shape[-2:]) // k
    net = PieceNetwork(p, k * k, args.channels, args.hidden).to(images)
    optim = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, max(1, args.num_steps))
    for _ in range(args.num_steps):
        idx = torch.randint(len(images), (args.batch_size,), device=images.device)
        pieces = to_pieces(images[idx], k)
        scrambled, _ = scramble(pieces)
        d = GumbelSinkhorn(net(scrambled), args.temperature, args.sinkhorn_iters)
        soft = d.rsample((args.num_samples,))
        recon = torch.stack([unscramble(s, scrambled) for s in soft])
        loss = (recon - pieces).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return net


def _load(data_dir, split, limit, device):
    images, _ = load_fashion_mnist(data_dir, split)
    images = np.asarray(images[:limit], dtype=np.float32) / 255.0
    return torch.from_numpy(images).to(device)


#: the numeric columns of the table: key, Markdown header, format
COLUMNS = (
    ("prop_correct", "prop correct", ".4f"),
    ("prop_correct_content", "(by content)", ".4f"),
    ("prop_solved", "prop solved", ".4f"),
    ("seconds", "train s", ".1f"),
)


def run(seed, train_images, test_images, args):
    """
    One seed's experiment: seeds with ``pyro.set_rng_seed(seed)``, then trains one network
    per grid size in ``args.grid`` (each from ``seed``), evaluates it on ``test_images``
    scrambled from ``seed + 1``, and prints the seed's table.

    :returns: list of dicts, one per grid size, with ``grid``, ``seconds`` (training time)
        and the metrics of :func:`evaluate`.
    """
    pyro.set_rng_seed(seed)
    print(f"# seed {seed}")
    print(f"{'grid':>5} {'prop correct':>13} {'(by content)':>13} {'prop solved':>12} "
          f"{'train s':>8}")
    rows = []
    for k in args.grid:
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        net = train(train_images, k, args)
        seconds = time.perf_counter() - start
        gen = torch.Generator().manual_seed(seed + 1)
        row = dict(grid=k, seconds=seconds, **evaluate(net, test_images, k, gen))
        rows.append(row)
        print(
            f"{f'{k}x{k}':>5} {row['prop_correct']:>13.4f} "
            f"{row['prop_correct_content']:>13.4f} {row['prop_solved']:>12.4f} "
            f"{seconds:>8.1f}",
            flush=True,
        )
    return rows


def main(args):
    """
    Load the data once, run the experiment once per seed in ``args.seeds`` (see
    :func:`run`), print each seed's table, then a Markdown summary table with every numeric
    column as ``mean ± sd`` over the seeds (sample standard deviation) and the total wall
    time.

    :returns: dict with ``seeds`` (the list of seeds), ``runs`` (one list of rows per seed,
        in the order of ``seeds``, as returned by :func:`run`), ``mean`` and ``sd`` (one
        row per grid size with the key ``grid`` and the mean, resp. sample standard
        deviation, of each numeric column over the seeds; ``sd`` is 0 for a single seed)
        and ``seconds`` (total wall time, data loading included).
    """
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seeds = list(args.seeds)
    data_dir = cli.check_data_dir(args.data_dir, ("train", "test"))
    train_images = _load(data_dir, "train", args.num_train, device)
    test_images = _load(data_dir, "test", args.num_test, device)
    print(
        f"# jigsaw Fashion-MNIST: train={len(train_images)} test={len(test_images)} "
        f"steps={args.num_steps} lr={args.learning_rate} (cosine) "
        f"batch={args.batch_size} samples={args.num_samples} tau={args.temperature} "
        f"sinkhorn_iters={args.sinkhorn_iters} seeds={','.join(map(str, seeds))} "
        f"device={device} threads={args.threads}"
    )
    runs = [run(seed, train_images, test_images, args) for seed in seeds]
    means, sds = cli.seed_summary(runs, args.grid, COLUMNS, "grid", lambda k: f"{k}x{k}", seeds)
    seconds = time.perf_counter() - start
    print(f"# total wall time: {seconds:.1f} s", flush=True)
    return {"seeds": seeds, "runs": runs, "mean": means, "sd": sds, "seconds": seconds}


def make_parser():
    parser = cli.make_parser(
        "jigsaw",
        "Jigsaw puzzles of Fashion-MNIST images (Mena et al. 2018, Sec. 6.2): for each grid "
        "size, train a per-piece CNN whose scores define a Gumbel-Sinkhorn relaxed "
        "permutation that unscrambles the pieces, then print the proportion of pieces placed "
        "correctly and of puzzles solved on held-out test images. Reads the idx files from "
        "--data-dir; nothing is downloaded.",
    )
    parser.add_argument("--grid", type=int, nargs="+", default=[2, 3],
                        help="grid sizes k: puzzles of k x k pieces, one network per size")
    cli.add_data_argument(parser)
    parser.add_argument("--num-train", type=int, default=60000,
                        help="training images (the first ones of the train split)")
    parser.add_argument("--num-test", type=int, default=10000,
                        help="held-out images (the first ones of the test split)")
    parser.add_argument("--num-steps", type=int, default=6000, help="Adam steps per network")
    parser.add_argument("--learning-rate", type=float, default=3e-3,
                        help="Adam learning rate, cosine-annealed to 0")
    parser.add_argument("--batch-size", type=int, default=32, help="puzzles per step")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="Gumbel samples per puzzle")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="Gumbel-Sinkhorn temperature tau")
    parser.add_argument("--sinkhorn-iters", type=int, default=20,
                        help="Sinkhorn normalization iterations")
    parser.add_argument("--channels", type=int, default=32,
                        help="convolution channels of the per-piece network")
    parser.add_argument("--hidden", type=int, default=64,
                        help="hidden units of the per-piece network")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="random seeds: the whole experiment runs once per seed, and the "
                        "summary table reports the mean and sample standard deviation over them")
    cli.add_common_arguments(parser, seed=False)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
