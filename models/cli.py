"""Command-line arguments shared by the tutorial models (Pyro's examples style).

Run every CLI as a module from the repository root, e.g. ``python -m models.sorting --help``.
Each module has a ``make_parser()`` and a ``main(args)`` that tests and notebooks can import.
"""

import argparse
import os
import statistics

from models.data import DEFAULT_DATA_DIR, missing_files

__all__ = [
    "DEFAULT_DATA_DIR",
    "add_common_arguments",
    "add_data_argument",
    "check_data_dir",
    "make_parser",
    "mean_sd",
    "plus_minus",
    "seed_summary",
]


def make_parser(name, description):
    """An :class:`argparse.ArgumentParser` for ``python -m models.<name>`` that shows every
    option's default in ``--help``.

    :param str name: the module's name under ``models``, e.g. ``"sorting"``.
    :param str description: what the command does.
    :returns: the parser.
    """
    return argparse.ArgumentParser(
        prog=f"python -m models.{name}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


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


def add_data_argument(parser):
    """Adds ``--data-dir``, the folder holding the Fashion-MNIST idx(.gz) files.

    :param argparse.ArgumentParser parser: the parser to extend.
    :returns: the parser.
    """
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="folder with the Fashion-MNIST idx(.gz) files, as installed by the Debian "
        "package dataset-fashion-mnist; nothing is downloaded",
    )
    return parser


def check_data_dir(data_dir, splits=("train", "test")):
    """Checks that ``data_dir`` holds the idx files of ``splits`` and prints the folder used.

    :param str data_dir: the value of ``--data-dir``.
    :param tuple splits: the splits the command reads.
    :returns: the folder, as an absolute path.
    :raises SystemExit: (non-zero) with a message naming ``--data-dir`` and the folder if it
        does not exist, is not a folder, or lacks some of the files.
    """
    folder = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.exists(folder):
        problem = "the folder does not exist"
    elif not os.path.isdir(folder):
        problem = "it is a file, not a folder"
    else:
        missing = missing_files(folder, splits)
        problem = "it lacks {}".format(", ".join(f"{m}[.gz]" for m in missing)) if missing else None
    if problem is not None:
        raise SystemExit(
            f"error: --data-dir {folder}: no Fashion-MNIST idx files there ({problem}). "
            "Install them with `apt-get update && apt-get install -y dataset-fashion-mnist` "
            f"(into {DEFAULT_DATA_DIR}), or pass --data-dir <folder holding the idx files>. "
            "Nothing is downloaded."
        )
    print(f"# data: Fashion-MNIST from {folder}", flush=True)
    return folder


def mean_sd(values):
    """Mean and sample standard deviation (:func:`statistics.stdev`; 0 for one value)."""
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plus_minus(mean, sd, spec, num_seeds):
    """``mean ± sd`` with the format ``spec``; ``± 0`` for a single seed."""
    return f"{mean:{spec}} ± {f'{sd:{spec}}' if num_seeds > 1 else '0'}"


def seed_summary(runs, keys, columns, first_head, first_cell, seeds):
    """Prints the Markdown summary of seeded runs, one row per setting, ``mean ± sd`` cells.

    :param list runs: one list of row dicts per seed, the rows in the order of ``keys``.
    :param list keys: the settings (e.g. sizes), one table row each.
    :param list columns: ``(key, header, format spec)`` per column.
    :param str first_head: the header of the first column.
    :param first_cell: a callable turning a setting into its first cell.
    :param list seeds: the seeds (only their number and names are printed).
    :returns: ``(means, sds)``, one dict per setting (with ``name: setting`` under the key
        ``first_head.lower()``).
    """
    means, sds = [], []
    label = first_head.lower()
    for i, k in enumerate(keys):
        stats = {key: mean_sd(rows[i][key] for rows in runs) for key, _, _ in columns}
        means.append({label: k, **{key: m for key, (m, _) in stats.items()}})
        sds.append({label: k, **{key: sd for key, (_, sd) in stats.items()}})
    print(f"# summary: mean ± sd over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
          f"({', '.join(map(str, seeds))}), sample standard deviation")
    print(f"| {first_head} | " + " | ".join(head for _, head, _ in columns) + " |")
    print("|---" * (1 + len(columns)) + "|")
    for mean, sd in zip(means, sds):
        cells = [plus_minus(mean[key], sd[key], spec, len(seeds)) for key, _, spec in columns]
        print(f"| {first_cell(mean[label])} | " + " | ".join(cells) + " |")
    return means, sds
