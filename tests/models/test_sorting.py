import pytest
import torch

from models.sorting import kendall_tau, main, make_parser


def test_kendall_tau():
    rank = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert kendall_tau(rank, rank).item() == pytest.approx(1.0)
    assert kendall_tau(rank.flip(-1), rank).item() == pytest.approx(-1.0)
    # one adjacent swap: 5 concordant, 1 discordant pair
    swapped = torch.tensor([[1.0, 0.0, 2.0, 3.0]])
    assert kendall_tau(swapped, rank).item() == pytest.approx(4 / 6)


def test_sorting_smoke(capsys):
    args = make_parser().parse_args(
        ["--n", "5", "--num-steps", "60", "--num-test", "200", "--threads", "1"]
    )
    (row,) = main(args)
    # a random permutation places 1 - 1/5 = 80% of the numbers wrongly, tau ~ 0
    assert row["n"] == 5
    assert 0 <= row["prop_wrong"] < 0.4
    assert 0 <= row["prop_any_wrong"] <= 1
    assert row["kendall_tau"] > 0.6
    assert "prop wrong" in capsys.readouterr().out
