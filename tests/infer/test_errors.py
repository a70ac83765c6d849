"""Bad input gets a clear ValueError that names what is wrong."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_relax.infer import ARSM_ELBO, ReinforceLOO_ELBO, VarGrad_ELBO

from . import cases


@pytest.mark.parametrize("cls", [ReinforceLOO_ELBO, VarGrad_ELBO])
@pytest.mark.parametrize("num_particles", [0, 1])
def test_too_few_particles(cls, num_particles):
    with pytest.raises(ValueError, match=r"num_particles.*>= 2"):
        cls(num_particles=num_particles)


@pytest.mark.parametrize("cls", [ReinforceLOO_ELBO, VarGrad_ELBO, ARSM_ELBO])
def test_num_particles_not_int(cls):
    with pytest.raises(ValueError, match="num_particles"):
        cls(num_particles=2.5)


def test_arsm_bad_bernoulli_option():
    with pytest.raises(ValueError, match="bernoulli.*'arm' or 'disarm'"):
        ARSM_ELBO(bernoulli="rebar")


def test_bad_max_plate_nesting():
    with pytest.raises(ValueError, match="max_plate_nesting"):
        ReinforceLOO_ELBO(num_particles=2, max_plate_nesting=-1)


def test_arsm_unsupported_site_names_site_and_distribution():
    model, guide, args = cases.poisson()
    with pytest.raises(ValueError, match=r"'n'.*Poisson"):
        ARSM_ELBO().loss_and_grads(model, guide, *args)


@pytest.mark.parametrize(
    "elbo",
    [ReinforceLOO_ELBO(num_particles=2), VarGrad_ELBO(num_particles=2), ARSM_ELBO()],
    ids=["loo", "vargrad", "arsm"],
)
def test_mismatched_plate_shapes(elbo):
    def model():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        logits = pyro.param("logits", torch.zeros(2))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Bernoulli(logits=logits))

    with pytest.raises(ValueError, match=r"plate 'data' has size 3 in the model but 2"):
        elbo.loss_and_grads(model, guide)


@pytest.mark.parametrize(
    "elbo",
    [ReinforceLOO_ELBO(num_particles=2), VarGrad_ELBO(num_particles=2), ARSM_ELBO()],
    ids=["loo", "vargrad", "arsm"],
)
def test_guide_site_outside_the_models_plate(elbo):
    def model():
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        logits = pyro.param("logits", torch.zeros(2))
        pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    with pytest.raises(ValueError, match=r"site 'z'"):
        elbo.loss_and_grads(model, guide)


@pytest.mark.parametrize("case,site", [("python_branch", "z1"), ("model_python_branch", "z")])
def test_program_that_does_not_broadcast_is_named_when_batching_is_required(case, site):
    model, guide, args = cases.ALL[case]()
    elbo = ARSM_ELBO(vectorize_alternatives=True)
    match = r"does not broadcast.*'{}'.*vectorize_alternatives=False".format(site)
    with pytest.raises(ValueError, match=match):
        for _ in range(50):  # a call with a single distinct alternative broadcasts fine
            elbo.loss_and_grads(model, guide, *args)


def test_bad_vectorize_alternatives():
    with pytest.raises(ValueError, match="vectorize_alternatives"):
        ARSM_ELBO(vectorize_alternatives="yes")


def _model_mixing_rows():
    """The model sums over every dim (not just its own): in a batch of alternatives, each
    row's likelihood would read the other rows' values. Nothing raises: only the sample row
    reveals it."""

    def model():
        locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5]))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("total", dist.Normal(locs[z].sum(), 0.5), obs=torch.tensor(2.0))

    def guide():
        phi = pyro.param("phi", torch.zeros(3, 3))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide


def test_program_mixing_the_alternatives_is_detected():
    model, guide = _model_mixing_rows()
    with pytest.raises(ValueError, match="mixes the alternatives"):
        ARSM_ELBO(vectorize_alternatives=True).loss_and_grads(model, guide)


def test_program_mixing_the_alternatives_falls_back_and_is_unbiased():
    from .exact import check_unbiased

    model, guide = _model_mixing_rows()
    elbo = ARSM_ELBO()
    ok, report = check_unbiased(elbo, model, guide, 600)
    assert ok, report
    assert elbo.alternatives.one_at_a_time
