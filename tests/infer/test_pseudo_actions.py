"""ARSM's pseudo actions in bounded memory: the O(1) swap rule and the per-cell packing agree
with brute force, packed and unpacked scoring give the same gradient, and a model whose cells
are not separable is scored unpacked (and would be biased otherwise)."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_relax.infer import ARSM_ELBO, Alternatives
from pyro_relax.infer.pseudo_actions import SwapTable, pack, unique_rows

from .exact import check_unbiased, param_leaves


def _table(N, K, C, seed=0):
    torch.manual_seed(seed)
    logits = torch.randn(N, K, C)
    e = torch.empty(N, K, C).exponential_()
    return SwapTable(logits, e / e.sum(-1, keepdim=True)), logits, e / e.sum(-1, keepdim=True)


def _brute_actions(logits, pi, c, j):
    swapped = pi.clone()
    swapped[..., c], swapped[..., j] = pi[..., j], pi[..., c]
    return (swapped.log() - logits).argmin(-1)


@pytest.mark.parametrize("N,K,C", [(3, 1, 2), (4, 1, 3), (5, 2, 5), (2, 3, 10)])
def test_actions_match_brute_force(N, K, C):
    table, logits, pi = _table(N, K, C)
    cs, js = zip(*itertools.product(range(C), range(C)))
    got = table.actions(torch.tensor(cs), torch.tensor(js))
    for m, (c, j) in enumerate(zip(cs, js)):
        assert torch.equal(got[m], _brute_actions(logits, pi, c, j))
    assert torch.equal(table.sample, (pi.log() - logits).argmin(-1))


@pytest.mark.parametrize("N,K,C", [(6, 1, 4), (5, 1, 12), (4, 3, 5), (3, 2, 2)])
def test_distinct_packs_each_cells_distinct_actions(N, K, C):
    table, logits, pi = _table(N, K, C, seed=1)
    rows, valid, counts = table.distinct()
    for n in range(N):
        expected = {
            tuple(_brute_actions(logits, pi, c, j)[n].tolist())
            for c in range(C)
            for j in range(C)
        } - {tuple(table.sample[n].tolist())}
        got = [tuple(rows[r, n].tolist()) for r in range(rows.shape[0]) if valid[r, n]]
        assert len(got) == len(set(got)) == counts[n]
        assert set(got) == expected
        # padding holds the sample
        for r in range(rows.shape[0]):
            if not valid[r, n]:
                assert torch.equal(rows[r, n], table.sample[n])


def test_gradient_matches_the_arsm_formula():
    N, K, C = 3, 2, 4
    table, logits, pi = _table(N, K, C, seed=2)
    f = lambda z: (z.to(torch.get_default_dtype()) * torch.tensor([1.0, -2.0])).sum(-1) ** 2  # noqa: E731
    got = table.gradient(lambda actions, c, j: f(actions))
    expected = torch.zeros(N, K, C)
    for n in range(N):
        t = torch.tensor([[f(_brute_actions(logits, pi, c, j)[n]) for j in range(C)] for c in range(C)])
        t = t - t.mean(0, keepdim=True)  # (c, j)
        for k in range(K):
            expected[n, k] = (t * (1 - C * pi[n, k])).sum(-1) / C
    assert torch.allclose(got, expected, atol=1e-12)


def test_memory_is_chunked(monkeypatch):
    """Chunks of a few references give the same results as one chunk."""
    import pyro_relax.infer.pseudo_actions as pa

    table, logits, pi = _table(7, 2, 9, seed=3)
    rows, valid, counts = table.distinct()
    f = lambda z: z.sum(-1).to(torch.get_default_dtype()).sin()  # noqa: E731
    g = table.gradient(lambda actions, c, j: f(actions))
    monkeypatch.setattr(pa, "CHUNK_ELEMENTS", 1)  # one reference per chunk
    rows2, valid2, counts2 = table.distinct()
    assert torch.equal(counts, counts2)
    for n in range(7):  # the same distinct actions per cell (their order may differ)
        a = {tuple(rows[r, n].tolist()) for r in range(rows.shape[0]) if valid[r, n]}
        b = {tuple(rows2[r, n].tolist()) for r in range(rows2.shape[0]) if valid2[r, n]}
        assert a == b
    assert torch.allclose(g, table.gradient(lambda actions, c, j: f(actions)), atol=1e-12)


def test_pack_and_unique_rows_are_exact():
    torch.manual_seed(0)
    actions = torch.randint(0, 10, (500, 20))
    cells = torch.randint(0, 7, (500,))
    keys = pack(torch.cat([cells[:250], cells[:250]]), torch.cat([actions[:250], actions[:250]]), 10)
    unique, inverse = unique_rows(keys)
    exact, _ = torch.unique(keys, dim=0, return_inverse=True)
    assert len(unique) == len(exact)
    assert torch.equal(unique[inverse], keys)
    # distinct (cell, action) pairs never share a key
    pairs = {(int(c), tuple(a.tolist())) for c, a in zip(cells, actions)}
    assert len(torch.unique(pack(cells, actions, 10), dim=0)) == len(pairs)


# ------------------------------------------------------------------ in the estimator
def _plate_categorical(global_after):
    data = torch.tensor([0.3, -1.2, 2.0, 0.5])

    def model():
        locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5]))
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)
        if global_after:  # a term outside the plate that reads every cell's value
            pyro.sample("total", dist.Normal(locs[z].sum(-1), 0.5), obs=torch.tensor(2.0))

    def guide():
        phi = pyro.param("phi", torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4], [1.0, 0.2, 0.0], [-0.3, 0.1, 0.6]]))
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide


def _grads(elbo, model, guide, seed):
    for p in param_leaves().values():
        p.grad = None
    pyro.set_rng_seed(seed)
    elbo.loss_and_grads(model, guide)
    return {k: p.grad.clone() for k, p in param_leaves().items()}


class _Separable(Alternatives):
    """An engine that takes every site's cells for separable (``True``) or not (``False``)."""

    def __init__(self, separable):
        super().__init__()
        self.answer = separable

    def separable(self, particle, name):
        return self.answer


def test_packed_and_unpacked_scoring_give_the_same_gradient():
    model, guide = _plate_categorical(global_after=False)
    elbo = ARSM_ELBO(max_plate_nesting=1)
    _grads(elbo, model, guide, 0)
    packed = [_grads(elbo, model, guide, s) for s in range(1, 6)]
    assert elbo.distinct_actions["z"]["mean"] is not None  # the packed path ran
    elbo = ARSM_ELBO(max_plate_nesting=1, alternatives=_Separable(False))
    unpacked = [_grads(elbo, model, guide, s) for s in range(1, 6)]
    for a, b in zip(packed, unpacked):
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-10), k


def test_cells_not_separable_are_scored_unpacked_and_unbiased():
    model, guide = _plate_categorical(global_after=True)
    elbo = ARSM_ELBO(max_plate_nesting=1)
    ok, report = check_unbiased(elbo, model, guide, 600)
    assert ok, report
    assert elbo.distinct_actions["z"]["mean"] is None  # scored unpacked
    assert elbo.distinct_actions["z"]["rows"] > 0


def test_power_packing_cells_that_are_not_separable_is_biased():
    # WRONG: an engine that takes the cells for separable, so ARSM packs them.
    model, guide = _plate_categorical(global_after=True)
    elbo = ARSM_ELBO(max_plate_nesting=1, alternatives=_Separable(True))
    ok, report = check_unbiased(elbo, model, guide, 600)
    assert not ok, "packing a non-separable model went undetected:\n" + report
