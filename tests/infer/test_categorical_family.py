"""The categorical estimators of ARSM_ELBO besides ARSM: the ARM family (AR, ARS, ARS+, ARSM+;
Yin, Yue & Zhou 2019) and the coupled estimators (DisARM-IW, DisARM-SB, DisARM-Tree; Dong,
Mnih & Tucker 2021).

- the pieces, against brute force: the Rao-Blackwellized reference coordinate (an interval
  found by sweeping the coordinate; a conditional mean checked against Dirichlet draws grouped
  by their pseudo actions), ARS's normalisation, the symmetry step, the trees' marginals, the
  coupling's importance weights and the Rao-Blackwellized tree estimator (by enumerating the
  antithetic decisions);
- every estimator's mean gradient equals the exact one on the categorical cases;
- a deliberately wrong variant of each family fails the same check;
- bad input gets a ValueError naming the site and the option.
"""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_relax.infer.coupled as coupled
from pyro_relax.infer import (
    ARS, ARSM_ELBO, ARSMPlus, ARSPlus, DisARM_IW, DisARM_SB, DisARM_Tree, make_elbo,
)
from pyro_relax.infer.coupled import CategoricalTree, coupled_log_weight, tree_gradient
from pyro_relax.infer.pseudo_actions import SwapTable

from . import cases
from .exact import check_unbiased

NUM_SAMPLES = 600
CASES = dict(cases.ALL, **cases.CATEGORICAL)


def _table(N, K, C, seed=0, scale=1.5):
    torch.manual_seed(seed)
    logits = torch.randn(N, K, C) * scale
    e = torch.empty(N, K, C).exponential_()
    pi = e / e.sum(-1, keepdim=True)
    return SwapTable(logits, pi), logits, pi


def _all_pseudo_actions(pi, logits, j):
    """``z^{m <-> j}`` for every m, brute force: ``pi`` ``(..., C)`` -> ``(..., C)``."""
    C = pi.shape[-1]
    out = []
    for m in range(C):
        p = pi.clone()
        p[..., m], p[..., j] = pi[..., j], pi[..., m]
        out.append((p.log() - logits).argmin(-1))
    return torch.stack(out, -1)


# ------------------------------------------------------------------ ARS+ / ARSM+: the pieces
@pytest.mark.parametrize("N,K,C", [(2, 1, 2), (2, 2, 3), (2, 1, 5)])
def test_reference_interval_matches_a_sweep(N, K, C):
    """With the other coordinates fixed but pi_o = r - pi_j, the values of pi_j that reproduce
    every pseudo action z^{m<->j} form one interval, and expected_reference is the mean of
    its midpoints over o."""
    table, logits, pi = _table(N, K, C)
    got = table.expected_reference(torch.arange(C))  # (N, K, J)
    G = 4001
    for n, k, j in itertools.product(range(N), range(K), range(C)):
        observed = _all_pseudo_actions(pi[n, k], logits[n, k], j)
        mids, steps = [], []
        for o in range(C):
            if o == j:
                continue
            r = float(pi[n, k, j] + pi[n, k, o])
            x = torch.linspace(0.0, r, G)[1:-1]
            p = pi[n, k].expand(G - 2, C).clone()
            p[:, j], p[:, o] = x, r - x
            ok = (_all_pseudo_actions(p, logits[n, k], j) == observed).all(-1)
            idx = ok.nonzero().squeeze(-1)
            assert len(idx) and bool((idx[1:] - idx[:-1] == 1).all()), "not an interval"
            assert x[idx[0]] <= pi[n, k, j] <= x[idx[-1]]
            mids.append(0.5 * float(x[idx[0]] + x[idx[-1]]))
            steps.append(r / (G - 1))
        assert abs(float(got[n, k, j]) - sum(mids) / len(mids)) <= 1.01 * max(steps)


def _grouped_residual_z(table, mean_pi, j):
    """Dirichlet draws grouped by their pseudo actions for reference j: the largest |z| of
    the groups' mean of pi_j - mean_pi (zero for the conditional mean)."""
    C = table.num_categories
    cs = torch.arange(C)
    actions = table.actions(cs, torch.full_like(cs, j))[..., 0]  # (C, N)
    code = (actions * C ** torch.arange(C).unsqueeze(-1)).sum(0)
    residual = table.log_pi.exp()[:, 0, j] - mean_pi[:, 0, j]
    worst = 0.0
    for value in code.unique():
        x = residual[code == value]
        if len(x) < 100:
            continue
        worst = max(worst, float(x.mean().abs() / (x.std() / len(x) ** 0.5)))
    return worst


