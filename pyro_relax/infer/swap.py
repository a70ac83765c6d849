r"""The ARM family for categorical guide sites: AR, ARS, ARSM, ARS+, ARSM+ (strategies of
:class:`~pyro_relax.infer.ARSM_ELBO`).

A categorical site with logits :math:`\phi` (``C`` categories) draws
:math:`\pi \sim \mathrm{Dir}(1_C)`, samples :math:`z = \arg\min_i (\ln\pi_i - \phi_i)` and
evaluates pseudo actions :math:`z^{c \rightleftharpoons j}` (swap :math:`\pi_c` and
:math:`\pi_j`), computed in bounded memory by :class:`~pyro_relax.infer.pseudo_actions.SwapTable`.

Reference: M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
Backpropagation Through Categorical Variables", ICML 2019.
"""

import torch
import torch.nn.functional as F

from .pseudo_actions import SwapTable, pack, unique_rows
from .site_plan import SitePlan
from .strategy import SiteStrategy, check_categories, dirichlet_noise
from .util import cell_shape, expand_to_cells, left_pad

__all__ = ["AR", "ARS", "ARSM", "ARSMPlus", "ARSPlus", "DirichletSwap"]


class DirichletSwap(SiteStrategy):
    r"""Base class of the Dirichlet-augmented estimators.

    :param swap_table: the :class:`~pyro_relax.infer.pseudo_actions.SwapTable` class that
        computes the pseudo actions and the gradient (a subclass can change its math).
    """

    kinds = ("categorical", "one_hot")
    #: which references: ``"all"`` (ARSM), ``"one"`` drawn uniformly (ARS) or ``None`` (AR)
    references = "all"
    #: replace each reference's weight by its conditional mean (ARS+, ARSM+)
    rao_blackwellize = False

    def __init__(self, swap_table=SwapTable):
        self.swap_table = swap_table

    def check(self, who, name, info, fn):
        check_categories(self, who, name, info, fn)

    def sample(self, info):
        noise = dirichlet_noise(info.logits.detach())
        return self.redraw(info, noise), noise

    def redraw(self, info, noise):
        logits = info.logits.detach()
        z = (left_pad(noise, logits.dim()).log() - logits).argmin(-1)
        return F.one_hot(z, logits.shape[-1]).to(logits.dtype) if info.kind == "one_hot" else z

    def plan(self, info, value, noise, separable):
        return _SwapPlan(self, info, value, noise, separable)

    def gradient(self, table, lookup, references):
        """The family's gradient ``(N, K, C)`` from the signals ``lookup`` at the pseudo
        actions (see :meth:`SwapTable.gradient <pyro_relax.infer.pseudo_actions.SwapTable.gradient>`)."""
        return table.gradient(lookup, references, rao_blackwellize=self.rao_blackwellize)


class AR(DirichletSwap):
    r"""AR: :math:`\hat g_c = f(z)(1 - C\pi_c)`; no extra evaluation."""

    name = "ar"
    references = None

    def gradient(self, table, lookup, references):
        f = lookup(table.sample.unsqueeze(0), None, None)[0]
        return f.reshape(-1, 1, 1) * (1.0 - table.num_categories * table.log_pi.exp())


class ARS(DirichletSwap):
    r"""ARS: one reference :math:`j` drawn uniformly (shared by the site's cells),
    :math:`\hat g_c = \big(f(z^{c \rightleftharpoons j}) - \frac1C \sum_m
    f(z^{m \rightleftharpoons j})\big)(1 - C\pi_j)`; at most ``C - 1`` extra evaluations."""

    name = "ars"
    references = "one"


class ARSM(DirichletSwap):
    """ARSM: the mean of the ARS estimator over all ``C`` references; at most ``C(C - 1)/2``
    extra evaluations."""

    name = "arsm"


class ARSPlus(ARS):
    r"""ARS+: ARS Rao-Blackwellized: the reference's :math:`\pi_j` replaced by its conditional
    mean given the pseudo actions and every coordinate but :math:`\pi_j` and one other that
    absorbs the change (see :meth:`SwapTable.expected_reference
    <pyro_relax.infer.pseudo_actions.SwapTable.expected_reference>`), and the term of a
    variable whose pseudo actions all agree dropped. The evaluations of ARS."""

    name = "ars+"
    rao_blackwellize = True


