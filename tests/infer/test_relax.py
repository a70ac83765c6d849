"""RELAX_ELBO and REBAR_ELBO: unbiased against exact gradients for every control variate, before
and after the control variate is trained; deliberately wrong variants fail; the REBAR coupling
follows its definition; the variance gradient reaches only the control variate's parameters;
the param store round trip resumes training exactly."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from scipy import stats

from pyro_relax.distributions import (
    RelaxedBernoulliConditioned,
    RelaxedOneHotCategoricalConditioned,
)
from pyro_relax.infer import make_elbo, REBAR_ELBO, RELAX_ELBO
from pyro_relax.infer.relaxation import RebarCoupling

from . import cases
from .exact import check_unbiased, param_leaves

NUM_SAMPLES = 600

ESTIMATORS = {
    "relax": lambda: make_elbo("relax"),
    "rebar": lambda: make_elbo("rebar"),
    "neural": lambda: make_elbo("relax-neural"),
    "relax2-vectorized": lambda: make_elbo("relax", num_particles=2, vectorize_particles=True),
    "rebar2-sequential": lambda: make_elbo("rebar", num_particles=2),
    "relax-one-at-a-time": lambda: make_elbo("relax", vectorize_alternatives=False),
}
RELAXABLE = [
    "vector_bernoulli",
    "plate_bernoulli",
    "one_hot_categorical",
    "two_sites_one_hot",
    "mixed",
    "subsampled",
    "nested_plates",
    "two_layer_bernoulli",
    "plate_dependent",
]
# programs that are not differentiable in a relaxed value: refused by "rebar"/"relax"
NOT_DIFFERENTIABLE = ["python_branch", "numpy_round_trip"]
INDEX_SITES = ["categorical", "two_sites", "categorical_then_bernoulli", "normal_given_categorical"]


# "relax" (rebar term + network) on every case; the rebar term alone and the network alone on
# the cases that exercise a different part of the machinery (one site, plates, one-hot, mixed
# with a Normal, a dependent guide); particles and alternatives in other layouts on a few.
CORE = ["vector_bernoulli", "plate_bernoulli", "one_hot_categorical", "mixed", "two_layer_bernoulli"]


def _pairs():
    for case in RELAXABLE:
        yield "relax", case
    for case in CORE:
        yield "rebar", case
        yield "neural", case
    for case in INDEX_SITES + NOT_DIFFERENTIABLE:
        yield "neural", case
    for case in ["plate_bernoulli", "two_sites_one_hot"]:
        yield "relax2-vectorized", case
    for case in ["mixed", "two_layer_bernoulli"]:
        yield "rebar2-sequential", case
    for case in ["plate_bernoulli", "two_layer_bernoulli"]:
        yield "relax-one-at-a-time", case


@pytest.mark.parametrize("estimator,case", list(_pairs()))
def test_unbiased_untrained(estimator, case):
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(ESTIMATORS[estimator](), model, guide, NUM_SAMPLES, *args)
    assert ok, report


def _train_control_variate(elbo, model, guide, args, steps=200):
    """Steps only the control variate's parameters (learning rate 0 for the rest)."""

    def lr(module_name, param_name):
        name = module_name or param_name
        return {"lr": 0.02 if name.startswith(("relax.", "rebar.")) else 0.0}

    svi = SVI(model, guide, Adam(lr), elbo)
    for _ in range(steps):
        svi.step(*args)


@pytest.mark.parametrize("estimator", ["relax", "rebar", "neural"])
@pytest.mark.parametrize("case", ["vector_bernoulli", "plate_bernoulli", "one_hot_categorical"])
def test_unbiased_after_training_the_control_variate(estimator, case):
    model, guide, args = cases.ALL[case]()
    elbo = ESTIMATORS[estimator]()
    _train_control_variate(elbo, model, guide, args)
    trained = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert any(k.endswith(".temperature") and abs(v.item() - 0.5) > 1e-3 for k, v in trained.items())
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert ok, report


# ------------------------------------------------------------------ power: wrong variants fail
# Each wrong variant is passed in as a piece (a subclass of the estimator, or a coupling).
def _swapped(cls):
    class Swapped(cls):
        def control_variate_terms(self, *args):
            # WRONG: c(z) and c(z~) swapped
            c_z, c_zt, grad_c = super().control_variate_terms(*args)
            return c_zt, c_z, -grad_c

    return Swapped, {}


