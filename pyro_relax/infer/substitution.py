"""Re-running a guide and model with other values at some guide sites ("rows").

The estimators that score alternative values of a discrete site (ARM's antithetic twin,
ARSM's pseudo actions, RELAX's relaxed samples) need ``log p - log q`` of the whole program at
each alternative. When a guide site downstream of the substituted one depends on its value
(``q(z | x, y)`` in a semi-supervised VAE, the next ``z_pres`` in AIR, a Python branch on the
sample), that site must be drawn again from its new conditional. This module does that without
asking whether the dependence exists: every guide site after the first substituted site is
redrawn with common random numbers (the estimator's own noise for discrete sites, the same
standard normal for a Normal site), which returns the sample itself where the distribution did
not change. The program is run once with all rows batched over a new leftmost plate, or once per
row when the program does not broadcast over that plate.
"""

import logging

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import Normal

from .util import base_distribution, learning_signals, left_pad

__all__ = [
    "RowPlan",
    "common_random_redraw",
    "guide_rerun_needed",
    "run_rows",
    "site_log_prob",
    "subsample_trace",
]

logger = logging.getLogger(__name__)

ROWS_PLATE = "_pyro_relax_rows"


class RowPlan:
    """What :func:`run_rows` substitutes, row by row.

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

    def __init__(
        self,
        num_rows,
        first,
        names,
        values=None,
        changed=None,
        choose=None,
        log_prob=None,
        redraw=None,
        sample_row=False,
        reset=None,
    ):
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


def subsample_trace(trace):
    """A trace holding only the subsample sites of ``trace`` (to replay a mini-batch)."""
    out = poutine.Trace()
    for name, site in trace.nodes.items():
        if site_is_subsample(site):
            out.add_node(name, **site)
    return out


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
    """Sets the values of the re-run guide's latent sites (see :class:`_Rows`)."""

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


class _NotBroadcasting(Exception):
    pass


def _check_sample_row(signals, particle, names):
    """The row holding the sample must score what the particle scored; a program that mixes
    the rows (a sum over all dims, ``z[0]``) does not, and its rows cannot be trusted."""
    expected = learning_signals(particle.model_trace, particle.guide_trace, names)
    with torch._C.DisableTorchFunctionSubclass():  # plain tensor ops, whatever the subclass
        _compare_sample_row(signals, expected, names)


def _compare_sample_row(signals, expected, names):
    for name in names:
        got = signals[name][-1].detach()
        want = expected[name].detach()
        got, want = torch.broadcast_tensors(got, left_pad(want, got.dim()))
        scale = want.abs().max().clamp(min=1.0)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(scale)):
            raise _NotBroadcasting(
                "evaluated in a batch of alternatives, the sample itself scored a learning "
                "signal of {} at site '{}' instead of {}: the program mixes the alternatives "
                "(e.g. a sum or an index over all dims)".format(
                    got.reshape(-1)[:3].tolist(), name, want.reshape(-1)[:3].tolist()
                )
            )


class _LastSite(Messenger):
    def __init__(self):
        super().__init__()
        self.last_site = None

    def _pyro_sample(self, msg):
        if not site_is_subsample(msg):
            self.last_site = msg["name"]


def _run_once(particle, plan, positions, rerun_guide, row, rank, tracker):
    """One run of guide (if needed) and model: all rows batched (``row`` None) or one row."""
    args, kwargs = particle.args, particle.kwargs
    batched = row is None

    def rows(fn):
        return pyro.plate(ROWS_PLATE, plan.num_rows, dim=-rank)(fn) if batched else fn

    values = _Rows(plan, positions, row)
    if rerun_guide:
        redraw = _Redraw(values, particle.replay_trace)
        tracker["guide"] = redraw
        guide = poutine.replay(particle.guide, trace=subsample_trace(particle.replay_trace))
        guide_trace = poutine.trace(redraw(rows(guide))).get_trace(*args, **kwargs)
    else:
        guide_trace = particle.replay_trace.copy()
        for name in plan.names:
            site = particle.replay_trace.nodes[name]
            fn = site["fn"]
            if batched:
                batch = (1,) * (rank - 1 - len(fn.batch_shape)) + tuple(fn.batch_shape)
                fn = fn.expand(torch.Size((plan.num_rows,) + batch))
            guide_trace.nodes[name] = dict(site, fn=fn, value=values.value(name, fn, site))
    last = _LastSite()
    tracker["model"] = last
    model_trace = poutine.trace(
        last(poutine.replay(rows(particle.model), trace=guide_trace))
    ).get_trace(*args, **kwargs)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    unchanged = () if rerun_guide else set(guide_trace.nodes) - set(plan.names)
    _compute_log_probs(guide_trace, plan.log_prob, keep=unchanged)
    _compute_log_probs(model_trace, plan.log_prob)
    return model_trace, guide_trace