def test_reference_mean_is_the_conditional_mean_of_dirichlet_draws():
    """Among Dirichlet(1) draws that share their pseudo actions, pi_j averages to the
    Rao-Blackwellized value (the conditional mean given more, averaged); ignoring the
    pseudo actions' constraints (the mean (pi_j + pi_o) / 2 given the other coordinates
    alone) does not."""
    N, C = 60000, 4
    torch.manual_seed(0)
    logits = torch.tensor([0.4, -0.3, 1.0, 0.0]).expand(N, 1, C)
    e = torch.empty(N, 1, C).exponential_()
    table = SwapTable(logits, e / e.sum(-1, keepdim=True))
    mean_pi = table.expected_reference(torch.arange(C))
    pi = table.log_pi.exp()
    unconstrained = 0.5 * ((C - 2) * pi + pi.sum(-1, keepdim=True)) / (C - 1)
    right = [_grouped_residual_z(table, mean_pi, j) for j in range(C)]
    wrong = [_grouped_residual_z(table, unconstrained, j) for j in range(C)]
    assert max(right) < 4.5, right
    assert max(wrong) > 10.0, wrong


def _brute_ars(table, logits, pi, f, references, plus):
    N, K, C = logits.shape
    mean_pi = table.expected_reference(torch.tensor(references)) if plus else None
    g = torch.zeros(N, K, C)
    for n, k in itertools.product(range(N), range(K)):
        for a, j in enumerate(references):
            acts = [_all_pseudo_actions(pi[n], logits[n], j)[:, m] for m in range(C)]  # (K,) each
            t = torch.stack([f(z) for z in acts])
            t = t - t.mean()
            if plus:
                agree = all(bool(z[k] == acts[0][k]) for z in acts)
                weight = 0.0 if agree else 1.0 - C * mean_pi[n, k, a]
            else:
                weight = 1.0 - C * pi[n, k, j]
            g[n, k] += t * weight
    return g / len(references)


@pytest.mark.parametrize("plus", [False, True], ids=["ars", "ars+"])
def test_single_reference_gradient_is_not_divided_by_c(plus):
    """One reference: (f(z^{c<->j}) - mean_m f(z^{m<->j})) (1 - C pi_j), not divided by C; with
    the symmetry step, variables whose pseudo actions for j all agree get no term."""
    table, logits, pi = _table(3, 2, 4, seed=2, scale=2.5)

    def f(z):
        return (z.to(torch.get_default_dtype()) * torch.tensor([1.0, -2.0])).sum(-1) ** 2

    def lookup(actions, cs, js):
        return f(actions)

    for j in range(4):
        got = table.gradient(lookup, torch.tensor([j]), rao_blackwellize=plus)
        assert torch.allclose(got, _brute_ars(table, logits, pi, f, [j], plus), atol=1e-12)
    got = table.gradient(lookup, rao_blackwellize=plus)  # ARSM(+)
    assert torch.allclose(got, _brute_ars(table, logits, pi, f, list(range(4)), plus), atol=1e-12)


def test_symmetry_step_drops_agreeing_variables():
    """A variable with very peaked logits keeps its sample under every swap: zero gradient."""
    logits = torch.tensor([[[8.0, -8.0, -8.0], [0.2, 0.0, -0.1]]])
    pi = torch.tensor([[[0.3, 0.3, 0.4], [0.2, 0.5, 0.3]]])
    table = SwapTable(logits, pi)
    g = table.gradient(lambda actions, c, j: actions[..., 1].to(pi.dtype), rao_blackwellize=True)
    assert torch.equal(g[0, 0], torch.zeros(3))
    assert g[0, 1].abs().sum() > 0


