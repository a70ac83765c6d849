"""Every estimator's mean gradient equals the exact -ELBO gradient (by enumeration) within
4 Monte Carlo standard errors, for every model and guide parameter; and deliberately wrong
variants fail the same check."""

import pyro
import pytest
import torch

import pyro.distributions as dist
from pyro_relax.infer import Alternatives, ARSM, ARSM_ELBO, DisARM, make_elbo, ReinforceLOO_ELBO
from pyro_relax.infer.pseudo_actions import SwapTable

from . import cases
from .exact import check_unbiased

NUM_SAMPLES = 600

ESTIMATORS = {
    "loo3": lambda: make_elbo("rloo", num_particles=3),
    "loo3-vectorized": lambda: make_elbo("rloo", num_particles=3, vectorize_particles=True),
    "vargrad2": lambda: make_elbo("vargrad", num_particles=2),
    "vargrad3-vectorized": lambda: make_elbo("vargrad", num_particles=3, vectorize_particles=True),
    "arm": lambda: make_elbo("arm"),
    "disarm2-vectorized": lambda: make_elbo("disarm", num_particles=2, vectorize_particles=True),
    "disarm-one-at-a-time": lambda: make_elbo("disarm", vectorize_alternatives=False),
}
VECTORIZED = {"loo3-vectorized", "vargrad3-vectorized", "disarm2-vectorized"}

SUPPORTS_POISSON = {"loo3", "loo3-vectorized", "vargrad2", "vargrad3-vectorized"}

# Particles run in sequence only change how per-particle tensors are laid out, so the
# sequential variants are checked on a subset of the cases.
SEQUENTIAL = {"loo3", "vargrad2"}
SEQUENTIAL_CASES = {
    "plate_bernoulli",
    "mixed",
    "subsampled",
    "sequential_plate",
    "poisson",
    "two_layer_bernoulli",
    "python_branch",
}
# Scoring alternatives one at a time is checked on the programs that need it and on the
# dependent guides.
ONE_AT_A_TIME_CASES = set(cases.DEPENDENT) | set(cases.NOT_BROADCASTING) | {"plate_bernoulli"}


def _pairs():
    for estimator in sorted(ESTIMATORS):
        for case in sorted(cases.ALL):
            if case == "poisson" and estimator not in SUPPORTS_POISSON:
                continue  # ARSM_ELBO refuses Poisson sites (tested in test_errors.py)
            if estimator in SEQUENTIAL and case not in SEQUENTIAL_CASES:
                continue
            if estimator == "disarm-one-at-a-time" and case not in ONE_AT_A_TIME_CASES:
                continue
            if estimator in VECTORIZED and case in cases.NOT_BROADCASTING:
                continue  # Pyro's vectorized particles need broadcasting programs too
            yield estimator, case


@pytest.mark.parametrize("estimator,case", list(_pairs()))
def test_unbiased(estimator, case):
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(ESTIMATORS[estimator](), model, guide, NUM_SAMPLES, *args)
    assert ok, report


# ---------------------------------------------------------------------------------- power
# Each wrong variant is passed in as a piece (a subclass of the estimator, its strategy, table
# or engine), not patched into the package.
class _MeanBaselineLOO(ReinforceLOO_ELBO):
    def center(self, signals):
        # WRONG: the baseline includes the particle's own signal.
        return signals - signals.mean(0, keepdim=True)


@pytest.mark.parametrize("case", ["plate_bernoulli", "categorical"])
def test_power_baseline_not_left_out(case):
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(_MeanBaselineLOO(num_particles=2), model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a biased baseline:\n" + report


class _WrongReferenceTable(SwapTable):
    def gradient(self, lookup, references=None, rao_blackwellize=False):
        # WRONG: the weights (1 - C pi_j) paired with the wrong reference categories.
        self.log_pi = self.log_pi.flip(-1)
        try:
            return super().gradient(lookup, references, rao_blackwellize)
        finally:
            self.log_pi = self.log_pi.flip(-1)


@pytest.mark.parametrize("case", ["categorical", "one_hot_categorical", "sequential_plate"])
def test_power_arsm_wrong_reference(case):
    model, guide, args = cases.ALL[case]()
    elbo = ARSM_ELBO(categorical=ARSM(swap_table=_WrongReferenceTable))
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a wrong ARSM weight:\n" + report


class _DisARMWithoutSigmoidWeight(DisARM):
    def weight(self, logits):
        # WRONG: DisARM's weight sigma(|alpha|) replaced by its value at alpha = 0.
        return torch.full_like(logits, 0.5)


def test_power_disarm_without_sigmoid_weight():
    model, guide, args = cases.ALL["vector_bernoulli"]()
    elbo = ARSM_ELBO(bernoulli=_DisARMWithoutSigmoidWeight())
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect a wrong DisARM weight:\n" + report


class _StaleAlternatives(Alternatives):
    def needs_guide_rerun(self, first, num_sites):
        # WRONG: the guide is not run again, so sites downstream of a changed value keep their
        # sample (drawn from the old conditional).
        return False


@pytest.mark.parametrize(
    "case", ["categorical_then_bernoulli", "two_layer_bernoulli", "normal_given_categorical"]
)
def test_power_downstream_sites_not_redrawn(case):
    model, guide, args = cases.ALL[case]()
    ok, report = check_unbiased(make_elbo("arsm", alternatives=_StaleAlternatives()), model, guide,
                                NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect stale downstream sites:\n" + report


def test_independence_is_not_cached_across_calls():
    """A guide that is independent on its first call and dependent later (an argument switches
    it) is still handled on the later calls."""

    def model(dependent):
        z1 = pyro.sample("z1", dist.Bernoulli(0.5))
        z2 = pyro.sample("z2", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(3.0 * z1 - 2.0 * z2, 1.0), obs=torch.tensor(1.0))

    def guide(dependent):
        theta = pyro.param("theta", torch.tensor([0.3, -0.2]))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=theta[0]))
        shift = 4.0 * (2.0 * z1 - 1.0) if dependent else 0.0
        pyro.sample("z2", dist.Bernoulli(logits=theta[1] + shift))

    elbo = make_elbo("disarm")
    elbo.loss_and_grads(model, guide, False)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, True)
    assert ok, report
