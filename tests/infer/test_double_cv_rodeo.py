"""DoubleCV_ELBO and RODEO_ELBO: with their control variates switched on (alpha, beta away
from their initial 0, RODEO's network at its random initialization) the mean gradient equals
the exact -ELBO gradient (by enumeration) within 4 Monte Carlo standard errors, on plates,
subsampling, nested plates with a global latent, dependent guides and mixed guides; wrong
variants fail the same check; the control variates train under SVI and reduce the variance
of the encoder's gradient; programs they cannot handle are refused."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_relax.infer import DoubleCV_ELBO, RODEO_ELBO, ReinforceLOO_ELBO, make_elbo

from . import cases
from .exact import check_unbiased, estimated_grads, init_params

NUM_SAMPLES = 600

RUNS = [
    ("vector_bernoulli", 2),
    ("vector_bernoulli", 4),
    ("plate_bernoulli", 3),
    ("subsampled", 2),
    ("nested_plates", 3),
    ("two_layer_bernoulli", 3),
    ("plate_dependent", 2),
    ("mixed", 3),
    ("categorical_then_bernoulli", 2),
]
ESTIMATORS = {"double-cv": DoubleCV_ELBO, "rodeo": RODEO_ELBO}


def _switched_on(elbo, model, guide, args, alpha=-0.8, beta=0.6):
    """The ELBO with its control variates created and their scalars set away from 0."""
    init_params(model, guide, *args)
    elbo.setup(model, guide, *args)
    with torch.no_grad():
        for name, p in pyro.get_param_store().named_parameters():
            if name.endswith(".alpha"):
                p.fill_(alpha)
            elif name.endswith(".beta"):
                p.fill_(beta)
    return elbo


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("case, K", RUNS)
def test_unbiased_with_the_control_variates_on(estimator, case, K):
    model, guide, args = cases.ALL[case]()
    elbo = _switched_on(ESTIMATORS[estimator](K, max_plate_nesting=2), model, guide, args)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert ok, report


# ---------------------------------------------------------------------------------- power
class _DoubleCVWithoutCorrection(DoubleCV_ELBO):
    """WRONG: the global control variate's expectation is not subtracted."""

    def logit_gradient(self, name, f, g, b, sigma, params):
        alpha = params[0]["alpha"]
        g_others = (g.sum(0, keepdim=True) - g) / (f.shape[0] - 1)
        return super().logit_gradient(name, f, g, b, sigma, params) + (
            alpha * sigma * (1 - sigma) * g_others)


class _DoubleCVOwnGradient(DoubleCV_ELBO):
    """WRONG: the Taylor term of sample k uses its own gradient g_k."""

    def logit_gradient(self, name, f, g, b, sigma, params):
        K = f.shape[0]
        own = g.sum(0, keepdim=True) - (K - 1) * g  # makes (sum - own) / (K - 1) = g_k
        return super().logit_gradient(name, f, own, b, sigma, params)


class _RODEOOwnSample(RODEO_ELBO):
    """WRONG: sample k's control functions are built from its own sample, not the others'."""

    def pairs(self, K, device):
        return torch.arange(K, device=device), torch.arange(K, device=device)


class _RODEOWrongFlipWeight(RODEO_ELBO):
    """WRONG: the Gibbs operator weighs a flip by the probability of the current value."""

    def flip_probability(self, b, sigma):
        return sigma * b + (1 - sigma) * (1 - b)


@pytest.mark.parametrize("wrong", [_DoubleCVWithoutCorrection, _DoubleCVOwnGradient])
def test_power_double_cv(wrong):
    model, guide, args = cases.vector_bernoulli()
    elbo = _switched_on(wrong(2, max_plate_nesting=1), model, guide, args, alpha=-2.0)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert not ok, report


@pytest.mark.parametrize("wrong, case, alpha, beta", [
    (_RODEOOwnSample, "plate_bernoulli", 0.0, 10.0),  # the beta term carries its bias
    (_RODEOWrongFlipWeight, "vector_bernoulli", -3.0, 3.0),
])
def test_power_rodeo(wrong, case, alpha, beta):
    model, guide, args = cases.ALL[case]()
    elbo = _switched_on(wrong(2, max_plate_nesting=1), model, guide, args, alpha=alpha, beta=beta)
    ok, report = check_unbiased(elbo, model, guide, 1000, *args)
    assert not ok, report


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_control_variates_train_and_reduce_the_variance(estimator):
    """SVI steps on the control variates alone (model and guide held fixed) move alpha (and
    beta, the network) from 0, and the trained estimator's encoder gradient then varies less
    than RLOO's at the same parameters."""
    torch.manual_seed(0)
    data = torch.rand(20, 8).bernoulli()
    decoder = torch.nn.Linear(4, 8)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((len(x), 4), 0.5)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        w = pyro.param("w", torch.zeros(8, 4))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=x @ w + 0.3).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = make_elbo(estimator, num_particles=2, max_plate_nesting=1)
    prefix = elbo.prefix + "."
    optim = pyro.optim.Adam(lambda name, p: {"lr": 0.02 if name.startswith(prefix) else 0.0})
    svi = pyro.infer.SVI(model, guide, optim, elbo)
    for _ in range(200):
        svi.step(data)
    store = pyro.get_param_store()
    assert abs(store["{}.z.alpha".format(elbo.prefix)].item()) > 0.05
    pyro.set_rng_seed(1)
    trained = estimated_grads(elbo, model, guide, 300, data)["w"].var(0).sum()
    pyro.set_rng_seed(1)
    rloo = estimated_grads(ReinforceLOO_ELBO(2, vectorize_particles=True, max_plate_nesting=1),
                           model, guide, 300, data)["w"].var(0).sum()
    assert trained < 0.5 * rloo, (trained.item(), rloo.item())


def test_registry_and_refusals():
    assert isinstance(make_elbo("double-cv", num_particles=3), DoubleCV_ELBO)
    assert isinstance(make_elbo("rodeo", num_particles=2), RODEO_ELBO)
    for E in ESTIMATORS.values():
        with pytest.raises(ValueError, match="vectorize_particles=True"):
            E(2, vectorize_particles=False)
        with pytest.raises(ValueError, match="num_particles"):
            E(1)
    with pytest.raises(ValueError, match="hidden"):
        RODEO_ELBO(2, hidden=0)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_unbiased_when_the_model_reads_the_sample_without_a_gradient(estimator):
    """The model reads the sample through ``.tolist()``: only ``log q`` carries a gradient to
    it, and the control variates (switched on) stay unbiased."""

    def model():
        w = pyro.param("w", torch.tensor([0.5, -1.0]))
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(torch.full((2, 3), 0.4)).to_event(1))
            t = torch.tensor(z.detach().tolist())
            pyro.sample("x", dist.Normal((t * w[0]).sum(-1) + w[1], 1.0),
                        obs=torch.tensor([0.3, 1.0]))

    def guide():
        a = pyro.param("a", torch.tensor([0.2, -0.4, 0.9]))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Bernoulli(logits=a.expand(2, 3)).to_event(1))

    elbo = _switched_on(ESTIMATORS[estimator](2, max_plate_nesting=1), model, guide, ())
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES)
    assert ok, report
