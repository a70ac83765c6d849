"""Re-running a guide and model with other values at some guide sites ("rows").

The estimators that score alternative values of a discrete site (ARM's antithetic twin,
ARSM's pseudo actions, RELAX's relaxed samples) need ``log p - log q`` of the whole program at
each alternative. When a guide site downstream of the substituted one depends on its value
(``q(z | x, y)`` in a semi-supervised VAE, the next ``z_pres`` in AIR, a Python branch on the
sample), that site must be drawn again from its new conditional. This module does that without
asking whether the dependence exists: every guide site after the first substituted site is
redrawn with common random numbers (the estimator's own noise for discrete sites, the same
standard normal for a Normal site), which returns the sample itself where the distribution did
not change. :class:`~pyro_relax.infer.alternatives.Alternatives` decides how the rows are run
(batched over a new leftmost plate, or one at a time).

Effect-style guides (:class:`~pyro.poutine.guide.GuideMessenger`) run the model themselves:
they are run again whole, the rows substituted as their sites are sampled.
"""

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import Normal

from .particle import is_guide_messenger, with_minibatch
from .util import base_distribution, left_pad

__all__ = ["ROWS_PLATE", "RowPlan", "common_random_redraw", "rerun", "row_totals", "site_log_prob"]

ROWS_PLATE = "_pyro_relax_rows"


class RowPlan:
    """What :meth:`Alternatives.run <pyro_relax.infer.alternatives.Alternatives.run>`
    substitutes, row by row.

    Either ``values`` (with ``changed``): row ``r`` sets the sites in ``values`` to
    ``values[name][r]`` where ``changed[name][r]`` (ARM's twin, ARSM's pseudo actions: one site
    changed per row, the others at their sample); or ``choose``: every row sets the sites in
    ``names`` to ``choose(name, fn, site, row)`` (RELAX's relaxed values, computed in the re-run
    from the site's re-run distribution ``fn`` and its noise). Guide sites after ``first[r]``
    that are not set are redrawn with common random numbers.

    :param int num_rows: number of rows ``R``.
    :param torch.Tensor first: ``(R,)`` positions, in the guide's order of sample sites, of the
        first site each row changes.
    :param names: the substituted sites; their learning signals are returned.
    :param dict values: ``name -> (R,) + site shape`` tensor.
    :param dict changed: ``name -> (R,)`` bool tensor.
    :param choose: ``choose(name, fn, site, row) -> value``: ``fn`` is the site's distribution
        in the re-run (batched over rows at ``dim=-(max_plate_nesting + 1)`` when ``row`` is
        None), ``site`` the particle's guide site (its sample, ``fn`` and noise); return a value
        of ``fn``'s shape (batched) or of the site's own shape (``row`` an int).
    :param dict log_prob: ``name -> callable(fn, value)`` replacing ``fn.log_prob`` at
        substituted sites, in guide and model (e.g. a relaxed value's continuous log-mass).
    :param redraw: ``redraw(name, fn, site) -> value or None``: the estimator's common-random-
        number draw of a discrete site from its own noise (None: :func:`common_random_redraw`).
    :param reset: called before each attempt at scoring the rows (batched, then one at a
        time if the batch failed), to drop state that ``choose`` recorded in a failed attempt.
    :param bool sample_row: the last row holds the sample itself (every site unchanged): a
        check that the batched program broadcasts, as its learning signals there must equal
        the particle's; the row is dropped from the results.
    """

    def __init__(self, num_rows, first, names, values=None, changed=None, choose=None,
                 log_prob=None, redraw=None, sample_row=False, reset=None):
        if (values is None) == (choose is None):
            raise ValueError("RowPlan: give exactly one of values and choose")
        self.sample_row = sample_row
        self.reset = reset
        self.num_rows = num_rows
        self.first = first
        self.names = list(names)
        self.values = values
        self.changed = changed
        self.choose = choose
        self.log_prob = log_prob or {}
        self.redraw = redraw


def common_random_redraw(fn, site):
    """Draws a value of ``fn`` (the re-run's distribution of a guide site) with the same noise
    that produced ``site["value"]`` where the family allows it (a Normal: the same standard
    normal ``eps``, so an unchanged distribution returns the sample and a changed one moves it
    pathwise); otherwise a fresh draw, which is also unbiased."""
    new, old = base_distribution(fn), base_distribution(site["fn"])
    shape = fn.batch_shape + fn.event_shape
    if isinstance(new, Normal) and isinstance(old, Normal):
        eps = ((site["value"] - old.loc) / old.scale).detach()
        eps = left_pad(eps, len(shape))
        return (new.loc + new.scale * eps).expand(shape)
    return fn.rsample() if fn.has_rsample else fn.sample()


def site_log_prob(site, override=None):
    """``log p`` of a trace site (scaled and masked like :meth:`~pyro.poutine.Trace.compute_log_prob`),
    optionally computed by ``override(fn, value)`` instead of ``fn.log_prob``."""
    if override is None:
        log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    else:
        log_p = override(site["fn"], site["value"])
    return scale_and_mask(log_p, site["scale"], site["mask"])


def _compute_log_probs(trace, overrides, keep=()):
    """Sets ``log_prob`` at every sample site, in new node dicts (the nodes of a copied trace
    are shared with the particle's); sites in ``keep`` reuse the ``log_prob`` they have."""
    for name, site in list(trace.nodes.items()):
        if site["type"] != "sample" or (name in keep and "log_prob" in site):
            continue
        log_p = site_log_prob(site, overrides.get(name))
        trace.nodes[name] = dict(site, log_prob=log_p, log_prob_sum=log_p.sum())


