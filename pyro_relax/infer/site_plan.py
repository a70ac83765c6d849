"""The per-site protocol between an estimator and :class:`~pyro_relax.infer.Alternatives`.

An estimator that needs the learning signal of a discrete site at other values (ARM's
antithetic twin, ARSM's pseudo actions, a local expectation over every category) describes
them in a :class:`SitePlan`: the rows of alternative values it needs, what a row means, and
how the signals at the sample and at the rows make the site's surrogate term. The engine
scores the rows of every site of a particle in one batched run and hands each plan its
signals.
"""

import torch

from .util import discrete_site_info, left_pad
from .pseudo_actions import unique_rows

__all__ = ["SitePlan"]


class SitePlan:
    r"""The alternatives of one discrete guide site of one particle, and the site's surrogate.

    ``rows`` holds ``R`` alternative values of the site, shape ``(R,) + value.shape``; the
    other sites stay at their sample, and guide sites downstream of this one are drawn again
    with common random numbers (see :mod:`pyro_relax.infer.substitution`). What a row means
    for the learning signal of each plate cell (each datapoint of ``pyro.plate("data", B)``):

    - ``joint=False`` (the default): in each plate cell, the row holds an alternative of *that
      cell*, every other cell at its sample; cell ``n``'s signal at row ``r`` is
      :math:`f_n(z_n = \text{rows}[r]_n, z_{-n})`. The engine packs the cells' alternatives
      into one row when the cells are separable (no sample site after the site lies outside
      its plates) and otherwise runs one row per changed cell, so the meaning holds whatever
      the program (see :meth:`Alternatives.separable <pyro_relax.infer.Alternatives.separable>`).
    - ``joint=True``: the row is one joint value of the whole site; cell ``n``'s signal at row
      ``r`` is :math:`f_n(z = \text{rows}[r])` (ARM's and DisARM's antithetic twin, ARSM's swap
      applied to every cell: estimators derived for the joint value).

    Rows equal to the sample are not run and equal rows are run once, unless ``distinct=True``
    promises that the rows are distinct by construction (which skips the comparison).

    Subclasses implement :meth:`surrogate`.

    :param torch.Tensor rows: the alternatives, ``(R,) + value.shape``.
    :param bool joint: the rows are joint values of the site (see above).
    :param bool distinct: the rows are pairwise distinct and differ from the sample.
    """

    def __init__(self, rows, joint=False, distinct=False):
        self.rows = rows
        self.joint = joint
        self.distinct = distinct

    def surrogate(self, f_sample, f_rows):
        """The site's surrogate term: a differentiable scalar whose gradient is the
        estimator's gradient for this site (e.g. ``(g.detach() * logits).sum()``).

        :param torch.Tensor f_sample: the learning signal of each plate cell at the sample
            (left-padded to ``max_plate_nesting`` dims).
        :param torch.Tensor f_rows: the signals at the rows, ``(R,) + cell shape``.
        """
        raise NotImplementedError


class _Block:
    """The rows one site contributes to a batched evaluation: those that differ from the
    sample (split into one row per changed cell for a per-cell plan on cells that are not
    separable), de-duplicated; and the way back from their signals to the plan's rows."""

    def __init__(self, plan, site, base, separable):
        self.plan, self.base = plan, base
        value = site["value"]
        rows = plan.rows
        self.num_plan_rows = rows.shape[0]
        self.split = None
        if not plan.joint and not separable and self.num_plan_rows:
            rows, self.split = _split_cells(rows, value, site["fn"].event_dim, base.shape)
        info = discrete_site_info("", site["fn"])
        todo, code = _changed(rows, value, info is not None and info.kind == "one_hot")
        if plan.distinct:
            kept, inverse = todo, torch.arange(len(todo), device=todo.device)
        else:
            unique, inverse = unique_rows(code[todo])
            kept = torch.full((len(unique),), -1, dtype=torch.long, device=todo.device)
            kept.scatter_(0, inverse.flip(0), todo.flip(0))
        self.rows, self.todo, self.kept, self.inverse = rows, todo, kept, inverse
        self.num_rows = len(kept)

    def values(self):
        """The rows to score, ``(num_rows,) + value.shape``."""
        return self.rows[self.kept]

    def signals(self, evaluated):
        """The plan's ``f_rows`` from the signals of the scored rows (``(num_rows,) + cell``)."""
        R = self.rows.shape[0]
        cell = torch.broadcast_shapes(self.base.shape, evaluated.shape[1:])
        full = self.base.expand((R,) + cell).clone()
        if len(self.todo):
            full[self.todo] = evaluated.expand((self.num_rows,) + cell)[self.inverse]
        if self.split is None:
            return full
        row, cell_index = self.split
        out = self.base.expand((self.num_plan_rows,) + cell).clone()
        flat, per_split = out.reshape(self.num_plan_rows, -1), full.reshape(R, -1)
        flat[row, cell_index] = per_split[torch.arange(R, device=row.device), cell_index]
        return flat.reshape(out.shape)


def _changed(rows, value, one_hot):
    """The indices of the rows that differ from ``value``, and every row's integer code."""
    if one_hot:
        rows, value = rows.argmax(-1), value.argmax(-1)
    code = rows.reshape(rows.shape[0], value.numel())
    differs = (code != value.reshape(1, -1)).any(-1)
    if code.dtype.is_floating_point:
        code = code.long() if bool((code == code.round()).all()) else code
    return differs.nonzero().squeeze(-1), code


def _split_cells(rows, value, event_dim, cell_shape):
    """One row per (plan row, plate cell) where the plan row changes the cell, holding that
    cell's alternative and the sample elsewhere. Returns the rows and, for each, its plan row
    and flat cell index."""
    R = rows.shape[0]
    rank = len(cell_shape)
    event_shape = value.shape[value.dim() - event_dim:]
    batch_shape = value.shape[: value.dim() - event_dim]
    padded = (1,) * (rank - len(batch_shape)) + tuple(batch_shape)
    rows_p = rows.reshape((R,) + padded + event_shape)
    value_p = value.reshape(padded + event_shape)
    differs = rows_p != value_p
    if event_dim:
        differs = differs.reshape(differs.shape[: 1 + rank] + (-1,)).any(-1)
    cells = torch.broadcast_shapes(torch.Size(padded), torch.Size(cell_shape))
    differs = differs.expand((R,) + cells)
    for dim, size in enumerate(cell_shape):  # several elements in one cell: any of them
        if size == 1 and cells[dim] != 1:
            differs = differs.any(1 + dim, keepdim=True)
    row, cell_index = differs.reshape(R, -1).nonzero(as_tuple=True)
    cell_id = torch.arange(differs[0].numel(), device=rows.device).reshape(differs.shape[1:])
    cell_id = left_pad(cell_id, rank).expand(cells).reshape(cells + (1,) * event_dim)
    own = cell_id == cell_index.reshape((-1,) + (1,) * (rank + event_dim))
    split = torch.where(own, rows_p[row], value_p)
    return split.reshape((len(row),) + value.shape), (row, cell_index)
