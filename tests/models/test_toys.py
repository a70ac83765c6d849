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
