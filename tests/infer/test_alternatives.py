"""The Alternatives engine against brute force: a plan's rows give each plate cell the learning
signal its meaning promises (per cell: that cell changed, the others at their sample; joint:
the whole site changed), on separable and on coupled cells, batched and one at a time."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import prune_subsample_sites

from pyro_relax.infer import Alternatives, DiscreteELBO, SitePlan
from pyro_relax.infer.util import learning_signals

from . import cases


class _Recording(SitePlan):
    def surrogate(self, f_sample, f_rows):
        self.f_sample, self.f_rows = f_sample, f_rows
        return 0.0


class _AllCategories(DiscreteELBO):
    """Plans every category of every cell of a Categorical site (a local expectation's rows)."""

    def __init__(self, joint, **kwargs):
        super().__init__(**kwargs)
        self.joint, self.plans = joint, {}

    def site_plan(self, particle, name):
        site = particle.guide_trace.nodes[name]
        C = site["fn"].logits.shape[-1]
        rows = torch.arange(C).reshape((C,) + (1,) * site["value"].dim()).expand(
            (C,) + site["value"].shape).to(site["value"].dtype)
        self.plans[name] = _Recording(rows, joint=self.joint)
        return self.plans[name]


class _Set(pyro.poutine.messenger.Messenger):
    """Sets latent sites' values (not observed, unlike ``poutine.condition``)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        if msg["name"] in self.values:
            msg["value"], msg["done"] = self.values[msg["name"]], True


def _signal_at(model, guide, args, values, name):
    """The learning signal of site ``name`` with the guide's sites set to ``values``."""
    guide_trace = poutine.trace(_Set(values)(guide)).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return learning_signals(model_trace, guide_trace, [name])[name]


@pytest.mark.parametrize("vectorize", [None, False], ids=["batched", "one-at-a-time"])
@pytest.mark.parametrize("case", ["plate_categorical", "plate_categorical_global"])
@pytest.mark.parametrize("joint", [False, True], ids=["per-cell", "joint"])
def test_rows_mean_what_the_plan_says(case, joint, vectorize):
    model, guide, args = cases.CATEGORICAL[case]()
    elbo = _AllCategories(joint, max_plate_nesting=1, vectorize_alternatives=vectorize)
    pyro.set_rng_seed(3)
    elbo.loss_and_grads(model, guide, *args)
    plan = elbo.plans["z"]
    pyro.set_rng_seed(3)  # the same sample again
    sample = poutine.trace(guide).get_trace(*args).nodes["z"]["value"]
    N, C = sample.shape[0], plan.rows.shape[0]
    for c in range(C):
        for n in range(N):
            z = sample.clone()
            if joint:
                z[:] = c
            else:
                z[n] = c
            expected = _signal_at(model, guide, args, {"z": z}, "z")[n]
            assert torch.allclose(plan.f_rows[c, n], expected, atol=1e-10), (c, n)
    assert torch.allclose(plan.f_sample.reshape(-1), _signal_at(model, guide, args, {"z": sample}, "z"))


def test_cells_are_split_only_when_coupled():
    """Separable cells: one row per category; coupled cells: one row per changed cell."""
    counts = {}
    for case in ["plate_categorical", "plate_categorical_global"]:
        pyro.clear_param_store()
        model, guide, args = cases.CATEGORICAL[case]()
        elbo = _AllCategories(False, max_plate_nesting=1, vectorize_alternatives=False)
        elbo.loss_and_grads(model, guide, *args)
        counts[case] = elbo.alternatives.rows_scored["z"]
    assert counts["plate_categorical"] <= 4  # 4 categories, the sample's own left out per cell
    assert counts["plate_categorical_global"] == 3 * (3 - 1)  # 3 cells x 2 other categories


def test_separable_is_the_plate_structure():
    engine = Alternatives()
    for case, expected in [("plate_categorical", True), ("plate_categorical_global", False)]:
        pyro.clear_param_store()
        model, guide, args = cases.CATEGORICAL[case]()
        elbo = DiscreteELBO(max_plate_nesting=1)
        (particle,) = list(elbo._get_traces(model, guide, args, {}))
        assert engine.separable(particle, "z") is expected


def test_bad_vectorize_option():
    with pytest.raises(ValueError, match="vectorize_alternatives"):
        Alternatives(vectorize="always")


def test_guide_messenger_alternatives_rerun_the_guide():
    """An effect-style guide runs the model itself: its alternatives re-run it whole, and a
    downstream site's posterior follows the changed value."""
    from pyro.poutine.guide import GuideMessenger

    def model():
        z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
        c = pyro.sample("c", dist.Normal(z.to(torch.get_default_dtype()), 1.0))
        pyro.sample("x", dist.Normal(c, 0.5), obs=torch.tensor(1.0))

    class Guide(GuideMessenger):
        def get_posterior(self, name, prior):
            if name == "z":
                return dist.Categorical(logits=torch.tensor([0.2, -0.1, 0.3]))
            return dist.Normal(2.0 * self.upstream_value("z").to(torch.get_default_dtype()), 1.0)

    def function_guide():  # the same guide, written as a function (for the brute force)
        z = pyro.sample("z", dist.Categorical(logits=torch.tensor([0.2, -0.1, 0.3])))
        pyro.sample("c", dist.Normal(2.0 * z.to(torch.get_default_dtype()), 1.0))

    elbo = _AllCategories(True, max_plate_nesting=0)
    pyro.set_rng_seed(5)
    elbo.loss_and_grads(model, Guide(model))
    plan = elbo.plans["z"]
    pyro.set_rng_seed(5)
    sample = poutine.trace(function_guide).get_trace().nodes
    eps = sample["c"]["value"] - 2.0 * sample["z"]["value"]  # the Normal's noise, redrawn
    for c in range(3):
        values = {"z": torch.tensor(c), "c": 2.0 * c + eps}
        expected = _signal_at(model, function_guide, (), values, "z")
        assert torch.allclose(plan.f_rows[c], expected, atol=1e-10), c
