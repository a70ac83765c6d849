"""Every ELBO on every guide style Pyro has: plain functions, PyroModule guides, the autoguides
of ``pyro.infer.autoguide`` (AutoNormal, AutoDelta, AutoDiagonalNormal,
AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoIAFNormal, AutoGuideList mixing an
autoguide for the continuous sites with a hand-written guide for the discrete ones, the
``*Messenger`` guides), ``pyro.contrib.easyguide`` and a user's own ``GuideMessenger`` with
discrete sites.

For each: the mean of ``loss`` equals the exact -ELBO (the mean of Trace_ELBO's) within 4 standard
errors, and the mean gradient is within 4 standard errors of the exact gradient (enumeration of
the discrete sites, Gauss-Hermite quadrature over the reparameterized sites' noise; for
AutoIAFNormal, whose ReLU flow defeats quadrature, Trace_ELBO's estimate with its own standard
error). Trace_ELBO runs too, as a check of the oracle on each style."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.contrib.easyguide import easy_guide
from pyro.infer import autoguide
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.guide import GuideMessenger
from torch.distributions import constraints

from pyro_relax.infer import make_elbo
from pyro_relax.testing import (
    check_unbiased, estimated_grads, exact_grads, exact_loss, init_params, param_leaves,
)

ESTIMATORS = ["trace", "rloo", "vargrad", "arm", "disarm", "arsm", "disarm-tree", "rebar",
              "relax", "relax-neural"]
NUM_SAMPLES = {"continuous": 300, "discrete": 600}
LOSS_SAMPLES = 100
#: the networks of RELAX's control variates are small here: what is tested is the guide style
OPTIONS = {"relax": {"hidden_dims": (32,)}, "relax-neural": {"hidden_dims": (32,)}}
X = torch.tensor([0.9, -0.4])


# ------------------------------------------------------------------ continuous: a linear-Gaussian model
def gaussian_model():
    shift = pyro.param("shift", torch.tensor(0.3))
    c = pyro.sample("c", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    A = torch.tensor([[1.0, 0.5], [-0.3, 0.8]])
    pyro.sample("x", dist.Normal(c @ A + shift, 0.7).to_event(1), obs=X)


def _auto(cls, **kwargs):
    return lambda: cls(gaussian_model, **kwargs)


class _ModuleGuide(PyroModule):
    def __init__(self):
        super().__init__()
        self.loc = PyroParam(torch.tensor([0.2, -0.1]))
        self.scale = PyroParam(torch.tensor([0.8, 0.6]), constraint=constraints.positive)

    def forward(self):
        pyro.sample("c", dist.Normal(self.loc, self.scale).to_event(1))


def _easyguide():
    @easy_guide(gaussian_model)
    def guide(self):
        group = self.group(match="c")
        loc = pyro.param("eg_loc", torch.tensor([0.1, 0.2]))
        scale = pyro.param("eg_scale", torch.tensor([0.9, 0.7]), constraint=constraints.positive)
        group.sample("guide_c", dist.Normal(loc, scale).to_event(1))

    return guide


def _function_guide():
    def guide():
        m = pyro.param("m", torch.tensor([0.1, -0.2]))
        s = pyro.param("s", torch.tensor([0.7, 0.9]), constraint=constraints.positive)
        pyro.sample("c", dist.Normal(m, s).to_event(1))

    return guide


CONTINUOUS = {
    "function": _function_guide,
    "pyro-module": _ModuleGuide,
    "AutoNormal": _auto(autoguide.AutoNormal),
    "AutoDelta": _auto(autoguide.AutoDelta),
    "AutoDiagonalNormal": _auto(autoguide.AutoDiagonalNormal),
    "AutoMultivariateNormal": _auto(autoguide.AutoMultivariateNormal),
    "AutoLowRankMultivariateNormal": _auto(autoguide.AutoLowRankMultivariateNormal, rank=1),
    "AutoIAFNormal": _auto(autoguide.AutoIAFNormal, hidden_dim=[3]),
    "AutoNormalMessenger": _auto(autoguide.AutoNormalMessenger),
    "AutoHierarchicalNormalMessenger": _auto(autoguide.AutoHierarchicalNormalMessenger),
    "AutoRegressiveMessenger": _auto(autoguide.AutoRegressiveMessenger),
    "easyguide": _easyguide,
}
#: quadrature nodes per noise dimension: 3 are exact for a quadratic log-density
NODES = 3
#: AutoIAFNormal's ReLU network makes the gradient's integrand discontinuous in the noise, and
#: Gauss-Hermite quadrature does not converge on it (the first layer's bias gradient moves by
#: 40% between 24 and 40 nodes); its reference is Trace_ELBO's pathwise gradient, estimated
#: with REFERENCE_DRAWS draws, and the test compares the two estimates at 4 combined standard
#: errors
NO_QUADRATURE = ("AutoIAFNormal",)
REFERENCE_DRAWS = 3000


# ------------------------------------------------------------------ discrete and continuous
def mixed_model():
    """A Bernoulli and a OneHotCategorical upstream of a Normal (dependent posterior)."""
    mu = pyro.param("mu", torch.tensor([-1.0, 0.5, 1.5]))
    z = pyro.sample("z", dist.Bernoulli(0.4))
    y = pyro.sample("y", dist.OneHotCategorical(torch.tensor([0.2, 0.5, 0.3])))
    c = pyro.sample("c", dist.Normal(2.0 * z - 1.0 + (y * mu).sum(-1), 1.0))
    pyro.sample("x", dist.Normal(c, 0.6), obs=torch.tensor(0.4))


class _MixedMessenger(GuideMessenger):
    """A user's effect-style guide: the Normal's posterior depends on the discrete values."""

    def get_posterior(self, name, prior):
        if name == "z":
            return dist.Bernoulli(logits=pyro.param("gz", torch.tensor(0.3)))
        if name == "y":
            return dist.OneHotCategorical(logits=pyro.param("gy", torch.tensor([0.2, -0.4, 0.1])))
        z, y = self.upstream_value("z"), self.upstream_value("y")
        b = pyro.param("gb", torch.tensor([0.5, -0.2, 0.8]))
        loc = pyro.param("ga", torch.tensor(-0.3)) + 0.7 * z + (y * b).sum(-1)
        return dist.Normal(loc, pyro.param("gs", torch.tensor(0.8), constraint=constraints.positive))


def _discrete_part():
    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("hz", torch.tensor(-0.2))))
        pyro.sample("y", dist.OneHotCategorical(logits=pyro.param("hy", torch.tensor([0.3, 0.0, -0.5]))))

    return guide


def _guide_list():
    guide = autoguide.AutoGuideList(mixed_model)
    guide.append(_discrete_part())  # the discrete sites first: the autoguide part is re-run
    guide.append(autoguide.AutoNormal(pyro.poutine.block(mixed_model, hide=["z", "y"])))
    return guide


def plate_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)


class _PlateMessenger(GuideMessenger):
    def get_posterior(self, name, prior):
        return dist.Bernoulli(logits=pyro.param("enc", torch.tensor([0.2, -0.5, 0.7])))


DISCRETE = {
    "GuideMessenger": (mixed_model, lambda: _MixedMessenger(mixed_model), ()),
    "GuideMessenger-plate": (plate_model, lambda: _PlateMessenger(plate_model),
                             (torch.tensor([0.5, -1.0, 1.5]),)),
    "AutoGuideList": (mixed_model, _guide_list, ()),
}


def _cases():
    for style in CONTINUOUS:
        for estimator in ESTIMATORS:
            yield "continuous", style, estimator
    for style in DISCRETE:
        for estimator in ESTIMATORS:
            yield "discrete", style, estimator


def _program(kind, style):
    if kind == "continuous":
        return gaussian_model, CONTINUOUS[style](), ()
    model, guide, args = DISCRETE[style]
    return model, guide(), args


_EXACT = {}


def _exact(kind, style, model, guide, args):
    """The exact -ELBO and its gradients at the current parameters, computed once per style
    (every test of a style starts from the same parameters; the cache checks they match)."""
    values = {k: v.detach().clone() for k, v in param_leaves().items()}
    cached = _EXACT.get((kind, style))
    if cached is None or cached[0].keys() != values.keys() or not all(
            torch.equal(cached[0][k], v) for k, v in values.items()):
        loss_fn = functools.partial(exact_loss, quadrature_nodes=NODES)
        with torch.no_grad():
            loss = float(loss_fn(model, guide, *args))
        grads = exact_grads(model, guide, *args, loss_fn=loss_fn)
        _EXACT[(kind, style)] = cached = (values, loss, grads)
    return cached[1], cached[2]


@pytest.mark.parametrize("kind,style,estimator", list(_cases()))
def test_loss_and_gradient(kind, style, estimator):
    model, guide, args = _program(kind, style)
    init_params(model, guide, *args)
    elbo = make_elbo(estimator, **OPTIONS.get(estimator, {}))
    if style in NO_QUADRATURE:
        return _check_against_trace_elbo(elbo, model, guide, NUM_SAMPLES[kind])
    exact, grads = _exact(kind, style, model, guide, args)
    losses = torch.tensor([elbo.loss(model, guide, *args) for _ in range(LOSS_SAMPLES)])
    se = float(losses.std()) / math.sqrt(LOSS_SAMPLES)
    assert abs(float(losses.mean()) - exact) <= 4 * se + 1e-9, (float(losses.mean()), exact, se)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES[kind], *args, exact=grads)
    assert ok, report


def _check_against_trace_elbo(elbo, model, guide, num_samples):
    """Mean loss and gradient against Trace_ELBO's (pathwise, unbiased), both estimated:
    within 4 standard errors of their difference."""
    state = {k: v.detach().clone() for k, v in param_leaves().items()}
    key = ("reference", tuple(sorted(state)))
    if key not in _EXACT or not all(torch.equal(_EXACT[key][0][k], v) for k, v in state.items()):
        pyro.set_rng_seed(123)
        reference = make_elbo("trace")
        losses = torch.tensor([reference.loss(model, guide) for _ in range(REFERENCE_DRAWS)])
        _EXACT[key] = (state, losses, estimated_grads(reference, model, guide, REFERENCE_DRAWS))
    _, ref_losses, ref_grads = _EXACT[key]
    losses = torch.tensor([elbo.loss(model, guide) for _ in range(LOSS_SAMPLES)])
    _assert_same_mean(losses, ref_losses, "loss")
    draws = estimated_grads(elbo, model, guide, num_samples)
    for name, ref in ref_grads.items():
        _assert_same_mean(draws[name], ref, name)


def _assert_same_mean(a, b, what):
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    err = (a.mean(0) - b.mean(0)).abs()
    assert bool((err <= 4 * se + 1e-9).all()), (what, a.mean(0).tolist(), b.mean(0).tolist(),
                                                se.tolist())