class _WrongClassCoupling(RebarCoupling):
    def z_tilde(self, kind, alpha, b, v):
        # WRONG: z~ drawn conditioned on the other class (1 - b, or the next category)
        other = 1.0 - b if kind == "bernoulli" else b.roll(1, -1)
        return super().z_tilde(kind, alpha, other, v)


def _wrong_class(cls):
    return cls, {"coupling": _WrongClassCoupling()}


class _Loud(torch.nn.Module):
    """A user control variate with a large output, so that misuse shows."""

    def forward(self, relaxed, *args):
        (name, value), *_ = reversed(list(relaxed.items()))
        weights = torch.arange(1.0, value.shape[-1] + 1.0, dtype=value.dtype)
        return 5.0 * (value * weights).sum(-1)  # one value per cell (one event dim here)


@pytest.mark.parametrize("wrong", [_swapped, _wrong_class], ids=["swapped", "wrong-class"])
@pytest.mark.parametrize(
    "estimator,case",
    [
        ("relax", "vector_bernoulli"),
        ("rebar", "vector_bernoulli"),
        ("rebar", "one_hot_categorical"),
        ("neural-loud", "one_hot_categorical"),
        ("neural-loud", "categorical"),
    ],
)
def test_power_wrong_variants_fail(wrong, estimator, case):
    model, guide, args = cases.ALL[case]()
    cls, kwargs = wrong(REBAR_ELBO if estimator == "rebar" else RELAX_ELBO)
    if estimator == "neural-loud":
        kwargs["control_variate"] = _Loud()
    elbo = cls(**kwargs)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a wrong RELAX variant:\n" + report


# ------------------------------------------------------------------ the coupling
def _ks(a, b):
    return stats.ks_2samp(a.numpy(), b.numpy()).pvalue


@pytest.mark.parametrize("logit", [-1.3, 0.4])
def test_bernoulli_conditioned_pre_activation_is_the_restricted_law(logit):
    """z~ given b has the law of z restricted to H(z) = b (two-sample KS against rejection
    sampling), for both classes."""
    n = 20000
    d = RelaxedBernoulliConditioned(0.5, logits=torch.tensor(logit))
    draws = d.coupled_sample((n,))
    reference = d.coupled_sample((4 * n,)).z
    for cls in (0.0, 1.0):
        given = draws.z_tilde[draws.b == cls]
        restricted = reference[(reference > 0).to(reference.dtype) == cls]
        assert ((given > 0).to(given.dtype) == cls).all()
        assert _ks(given, restricted) > 1e-3, cls
    # power: the unconditional z is not the restricted law
    assert _ks(draws.z, reference[reference > 0]) < 1e-6


def test_categorical_conditioned_pre_activation_is_the_restricted_law():
    n = 20000
    logits = torch.tensor([0.5, -0.3, 1.2, 0.0])
    d = RelaxedOneHotCategoricalConditioned(0.5, logits=logits)
    draws = d.coupled_sample((n,))
    reference = d.coupled_sample((4 * n,)).z
    chosen = draws.b.argmax(-1)
    ref_chosen = reference.argmax(-1)
    for cls in range(4):
        given = draws.z_tilde[chosen == cls]
        restricted = reference[ref_chosen == cls]
        assert (given.argmax(-1) == cls).all()
        for k in range(4):  # every coordinate's marginal
            assert _ks(given[:, k], restricted[:, k]) > 1e-3, (cls, k)
    # power: another class's restricted law differs
    assert _ks(draws.z_tilde[chosen == 2][:, 2], reference[ref_chosen == 0][:, 2]) < 1e-6


def test_coupling_is_differentiable_in_the_logits():
    logits = torch.tensor([0.3, -0.7], requires_grad=True)
    s = RelaxedBernoulliConditioned(0.5, logits=logits).coupled_sample((5,))
    (g,) = torch.autograd.grad((s.z + s.z_tilde).sum(), logits)
    assert torch.isfinite(g).all() and (g != 0).all()
    phi = torch.tensor([0.3, -0.7, 0.1], requires_grad=True)
    s = RelaxedOneHotCategoricalConditioned(0.5, logits=phi).coupled_sample((5,))
    (g,) = torch.autograd.grad((s.z_tilde * torch.arange(3.0)).sum(), phi)
    assert torch.isfinite(g).all() and (g != 0).any()


# ------------------------------------------------------------------ the variance gradient
def _grads(elbo, model, guide, args, seed):
    for p in param_leaves().values():
        p.grad = None
    pyro.set_rng_seed(seed)
    elbo.loss_and_grads(model, guide, *args)
    return {k: (None if p.grad is None else p.grad.clone()) for k, p in param_leaves().items()}


