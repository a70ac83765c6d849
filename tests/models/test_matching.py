import re
import statistics

import pytest
import torch

from models.matching import (
    PAPER_TABLE,
    all_permutations,
    assignment_scores,
    bhattacharyya_distance,
    exact_posterior,
    main,
    make_problems,
    parse_args,
    permutation_histogram,
)


def test_histogram_ranks_are_lexicographic():
    perms = all_permutations(4)
    mats = torch.eye(4)[perms]  # (24, 4, 4), row i -> column perms[k, i]
    hist = permutation_histogram(mats[:, None], 4)  # 24 samples of one problem
    assert torch.allclose(hist, torch.full((1, 24), 1 / 24))
    hist = permutation_histogram(mats[7].expand(3, 2, 4, 4), 4)
    assert hist[:, 7].eq(1).all() and hist.sum().item() == 2


def test_bhattacharyya_distance():
    p = torch.tensor([0.5, 0.5, 0.0])
    assert bhattacharyya_distance(p, p).abs().item() < 1e-6
    assert abs(bhattacharyya_distance(p, torch.tensor([0.0, 0.0, 1.0])).item() - 1) < 1e-12


def test_exact_posterior_small_noise_finds_truth():
    g = torch.Generator().manual_seed(0)
    mus, ys, sigma, true_perm = make_problems(5, 5, (0.01,), generator=g)
    perms = all_permutations(5)
    post = exact_posterior(mus, ys, sigma, perms)
    assert torch.allclose(post.sum(-1), torch.ones(5))
    assert (perms[post.argmax(-1)] == true_perm).all()


def test_assignment_scores_match_mean_likelihood_on_permutations():
    # on permutation matrices the linear ("assignment") likelihood is the exact one
    g = torch.Generator().manual_seed(1)
    mus, ys, sigma, _ = make_problems(3, 4, (0.3,), generator=g)
    perms = all_permutations(4)
    x = torch.eye(4)[perms]  # (24, 4, 4)
    lin = (x[:, None] * assignment_scores(mus, ys, sigma)).sum((-1, -2))  # (24, 3)
    sq = -0.5 * (ys - x[:, None] @ mus).pow(2).sum((-1, -2)) / sigma**2
    assert torch.allclose(lin, sq)
    # fractional X: the linear form does not reward interpolating between centres
    half = 0.5 * (x[0] + x[1])
    assert ((half * assignment_scores(mus, ys, sigma)).sum((-1, -2)) <= lin[:2].max(0).values).all()


PM = re.compile(r"^(-?\d+(?:\.\d+)?) ± (-?\d+(?:\.\d+)?)(?: \((\d\.\d\d)\))?$")