class _Rows:
    """The value of each guide site in a re-run, following a :class:`RowPlan`; ``row`` is None
    when all rows run batched."""

    def __init__(self, plan, positions, row):
        self.plan = plan
        self.positions = positions
        self.row = row

    def _rows(self, mask, like):
        if self.row is not None:
            return bool(mask[self.row])
        return mask.reshape((-1,) + (1,) * (like.dim() - 1))

    def value(self, name, fn, site):
        plan, row = self.plan, self.row
        if plan.choose is not None and name in plan.names:
            return plan.choose(name, fn, site, row)
        value = self._downstream(name, fn, site)
        if plan.values is not None and name in plan.values:
            given = plan.values[name]
            if row is not None:
                return given[row] if bool(plan.changed[name][row]) else value
            shape = fn.batch_shape + fn.event_shape
            given = given.reshape((given.shape[0],) + (1,) * (len(shape) - given.dim()) + given.shape[1:])
            return torch.where(self._rows(plan.changed[name], given), given, value)
        return value

    def _downstream(self, name, fn, site):
        """The sample where the row changes nothing upstream of the site, a common-random-
        number redraw where it does."""
        down = self.plan.first < self.positions[name]
        if self.row is not None:
            return self._redraw(name, fn, site) if bool(down[self.row]) else site["value"]
        if not bool(down.any()):
            return site["value"]
        redrawn = self._redraw(name, fn, site)
        return torch.where(self._rows(down, redrawn), redrawn, site["value"])

    def _redraw(self, name, fn, site):
        value = None if self.plan.redraw is None else self.plan.redraw(name, fn, site)
        return common_random_redraw(fn, site) if value is None else value


class _Redraw(Messenger):
    """Sets the values of the re-run guide's latent sites (see :class:`_Rows`); records the
    last site reached (for error messages)."""

    def __init__(self, rows, base_trace):
        super().__init__()
        self.rows = rows
        self.base = base_trace
        self.last_site = None

    def _pyro_sample(self, msg):
        if site_is_subsample(msg):
            return
        self.last_site = msg["name"]
        site = self.base.nodes.get(msg["name"])
        if msg["is_observed"] or msg["done"] or site is None:
            return  # observed, or a site the particle did not have: drawn afresh
        msg["value"] = self.rows.value(msg["name"], msg["fn"], site)
        msg["done"] = True


class _LastSite(Messenger):
    def __init__(self):
        super().__init__()
        self.last_site = None

    def _pyro_sample(self, msg):
        if not site_is_subsample(msg):
            self.last_site = msg["name"]


def rerun(particle, plan, positions, rerun_guide, row, rank, tracker):
    """One run of guide (if needed) and model at the rows of ``plan``: all rows batched over a
    plate at ``dim=-rank`` (``row`` None) or row ``row`` alone. ``tracker`` receives the
    messengers that know the last site reached. Returns ``(model_trace, guide_trace)`` with
    ``log_prob`` at every sample site (``plan.log_prob`` overrides applied)."""
    args, kwargs = particle.args, particle.kwargs
    values = _Rows(plan, positions, row)

    def rows(fn):
        return pyro.plate(ROWS_PLATE, plan.num_rows, dim=-rank)(fn) if row is None else fn

    guide = poutine.replay(particle.guide, trace=particle.minibatch)
    if is_guide_messenger(particle.guide):  # the guide runs the model itself
        redraw = tracker["guide"] = _Redraw(values, particle.guide_trace)
        redraw(rows(guide))(*args, **kwargs)
        model_trace, guide_trace = poutine.unwrap(particle.guide).get_traces()
        keep = ()
    else:
        if rerun_guide:
            redraw = tracker["guide"] = _Redraw(values, particle.guide_trace)
            guide_trace = poutine.trace(redraw(rows(guide))).get_trace(*args, **kwargs)
        else:
            guide_trace = _substituted(particle, plan, values, row, rank)
        last = tracker["model"] = _LastSite()
        replayed = with_minibatch(guide_trace, particle.minibatch)
        model_trace = poutine.trace(
            last(poutine.replay(rows(particle.model), trace=replayed))
        ).get_trace(*args, **kwargs)
        keep = () if rerun_guide else set(guide_trace.nodes) - set(plan.names)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    _compute_log_probs(guide_trace, plan.log_prob, keep=keep)
    _compute_log_probs(model_trace, plan.log_prob)
    return model_trace, guide_trace


def _substituted(particle, plan, values, row, rank):
    """The particle's guide trace with the substituted sites set (no guide run: no site
    follows them)."""
    guide_trace = particle.guide_trace.copy()
    for name in plan.names:
        site = particle.guide_trace.nodes[name]
        fn = site["fn"]
        if row is None:
            batch = (1,) * (rank - 1 - len(fn.batch_shape)) + tuple(fn.batch_shape)
            fn = fn.expand(torch.Size((plan.num_rows,) + batch))
        guide_trace.nodes[name] = dict(site, fn=fn, value=values.value(name, fn, site))
    return guide_trace


def row_totals(model_trace, guide_trace, num_rows, rank):
    """Every ``log p - log q`` term summed, per row: shape ``(R,)`` when the rows are batched
    (``rank`` dims, the rows dim first), a scalar for one row (``num_rows`` None)."""
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            log_p = site["log_prob"]
            if num_rows is None:
                total = total + sign * log_p.sum()
            else:
                log_p = left_pad(log_p, rank)
                total = total + sign * log_p.reshape(log_p.shape[0], -1).sum(-1).expand(num_rows)
    return total