@pytest.mark.parametrize("estimator", ["relax", "rebar", "neural"])
@pytest.mark.parametrize("case", ["plate_bernoulli", "two_layer_bernoulli"])
def test_variance_gradient_reaches_only_the_control_variate(estimator, case):
    model, guide, args = cases.ALL[case]()
    elbo = ESTIMATORS[estimator]()
    _grads(elbo, model, guide, args, 0)  # create every parameter
    with_variance = _grads(elbo, model, guide, args, 1)
    own = [k for k in with_variance if k.startswith(("relax.", "rebar."))]
    assert own and all(
        with_variance[k] is not None and with_variance[k].abs().sum() > 0 for k in own
    ), {k: with_variance[k] for k in own}
    elbo.variance_term = lambda variance: 0.0  # the same ELBO without its variance term
    without = _grads(elbo, model, guide, args, 1)
    for k, g in with_variance.items():
        if k in own:
            assert without[k] is None or without[k].abs().max() == 0
        else:
            assert (g - without[k]).abs().max() <= 1e-12, k


def test_differentiable_loss_carries_the_variance_gradient():
    model, guide, args = cases.ALL["vector_bernoulli"]()
    elbo = make_elbo("relax")
    _grads(elbo, model, guide, args, 0)
    expected = _grads(elbo, model, guide, args, 3)
    for p in param_leaves().values():
        p.grad = None
    pyro.set_rng_seed(3)
    elbo.differentiable_loss(model, guide, *args).backward()
    for k, p in param_leaves().items():
        assert torch.allclose(p.grad, expected[k], atol=1e-12), k


def test_param_store_round_trip_resumes_bit_identically(tmp_path):
    data = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).repeat(3, 1)

    def program():
        encoder = torch.nn.Linear(3, 2)
        decoder = torch.nn.Linear(2, 3)

        def model(x):
            # update_module_params: a resumed run takes the stored values (Pyro's way)
            pyro.module("decoder", decoder, update_module_params=True)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder", encoder, update_module_params=True)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

        return model, guide

    def run(svi, steps):
        for _ in range(steps):
            svi.step(data)

    torch.manual_seed(0)
    model, guide = program()
    optim = Adam({"lr": 0.01})
    svi = SVI(model, guide, optim, make_elbo("relax", hidden_dims=(8,)))
    run(svi, 10)
    pyro.get_param_store().save(tmp_path / "params.pt")
    optim.save(tmp_path / "optim.pt")
    rng = pyro.util.get_rng_state()
    run(svi, 10)
    straight = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = program()  # fresh modules: their values come from the store
    pyro.get_param_store().load(tmp_path / "params.pt")
    optim = Adam({"lr": 0.01})
    optim.load(tmp_path / "optim.pt")
    pyro.util.set_rng_state(rng)
    svi = SVI(model, guide, optim, make_elbo("relax", hidden_dims=(8,)))  # a fresh control variate
    run(svi, 10)
    resumed = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert set(resumed) == set(straight)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def _model_indexes_with_argmax():
    def model():
        locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
        z = pyro.sample("z", dist.OneHotCategorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(locs[z.argmax(-1)], 1.0), obs=torch.tensor(0.6))

    def guide():
        pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("phi", torch.zeros(3))))

    return model, guide, ()


def _model_thresholds():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(torch.where(z > 0.5, 2.0, -1.0), 1.0), obs=torch.tensor(0.6))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("t", torch.tensor(0.0))))

    return model, guide, ()


@pytest.mark.parametrize("kind", ["rebar", "relax"])
@pytest.mark.parametrize(
    "case,match",
    [
        (lambda: cases.ALL["python_branch"](), r"\['z1', 'z2'\].*`item`.*'z1'.*'neural'"),
        (lambda: cases.ALL["numpy_round_trip"](), r"`detach`.*'z1'.*'neural'"),
        (_model_indexes_with_argmax, r"`argmax`.*model.*'neural'"),
        (_model_thresholds, r"`gt`.*model.*'neural'"),
    ],
    ids=["python-branch", "numpy", "argmax-index", "threshold"],
)
def test_relaxed_evaluation_refuses_programs_not_differentiable_in_it(kind, case, match):
    """A relaxed value pushed through .item(), NumPy, argmax or a comparison would make the
    control variate a step function of z: the estimate would be silently biased. Refused."""
    model, guide, args = case()
    elbo = make_elbo("relax", control_variate=kind)
    with pytest.raises(ValueError, match=match):
        for _ in range(20):
            elbo.loss_and_grads(model, guide, *args)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), "hot"])
