"""The engine that scores alternative values of guide sites, shared by every estimator that
needs them (ARM/DisARM, the ARSM family, the coupled estimators, RELAX/REBAR, and a user's own)."""

import logging

import torch
from pyro.poutine.util import site_is_subsample

from .site_plan import _Block
from .substitution import RowPlan, rerun, row_totals
from .util import learning_signals, left_pad

__all__ = ["Alternatives", "AlternativesError", "ProgramError"]

logger = logging.getLogger(__name__)


class AlternativesError(ValueError):
    """The program does not broadcast over the alternatives' batch dimension and
    ``vectorize=True`` asked for batching."""


class ProgramError(ValueError):
    """An error of the program at the alternatives that scoring them one at a time would not
    mend (e.g. a relaxed value pushed through a step function, see
    :class:`~pyro_relax.infer.relaxation.RelaxationError`): the engine sets :attr:`where` (the
    site the run had reached) and re-raises it."""

    where = ""


class _NotBroadcasting(Exception):
    pass


class Alternatives:
    """Scores alternatives of an estimator's guide sites: re-runs the guide from the first
    changed site on (later sites drawn again with common random numbers) and the model, and
    returns each changed site's per-plate-cell learning signal at each alternative.

    One object per ELBO, with its own state: whether alternatives run batched over a new
    leftmost plate at ``dim=-(max_plate_nesting + 1)`` or one at a time, how many model
    evaluations it has made (:attr:`num_evaluations`) and how often the batched run checks
    that the program broadcasts (a row holding the sample itself, on the first call and every
    :attr:`check_broadcast_every` calls).

    Estimators use :meth:`score` with one :class:`~pyro_relax.infer.SitePlan` per site
    (value alternatives), or :meth:`run` with a :class:`~pyro_relax.infer.substitution.RowPlan`
    (values computed in the re-run, as RELAX's relaxations are).

    :param vectorize: ``None`` (default: batched; if the program does not broadcast, e.g.
        ``.item()`` or a Python branch on a sampled value, one at a time from then on),
        ``True`` (batched, or :class:`AlternativesError`) or ``False`` (one at a time).
    :param bool pack: take the cells of a site for separable where they are (default); False
        treats every site's cells as coupled (no packing of per-cell alternatives: e.g. to
        measure what packing saves).
    """

    #: how often (in calls) a batched run carries the sample row that checks broadcasting
    check_broadcast_every = 50

    def __init__(self, vectorize=None, pack=True):
        if vectorize not in (None, True, False):
            raise ValueError(
                "vectorize_alternatives: expected None (batched, falling back to one at a "
                "time), True or False, got {!r}".format(vectorize)
            )
        self.vectorize = vectorize
        self.pack = bool(pack)
        #: set once a batched run has failed: alternatives then run one at a time
        self.one_at_a_time = False
        #: model evaluations made, counted per particle (the sample row is not counted)
        self.num_evaluations = 0
        #: site name -> alternative rows scored on the last call of :meth:`score`
        self.rows_scored = {}
        self._calls = 0

    def state_dict(self):
        """The engine's bookkeeping (calls, evaluations, the batched / one-at-a-time
        decision), to checkpoint with the model: a resumed run then checks broadcasting on the
        calls an uninterrupted run checks."""
        return {"calls": self._calls, "num_evaluations": self.num_evaluations,
                "one_at_a_time": self.one_at_a_time}

    def load_state_dict(self, state):
        self._calls = state["calls"]
        self.num_evaluations = state["num_evaluations"]
        self.one_at_a_time = state["one_at_a_time"]

    # ------------------------------------------------------------------ structure
    @staticmethod
    def site_order(particle):
        """The guide's sample sites in the order the guide samples them (the positions that
        say which site a row changes first)."""
        return [
            name
            for name, site in particle.guide_trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
        ]

    def separable(self, particle, name):
        """Whether each plate cell's learning signal depends only on that cell's value of
        site ``name``: no sample site after it (in model or guide) lies outside its plates.
        Then one row can hold a different alternative in each cell (False if not ``pack``)."""
        if not self.pack:
            return False
        stack = particle.guide_trace.nodes[name]["cond_indep_stack"]
        plates = {f.name for f in stack if f.vectorized}
        for trace in (particle.model_trace, particle.guide_trace):
            after = False
            for other, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if other == name:
                    after = True
                elif after and not plates <= {
                    f.name for f in site["cond_indep_stack"] if f.vectorized
                }:
                    return False
        return True

    def needs_guide_rerun(self, first, num_sites):
        """The guide must run again iff a sample site follows the first substituted one (it
        may depend on the substituted value, visibly or not); a guide whose substituted sites
        come last (a VAE encoder) is not run again."""
        return first < num_sites - 1

    # ------------------------------------------------------------------ site plans
    def score(self, particle, plans, max_plate_nesting, redraw=None):
        """Learning signals of every plan's rows, all sites in one evaluation (one site
        changed per row, the others at their sample).

        :param particle: the :class:`~pyro_relax.infer.Particle`.
        :param dict plans: site name -> :class:`~pyro_relax.infer.SitePlan`.
        :param int max_plate_nesting: the ELBO's (known) ``max_plate_nesting``.
        :param redraw: ``redraw(name, fn, site) -> value or None``, the estimator's
            common-random-number draw of a downstream discrete site.
        :returns: site name -> ``(f_sample, f_rows)``, the signals at the sample (left-padded
            to ``max_plate_nesting`` dims) and at the plan's rows, ``(R,) + cell shape``.
        """
        names = list(plans)
        nodes = particle.guide_trace.nodes
        base = learning_signals(particle.model_trace, particle.guide_trace, names)
        base = {n: left_pad(base[n], max_plate_nesting) for n in names}
        blocks = [_Block(plans[n], nodes[n], base[n], self.separable(particle, n)) for n in names]
        num_rows = sum(b.num_rows for b in blocks)
        self.rows_scored = {n: b.num_rows for n, b in zip(names, blocks)}
        evaluated = {}
        if num_rows:
            values, offset = {}, 0
            for n, block in zip(names, blocks):
                value = nodes[n]["value"]
                rows = value.unsqueeze(0).expand((num_rows,) + value.shape).clone()
                rows[offset : offset + block.num_rows] = block.values()
                values[n] = rows
                offset += block.num_rows
            evaluated = self.evaluate(particle, values, names, max_plate_nesting, redraw)
        out, offset = {}, 0
        for n, block in zip(names, blocks):
            e = evaluated[n][offset : offset + block.num_rows] if num_rows else base[n].unsqueeze(0)[:0]
            offset += block.num_rows
            out[n] = (base[n], block.signals(e))
        return out

    def evaluate(self, particle, values, names, max_plate_nesting, redraw=None):
        """Learning signals at rows of values (:meth:`score` without the plans).

        :param dict values: site name -> ``(R,) + value shape``; in each row at most one site
            differs from its sample.
        :param names: sites to return signals for.
        :returns: site name -> ``(R,) + cell shape``.
        """
        order = self.site_order(particle)
        positions = {name: i for i, name in enumerate(order)}
        sample_row = self.sample_row_due()
        nodes = particle.guide_trace.nodes
        if sample_row:  # one more row: the sample itself
            values = {n: torch.cat([v, nodes[n]["value"].unsqueeze(0)]) for n, v in values.items()}
        num_rows = next(iter(values.values())).shape[0]
        device = next(iter(values.values())).device
        first = torch.full((num_rows,), len(order), dtype=torch.long, device=device)
        changed = {}
        for name, value in values.items():
            changed[name] = (value != nodes[name]["value"]).reshape(num_rows, -1).any(-1)
            position = torch.full_like(first, positions[name])
            first = torch.where(changed[name], torch.minimum(first, position), first)
        plan = RowPlan(num_rows, first, names, values=values, changed=changed,
                       redraw=redraw, sample_row=sample_row)
        return self.run(particle, plan, max_plate_nesting)

    def sample_row_due(self):
        """Whether the next batch of rows should carry the sample row (see :class:`RowPlan`);
        counts the call."""
        if self.vectorize is False or self.one_at_a_time:
            return False
        due = self._calls % self.check_broadcast_every == 0
        self._calls += 1
        return due

    # ------------------------------------------------------------------ rows
    def run(self, particle, plan, max_plate_nesting, grad=False, totals=False):
        """Scores the rows of ``plan``: re-runs the guide (from the first substituted site on,
        when a sample site follows it) and the model, batched or one at a time (see
        ``vectorize``), and returns each site of ``plan.names``'s per-plate-cell learning
        signal at each row, ``(R,) + cell``.

        :param RowPlan plan: what to substitute.
        :param int max_plate_nesting: the ELBO's (known) ``max_plate_nesting``.
        :param bool grad: keep the autograd graph (RELAX) or not (ARM, ARSM).
        :param bool totals: also return each row's sum of all terms, shape ``(R,)``.
        """
        rank = max_plate_nesting + 1
        positions = {name: i for i, name in enumerate(self.site_order(particle))}
        rerun_guide = self.needs_guide_rerun(int(plan.first.min()), len(positions))
        job = (particle, plan, positions, rerun_guide, rank, grad, totals)
        self.num_evaluations += (plan.num_rows - plan.sample_row) * particle.num_particles
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if self.vectorize is not False and not self.one_at_a_time:
                result = self._batched(*job)
                if result is not None:
                    return result
            return self._one_at_a_time(*job)

    def _batched(self, particle, plan, positions, rerun_guide, rank, grad, totals):
        """All rows in one run; None if the program did not broadcast (then one at a time
        from now on, unless ``vectorize=True``)."""
        if plan.reset is not None:
            plan.reset()
        tracker = {}
        try:
            model_trace, guide_trace = rerun(particle, plan, positions, rerun_guide, None, rank, tracker)
            signals = learning_signals(model_trace, guide_trace, plan.names, rank=rank, detach=not grad)
            sums = row_totals(model_trace, guide_trace, plan.num_rows, rank)
            if plan.sample_row:
                _check_sample_row(signals, particle, plan.names)
                signals = {name: x[:-1] for name, x in signals.items()}
                sums = sums[:-1]
            return (signals, sums) if totals else signals
        except ProgramError as error:
            error.where = "(" + _where(tracker) + ")"
            raise
        except Exception as error:  # the program did not broadcast over the rows
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            if self.vectorize is True:
                raise AlternativesError(
                    "the program does not broadcast over the alternatives' batch dimension "
                    "(a plate at dim={}) {}: {}: {}. Write it to broadcast (as for "
                    "vectorize_particles=True; no .item(), float() or Python branch on a "
                    "sampled value), or pass vectorize_alternatives=False to score the "
                    "alternatives one at a time.".format(
                        -rank, _where(tracker), type(error).__name__, message)
                ) from error
            logger.warning(
                "the program does not broadcast over the alternatives' batch dimension "
                "(%s: %s: %s); scoring alternatives one at a time from now on (slower; pass "
                "vectorize_alternatives=False to skip the batched attempt)",
                _where(tracker), type(error).__name__, message,
            )
            self.one_at_a_time = True
            return None

    def _one_at_a_time(self, particle, plan, positions, rerun_guide, rank, grad, totals):
        if plan.reset is not None:
            plan.reset()
        signals, sums = [], []
        for row in range(plan.num_rows - plan.sample_row):
            tracker = {}
            try:
                model_trace, guide_trace = rerun(particle, plan, positions, rerun_guide, row, rank, tracker)
            except ProgramError as error:
                error.where = "(" + _where(tracker) + ")"
                raise
            signals.append(learning_signals(model_trace, guide_trace, plan.names,
                                            rank=rank - 1, detach=not grad))
            if totals:
                sums.append(row_totals(model_trace, guide_trace, None, rank))
        out = {name: torch.stack(torch.broadcast_tensors(*[s[name] for s in signals]))
               for name in plan.names}
        return (out, torch.stack([torch.as_tensor(t) for t in sums])) if totals else out


def _check_sample_row(signals, particle, names):
    """The row holding the sample must score what the particle scored; a program that mixes
    the rows (a sum over all dims, ``z[0]``) does not, and its rows cannot be trusted."""
    expected = learning_signals(particle.model_trace, particle.guide_trace, names)
    with torch._C.DisableTorchFunctionSubclass():  # plain tensor ops, whatever the subclass
        for name in names:
            got = signals[name][-1].detach()
            want = expected[name].detach()
            got, want = torch.broadcast_tensors(got, left_pad(want, got.dim()))
            scale = want.abs().max().clamp(min=1.0)
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(scale)):
                raise _NotBroadcasting(
                    "evaluated in a batch of alternatives, the sample itself scored a learning "
                    "signal of {} at site '{}' instead of {}: the program mixes the "
                    "alternatives (e.g. a sum or an index over all dims)".format(
                        got.reshape(-1)[:3].tolist(), name, want.reshape(-1)[:3].tolist()
                    )
                )


def _where(tracker):
    part = "model" if "model" in tracker else "guide"
    messenger = tracker.get(part)
    if messenger is None or messenger.last_site is None:
        return "in the {} before its first sample site".format(part)
    return "in the {} after site '{}'".format(part, messenger.last_site)
