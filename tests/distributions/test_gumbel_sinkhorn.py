import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam
from scipy.optimize import linear_sum_assignment
from torch.distributions import kl_divergence

from pyro_relax.distributions import GumbelSinkhorn, gumbel_sinkhorn_kl
from pyro_relax.ops import MASK_VALUE, matching
from tests.common import is_permutation


@pytest.mark.parametrize("sample_shape", [(), (5,)])
def test_shapes_and_doubly_stochastic(sample_shape):
    d = GumbelSinkhorn(torch.randn(3, 1, 4, 4), torch.tensor([0.5, 1.0]), num_iters=300)
    assert d.batch_shape == (3, 2) and d.event_shape == (4, 4)
    x = d.rsample(sample_shape)
    assert x.shape == sample_shape + (3, 2, 4, 4)
    assert (x.sum(-1) - 1).abs().max() < 1e-4
    assert (x.sum(-2) - 1).abs().max() < 1e-4
    assert d.log_prob(x).shape == sample_shape + (3, 2)


def test_hard_is_scipy_matching_with_relaxed_gradient():
    log_alpha = torch.randn(4, 6, 6, requires_grad=True)
    pyro.set_rng_seed(1)
    hard = GumbelSinkhorn(log_alpha, 0.5, hard=True).rsample()
    pyro.set_rng_seed(1)
    soft = GumbelSinkhorn(log_alpha, 0.5).rsample()
    assert torch.equal(hard._perturbed, soft._perturbed)
    assert is_permutation(hard)
    for b in range(4):
        scores = hard._perturbed[b].detach().numpy()
        _, cols = linear_sum_assignment(scores, maximize=True)
        assert torch.equal(hard[b].argmax(-1), torch.from_numpy(cols))
    w = torch.randn(4, 6, 6)
    (g_hard,) = torch.autograd.grad((hard * w).sum(), log_alpha)
    (g_soft,) = torch.autograd.grad((soft * w).sum(), log_alpha)
    assert torch.allclose(g_hard, g_soft) and g_soft.abs().sum() > 0


def test_float32_low_temperature_large_n_finite():
    log_alpha = torch.randn(200, 200, dtype=torch.float32, requires_grad=True)
    d = GumbelSinkhorn(log_alpha, 0.01)
    for hard in (False, True):
        d.hard = hard
        x = d.rsample()
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert torch.isfinite(d.log_prob(x))
        (g,) = torch.autograd.grad((x * torch.rand_like(x)).sum(), log_alpha)
        assert torch.isfinite(g).all()