# ------------------------------------------------------------------ coupled estimators: the pieces
def _node_pair_configurations(sigma):
    """Every joint value of the antithetic decisions (b_v, b~_v) at all nodes, with its
    probability: P(1,1) = (2s-1)+, P(0,0) = (1-2s)+, P(1,0) = P(0,1) = min(s, 1-s)."""
    per_node = []
    for s in sigma.tolist():
        per_node.append([
            ((True, True), max(0.0, 2 * s - 1)),
            ((False, False), max(0.0, 1 - 2 * s)),
            ((True, False), min(s, 1 - s)),
            ((False, True), min(s, 1 - s)),
        ])
    for combo in itertools.product(*per_node):
        prob = 1.0
        for _, p in combo:
            prob *= p
        if prob > 0:
            b = torch.tensor([c[0][0] for c in combo])
            bt = torch.tensor([c[0][1] for c in combo])
            yield b, bt, prob


@pytest.mark.parametrize("kind", ["sb", "tree"])
@pytest.mark.parametrize("C", [2, 3, 4, 5])
def test_tree_marginals_coupling_and_rao_blackwellization(kind, C):
    """By enumeration of the antithetic decisions: both samples are Categorical(softmax);
    the stick-breaking coupling over ascending logits reaches every pair of distinct
    categories, with q q / p = coupled_log_weight; and tree_gradient is DisARM on the
    decisions averaged given the pair."""
    torch.manual_seed(C)
    tree = CategoricalTree(C, kind)
    logits = torch.randn(C).sort().values
    alpha = tree.node_logits(logits)
    sigma = alpha.sigmoid()
    q = logits.softmax(-1)
    f = torch.randn(C)
    joint = torch.zeros(C, C)
    disarm = torch.zeros(C, C, C - 1)  # E[DisARM's estimate; pair]
    for b, bt, prob in _node_pair_configurations(sigma):
        z, zt = int(tree.decode(b)), int(tree.decode(bt))
        joint[z, zt] += prob
        sign, differ = 1.0 - 2.0 * bt.to(f.dtype), (b != bt).to(f.dtype)
        g = 0.5 * (f[z] - f[zt]) * sign * differ * coupled.parting_weight(sigma)
        disarm[z, zt] += prob * g
    assert torch.allclose(joint.sum(0), q) and torch.allclose(joint.sum(1), q)
    for a, b in itertools.product(range(C), repeat=2):
        if a == b:
            continue
        if kind == "sb":
            assert joint[a, b] > 0
            w = coupled_log_weight(tree, sigma, torch.tensor(a), torch.tensor(b)).exp()
            assert torch.allclose(w, q[a] * q[b] / joint[a, b])
        if joint[a, b] > 0:
            leaves = torch.tensor([a, b]).reshape(2, 1, 1)
            got = tree_gradient(tree, sigma.reshape(1, 1, -1), leaves, f[[a, b]].reshape(2, 1))
            # tree_gradient divides the pair's term by n (n - 1) = 2 and DisARM has 1/2: the same
            assert torch.allclose(got.reshape(-1), disarm[a, b] / joint[a, b], atol=1e-12)


# ------------------------------------------------------------------ exact-gradient proofs
UNBIASED = {
    # each option: the categorical, one-hot, plate and two-site cases, and a dependent guide
    "ar": ["categorical", "one_hot_categorical", "plate_categorical", "two_sites",
           "categorical_then_bernoulli"],
    "ars": ["categorical", "one_hot_categorical", "plate_categorical", "two_sites",
            "plate_categorical_global", "normal_given_categorical"],
    "ars+": ["categorical", "one_hot_categorical", "plate_categorical", "two_sites",
             "plate_categorical_global", "vector_categorical", "categorical_then_bernoulli"],
    "arsm+": ["categorical", "one_hot_categorical", "plate_categorical", "two_sites",
              "sequential_plate", "vector_categorical", "normal_given_categorical"],
    "disarm-iw": ["categorical", "one_hot_categorical", "plate_categorical", "two_sites",
                  "plate_categorical_global", "vector_categorical", "normal_given_categorical"],
    "disarm-sb": ["categorical", "one_hot_categorical", "plate_categorical", "two_sites",
                  "sequential_plate", "categorical_then_bernoulli"],
    "disarm-tree": ["categorical", "one_hot_categorical", "plate_categorical",
                    "two_sites_one_hot", "vector_categorical", "plate_categorical_global",
                    "categorical_then_bernoulli"],
    "disarm-iw:2": ["plate_categorical", "categorical_then_bernoulli"],
    "disarm-sb:2": ["vector_categorical"],
    "disarm-tree:3": ["one_hot_categorical"],
}


