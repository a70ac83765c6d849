import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch.distributions import biject_to, transform_to

from pyro_relax.distributions import (
    BirkhoffRounding,
    BirkhoffStickBreaking,
    BirkhoffStickBreakingTransform,
    doubly_stochastic,
)
from pyro_relax.ops import log_sinkhorn, matching


def assert_doubly_stochastic(x, atol=1e-4):
    assert (x >= -atol).all()
    assert torch.allclose(x.sum(-1), torch.ones_like(x.sum(-1)), atol=atol)
    assert torch.allclose(x.sum(-2), torch.ones_like(x.sum(-2)), atol=atol)


# ---- constraint ------------------------------------------------------------------------


def test_constraint_check():
    perm = torch.eye(3)[[2, 0, 1]]
    bary = torch.full((3, 3), 1 / 3)
    bad_rows = torch.tensor([[0.5, 0.5], [0.6, 0.6]])
    negative = torch.tensor([[1.5, -0.5], [-0.5, 1.5]])
    assert doubly_stochastic.check(perm)
    assert doubly_stochastic.check(bary)
    assert not doubly_stochastic.check(bad_rows)
    assert not doubly_stochastic.check(negative)
    assert not doubly_stochastic.check(torch.ones(2, 3) / 3)
    batched = doubly_stochastic.check(torch.stack([perm, bary]))
    assert batched.shape == (2,) and batched.all()
    assert doubly_stochastic.event_dim == 2


def test_biject_to_doubly_stochastic():
    t = biject_to(doubly_stochastic)
    assert isinstance(t, BirkhoffStickBreakingTransform)
    assert isinstance(transform_to(doubly_stochastic), BirkhoffStickBreakingTransform)
    z = torch.randn(7, 16)
    x = t(z)
    assert x.shape == (7, 5, 5)
    assert_doubly_stochastic(x, 1e-10)
    assert torch.allclose(t.inv(x), z, atol=1e-8)
    # a constrained pyro.param round-trips through the bijection
    init = torch.full((4, 4), 0.25)
    p = pyro.param("p", init, constraint=doubly_stochastic)
    assert torch.allclose(p, init, atol=1e-10)


# ---- stick-breaking transform ----------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
@pytest.mark.parametrize("centered", [True, False])
def test_log_abs_det_jacobian_matches_autograd(n, temperature, centered):
    t = BirkhoffStickBreakingTransform(n, temperature, centered)
    z = 2.0 * torch.randn(4, (n - 1) ** 2)
    y = t(z)
    ldj = t.log_abs_det_jacobian(z, y)
    t._ldj_cache = None  # also the vectorized path from the output
    ldj_from_y = t.log_abs_det_jacobian(z, y)
    for b in range(z.size(0)):
        jac = torch.autograd.functional.jacobian(
            lambda v: t(v)[:-1, :-1].reshape(-1), z[b]
        )
        expected = torch.linalg.slogdet(jac).logabsdet
        assert torch.allclose(ldj[b], expected, atol=1e-8)
        assert torch.allclose(ldj_from_y[b], expected, atol=1e-8)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_transform_inverts_and_is_doubly_stochastic(n):
    t = BirkhoffStickBreakingTransform(n, temperature=0.5)
    z = 3.0 * torch.randn(2, 5, (n - 1) ** 2)
    y = t(z)
    assert y.shape == (2, 5, n, n)
    assert_doubly_stochastic(y, 1e-10)
    assert (y > 0).all()
    assert torch.allclose(t.inv(y), z, atol=1e-8)
    # y -> x -> y too, on a random interior point (a Sinkhorn-normalized matrix)
    m = torch.rand(3, n, n) + 0.1
    for _ in range(200):
        m = m / m.sum(-1, keepdim=True)
        m = m / m.sum(-2, keepdim=True)
    assert torch.allclose(t(t.inv(m)), m, atol=1e-10)


def test_centered_zero_is_barycentre():
    for n in [2, 4, 7]:
        y = BirkhoffStickBreakingTransform(n)(torch.zeros((n - 1) ** 2))
        assert torch.allclose(y, torch.full((n, n), 1.0 / n), atol=1e-12)
    # the paper's uncentered map sends 0 to the standard stick-breaking halves
    y = BirkhoffStickBreakingTransform(3, centered=False)(torch.zeros(4))
    assert torch.allclose(y[0], torch.tensor([0.5, 0.25, 0.25]))


def test_low_temperature_concentrates_on_permutations():
    t = BirkhoffStickBreakingTransform(5, temperature=1e-3)
    y = t(torch.randn(100, 16))
    assert_doubly_stochastic(y)
    close = ((y - matching(y)).abs() < 1e-2).all(-1).all(-1)
    assert close.double().mean() > 0.95  # the rest have some |z| ~ temperature