def test_gradients_flow_to_parameters():
    log_alpha = torch.randn(2, 5, 5, requires_grad=True)
    tau = torch.tensor(0.7, requires_grad=True)
    x = GumbelSinkhorn(log_alpha, tau, num_iters=10).rsample()
    (x * torch.randn(2, 5, 5)).sum().backward()
    for g in (log_alpha.grad, tau.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_masking_no_nan():
    diagonal = torch.eye(5, dtype=torch.bool)
    log_alpha = torch.randn(5, 5).masked_fill(diagonal, MASK_VALUE)
    log_alpha[0, :] = MASK_VALUE  # a fully masked row
    d = GumbelSinkhorn(log_alpha.requires_grad_(), 0.1, hard=True)
    x = d.rsample((10,))
    assert not torch.isnan(x).any()
    # the derangement constraint is kept on every row that has allowed entries
    assert x.detach().diagonal(dim1=-2, dim2=-1)[:, 1:].sum() == 0
    x.sum().backward()
    assert not torch.isnan(log_alpha.grad).any()


def test_expand():
    d = GumbelSinkhorn(torch.randn(4, 4), 0.5, num_iters=7, hard=True)
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and e.num_iters == 7 and e.hard
    assert e.rsample().shape == (3, 2, 4, 4)
    assert torch.allclose(kl_divergence(e, d), torch.zeros(3, 2))


@pytest.mark.parametrize(
    "tau_q, tau_p, loc_p",
    [(1.0, 1.0, 0.0), (0.5, 2.0, 0.0), (2.0, 0.7, 0.3), ([0.3, 1.0, 3.0], 1.0, -0.2)],
)
def test_kl_matches_monte_carlo(tau_q, tau_p, loc_p):
    tau_q = torch.tensor(tau_q)
    # num_iters does not enter the density of the perturbed matrix: keep it cheap
    q = GumbelSinkhorn(torch.randn(tau_q.shape + (3, 3)), tau_q, num_iters=1)
    p = GumbelSinkhorn(torch.full((3, 3), loc_p), tau_p, num_iters=1)
    kl = kl_divergence(q, p)
    assert kl.shape == q.batch_shape and (kl >= 0).all()
    num_samples = 20000
    x = q.rsample((num_samples,))
    diff = q.log_prob(x) - p.log_prob(x)
    mean, se = diff.mean(0), diff.std(0) / num_samples**0.5
    assert ((mean - kl).abs() < 4 * se).all(), (mean, kl, se)


def test_kl_zero_and_entropy():
    q = GumbelSinkhorn(torch.randn(2, 4, 4), torch.tensor([0.5, 2.0]), num_iters=1)
    assert torch.allclose(gumbel_sinkhorn_kl(q, q), torch.zeros(2), atol=1e-10)
    x = q.rsample((20000,))
    neg = -q.log_prob(x)
    se = neg.std(0) / 20000**0.5
    assert ((neg.mean(0) - q.entropy()).abs() < 4 * se).all()


def test_log_prob_needs_perturbed():
    d = GumbelSinkhorn(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="_perturbed"):
        d.log_prob(torch.eye(3))


@pytest.mark.parametrize(
    "log_alpha, temperature, match",
    [
        (torch.zeros(3, 4), 1.0, "log_alpha"),
        (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), 1.0, "log_alpha"),
        (torch.zeros(3, 3), 0.0, "temperature"),
        (torch.zeros(3, 3), -1.0, "temperature"),
        (torch.zeros(2, 3, 3), torch.tensor([1.0, -0.5]), "temperature"),
    ],
)
def test_errors(log_alpha, temperature, match):
    with pytest.raises(ValueError, match=match):
        GumbelSinkhorn(log_alpha, temperature)


def _model(x, y, tau0):
    n = x.size(-1)
    with pyro.plate("data", x.size(0)):
        prior = GumbelSinkhorn(x.new_zeros(n, n), tau0, num_iters=10)
        perm = pyro.sample("perm", prior)
        mean = (perm.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1)
        pyro.sample("y", dist.Normal(mean, 0.05).to_event(1), obs=y)


def _guide(x, y, tau0):
    n = x.size(-1)
    log_alpha = pyro.param("log_alpha", x.new_zeros(x.size(0), n, n))
    with pyro.plate("data", x.size(0)):
        pyro.sample("perm", GumbelSinkhorn(log_alpha, 0.5, num_iters=10))


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_svi_in_plate_lowers_loss(elbo_class):
    x = torch.rand(3, 4)
    y = x.sort(-1).values
    elbo = elbo_class(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(_model, _guide, Adam({"lr": 0.1}), elbo)
    losses = [svi.step(x, y, 1.0) for _ in range(150)]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.8 * first
    # the learned guide sorts: the matching of log_alpha maps the inputs to y
    perm = matching(pyro.param("log_alpha").detach())
    assert torch.allclose((perm.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1), y)


def test_trace_elbo_estimates_closed_form_kl():
    # with no observations the negative ELBO is the KL: Trace_ELBO's Monte-Carlo
    # estimate agrees with TraceMeanField_ELBO's closed form
    log_alpha = torch.randn(2, 3, 3)

    def model():
        with pyro.plate("p", 2):
            pyro.sample("perm", GumbelSinkhorn(torch.zeros(3, 3), 1.5, num_iters=1))

    def guide():
        with pyro.plate("p", 2):
            pyro.sample("perm", GumbelSinkhorn(log_alpha, 0.5, num_iters=1))

    q, p = GumbelSinkhorn(log_alpha, 0.5), GumbelSinkhorn(torch.zeros(3, 3), 1.5)
    exact = TraceMeanField_ELBO().loss(model, guide)
    assert exact == pytest.approx(gumbel_sinkhorn_kl(q, p).sum().item())
    num_particles = 4000
    elbo = Trace_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    )
    estimate = elbo.loss(model, guide)
    x = q.rsample((num_particles,))
    se = (q.log_prob(x) - p.log_prob(x)).sum(-1).std() / num_particles**0.5
    assert abs(estimate - exact) < 4 * se