def _elbo(option, **kwargs):
    option, _, pairs = option.partition(":")
    if pairs:
        kwargs["num_pairs"] = int(pairs)
    return make_elbo(option, **kwargs)


@pytest.mark.parametrize(
    "option,case", [(o, c) for o, cs in UNBIASED.items() for c in cs]
)
def test_unbiased(option, case):
    model, guide, args = CASES[case]()
    ok, report = check_unbiased(_elbo(option), model, guide, NUM_SAMPLES, *args)
    assert ok, report


@pytest.mark.parametrize("option", ["ars+", "disarm-sb"])
def test_unbiased_with_vectorized_particles(option):
    model, guide, args = CASES["plate_categorical"]()
    elbo = _elbo(option, num_particles=2, vectorize_particles=True)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert ok, report


# ------------------------------------------------------------------ power
def _spread_categorical():
    """Near-uniform guide, widely spread model means: the coupling's weights matter."""

    def model():
        mu = pyro.param("mu", torch.tensor([-3.0, -1.0, 1.0, 3.0]))
        z = pyro.sample("z", dist.Categorical(torch.ones(4) / 4))
        pyro.sample("x", dist.Normal(mu[z], 1.0), obs=torch.tensor(0.5))

    def guide():
        phi = pyro.param("phi", torch.tensor([0.2, 0.0, -0.1, 0.1]))
        pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide, ()


def _peaked_and_flat():
    """Two variables in one site: a peaked one (its pseudo actions mostly agree) and a flat
    one that the model depends on strongly."""

    def model():
        mu = pyro.param("mu", torch.tensor([[0.0, 0.5, -0.5], [-3.0, 0.0, 3.0]]))
        z = pyro.sample("z", dist.OneHotCategorical(torch.ones(2, 3) / 3).to_event(1))
        pyro.sample("x", dist.Normal((z * mu).sum((-2, -1)), 1.0), obs=torch.tensor(1.0))

    def guide():
        phi = pyro.param("phi", torch.tensor([[2.5, -2.0, -2.0], [0.1, 0.0, -0.1]]))
        pyro.sample("z", dist.OneHotCategorical(logits=phi).to_event(1))

    return model, guide, ()


def _assert_detected(option, program, what):
    model, guide, args = program()
    elbo = option if isinstance(option, ARSM_ELBO) else _elbo(option)
    ok, report = check_unbiased(elbo, model, guide, NUM_SAMPLES, *args)
    assert not ok, "the harness failed to detect {}:\n{}".format(what, report)


# Each wrong variant is passed in as a piece (a strategy or a table), not patched in.
class _ARSDividedByC(SwapTable):
    def gradient(self, lookup, references=None, rao_blackwellize=False):
        # WRONG: one reference's term divided by C (ARSM's normalisation), not by 1.
        g = super().gradient(lookup, references, rao_blackwellize)
        J = self.num_categories if references is None else len(references)
        return g * J / self.num_categories


def test_power_ars_divided_by_c():
    _assert_detected(ARSM_ELBO(categorical=ARS(swap_table=_ARSDividedByC)), CASES["categorical"],
                     "ARS divided by C")


class _ReferenceMeanIgnoringActions(SwapTable):
    def expected_reference(self, references, actions=None):
        # WRONG: E[pi_j | pi_{-(j,o)}] = (pi_j + pi_o) / 2 without the pseudo actions' bounds.
        pi = self.log_pi.exp()
        C = self.num_categories
        return 0.5 * ((C - 2) * pi[..., references] + pi.sum(-1, keepdim=True)) / (C - 1)


@pytest.mark.parametrize("strategy,case", [(ARSPlus, "categorical"), (ARSMPlus, "one_hot_categorical")])
def test_power_reference_mean_ignores_the_pseudo_actions(strategy, case):
    elbo = ARSM_ELBO(categorical=strategy(swap_table=_ReferenceMeanIgnoringActions))
    _assert_detected(elbo, CASES[case], "a reference mean ignoring the pseudo actions")


class _SymmetryStepOnTheWrongVariables(SwapTable):
    @staticmethod
    def agreement(actions):
        # WRONG: a cell's variables all dropped when any one of them agrees.
        agree = (actions == actions[:, :1]).all(1)  # (J, N, K)
        return agree.any(-1, keepdim=True).expand_as(agree).permute(1, 2, 0)