def test_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        make_elbo("relax", temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        RelaxedBernoulliConditioned(temperature if not isinstance(temperature, str) else -1.0, logits=torch.zeros(2))


@pytest.mark.parametrize("kind", ["rebar", "relax"])
def test_relaxing_a_categorical_index_is_refused(kind):
    model, guide, args = cases.ALL["categorical"]()
    with pytest.raises(ValueError, match=r"'z'.*index.*'neural'.*OneHotCategorical"):
        make_elbo("relax", control_variate=kind).loss_and_grads(model, guide, *args)


def test_user_control_variate_with_the_wrong_shape_names_both_shapes():
    class Wrong(torch.nn.Module):
        def forward(self, relaxed, *args):
            value = list(relaxed.values())[-1]
            return value  # (3,) per element, but the cell signal is a scalar

    model, guide, args = cases.ALL["vector_bernoulli"]()
    with pytest.raises(ValueError, match=r"'b'.*shape \(3,\).*shape \(\)"):
        make_elbo("relax", control_variate=Wrong()).loss_and_grads(model, guide, *args)


def test_user_control_variate_mixing_cells_is_refused():
    class Mixing(torch.nn.Module):
        def forward(self, relaxed, *args):
            value = list(relaxed.values())[-1]
            return value.sum() + 0.0 * value  # every cell sees every cell

    model, guide, args = cases.ALL["plate_bernoulli"]()
    with pytest.raises(ValueError, match="other cells"):
        make_elbo("relax", control_variate=Mixing()).loss_and_grads(model, guide, *args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"control_variate": "lax"}, "control_variate"),
        ({"eta": "one"}, "eta"),
        ({"hidden_dims": (0,)}, "hidden_dims"),
        ({"network": "net"}, "network"),
        ({"control_variate": "rebar", "network": torch.nn.Linear(1, 1)}, "network"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_elbo("relax", **kwargs)


def test_unsupported_site_is_named():
    model, guide, args = cases.ALL["poisson"]()
    with pytest.raises(ValueError, match=r"'n'.*Poisson"):
        make_elbo("relax").loss_and_grads(model, guide, *args)


# ------------------------------------------------------------------ the control-variate module
class _SharedNet(torch.nn.Module):
    """One user network for every site: one value per cell from the relaxed value."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, relaxed, *args):
        (name, value), *_ = reversed(list(relaxed.items()))
        return self.w * (value * torch.arange(1.0, value.shape[-1] + 1.0)).sum(-1)


def test_a_network_shared_by_two_sites_gets_the_variance_gradient_once():
    """The shared module's parameter is one tensor in the ELBO's module and one Pyro parameter,
    ``relax.net``; its gradient is the variance's (not once per site)."""
    net = _SharedNet()

    class Recording(RELAX_ELBO):
        def variance_term(self, variance):
            (self.expected,) = torch.autograd.grad(variance, [net.w], retain_graph=True)
            return super().variance_term(variance)

    model, guide, args = cases.ALL["two_sites_one_hot"]()
    elbo = Recording(control_variate=net)
    elbo.loss_and_grads(model, guide, *args)
    assert sum(p is net.w for p in elbo.control_variates.parameters()) == 1
    assert torch.allclose(net.w.grad, elbo.expected, atol=1e-12) and elbo.expected.abs() > 0
    store = pyro.get_param_store()
    assert "relax.net$$$w" in store and store._params["relax.net$$$w"] is net.w
    assert not [k for k in store.keys() if k.endswith(".net$$$w") and k != "relax.net$$$w"]
    assert {"relax.b.temperature", "relax.c.temperature"} <= set(store.keys())  # no eta: "neural"


def test_the_control_variates_are_one_module_and_the_param_store_holds_its_tensors():
    model, guide, args = cases.ALL["two_sites_one_hot"]()
    elbo = make_elbo("relax", hidden_dims=(4,))
    elbo.loss_and_grads(model, guide, *args)
    module = elbo.control_variates
    store = dict(pyro.get_param_store().named_parameters())
    own = {k: v for k, v in store.items() if k.startswith("relax.")}
    assert set(map(id, own.values())) == set(map(id, module.parameters()))
    assert len(list(module.parameters())) == len(own) == 2 * (2 + 4)  # per site: T, eta, 2 layers
    assert all(k in module.state_dict() for k in ("sites.b.temperature_unconstrained",
                                                  "sites.c.net.net.0.weight"))
