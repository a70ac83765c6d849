"""The ELBOs as a Pyro user meets them: in SVI, through differentiable_loss and ELBOModule,
and reducing to Trace_ELBO when the guide has no discrete site."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch.distributions import constraints

from pyro_relax.infer import make_elbo

from . import cases
from .exact import init_params, param_leaves

ELBOS = {
    "loo": lambda: make_elbo("rloo", num_particles=4, vectorize_particles=True),
    "vargrad": lambda: make_elbo("vargrad", num_particles=4, vectorize_particles=True),
    "arm": lambda: make_elbo("arm", num_particles=2, vectorize_particles=True),
    "disarm": lambda: make_elbo("disarm"),
    # "neural": the control variate that also takes Categorical (index) sites
    "relax": lambda: make_elbo("relax-neural", num_particles=2, vectorize_particles=True),
}


def _tiny_vae(data):
    """A Bernoulli-latent autoencoder with nn.Module encoder/decoder registered by pyro.module."""
    encoder = torch.nn.Linear(4, 3)
    decoder = torch.nn.Linear(3, 4)

    def model(data):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=data)

    def guide(data):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Bernoulli(logits=encoder(data)).to_event(1))

    return model, guide, encoder


@pytest.mark.parametrize("name", sorted(ELBOS))
def test_svi_trains_a_user_model(name):
    data = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).repeat(8, 1)
    model, guide, encoder = _tiny_vae(data)
    before = encoder.weight.detach().clone()
    svi = SVI(model, guide, Adam({"lr": 0.05}), loss=ELBOS[name]())
    losses = [svi.step(data) for _ in range(150)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, encoder.weight.detach()), "pyro.module params not stepped"
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 2.0, (first, last)
    assert "encoder$$$weight" in pyro.get_param_store()


@pytest.mark.parametrize("name", sorted(ELBOS))
@pytest.mark.parametrize("case", ["plate_bernoulli", "mixed", "two_sites"])
def test_differentiable_loss_matches_loss_and_grads(name, case):
    model, guide, args = cases.ALL[case]()
    init_params(model, guide, *args)
    params = param_leaves()
    elbo = ELBOS[name]()
    elbo.loss_and_grads(model, guide, *args)  # warm up: guesses max_plate_nesting, checks guide
    for p in params.values():
        p.grad = None

    pyro.set_rng_seed(7)
    loss = elbo.loss_and_grads(model, guide, *args)
    grads = {k: p.grad.clone() for k, p in params.items()}

    pyro.set_rng_seed(7)
    value = elbo.differentiable_loss(model, guide, *args)
    auto = torch.autograd.grad(value, list(params.values()))
    assert value.item() == pytest.approx(loss, rel=1e-12, abs=1e-12)
    for (k, g), a in zip(grads.items(), auto):
        assert torch.allclose(g, a, rtol=1e-10, atol=1e-12), k


def test_elbo_module_interface():
    model, guide, args = cases.plate_bernoulli()
    init_params(model, guide, *args)
    module = make_elbo("rloo", num_particles=2)(model, guide)
    loss = module(*args)
    assert loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None for p in param_leaves().values())


def _continuous_case():
    def model(x):
        loc = pyro.param("prior_loc", torch.tensor(0.3))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        m = pyro.param("m", torch.zeros(len(x)))
        s = pyro.param("s", torch.ones(len(x)), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(m, s))

    return model, guide, (torch.tensor([0.1, -1.0, 2.0]),)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: make_elbo("rloo", num_particles=2), lambda: make_elbo("trace", num_particles=2)),
        (lambda: make_elbo("arm"), lambda: make_elbo("trace")),
        (
            lambda: make_elbo("arsm", num_particles=3, vectorize_particles=True, max_plate_nesting=1),
            lambda: make_elbo("trace", num_particles=3, vectorize_particles=True, max_plate_nesting=1),
        ),
    ],
    ids=["loo", "arsm", "arsm-vectorized"],
)
def test_no_discrete_site_reduces_to_trace_elbo(ours, theirs):
    model, guide, args = _continuous_case()
    init_params(model, guide, *args)
    params = param_leaves()
    results = []
    for make in (ours, theirs):
        for p in params.values():
            p.grad = None
        pyro.set_rng_seed(3)
        loss = make().loss_and_grads(model, guide, *args)
        results.append((loss, {k: p.grad.clone() for k, p in params.items()}))
    (l1, g1), (l2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-10, atol=1e-12), k


def test_vargrad_is_the_gradient_of_half_the_log_ratio_variance():
    """Without plates or scaling, VarGrad's guide gradient is exactly the gradient of
    0.5 * sample-variance(log q - log p) at the same samples, and the model gradient is
    -mean grad log p."""
    model, guide, args = cases.vector_bernoulli()
    init_params(model, guide)
    params = param_leaves()
    num_particles = 5

    pyro.set_rng_seed(11)
    make_elbo("vargrad", num_particles=num_particles).loss_and_grads(model, guide)
    ours = {k: p.grad.clone() for k, p in params.items()}

    pyro.set_rng_seed(11)
    log_ratio, log_p = [], []
    for _ in range(num_particles):
        with torch.no_grad():
            sample = poutine.trace(guide).get_trace()
        q = poutine.trace(poutine.replay(guide, trace=sample)).get_trace()
        p = poutine.trace(poutine.replay(model, trace=sample)).get_trace()
        log_ratio.append(q.log_prob_sum() - p.log_prob_sum().detach())
        log_p.append(p.log_prob_sum())
    half_var = 0.5 * torch.stack(log_ratio).var()
    neg_mean_log_p = -torch.stack(log_p).mean()
    (g_logits,) = torch.autograd.grad(half_var, [params["logits"]])
    (g_loc,) = torch.autograd.grad(neg_mean_log_p, [params["loc"]])
    assert torch.allclose(ours["logits"], g_logits, rtol=1e-10)
    assert torch.allclose(ours["loc"], g_loc, rtol=1e-10)


def test_loss_is_negative_elbo_estimate():
    """``loss`` averages log q - log p over particles; with a point-mass-like guide it is exact."""
    model, guide, args = cases.categorical()
    init_params(model, guide)
    with torch.no_grad():
        pyro.param("phi").unconstrained().copy_(torch.tensor([40.0, 0.0, 0.0, 0.0, 0.0]))
    mu0 = pyro.param("mu")[0].item()
    expected = -(
        torch.log(torch.tensor(0.1)) + dist.Normal(mu0, 1.0).log_prob(torch.tensor(0.8))
    ).item()
    for elbo in [make_elbo("rloo", num_particles=3), make_elbo("vargrad", num_particles=2), make_elbo("arsm")]:
        assert elbo.loss(model, guide) == pytest.approx(expected, abs=1e-6)
        assert elbo.loss_and_grads(model, guide) == pytest.approx(expected, abs=1e-6)


def _subsample_size_case():
    data = torch.tensor([0.5, -1.0, 2.0, 1.0, 0.3, -0.7])

    def model(data):
        w = pyro.param("w", torch.tensor(1.2))
        with pyro.plate("data", len(data), subsample_size=3) as i:
            z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(z * w, 1.0), obs=data[i])

    def guide(data):
        enc = pyro.param("enc", torch.zeros(len(data), 3))
        with pyro.plate("data", len(data), subsample_size=3) as i:
            pyro.sample("z", dist.Categorical(logits=enc[i]))

    return model, guide, (data,)


@pytest.mark.parametrize("name", sorted(ELBOS))
def test_random_subsample_size_runs_and_only_touches_the_minibatch(name):
    model, guide, args = _subsample_size_case()
    init_params(model, guide, *args)
    elbo = ELBOS[name]()
    for _ in range(5):
        enc = param_leaves()["enc"]
        enc.grad = None
        loss = elbo.loss_and_grads(model, guide, *args)
        assert isinstance(loss, float) and loss == loss
        touched = (enc.grad.abs().sum(-1) > 0).sum().item()
        assert touched <= 3, "only the 3 subsampled rows get a gradient"
