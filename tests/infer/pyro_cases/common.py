"""What the copies of Pyro's test cases share: the ELBOs they run with, Pyro's ``assert_equal``
(absolute tolerance, as ``tests/common.py`` of pyro-ppl/pyro) and the documented refusals."""

import numbers

import numpy as np
import torch

from pyro_relax.infer import ESTIMATORS

#: the pyro-relax ELBOs each case runs with, in place of Pyro's
ELBOS = ["rloo", "vargrad", "arm", "disarm", "rebar", "relax", "relax-neural"]


def make(name, **kwargs):
    """The ELBO ``name`` built with Pyro's keyword arguments (``num_particles`` included,
    which every pyro-relax ELBO takes: independent estimates for the fixed-cost ones)."""
    return ESTIMATORS[name].build(**kwargs)


def assert_equal(actual, expected, prec=1e-5, msg=""):
    """``|actual - expected| <= prec`` elementwise."""
    if isinstance(actual, numbers.Number) and isinstance(expected, numbers.Number):
        assert abs(actual - expected) <= prec, msg or "{} vs {}".format(actual, expected)
        return
    if isinstance(actual, np.ndarray) or isinstance(expected, np.ndarray):
        actual, expected = torch.as_tensor(np.asarray(actual)), torch.as_tensor(np.asarray(expected))
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected).type_as(torch.as_tensor(actual))
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= prec, msg or "max |actual - expected| = {} > {}\nexpected {}\n  actual {}".format(
        err, prec, expected.tolist(), actual.tolist())


#: (test function, ELBO, id fragment or None) -> the ValueError each refusal raises. These are
#: the documented refusals (README, "Pyro's own test cases"): a site the estimator does not
#: handle, named in the error.
_NOT_REPARAMETERIZED = r"cannot handle guide site '\w+' with distribution (Nonreparameterized)?Normal"
_TOO_FEW = r"num_particles.*>= 2"
REFUSALS = {}
for _elbo in ("arm", "disarm", "rebar", "relax", "relax-neural"):
    for _test in ("test_subsample_gradient", "test_plate", "test_plate_elbo_vectorized_particles",
                  "test_subsample_gradient_sequential", "test_particle_gradient"):
        for _variant in ("nonreparam", "reparam-False"):
            REFUSALS[(_test, _elbo, _variant)] = _NOT_REPARAMETERIZED
for _elbo in ("rloo", "vargrad"):
    REFUSALS[("test_particle_gradient", _elbo, None)] = _TOO_FEW
for _elbo in ("rebar", "relax"):
    REFUSALS[("test_vectorized_importance", _elbo, None)] = r"cannot relax guide site 'a'.*index"


def refusal(item):
    """The documented refusal of a collected test, or None."""
    name = item.originalname
    params = getattr(item, "callspec", None)
    elbo = params.params.get("Elbo") if params is not None else None
    elbo = elbo.partition(":")[0] if elbo else elbo  # "relax:differentiable_loss" is RELAX
    for (test, estimator, fragment), pattern in REFUSALS.items():
        if test == name and estimator == elbo and (fragment is None or fragment in item.name):
            return pattern
    return None


#: options of the ELBOs in these cases: RELAX's default 200 x 200 network costs minutes at
#: Pyro's 100,000 plate cells; a small one estimates the same gradient (unbiased whatever the
#: control variate)
OPTIONS = {"relax": {"hidden_dims": (16,)}, "relax-neural": {"hidden_dims": (16,)}}


def make_small(name, **kwargs):
    """:func:`make` with :data:`OPTIONS`."""
    return make(name, **dict(OPTIONS.get(name, {}), **kwargs))


def mc_failures(run, num_particles, expected, prec, batches=8, max_batches=512):
    """Pyro's ``assert_equal(actual, expected, prec)`` for a Monte Carlo estimate, as a
    statistical test. Pyro's tolerances are calibrated to its own estimator and seed (for
    ``test_elbo_normal`` the tolerance is one standard error); here the estimate is the mean of
    ``batches`` independent runs of ``num_particles // batches`` particles each (Pyro's total
    budget), its standard error taken from their spread, and runs are added (up to
    ``max_batches``, i.e. 64 times Pyro's budget) until four standard errors fit in the
    tolerance. The test then asserts ``|mean - expected| <= prec`` (``assert not
    mc_failures(...)``), which a correct estimator fails with probability below 1e-4, and
    which an error of ``prec`` fails half the time or more.

    :param run: ``run(n) -> tensor or tuple of tensors``, one estimate with ``n`` particles.
    :param expected: the exact value(s), matching ``run``'s output.
    :param prec: the tolerance (one for all, or one per output).
    :returns: the failures' messages (empty when every output is within its tolerance).
    """
    n = max(1, num_particles // batches)
    as_tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x,)  # noqa: E731
    expected = tuple(torch.as_tensor(e, dtype=torch.get_default_dtype()) for e in as_tuple(expected))
    precs = as_tuple(prec) if isinstance(prec, (tuple, list)) else (prec,) * len(expected)
    draws = []
    while True:
        draws += [tuple(torch.as_tensor(d, dtype=torch.get_default_dtype()).detach().clone()
                        for d in as_tuple(run(n))) for _ in range(batches if not draws else len(draws))]
        stacked = [torch.stack([d[i] for d in draws]) for i in range(len(expected))]
        se = [s.std(0) / len(draws) ** 0.5 for s in stacked]
        if all(float(4 * e.max()) <= p for e, p in zip(se, precs)) or len(draws) >= max_batches:
            break
    failures = []
    for s, e, err, p in zip(stacked, expected, se, precs):
        mean = s.mean(0)
        if float(4 * err.max()) > p:
            failures.append(
                "the estimate's standard error {} after {} runs of {} particles is too large "
                "to test at Pyro's tolerance {}".format(err.tolist(), len(draws), n, p))
        elif float((mean - e.reshape(mean.shape)).abs().max()) > p:
            failures.append("mean {} (se {}, {} runs of {}) vs exact {}, tolerance {}".format(
                mean.tolist(), err.tolist(), len(draws), n, e.tolist(), p))
    return failures
