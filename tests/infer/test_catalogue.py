"""The program shapes of Pyro's catalogue of valid and invalid model/guide pairs
(``tests/infer/test_valid_models.py`` of pyro-ppl/pyro, whose ``Trace_ELBO`` cases
``python -m benchmarks.pyro_catalogue --pyro-dir <pyro checkout>`` runs against our ELBOs),
written here in our own words so that CI, which has no Pyro checkout, runs them too.

Each valid program runs one SVI step, and ``loss``, ``loss_and_grads`` and
``differentiable_loss`` agree under one seed, with every warning an error (as in Pyro's test
configuration). The documented refusals (``num_particles=1`` for the leave-one-out estimators, a
non-reparameterizable continuous site for ``ARSM_ELBO``) are checked to be refusals with a
``ValueError``.
"""

import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.util import torch_item
from pyro.optim import Adam
from torch.distributions import constraints

from pyro_relax.infer import make_elbo, ReinforceLOO_ELBO, VarGrad_ELBO

ELBOS = {
    # Pyro's own, as a check that every program here is valid for Pyro
    "trace": lambda **kw: make_elbo("trace", **dict({"num_particles": 2}, **kw)),
    "rloo": lambda **kw: make_elbo("rloo", **dict({"num_particles": 2}, **kw)),
    "vargrad": lambda **kw: make_elbo("vargrad", **dict({"num_particles": 2}, **kw)),
    "arm": lambda **kw: make_elbo("arm", **dict({"num_particles": 2}, **kw)),
    "disarm": lambda **kw: make_elbo("disarm", **dict({"num_particles": 2}, **kw)),
    "relax": lambda **kw: make_elbo("relax", **dict({"num_particles": 2}, **kw)),
    "relax-neural": lambda **kw: make_elbo("relax-neural", **kw),
}


def assert_ok(model, guide, elbo, *args):
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SVI(model, guide, Adam({"lr": 1e-6}), elbo).step(*args)
        pyro.set_rng_seed(0)
        loss = elbo.loss(model, guide, *args)
        pyro.set_rng_seed(0)
        differentiable = torch_item(elbo.differentiable_loss(model, guide, *args))
        pyro.set_rng_seed(0)
        with_grads = elbo.loss_and_grads(model, guide, *args)
    assert abs(differentiable - loss) < 0.01, (differentiable, loss)
    assert abs(with_grads - loss) < 0.01, (with_grads, loss)


def assert_error(model, guide, elbo, match=None):
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((ValueError, RuntimeError, KeyError, UserWarning), match=match):
            SVI(model, guide, Adam({"lr": 1e-6}), elbo).step()


# ------------------------------------------------------------------ valid programs
def empty():
    def model():
        pass

    return model, model, {}


def observed_only():
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1), obs=torch.zeros(2))

    def guide():
        pass

    return model, guide, {}


def factor_in_model():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))
        pyro.factor("f", torch.tensor(1.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("t", torch.tensor(0.1))))

    return model, guide, {}


def factor_in_guide(has_rsample):
    def model():
        pass

    def guide():
        pyro.factor("f", torch.tensor(0.0), has_rsample=has_rsample)

    return model, guide, {}


def iplate(subsample_size):
    def model():
        p = torch.tensor(0.5)
        for i in pyro.plate("plate", 4, subsample_size):
            pyro.sample("x_{}".format(i), dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        for i in pyro.plate("plate", 4, subsample_size):
            pyro.sample("x_{}".format(i), dist.Bernoulli(p))

    return model, guide, {}


def iplate_iplate(subsample_size, swap):
    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            outer = pyro.plate("outer", 4, subsample_size)
            inner_iter = list(outer)  # drawn once per run
            for i in inner_iter:
                inner = pyro.plate("inner_{}".format(i), 5, subsample_size)
                for j in inner:
                    pyro.sample("x_{}_{}".format(i, j), dist.Bernoulli(p))

        return fn

    def swapped(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            outer = pyro.plate("outer", 4, subsample_size)
            inner = [pyro.plate("inner_{}".format(i), 5, subsample_size) for i in outer]
            for j_plate, i in zip(inner, outer):
                for j in j_plate:
                    pyro.sample("x_{}_{}".format(i, j), dist.Bernoulli(p))

        return fn

    make = swapped if swap else program
    return make(False), make(True), {}


def plate(subsample_size):
    def model():
        with pyro.plate("data", 10, subsample_size) as ind:
            pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(ind))))

    def guide():
        logits = pyro.param("logits", torch.zeros(10))
        with pyro.plate("data", 10, subsample_size) as ind:
            pyro.sample("z", dist.Bernoulli(logits=logits[ind]))

    return model, guide, {}