class ARSMPlus(ARSM):
    """ARSM+: ARSM Rao-Blackwellized as ARS+; the evaluations of ARSM."""

    name = "arsm+"
    rao_blackwellize = True


class _SwapPlan(SitePlan):
    """A categorical site's pseudo actions (none for AR; the swaps with one random reference
    for ARS, ARS+; all swaps for ARSM, ARSM+): each cell's distinct actions packed into rows
    when the cells are separable (a per-cell plan), else one joint row per swap."""

    def __init__(self, strategy, info, value, noise, separable):
        self.strategy, self.info = strategy, info
        logits = info.logits.detach()
        C, device = logits.shape[-1], value.device
        N = int(torch.Size(cell_shape(info)).numel())
        table = self.table = strategy.swap_table(
            logits.reshape(N, -1, C), noise.expand(logits.shape).reshape(N, -1, C))
        self.references = torch.randint(C, (1,), device=device) if strategy.references == "one" else None
        self.counts, self.mode = None, "packed"
        if strategy.references is None:  # AR
            rows, self.mode = table.sample.new_zeros((0,) + table.sample.shape), "none"
        elif separable:
            rows, self.valid, self.counts = table.distinct(self.references)
            self.packed_rows = rows
        else:
            if self.references is None:
                cs, js = torch.triu_indices(C, C, offset=1, device=device)
            else:
                cs = torch.arange(C, device=device)
                cs = cs[cs != self.references]
                js = self.references.expand(len(cs))
            self.cs, self.js = cs, js
            rows, self.mode = table.actions(cs, js), "pairs"
        rows = F.one_hot(rows, C) if info.kind == "one_hot" else rows
        rows = rows.reshape((rows.shape[0],) + value.shape).to(value.dtype)
        super().__init__(rows, joint=self.mode == "pairs", distinct=self.mode != "pairs")

    def surrogate(self, f_sample, f_rows):
        table = self.table
        cell = cell_shape(self.info)
        N = table.num_cells
        f_base = expand_to_cells(f_sample, cell).reshape(N)
        f_rows = expand_to_cells(f_rows, cell, leading=1).reshape(-1, N)
        if self.mode == "none":
            lookup = lambda actions, c, j: f_base.unsqueeze(0)  # noqa: E731
        elif self.mode == "pairs":
            lookup = _pairs_lookup(self.cs, self.js, table.num_categories, f_base, f_rows)
        else:
            lookup = _packed_lookup(table, self.packed_rows, self.valid, f_base, f_rows)
        g = self.strategy.gradient(table, lookup, self.references)
        return (g.reshape(self.info.logits.shape).detach() * self.info.logits).sum()


def _pairs_lookup(cs, js, C, f_base, f_rows):
    """``lookup(actions, c, j)`` from the signals of one row per swap ``(cs[m], js[m])``."""
    index = torch.zeros(C, C, dtype=torch.long, device=f_base.device)
    index[cs, js] = torch.arange(1, len(cs) + 1, device=f_base.device)
    index[js, cs] = index[cs, js]
    f_all = torch.cat([f_base.unsqueeze(0), f_rows])
    return lambda actions, c, j: f_all[index[c, j]]


def _packed_lookup(table, rows, valid, f_base, f_rows):
    """``lookup(actions, c, j)``: each cell's learning signal at its pseudo actions, from the
    signals of its distinct actions (packed rows) and of its sample."""
    N, K, C = table.num_cells, table.num_vars, table.num_categories
    cells = torch.arange(N, device=f_base.device)
    r, n = valid.nonzero(as_tuple=True)
    if K == 1:
        values = f_base.unsqueeze(-1).expand(N, C).clone()
        values[n, rows[r, n, 0]] = f_rows[r, n]
        return lambda actions, c, j: values[cells, actions[..., 0]]
    keys = torch.cat([pack(n, rows[r, n], C), pack(cells, table.sample, C)])
    known = torch.cat([f_rows[r, n], f_base])

    def lookup(actions, c, j):
        M = actions.shape[0]
        query = pack(cells.expand(M, N).reshape(-1), actions.reshape(M * N, K), C)
        unique, inverse = unique_rows(torch.cat([keys, query]))
        f = known.new_full((len(unique),), float("nan"))
        f[inverse[: len(keys)]] = known
        out = f[inverse[len(keys):]].reshape(M, N)
        if bool(torch.isnan(out).any()):
            raise RuntimeError("ARSM_ELBO: a pseudo action without a signal (internal error)")
        return out

    return lookup
