"""The toy problems: their closed-form gradients, and ARSM tracking exact gradient ascent."""

import pyro
import pytest
import torch

from models import toys
from tests.infer.exact import exact_grads

def test_bernoulli_toy_exact_gradient_matches_enumeration():
    model, guide = toys.bernoulli_toy(0.499)
    guide()
    grads = exact_grads(model, guide)
    assert grads["theta"].item() == pytest.approx(0.25 * (1 - 2 * 0.499), rel=1e-12)
    assert toys.bernoulli_exact_grad(0.0).item() == pytest.approx(0.25 * (1 - 2 * 0.499), rel=1e-12)

def test_categorical_toy_exact_gradient_matches_enumeration():
    model, guide = toys.categorical_toy(num_categories=5, R=5)
    guide()
    with torch.no_grad():
        pyro.param("phi").unconstrained().copy_(torch.tensor([0.3, -0.2, 0.1, 0.5, -1.0]))
    grads = exact_grads(model, guide)
    expected = -toys.categorical_exact_grad(pyro.param("phi").detach(), R=5)  # loss = -E[f]
    assert torch.allclose(grads["phi"], expected, rtol=1e-10, atol=1e-14)

def test_arsm_tracks_exact_ascent_on_the_categorical_toy():
    """After 400 steps of SGD with step 1, ARSM's probability of the best category is within
    10% of exact ascent's movement away from uniform; single-sample REINFORCE is not."""
    steps = 400
    exact, _ = toys.train_categorical("exact", steps, seed=0)
    arsm, _ = toys.train_categorical("arsm", steps, seed=0)
    reinforce, _ = toys.train_categorical("reinforce", steps, seed=0)
    moved = exact - 1.0 / 30
    assert moved > 0.005
    assert abs(arsm - exact) < 0.1 * moved, (arsm, exact)
    assert abs(reinforce - exact) > 0.1 * moved, (reinforce, exact)

def test_cli_main_runs():
    args = toys.make_parser().parse_args(
        ["bernoulli", "categorical", "--num-samples", "50", "--num-steps", "20", "--seeds", "0",
         "--estimators", "exact", "arsm", "reinforce"]
    )
    results = toys.main(args)
    assert set(results) == {"exact", "arsm", "reinforce"}
    assert all(0.0 < p[0] < 1.0 for p in results.values())


def test_relax_toy_runs_and_writes_its_figure(tmp_path):
    args = toys.make_parser().parse_args(
        ["relax", "--relax-steps", "30", "--variance-every", "15", "--variance-draws", "20",
         "--seeds", "0", "1", "--out", str(tmp_path)]
    )
    toys.main(args)
    assert (tmp_path / "relax_toy.png").stat().st_size > 10000


def test_relax_reduces_the_toy_gradient_variance_by_orders_of_magnitude():
    """After 300 Adam steps RELAX's gradient variance on the toy is far below REINFORCE's (the
    full 1000-step comparison is in the README)."""
    _, reinforce = toys.train_bernoulli_toy("reinforce", 300, seed=0, checkpoints=(300,),
                                            variance_draws=200)
    _, relax = toys.train_bernoulli_toy("relax", 300, seed=0, checkpoints=(300,),
                                        variance_draws=200)
    assert relax[300] < 1e-2 * reinforce[300], (relax, reinforce)


def test_default_problems_are_the_quick_toys():
    args = toys.make_parser().parse_args(
        ["--num-samples", "20", "--num-steps", "5", "--seeds", "0", "--estimators", "exact", "arsm"]
    )
    assert args.problems == []
    results = toys.main(args)
    assert args.problems == ["bernoulli", "categorical"] and set(results) == {"exact", "arsm"}
    with pytest.raises(SystemExit, match="unknown problem"):
        toys.main(toys.make_parser().parse_args(["relaxed"]))


def test_family_runs_prints_its_table_and_writes_its_figure(tmp_path, capsys):
    """The ``family`` problem, tiny: every estimator's row (rloo:auto expanded to the rounded
    evaluation counts of the others), the ARSM+ / ARSM line and the figure."""
    args = toys.make_parser().parse_args(
        ["family", "--num-steps", "12", "--record-every", "4", "--family-draws", "12",
         "--family-categories", "5", "--seeds", "0", "1", "--out", str(tmp_path)]
    )
    result = toys.main(args)["family"]
    out = capsys.readouterr().out
    assert (tmp_path / "categorical_family.png").stat().st_size > 10000
    assert (tmp_path / "categorical_family.json").stat().st_size > 0
    lines = result["table"].splitlines()
    assert lines[0].startswith("| C | estimator | ELBO | evals/step | Σ Var at φ = 0 |")
    assert result["table"] in out and "ARSM+ vs ARSM at phi = 0" in out
    labels = [line.split(" | ")[1] for line in lines[2:]]
    assert labels[:11] == [
        "exact gradient ascent", "AR", "ARS", "ARSM", "ARS+", "ARSM+", "DisARM-IW", "DisARM-SB",
        "DisARM-Tree", "DisARM-Tree (m=4)", "REINFORCE"]
    rows = {row["label"]: row for row in result["rows"][5]}
    assert rows["AR"]["evals"] == 1.0 and rows["ARSM"]["evals"] == 5.0  # 1 + C - 1 swaps at phi = 0
    assert rows["DisARM-IW"]["evals"] == 2.0 and rows["REINFORCE"]["evals"] == 1
    rloo = [label for label in labels if label.startswith("RLOO")]
    assert "RLOO (S=2)" in rloo and "RLOO (S=5)" in rloo, rloo  # DisARM's 2, ARSM's 5
    for row in result["rows"][5]:
        assert len(row["p"]) == 2 and len(row["p"][0]) == 1 + 3  # step 0 and every 4 steps
        assert all(0.0 < p < 1.0 for run in row["p"] for p in run)
    assert rows["exact gradient ascent"]["var_sum"] == 0.0
    assert rows["ARSM"]["var_sum"] < rows["AR"]["var_sum"]


def test_family_estimator_names():
    assert toys.family_spec("disarm-tree:3")["code"] == (
        "ARSM_ELBO(categorical='disarm-tree', num_pairs=3)")
    assert toys.family_spec("rloo:7")["make"]().num_particles == 7
    for bad in ("arsm:2", "rloo:1", "disarm-iw:0", "loo"):
        with pytest.raises(ValueError, match="unknown family estimator"):
            toys.family_spec(bad)
    with pytest.raises(SystemExit):
        toys.make_parser().parse_args(["family", "--family-estimators", "arsm:2"])