def plate_subsample_primitive(subsample_size):
    def model():
        with pyro.plate("data", 10, subsample_size):
            pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        logits = pyro.param("logits", torch.zeros(10))
        with pyro.plate("data", 10, subsample_size):
            local = pyro.subsample(logits, event_dim=0)
            pyro.sample("z", dist.Bernoulli(logits=local))

    return model, guide, {}


def plate_no_size():
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate"):
            pyro.sample("x", dist.Bernoulli(p).expand_by([10]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        with pyro.plate("plate"):
            pyro.sample("x", dist.Bernoulli(p).expand_by([10]))

    return model, guide, {}


def iplate_in_model_not_guide(subsample_size):
    def model():
        p = torch.tensor(0.5)
        for i in pyro.plate("plate", 10, subsample_size):
            pass
        pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        pyro.sample("x", dist.Bernoulli(p))

    return model, guide, {}


def plate_iplate(guide_side):
    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            if guide_side == "plate_iplate":
                with pyro.plate("outer", 3, 2):
                    for i in pyro.plate("inner", 4, 2):
                        pyro.sample("x_{}".format(i), dist.Bernoulli(p))
            else:
                for i in pyro.plate("outer", 3, 2):
                    with pyro.plate("inner_{}".format(i), 4, 2):
                        pyro.sample("x_{}".format(i), dist.Bernoulli(p))

        return fn

    return program(False), program(True), {}


def plate_stack(sizes):
    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            with pyro.plate_stack("stack", sizes):
                pyro.sample("x", dist.Bernoulli(p))

        return fn

    return program(False), program(True), {}


def nested_and_nonnested_plates(nested):
    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            if nested:
                with pyro.plate("a", 5, 3, dim=-1):
                    with pyro.plate("b", 6, 4, dim=-2):
                        pyro.sample("x", dist.Bernoulli(p))
            else:
                with pyro.plate("a", 5, 3):
                    pyro.sample("x", dist.Bernoulli(p))
                with pyro.plate("b", 6, 4):
                    pyro.sample("y", dist.Bernoulli(p))

        return fn

    return program(False), program(True), {}


def three_plates_at_different_depths():
    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            inner = pyro.plate("inner", 3)
            for i in pyro.plate("outer", 2):
                with inner:
                    pyro.sample("x_{}".format(i), dist.Bernoulli(p))
                pyro.sample("y_{}".format(i), dist.Bernoulli(p))

        return fn

    return program(False), program(True), {}


def plate_reuse():
    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            a = pyro.plate("a", 3, dim=-1)
            b = pyro.plate("b", 4, dim=-2)
            with a:
                pyro.sample("x", dist.Bernoulli(p))
                with b:
                    pyro.sample("y", dist.Bernoulli(p))
            with b:
                pyro.sample("z", dist.Bernoulli(p))

        return fn

    return program(False), program(True), {}


def dim_allocation():
    """A model that asserts its own shapes: it cannot take a batch of alternatives, so
    ARSM_ELBO scores them one at a time."""

    def program(param):
        def fn():
            p = torch.tensor(0.5)
            if param:
                p = pyro.param("p", p, constraint=constraints.unit_interval)
            with pyro.plate("outer", 10, 5, dim=-3):
                x = pyro.sample("x", dist.Bernoulli(p))
                with pyro.plate("inner_1", 11, 6):
                    y = pyro.sample("y", dist.Bernoulli(p))
                    with pyro.plate("inner_2", 12, 7):
                        z = pyro.sample("z", dist.Bernoulli(p))
            assert x.shape == (5, 1, 1)
            assert y.shape == (5, 1, 6)
            assert z.shape == (5, 7, 6)

        return fn

    return program(False), program(True), {"max_plate_nesting": 3}


def obs_mask(multivariate):
    data = torch.tensor([[0.5, 1.0], [0.0, -1.0], [2.0, 0.3]])
    mask = torch.tensor([True, False, True])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            if multivariate:
                pyro.sample(
                    "x", dist.Normal(z.unsqueeze(-1).expand(z.shape + (2,)), 1.0).to_event(1), obs=data, obs_mask=mask
                )
            else:
                pyro.sample("x", dist.Normal(z, 1.0), obs=data[:, 0], obs_mask=mask)

    def guide():
        logits = pyro.param("logits", torch.zeros(3))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=logits))
            if multivariate:
                pyro.sample(
                    "x_unobserved",
                    dist.Normal(torch.zeros(3, 2), 1.0).to_event(1),
                )
            else:
                pyro.sample("x_unobserved", dist.Normal(torch.zeros(3), 1.0))

    return model, guide, {}