@pytest.mark.parametrize(
    "n, dtype, scale, temperature",
    [
        (100, torch.float64, 3.0, 1.0),
        (100, torch.float64, 1.0, 0.1),
        (20, torch.float32, 3.0, 1.0),
        (20, torch.float32, 1.0, 0.1),
    ],
)
def test_log_det_finite_for_large_n(n, dtype, scale, temperature):
    # Naively (u - l from 1 - sum x) this is -inf for most samples at these sizes.
    t = BirkhoffStickBreakingTransform(n, temperature, centered=False)
    z = (scale * torch.randn(8, (n - 1) ** 2)).to(dtype)
    y = t(z)
    ldj = t.log_abs_det_jacobian(z, y)
    assert ldj.dtype == dtype
    assert torch.isfinite(ldj).all()
    assert_doubly_stochastic(y.double(), 1e-4)


def test_transform_gradients_flow():
    z = torch.randn(3, 9, requires_grad=True)
    t = BirkhoffStickBreakingTransform(4, temperature=0.5)
    y = t(z)
    loss = (y * torch.randn(4, 4)).sum() + t.log_abs_det_jacobian(z, y).sum()
    loss.backward()
    assert torch.isfinite(z.grad).all() and (z.grad != 0).any()


def test_transform_bad_input():
    with pytest.raises(ValueError, match="x"):
        BirkhoffStickBreakingTransform(4)(torch.randn(8))
    with pytest.raises(ValueError, match="x"):
        BirkhoffStickBreakingTransform()(torch.randn(8))  # 8 is not (N-1)**2
    with pytest.raises(ValueError, match="temperature"):
        BirkhoffStickBreakingTransform(3, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        BirkhoffStickBreakingTransform(3, temperature=-1.0)
    with pytest.raises(ValueError, match="n"):
        BirkhoffStickBreakingTransform(1)
    with pytest.raises(ValueError, match="x contains NaN"):
        BirkhoffStickBreakingTransform(3)(torch.tensor([0.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="y"):
        BirkhoffStickBreakingTransform(3).inv(torch.ones(3, 2) / 2)


# ---- stick-breaking distribution -------------------------------------------------------


def test_stick_breaking_distribution_shapes_and_log_prob():
    loc = torch.randn(5, 9)
    d = BirkhoffStickBreaking(loc, 0.5, temperature=0.7)
    assert d.batch_shape == (5,) and d.event_shape == (4, 4)
    x = d.rsample((3,))
    assert x.shape == (3, 5, 4, 4)
    assert_doubly_stochastic(x, 1e-10)
    lp = d.log_prob(x)
    assert lp.shape == (3, 5) and torch.isfinite(lp).all()
    # change of variables, recomputed by hand from the base sample
    t = d.transforms[0]
    z = t.inv(x.clone())  # a fresh tensor: no cache
    expected = dist.Normal(loc, 0.5).log_prob(z).sum(-1) - t.log_abs_det_jacobian(z, x.clone())
    assert torch.allclose(lp, expected, atol=1e-8)
    e = d.expand((2, 5))
    assert e.batch_shape == (2, 5) and e.sample().shape == (2, 5, 4, 4)


def test_stick_breaking_log_prob_normalized_n2():
    # N = 2 is one free coordinate: integrate the density over x_00 in (0, 1).
    d = BirkhoffStickBreaking(torch.tensor([0.3]), torch.tensor([0.8]), temperature=0.5)
    grid = torch.linspace(1e-6, 1 - 1e-6, 20001)
    x = torch.stack([torch.stack([grid, 1 - grid], -1), torch.stack([1 - grid, grid], -1)], -2)
    dens = d.log_prob(x).exp()
    assert abs(torch.trapezoid(dens, grid).item() - 1) < 1e-4


def test_stick_breaking_bad_args():
    with pytest.raises(ValueError, match="loc"):
        BirkhoffStickBreaking(torch.randn(8), 1.0)
    with pytest.raises(ValueError, match="loc"):
        BirkhoffStickBreaking(torch.randn(9), 1.0, n=3)
    with pytest.raises(ValueError, match="loc contains NaN"):
        BirkhoffStickBreaking(torch.full((4,), float("nan")), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        BirkhoffStickBreaking(torch.randn(4), 1.0, temperature=0)


def test_stick_breaking_svi_with_plate():
    target = torch.eye(3)[[1, 2, 0]]

    def model():
        with pyro.plate("items", 2):
            x = pyro.sample("x", dist.ImproperUniform(doubly_stochastic, (2,), (3, 3)))
            pyro.sample("obs", dist.Normal(x, 0.1).to_event(2), obs=target.expand(2, 3, 3))

    def guide():
        loc = pyro.param("loc", torch.zeros(2, 4))
        scale = pyro.param("scale", torch.full((2, 4), 0.5), constraint=dist.constraints.positive)
        with pyro.plate("items", 2):
            pyro.sample("x", BirkhoffStickBreaking(loc, scale, temperature=0.5))

    svi = SVI(model, guide, Adam({"lr": 0.1}), Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1))
    first = svi.step()
    for _ in range(150):
        last = svi.step()
    assert last < first
    x = BirkhoffStickBreaking(pyro.param("loc"), pyro.param("scale"), temperature=0.5).sample()
    assert (matching(x) == target).all()


# ---- rounding --------------------------------------------------------------------------


def test_rounding_shapes_and_support():
    loc = torch.full((4, 3, 3), 1 / 3)
    d = BirkhoffRounding(loc, 0.4, temperature=0.3)
    assert d.batch_shape == (4,) and d.event_shape == (3, 3)
    x = d.rsample((2,))
    assert x.shape == (2, 4, 3, 3)
    # x is within tau * |psi - P| of its rounding, and round(x) == round(psi)
    lp = d.log_prob(x)
    lp_fresh = d.log_prob(x.clone())  # no cache: recomputes the matching and the check
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp, lp_fresh)
    # the barycentre is in the "hole" for tau < 1
    assert d.log_prob(loc) .eq(-math.inf).all()
    assert d.expand((5, 4)).sample().shape == (5, 4, 3, 3)


def test_rounding_log_prob_matches_gaussian_change_of_variables():
    loc = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    scale = torch.tensor([[0.3, 0.2], [0.25, 0.35]])
    tau = 0.4
    d = BirkhoffRounding(loc, scale, tau)
    psi = loc + scale * torch.randn(1000, 2, 2)
    perm = matching(psi)
    x = tau * psi + (1 - tau) * perm
    expected = dist.Normal(loc, scale).log_prob(psi).sum((-1, -2)) - 4 * math.log(tau)
    assert torch.allclose(d.log_prob(x), expected, atol=1e-10)


def test_rounding_density_normalized_by_importance_sampling():
    # E_g[q(X) / g(X)] = 1 and self-normalized E_g[X q / g] = E_q[X], wide proposal g.
    loc = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    d = BirkhoffRounding(loc, 0.3, temperature=0.5)
    g = dist.Normal(torch.full((2, 2), 0.5), 0.6).to_event(2)
    x = g.sample((40000,))
    w = (d.log_prob(x) - g.log_prob(x)).exp()
    se = w.std() / math.sqrt(w.numel())
    assert abs(w.mean().item() - 1) < 4 * se.item() + 1e-3
    mean_is = (w[:, None, None] * x).sum(0) / w.sum()
    mean_q = d.sample((40000,)).mean(0)
    assert torch.allclose(mean_is, mean_q, atol=0.03)


def test_rounding_gradients_flow():
    logits = torch.randn(3, 3, requires_grad=True)
    scale = torch.full((3, 3), 0.3, requires_grad=True)
    d = BirkhoffRounding(logits.softmax(-1), scale, temperature=0.5)
    x = d.rsample((5,))
    loss = (x * torch.randn(3, 3)).sum() - d.log_prob(x).sum()
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad != 0).any()
    assert torch.isfinite(scale.grad).all() and (scale.grad != 0).any()


def test_rounding_bad_args():
    with pytest.raises(ValueError, match="loc"):
        BirkhoffRounding(torch.rand(3, 4), 0.3)
    with pytest.raises(ValueError, match="loc contains NaN"):
        BirkhoffRounding(torch.full((3, 3), float("nan")), 0.3)
    with pytest.raises(ValueError, match="temperature"):
        BirkhoffRounding(torch.rand(3, 3), 0.3, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        BirkhoffRounding(torch.rand(3, 3), 0.3, temperature=1.5)
    with pytest.raises(ValueError, match="value"):
        BirkhoffRounding(torch.rand(3, 3), 0.3).log_prob(torch.full((3, 3), float("nan")))


def test_rounding_svi_with_plate():
    target = torch.eye(3)[[2, 0, 1]]

    def model():
        with pyro.plate("items", 2):
            x = pyro.sample("x", dist.Normal(torch.full((3, 3), 1 / 3), 1.0).to_event(2))
            pyro.sample("obs", dist.Normal(x, 0.1).to_event(2), obs=target.expand(2, 3, 3))

    def guide():
        free = pyro.param("free", torch.zeros(2, 3, 3))
        scale = pyro.param("scale", torch.full((2, 3, 3), 0.3), constraint=dist.constraints.positive)
        with pyro.plate("items", 2):
            pyro.sample("x", BirkhoffRounding(log_sinkhorn(free, 10).exp(), scale, temperature=0.5))

    svi = SVI(model, guide, Adam({"lr": 0.1}), Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1))
    first = sum(svi.step() for _ in range(10)) / 10
    for _ in range(150):
        svi.step()
    last = sum(svi.step() for _ in range(10)) / 10
    assert last < first
    loc = log_sinkhorn(pyro.param("free"), 10).exp()
    assert (matching(loc.log()) == target).all()
