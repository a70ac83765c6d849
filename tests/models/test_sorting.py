import re
import statistics

import pytest
import torch

from models.sorting import COLUMNS, kendall_tau, main, make_parser
from tests.common import summary_rows


def test_kendall_tau():
    rank = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert kendall_tau(rank, rank).item() == pytest.approx(1.0)
    assert kendall_tau(rank.flip(-1), rank).item() == pytest.approx(-1.0)
    # one adjacent swap: 5 concordant, 1 discordant pair
    swapped = torch.tensor([[1.0, 0.0, 2.0, 3.0]])
    assert kendall_tau(swapped, rank).item() == pytest.approx(4 / 6)


def test_seeds_option():
    parser = make_parser()
    assert parser.parse_args([]).seeds == [0, 1, 2]
    assert parser.parse_args(["--seeds", "4", "7"]).seeds == [4, 7]
    dests = {action.dest for action in parser._actions}
    assert "seeds" in dests and "seed" not in dests


def test_sorting_smoke_two_seeds(capsys):
    # N = 5 is learnt in a few steps; N = 12 is not yet, so the seeds give different numbers
    args = make_parser().parse_args(
        ["--n", "5", "12", "--num-steps", "10", "--num-test", "200", "--threads", "1",
         "--seeds", "0", "1"]
    )
    result = main(args)
    out = capsys.readouterr().out
    assert result["seeds"] == [0, 1]
    assert len(result["runs"]) == 2
    for rows in result["runs"]:
        assert [row["n"] for row in rows] == [5, 12]
        five = rows[0]
        # a random permutation places 1 - 1/5 = 80% of the numbers wrongly, tau ~ 0
        assert 0 <= five["prop_wrong"] < 0.4
        assert 0 <= five["prop_any_wrong"] <= 1
        assert five["kendall_tau"] > 0.6
    metrics = ("prop_wrong", "prop_any_wrong", "kendall_tau")
    assert [result["runs"][0][1][m] for m in metrics] != [result["runs"][1][1][m] for m in metrics]

    # the aggregate: mean and sample standard deviation of the per-seed values
    keys = [key for key, _, _ in COLUMNS]
    assert set(keys) == {"prop_wrong", "prop_any_wrong", "kendall_tau", "seconds"}
    for i, n in enumerate([5, 12]):
        assert result["mean"][i]["n"] == result["sd"][i]["n"] == n
        for key in keys:
            values = [rows[i][key] for rows in result["runs"]]
            assert result["mean"][i][key] == pytest.approx(statistics.mean(values))
            assert result["sd"][i][key] == pytest.approx(statistics.stdev(values))
    assert result["seconds"] >= sum(row["seconds"] for rows in result["runs"] for row in rows)

    # printed: each seed's table, then the Markdown summary with the same numbers
    assert "# seed 0\n" in out and "# seed 1\n" in out
    assert out.index("# seed 1\n") < out.index("# summary: mean ± sd over 2 seeds (0, 1)")
    assert out.count("prop wrong") == 3
    header, rows = summary_rows(out)
    assert header == "| N | prop wrong | prop any wrong | kendall tau | train s |"
    assert list(rows) == ["5", "12"]
    for i, cells in enumerate(rows.values()):
        for key, (mean, sd, decimals) in zip(keys, cells):
            values = [r[i][key] for r in result["runs"]]
            tol = 0.5 * 10**-decimals + 1e-12
            assert abs(mean - statistics.mean(values)) <= tol
            assert abs(sd - statistics.stdev(values)) <= tol
    assert re.search(r"^# total wall time: \d+\.\d s$", out, re.M)


def test_sorting_single_seed_prints_zero_spread(capsys):
    args = make_parser().parse_args(
        ["--n", "5", "--num-steps", "3", "--num-test", "20", "--seeds", "3"]
    )
    result = main(args)
    out = capsys.readouterr().out
    assert result["seeds"] == [3] and len(result["runs"]) == 1
    (row,) = result["runs"][0]
    assert result["mean"][0] == row
    assert all(result["sd"][0][key] == 0 for key, _, _ in COLUMNS)
    assert "# seed 3\n" in out
    _, rows = summary_rows(out)
    cells = [line for line in out.splitlines() if line.startswith("| 5 |")][0].split("|")[2:-1]
    assert all(cell.strip().endswith(" ± 0") for cell in cells)
    assert [mean for mean, _, _ in rows["5"]] == [
        float(f"{row[key]:{spec}}") for key, _, spec in COLUMNS
    ]