def mask_and_scale():
    def model():
        with pyro.plate("data", 4):
            with poutine.mask(mask=torch.tensor([True, False, True, True])):
                with poutine.scale(scale=torch.tensor([1.0, 2.0, 0.5, 1.0])):
                    z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.ones(4))

    def guide():
        logits = pyro.param("logits", torch.zeros(4))
        with pyro.plate("data", 4):
            with poutine.mask(mask=torch.tensor([True, False, True, True])):
                with poutine.scale(scale=torch.tensor([1.0, 2.0, 0.5, 1.0])):
                    pyro.sample("z", dist.Bernoulli(logits=logits))

    return model, guide, {}


def mixed_reparam(has_rsample):
    def model():
        pyro.sample("c", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Bernoulli(0.5))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        fn = dist.Normal(loc, 1.0)
        if has_rsample is not None:
            fn.has_rsample_(has_rsample)
        pyro.sample("c", fn)
        pyro.sample("b", dist.Bernoulli(logits=loc))

    return model, guide, {}


def categorical_in_plates():
    def model():
        with pyro.plate("a", 2, dim=-2), pyro.plate("b", 3, dim=-1):
            z = pyro.sample("z", dist.Categorical(torch.ones(4) / 4))
            pyro.sample("x", dist.Normal(z.to(torch.get_default_dtype()), 1.0), obs=torch.ones(2, 3))

    def guide():
        phi = pyro.param("phi", torch.zeros(2, 3, 4))
        with pyro.plate("a", 2, dim=-2), pyro.plate("b", 3, dim=-1):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide, {}


def constant_guide():
    """A guide site without parameters (fixed probabilities), as in Pyro's subsample cases."""

    def model():
        with pyro.plate("data", 10, 5):
            pyro.sample("x", dist.Bernoulli(0.5))

    def guide():
        with pyro.plate("data", 10, 5):
            p = pyro.subsample(0.5 * torch.ones(10), event_dim=0)
            pyro.sample("x", dist.Bernoulli(p))

    return model, guide, {}


def deterministic_sites():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.deterministic("twice", 2 * z)

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("t", torch.tensor(0.0))))

    return model, guide, {}