def guide_rerun_needed(first, num_sites):
    """The guide must run again iff a sample site follows the first substituted one (it may
    depend on the substituted value, visibly or not); a guide whose substituted sites come
    last (a VAE encoder) is not run again."""
    return first < num_sites - 1


def _row_totals(model_trace, guide_trace, num_rows, rank):
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


def run_rows(elbo, particle, plan, grad=False, totals=False):
    """Scores the rows of ``plan``: re-runs the guide (from the first substituted site on,
    when any sample site follows it) and the model, and returns, for each site in
    ``plan.names``, its per-plate-cell learning signal at each row, of shape ``(R,) + cell``.

    Rows run batched over a plate at ``dim=-(max_plate_nesting + 1)`` when
    ``elbo.vectorize_alternatives`` is True or None (the default: if the program fails to
    broadcast over that plate, e.g. ``.item()`` or a Python branch on a sampled value, the rows
    are run one at a time from then on, which any program supports); False runs them one at a
    time. With True a program that does not broadcast gets a ``ValueError`` naming the site.

    :param elbo: the :class:`~pyro_relax.infer.DiscreteELBO` (``max_plate_nesting`` known).
    :param particle: the :class:`~pyro_relax.infer.Particle` to re-run.
    :param RowPlan plan: what to substitute.
    :param bool grad: keep the autograd graph (RELAX) or not (ARM, ARSM).
    :param bool totals: also return each row's sum of all terms, shape ``(R,)``.
    """
    rank = elbo.max_plate_nesting + 1
    order = [
        name
        for name, site in particle.replay_trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]
    positions = {name: i for i, name in enumerate(order)}
    rerun_guide = guide_rerun_needed(int(plan.first.min()), len(order))
    scored = plan.num_rows - (1 if plan.sample_row else 0)  # the check row is not counted
    elbo.num_model_evaluations += scored * particle.num_particles
    mode = elbo.vectorize_alternatives
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        if mode is not False and not elbo._rows_one_at_a_time:
            if plan.reset is not None:
                plan.reset()
            tracker = {}
            try:
                model_trace, guide_trace = _run_once(
                    particle, plan, positions, rerun_guide, None, rank, tracker
                )
                signals = learning_signals(
                    model_trace, guide_trace, plan.names, rank=rank, detach=not grad
                )
                row_totals = _row_totals(model_trace, guide_trace, plan.num_rows, rank)
                if plan.sample_row:
                    _check_sample_row(signals, particle, plan.names)
                    signals = {name: x[:-1] for name, x in signals.items()}
                    row_totals = row_totals[:-1]
                return (signals, row_totals) if totals else signals
            except Exception as error:  # the program did not broadcast over the rows
                where = _where(tracker)
                if isinstance(error, ValueError) and type(error).__name__ == "RelaxationError":
                    error.where = "(" + where + ")"
                    raise
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                if mode is True:
                    raise ValueError(
                        "{}: the program does not broadcast over the alternatives' batch "
                        "dimension (a plate at dim={}) {}: {}: {}. Write it to broadcast (as "
                        "for vectorize_particles=True; no .item(), float() or Python branch "
                        "on a sampled value), or pass vectorize_alternatives=False to score "
                        "the alternatives one at a time.".format(
                            type(elbo).__name__, -rank, where, type(error).__name__, message
                        )
                    ) from error
                logger.warning(
                    "%s: the program does not broadcast over the alternatives' batch "
                    "dimension (%s: %s: %s); scoring alternatives one at a time from now on "
                    "(slower; pass vectorize_alternatives=False to skip the batched attempt)",
                    type(elbo).__name__,
                    where,
                    type(error).__name__,
                    message,
                )
                elbo._rows_one_at_a_time = True
        if plan.reset is not None:
            plan.reset()
        signals, row_totals = [], []
        for row in range(plan.num_rows - (1 if plan.sample_row else 0)):
            tracker = {}
            try:
                model_trace, guide_trace = _run_once(
                    particle, plan, positions, rerun_guide, row, rank, tracker
                )
            except ValueError as error:
                if type(error).__name__ == "RelaxationError":
                    error.where = "(" + _where(tracker) + ")"
                raise
            signals.append(
                learning_signals(
                    model_trace, guide_trace, plan.names, rank=rank - 1, detach=not grad
                )
            )
            if totals:
                row_totals.append(_row_totals(model_trace, guide_trace, None, rank))
    out = {}
    for name in plan.names:
        values = torch.broadcast_tensors(*[s[name] for s in signals])
        out[name] = torch.stack(values)
    if not totals:
        return out
    return out, torch.stack([torch.as_tensor(t) for t in row_totals])


def _where(tracker):
    part = "model" if "model" in tracker else "guide"
    messenger = tracker.get(part)
    if messenger is None or messenger.last_site is None:
        return "in the {} before its first sample site".format(part)
    return "in the {} after site '{}'".format(part, messenger.last_site)