def summary_rows(out):
    """The Markdown summary table: header cells, and method -> list of parsed cells, each
    ``(mean, sd, decimals, paper)`` or ``None`` for ``-``."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        name, *cells = [c.strip() for c in line.strip("|").split("|")]
        parsed = []
        for cell in cells:
            if cell == "-":
                parsed.append(None)
                continue
            match = PM.match(cell)
            assert match, cell
            decimals = len(match.group(1).partition(".")[2])
            paper = float(match.group(3)) if match.group(3) else None
            parsed.append((float(match.group(1)), float(match.group(2)), decimals, paper))
        rows[name] = parsed
    return header, rows


def test_seeds_option():
    assert parse_args([]).seeds == [0, 1, 2]
    assert parse_args(["--seeds", "5"]).seeds == [5]
    assert "seed" not in vars(parse_args([]))


@pytest.mark.parametrize("likelihood,init", [(None, None), ("mean", "uniform")])
def test_matching_smoke(capsys, likelihood, init):
    args = parse_args(
        "--num-trials 2 --num-steps 3 --num-samples 20 --num-particles 2 --n 4 "
        "--sigmas 0.05 0.5 --seeds 0 1".split()
        + (["--likelihood", likelihood, "--init", init] if likelihood else [])
    )
    out = main(args)
    printed = capsys.readouterr().out
    assert "stick-breaking" in printed and "rounding" in printed
    assert out["seeds"] == [0, 1] and len(out["runs"]) == 2
    methods = {"stick-breaking", "rounding", "gumbel-sinkhorn", "mallows (best)"}
    for run in out["runs"]:
        table = run["table"]
        assert set(table) >= methods
        for row in table.values():
            assert len(row) == 2 and all(0 <= v <= 1 for v in row)
        assert set(run["timings"]) == methods - {"mallows (best)"}
        post = run["posterior"]
        assert post.shape == (4, 24)
        assert torch.allclose(post.sum(-1), torch.ones(4))
        mode = run["perms"][post.argmax(-1)]
        small = run["sigma"] == 0.05
        assert (mode[small] == run["true_perm"][small]).all()
    # the seeds draw different problems
    assert not torch.equal(out["runs"][0]["posterior"], out["runs"][1]["posterior"])

    # the aggregate: mean and sample standard deviation of the per-seed values
    runs = out["runs"]
    for name in methods:
        for i in range(2):
            values = [run["table"][name][i] for run in runs]
            assert out["mean"]["table"][name][i] == pytest.approx(statistics.mean(values))
            assert out["sd"]["table"][name][i] == pytest.approx(statistics.stdev(values))
    for name in methods - {"mallows (best)"}:
        values = [run["timings"][name] for run in runs]
        assert out["mean"]["timings"][name] == pytest.approx(statistics.mean(values))
        assert out["sd"]["timings"][name] == pytest.approx(statistics.stdev(values))
    assert out["seconds"] >= sum(sum(run["timings"].values()) for run in runs)

    # printed: each seed's table, then the Markdown summary with the same numbers
    assert "# seed 0: mean Bhattacharyya distance" in printed
    assert "# seed 1: mean Bhattacharyya distance" in printed
    assert "mean ± sd over 2 seeds (0, 1)" in printed
    header, rows = summary_rows(printed)
    assert header == ["method", "sigma=0.05", "sigma=0.5", "fit s"]
    assert set(rows) == methods
    for name, cells in rows.items():
        for i, cell in enumerate(cells[:2]):
            mean, sd, decimals, paper = cell
            # the paper's value in brackets: it has sigma = 0.5 (its third column), not 0.05
            expected = PAPER_TABLE[name][2] if name in PAPER_TABLE and i == 1 else None
            assert paper == expected
            values = [run["table"][name][i] for run in runs]
            assert abs(mean - statistics.mean(values)) <= 0.5 * 10**-decimals + 1e-12
            assert abs(sd - statistics.stdev(values)) <= 0.5 * 10**-decimals + 1e-12
        if name == "mallows (best)":
            assert cells[2] is None
        else:
            mean, sd, decimals, _ = cells[2]
            values = [run["timings"][name] for run in runs]
            assert abs(mean - statistics.mean(values)) <= 0.5 * 10**-decimals + 1e-12
    assert re.search(r"^# total wall time: \d+\.\d s$", printed, re.M)


def test_matching_single_seed_prints_zero_spread_and_paper(capsys):
    args = parse_args(
        "--num-trials 2 --num-steps 2 --num-samples 10 --num-particles 1 --n 3 "
        "--sigmas 0.1 0.25 --methods rounding --seeds 4".split()
    )
    out = main(args)
    printed = capsys.readouterr().out
    (run,) = out["runs"]
    assert out["mean"]["table"] == run["table"]
    assert all(v == 0 for row in out["sd"]["table"].values() for v in row)
    assert out["sd"]["timings"] == {"rounding": 0}
    assert "# seed 4: " in printed
    _, rows = summary_rows(printed)
    assert set(rows) == {"mallows (best)", "rounding"}
    assert "| rounding | " in printed and " ± 0 (0.06) | " in printed
    for name in rows:
        for i, (mean, sd, _, paper) in enumerate(rows[name][:2]):
            assert sd == 0 and mean == float(f"{run['table'][name][i]:.3f}")
            assert paper == PAPER_TABLE[name][i]