VALID = {
    "empty": empty,
    "observed-only": observed_only,
    "factor-in-model": factor_in_model,
    "factor-in-guide": lambda: factor_in_guide(False),
    "factor-in-guide-rsample": lambda: factor_in_guide(True),
    "iplate": lambda: iplate(None),
    "iplate-subsample": lambda: iplate(2),
    "iplate-iplate": lambda: iplate_iplate(None, False),
    "iplate-iplate-subsample": lambda: iplate_iplate(2, False),
    "iplate-iplate-swap-subsample": lambda: iplate_iplate(2, True),
    "plate": lambda: plate(None),
    "plate-subsample": lambda: plate(5),
    "plate-subsample-primitive": lambda: plate_subsample_primitive(5),
    "plate-no-size": plate_no_size,
    "iplate-in-model-not-guide": lambda: iplate_in_model_not_guide(5),
    "plate-iplate": lambda: plate_iplate("plate_iplate"),
    "iplate-plate": lambda: plate_iplate("iplate_plate"),
    "plate-stack": lambda: plate_stack((3, 4, 5)),
    "nested-plates": lambda: nested_and_nonnested_plates(True),
    "nonnested-plates": lambda: nested_and_nonnested_plates(False),
    "three-plates-at-different-depths": three_plates_at_different_depths,
    "plate-reuse": plate_reuse,
    "dim-allocation": dim_allocation,
    "obs-mask": lambda: obs_mask(False),
    "obs-mask-multivariate": lambda: obs_mask(True),
    "mask-and-scale": mask_and_scale,
    "mixed-reparam": lambda: mixed_reparam(None),
    "mixed-set-has-rsample": lambda: mixed_reparam(True),
    "categorical-in-plates": categorical_in_plates,
    "deterministic-sites": deterministic_sites,
    "constant-guide": constant_guide,
}


#: documented refusals among the valid programs: (program, ELBO) -> the ValueError's message
REFUSED = {
    ("categorical-in-plates", "relax"): r"'z'.*index.*'neural'",
}


@pytest.mark.parametrize("elbo", sorted(ELBOS))
@pytest.mark.parametrize("program", sorted(VALID))
def test_valid_program(program, elbo):
    model, guide, options = VALID[program]()
    if (program, elbo) in REFUSED:
        assert_error(model, guide, ELBOS[elbo](**options), match=REFUSED[program, elbo])
    else:
        assert_ok(model, guide, ELBOS[elbo](**options))


@pytest.mark.parametrize("elbo", sorted(ELBOS))
def test_valid_program_vectorized_particles(elbo):
    model, guide, _ = plate(None)
    assert_ok(model, guide, ELBOS[elbo](num_particles=3, vectorize_particles=True))


# ------------------------------------------------------------------ documented refusals
@pytest.mark.parametrize("cls", [ReinforceLOO_ELBO, VarGrad_ELBO])
def test_refusal_one_particle_for_leave_one_out(cls):
    with pytest.raises(ValueError, match="num_particles >= 2"):
        cls(num_particles=1)


@pytest.mark.parametrize("bernoulli", ["arm", "disarm"])
def test_refusal_non_reparameterizable_continuous_site_for_arsm(bernoulli):
    model, guide, _ = mixed_reparam(False)
    assert_error(model, guide, make_elbo("arsm", bernoulli=bernoulli), match="'c'.*Normal")
    # the leave-one-out estimators take it
    assert_ok(model, guide, make_elbo("rloo"))


# ------------------------------------------------------------------ invalid programs
def _clash_in(side):
    def bad():
        pyro.sample("x", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Bernoulli(0.5))

    def good():
        pyro.sample("x", dist.Bernoulli(0.5))

    return (bad, good) if side == "model" else (good, bad)


def _shape_mismatch():
    def model():
        pyro.sample("x", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))

    def guide():
        pyro.sample("x", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))

    return model, guide


def _plate_in_guide_not_model():
    def model():
        pyro.sample("x", dist.Bernoulli(0.5))

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        for i in pyro.plate("plate", 10, 5):
            pass
        pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def _latent_missing_from_guide():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def guide():
        pass

    return model, guide


INVALID = {
    "variable-clash-in-model": (lambda: _clash_in("model"), "Multiple sample sites named"),
    "variable-clash-in-guide": (lambda: _clash_in("guide"), "Multiple sample sites named"),
    "model-guide-shape-mismatch": (_shape_mismatch, None),
    "plate-in-guide-not-model": (_plate_in_guide_not_model, "plate statements in guide"),
    "latent-missing-from-guide": (_latent_missing_from_guide, "model but not guide"),
}


@pytest.mark.parametrize("elbo", sorted(ELBOS))
@pytest.mark.parametrize("program", sorted(INVALID))
def test_invalid_program(program, elbo):
    make, match = INVALID[program]
    model, guide = make()
    assert_error(model, guide, ELBOS[elbo](), match=match)
