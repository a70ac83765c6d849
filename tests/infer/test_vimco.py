"""VIMCO_ELBO's mean gradient equals the exact gradient of the K-sample importance-weighted
bound (every K-tuple of guide configurations enumerated, reparameterized sites by quadrature:
:func:`pyro_relax.testing.exact_iwae_loss`) within 4 Monte Carlo standard errors, for every
model and guide parameter; its loss is that bound; wrong variants, and the ELBO's unbiased
estimators, fail the same check; a program with two scales is refused."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO

from pyro_relax.infer import ReinforceLOO_ELBO, VIMCO_ELBO, make_elbo
from pyro_relax.testing import exact_iwae_loss

from . import cases
from .exact import check_unbiased

NUM_SAMPLES = 600

#: (case, K, vectorized): plates, nested plates with a global latent under poutine.scale,
#: subsampling, categorical and one-hot sites, dependent guides, a sequential plate, Python on
#: a sample, a Poisson site, and reparameterized sites next to discrete ones
RUNS = [
    ("plate_bernoulli", 2, True),
    ("plate_bernoulli", 3, False),
    ("vector_bernoulli", 3, True),
    ("categorical", 2, True),
    ("one_hot_categorical", 3, True),
    ("two_sites", 2, False),
    ("subsampled", 2, True),
    ("subsampled", 2, False),
    ("nested_plates", 2, True),
    ("sequential_plate", 2, False),
    ("poisson", 2, True),
    ("categorical_then_bernoulli", 2, True),
    ("two_layer_bernoulli", 3, True),
    ("plate_dependent", 2, True),
    ("python_branch", 2, False),
    ("mixed", 2, True),
    ("normal_given_categorical", 2, False),
    ("continuous_only", 2, True),
]


def _exact(K):
    return functools.partial(exact_iwae_loss, num_particles=K)


@pytest.mark.parametrize("case, K, vectorized", RUNS)
def test_unbiased_for_the_k_sample_bound(case, K, vectorized):
    model, guide, args = cases.ALL[case]()
    elbo = VIMCO_ELBO(K, vectorize_particles=vectorized, max_plate_nesting=2)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args, loss_fn=_exact(K))
    assert ok, report


def test_registry_and_differentiable_loss():
    model, guide, args = cases.plate_bernoulli()
    elbo = make_elbo("vimco", num_particles=3, max_plate_nesting=1)
    assert isinstance(elbo, VIMCO_ELBO) and elbo.num_particles == 3
    loss = elbo.differentiable_loss(model, guide, *args)
    assert loss.requires_grad
    with torch.no_grad():  # a validation step: the bound's estimate alone
        assert not elbo.differentiable_loss(model, guide, *args).requires_grad


@pytest.mark.parametrize("case", ["plate_bernoulli", "nested_plates", "mixed"])
def test_loss_is_the_k_sample_bound(case):
    model, guide, args = cases.ALL[case]()
    pyro.set_rng_seed(0)
    elbo = VIMCO_ELBO(2, vectorize_particles=True, max_plate_nesting=2)
    draws = torch.tensor([elbo.loss(model, guide, *args) for _ in range(4000)])
    exact = exact_iwae_loss(model, guide, *args, num_particles=2).item()
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * se, (draws.mean().item(), exact, se)


def test_reparameterized_guide_gets_renyi_elbos_gradient():
    """With no discrete site the estimate is the IWAE pathwise gradient, Pyro's RenyiELBO(alpha=0)'s."""
    model, guide, args = cases.continuous_only()
    results = []
    for elbo in (VIMCO_ELBO(4, vectorize_particles=True, max_plate_nesting=1),
                 RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True, max_plate_nesting=1)):
        pyro.set_rng_seed(3)
        pyro.clear_param_store()
        loss = elbo.loss_and_grads(model, guide, *args)
        grads = {k: p.grad.clone() for k, p in pyro.get_param_store().named_parameters()}
        results.append((loss, grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-7), k


# ---------------------------------------------------------------------------------- power
class _OwnWeightBaseline(VIMCO_ELBO):
    """WRONG: each sample's baseline is the bound itself (its own weight left in, not replaced
    by the others' geometric mean), so the learning signal vanishes."""

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        log_w, weighted, scores, scale = self._log_weights(particles)
        return (torch.softmax(log_w.detach(), 0) * weighted).sum()


class _NoWeightTerm(VIMCO_ELBO):
    """WRONG: the normalized-weight term's score part (the direct gradient of log q) is left out."""

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        log_w, weighted, scores, scale = self._log_weights(particles)
        return super().surrogate_elbo(particles, model, guide, args, kwargs) + scale * (
            torch.softmax(log_w.detach(), 0) * scores).sum()


@pytest.mark.parametrize("wrong", [_OwnWeightBaseline, _NoWeightTerm,
                                   lambda K, **kw: ReinforceLOO_ELBO(K, **kw)])
def test_power(wrong):
    model, guide, args = cases.plate_bernoulli()
    elbo = wrong(2, vectorize_particles=True, max_plate_nesting=1)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args, loss_fn=_exact(2))
    assert not ok, report


# ---------------------------------------------------------------------------------- refusals
def test_two_scales_are_refused():
    data = torch.tensor([0.5, -1.0, 2.0, 1.0])

    def model():
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("data", 4, subsample=torch.tensor([0, 2])) as i:
            pyro.sample("x", dist.Normal(g, 1.0), obs=data[i])

    def guide():
        pyro.sample("g", dist.Bernoulli(logits=pyro.param("t", torch.tensor(0.1))))

    with pytest.raises(ValueError, match="one scale for the whole program.*'g': 1"):
        VIMCO_ELBO(2).loss(model, guide)


def test_one_particle_is_refused():
    with pytest.raises(ValueError, match="num_particles"):
        VIMCO_ELBO(1)
