"""Small helpers shared by several test modules."""

import re

import torch


def is_permutation(p):
    """True iff every matrix in ``p`` (shape ``batch + (N, N)``) is a 0/1 permutation matrix."""
    ones = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    return (
        bool(((p == 0) | (p == 1)).all())
        and torch.equal(p.sum(-1), ones)
        and torch.equal(p.sum(-2), ones)
    )


PLUS_MINUS = re.compile(r"^(-?\d+(?:\.\d+)?) ± (-?\d+(?:\.\d+)?)$")


def summary_rows(out):
    """The Markdown summary table: first cell -> list of (mean, sd, decimals) per column."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---")
    rows = {}
    for line in lines[2:]:
        first, *cells = [c.strip() for c in line.strip("|").split("|")]
        parsed = []
        for cell in cells:
            match = PLUS_MINUS.match(cell)
            assert match, cell
            decimals = len(match.group(1).partition(".")[2])
            parsed.append((float(match.group(1)), float(match.group(2)), decimals))
        rows[first] = parsed
    return lines[0], rows
