"""Every estimator's mean gradient equals the exact -ELBO gradient (by enumeration) within
4 Monte Carlo standard errors, for every model and guide parameter; and deliberately wrong
variants fail the same check."""

import pytest

import pyro_relax.infer.discrete_elbo as discrete_elbo
from pyro_relax.infer import ARSM_ELBO, ReinforceLOO_ELBO, VarGrad_ELBO

from . import cases
from .exact import check_unbiased

NUM_SAMPLES = 600

ESTIMATORS = {
    "loo3": lambda: ReinforceLOO_ELBO(num_particles=3),
    "loo3-vectorized": lambda: ReinforceLOO_ELBO(num_particles=3, vectorize_particles=True),
    "vargrad2": lambda: VarGrad_ELBO(num_particles=2),
    "vargrad3-vectorized": lambda: VarGrad_ELBO(num_particles=3, vectorize_particles=True),
    "arm": lambda: ARSM_ELBO(),
    "disarm2-vectorized": lambda: ARSM_ELBO(
        num_particles=2, vectorize_particles=True, bernoulli="disarm"
    ),
}

SUPPORTS_POISSON = {"loo3", "loo3-vectorized", "vargrad2", "vargrad3-vectorized"}

# Particles run in sequence only change how per-particle tensors are laid out, so the
# sequential variants are checked on a subset of the cases.
SEQUENTIAL = {"loo3", "vargrad2"}
SEQUENTIAL_CASES = {"plate_bernoulli", "mixed", "subsampled", "sequential_plate", "poisson"}


def _pairs():
    for estimator in sorted(ESTIMATORS):
        for case in sorted(cases.ALL):
            if case == "poisson" and estimator not in SUPPORTS_POISSON:
                continue  # ARSM_ELBO refuses Poisson sites (tested in test_errors.py)
            if estimator in SEQUENTIAL and case not in SEQUENTIAL_CASES:
                continue
            yield estimator, case


@pytest.mark.parametrize("estimator,case", list(_pairs()))
def test_unbiased(estimator, case):
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(ESTIMATORS[estimator](), model, guide, NUM_SAMPLES, *args)
    assert ok, report


# ---------------------------------------------------------------------------------- power
def _mean_baseline(x, dim=0):
    # WRONG: the baseline includes the particle's own signal.
    return x - x.mean(dim, keepdim=True)


@pytest.mark.parametrize("case", ["plate_bernoulli", "categorical"])
def test_power_baseline_not_left_out(monkeypatch, case):
    monkeypatch.setattr(discrete_elbo, "leave_one_out_centered", _mean_baseline)
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(ReinforceLOO_ELBO(num_particles=2), model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a biased baseline:\n" + report


@pytest.mark.parametrize("case", ["categorical", "one_hot_categorical", "sequential_plate"])
def test_power_arsm_wrong_reference(monkeypatch, case):
    right = ARSM_ELBO._categorical_grad

    def wrong(info, f_base, f_pairs, pi):
        # WRONG: the weights (1 - C pi_j) paired with the wrong reference categories.
        return right(info, f_base, f_pairs, pi.flip(-1))

    monkeypatch.setattr(ARSM_ELBO, "_categorical_grad", staticmethod(wrong))
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(ARSM_ELBO(), model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a wrong ARSM weight:\n" + report


def test_power_disarm_without_sigmoid_weight(monkeypatch):
    def wrong(self, info, b, b_twin, u, diff):
        # WRONG: DisARM's weight sigma(|alpha|) replaced by its value at alpha = 0.
        diff = diff.reshape(diff.shape + (1,) * info.event_dim)
        return 0.5 * diff * (1.0 - 2.0 * b_twin) * (b != b_twin).to(diff.dtype) * 0.5

    monkeypatch.setattr(ARSM_ELBO, "_bernoulli_grad", wrong)
    model, guide, args = cases.ALL["vector_bernoulli"]()
    ok, report = check_unbiased(ARSM_ELBO(bernoulli="disarm"), model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a wrong DisARM weight:\n" + report