@pytest.mark.parametrize("strategy", [ARSPlus, ARSMPlus])
def test_power_symmetry_step_on_the_wrong_variables(strategy):
    elbo = ARSM_ELBO(categorical=strategy(swap_table=_SymmetryStepOnTheWrongVariables))
    _assert_detected(elbo, _peaked_and_flat, "the symmetry step on the wrong variables")


class _IWWithoutImportanceWeight(DisARM_IW):
    def log_weight(self, tree, sigma, leaf_a, leaf_b):
        # WRONG: the antithetic pair treated as independent (weight 1).
        w = super().log_weight(tree, sigma, leaf_a, leaf_b)
        return torch.where(torch.isinf(w), w, torch.zeros_like(w))


def test_power_disarm_iw_without_importance_weight():
    _assert_detected(ARSM_ELBO(categorical=_IWWithoutImportanceWeight()), _spread_categorical,
                     "a missing importance weight")


class _SBWithoutPartingWeight(DisARM_SB):
    def parting_weight(self, sigma):
        # WRONG: sigma(|alpha|) at the parting node replaced by 1 (leave-one-out on a pair).
        return torch.ones_like(sigma)


class _TreeWithoutPartingWeight(DisARM_Tree):
    parting_weight = _SBWithoutPartingWeight.parting_weight


@pytest.mark.parametrize("strategy", [_SBWithoutPartingWeight, _TreeWithoutPartingWeight],
                         ids=["disarm-sb", "disarm-tree"])
def test_power_tree_without_parting_weight(strategy):
    _assert_detected(ARSM_ELBO(categorical=strategy()), _spread_categorical,
                     "a missing parting weight")


# ------------------------------------------------------------------ evaluations
@pytest.mark.parametrize(
    "option,most", [("ar", 0), ("ars", 4), ("arsm", 10), ("disarm-sb", 1), ("disarm-iw:3", 5)]
)
def test_extra_evaluations(option, most):
    """Extra evaluations per step: AR none, ARS at most C - 1, ARSM at most C(C-1)/2,
    the coupled estimators at most 2 num_pairs - 1 (C = 5)."""
    model, guide, args = CASES["categorical"]()
    elbo = _elbo(option, max_plate_nesting=0)
    extra = []
    for _ in range(30):
        before = elbo.num_model_evaluations
        elbo.loss_and_grads(model, guide, *args)
        extra.append(elbo.num_model_evaluations - before - 1)
    assert max(extra) <= most and (most == 0 or max(extra) > 0)


# ------------------------------------------------------------------ errors
def test_bad_categorical_option():
    pattern = r"categorical: expected one of .*'disarm-tree', got 'rebar'"
    with pytest.raises(ValueError, match=pattern):
        ARSM_ELBO(categorical="rebar")


@pytest.mark.parametrize("kwargs", [dict(num_pairs=0), dict(num_pairs=1.5), dict(num_pairs=2)])
def test_bad_num_pairs(kwargs):
    with pytest.raises(ValueError, match="num_pairs"):
        ARSM_ELBO(**kwargs)  # num_pairs=2 with the default categorical='arsm'


@pytest.mark.parametrize("option", ["ars+", "disarm-sb"])
def test_poisson_site_names_site_and_option(option):
    model, guide, args = cases.poisson()
    pattern = r"categorical='{}'.*'n'.*Poisson".format(option.replace("+", r"\+"))
    with pytest.raises(ValueError, match=pattern):
        ARSM_ELBO(categorical=option).loss_and_grads(model, guide, *args)


@pytest.mark.parametrize("option", ["ar", "arsm+", "disarm-iw", "disarm-tree"])
@pytest.mark.parametrize("family", [dist.Categorical, dist.OneHotCategorical])
def test_single_category_names_site_and_option(option, family):
    def model():
        pyro.sample("y", family(torch.ones(1)))

    def guide():
        phi = pyro.param("phi", torch.zeros(1))
        pyro.sample("y", family(logits=phi))

    pattern = r"'y'.*{} with 1 category.*categorical='{}'".format(
        family.__name__, option.replace("+", r"\+")
    )
    with pytest.raises(ValueError, match=pattern):
        ARSM_ELBO(categorical=option).loss_and_grads(model, guide)
