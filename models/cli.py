"""Command-line arguments shared by the tutorial models and benchmarks (Pyro's examples style).

Run every CLI as a module from the repository root, e.g. ``python -m models.sorting``.
"""

__all__ = ["add_common_arguments"]


def add_common_arguments(parser, seed=True):
    """Adds ``--seed`` (optional), ``--device`` and ``--threads`` to an argparse parser.

    :param argparse.ArgumentParser parser: the parser to extend.
    :param bool seed: add ``--seed`` (a CLI with a list of seeds adds its own).
    :returns: the parser.
    """
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; on 2-core machines 1 is much faster for small ops",
    )
    return parser
