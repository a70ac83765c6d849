"""The estimator core shared by every ELBO in :mod:`pyro_relax.infer`."""

import torch
from pyro.infer.elbo import ELBOModule
from pyro.infer.util import torch_item
from pyro.util import warn_if_nan

from .alternatives import Alternatives
from .particle_elbo import ParticleELBO
from .surrogates import leave_one_out_surrogate, pathwise_surrogate, score_function_sites
from .util import leave_one_out_centered

__all__ = ["DiscreteELBO", "DiscreteELBOModule"]


class DiscreteELBO(ParticleELBO):
    """Base class of the discrete-latent ELBOs. It runs guide and model with ``num_particles``
    particles (as a tensor dimension when ``vectorize_particles=True``) through Pyro's own
    :func:`~pyro.infer.enum.get_importance_trace`, so every guide style Pyro supports works
    (functions, :class:`~pyro.nn.PyroModule` s, autoguides, effect-style
    :class:`~pyro.poutine.guide.GuideMessenger` guides); builds per-plate-cell learning
    signals (a latent inside ``pyro.plate("data", B)`` is credited only with the
    ``log p - log q`` terms of its own slice plus the global terms, with subsampling scales as
    in :class:`~pyro.infer.Trace_ELBO`); and scores alternative values of discrete sites with
    its :class:`~pyro_relax.infer.Alternatives` engine. Particles run in sequence share the
    mini-batch of every subsampled plate.

    **Every site's whole score.** Reparameterizable sites keep their pathwise gradient. Every
    guide site whose ``score_parts`` carry a score-function term (a discrete site, or the
    score part of a partially reparameterized one such as Pyro's RSVI distributions) gets a
    score-function term: the estimator's own (see :meth:`site_plan`), or else REINFORCE with
    the site's learning signal, leave-one-out baselined over the particles when there are
    several (:meth:`score_function_surrogate`).

    **Extending** (see the tutorial "Writing an estimator"). A subclass states its estimator
    with any of

    - :meth:`site_plan`: a :class:`~pyro_relax.infer.SitePlan` for a discrete site (its
      alternatives and how their signals make its surrogate term); the engine scores the
      plans of all sites of a particle in one batched run;
    - :meth:`sample_site` / :meth:`redraw_site`: draw a discrete site's value from the
      estimator's own noise (ARM's uniforms), and again from the same noise under a changed
      distribution (common random numbers when a substitution upstream changed it);
    - :meth:`surrogate_elbo`: the whole surrogate, for estimators that are not per-site,
      built from :func:`~pyro_relax.infer.surrogates.pathwise_surrogate`,
      :meth:`score_function_surrogate` and the engine.

    The returned loss is the negative of :meth:`estimate`: the ``-ELBO`` estimate averaged
    over particles, as in Pyro (or another objective's, such as VIMCO's bound).
    ``infer={"baseline": ...}`` on a guide site (a :class:`~pyro.infer.TraceGraph_ELBO`
    option) is not used by these estimators; it triggers a warning naming the site.

    :param int num_particles: number of particles (at least :attr:`min_particles`).
    :param int max_plate_nesting: bound on nested plates (guessed from one run if omitted).
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param bool strict_enumeration_warning: as in :class:`pyro.infer.ELBO`.
    :param bool retain_graph: passed to ``backward``.
    :param vectorize_alternatives: how the engine runs alternatives (see
        :class:`~pyro_relax.infer.Alternatives`); ignored when ``alternatives`` is given.
    :param Alternatives alternatives: the engine to use (default: a new one).
    """

    #: smallest ``num_particles`` the estimator accepts
    min_particles = 1

    def __init__(self, num_particles=None, max_plate_nesting=float("inf"),
                 vectorize_particles=False, strict_enumeration_warning=True, retain_graph=None,
                 vectorize_alternatives=None, alternatives=None):
        if alternatives is not None and not isinstance(alternatives, Alternatives):
            raise ValueError("alternatives: expected an Alternatives engine, got {!r}"
                             .format(alternatives))
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning,
                         retain_graph=retain_graph)
        #: the engine that scores alternative values of guide sites
        self.alternatives = alternatives or Alternatives(vectorize_alternatives)
        #: steps taken (calls of ``loss_and_grads`` / ``differentiable_loss`` with gradients)
        self.num_steps = 0

    @property
    def num_model_evaluations(self):
        """Model evaluations so far, counted per particle: the particles' own runs plus the
        alternatives the engine scored (a diagnostic for benchmarks)."""
        return self.num_particle_evaluations + self.alternatives.num_evaluations

    @property
    def vectorize_alternatives(self):
        """The engine's ``vectorize`` setting."""
        return self.alternatives.vectorize

    # ------------------------------------------------------------------ trainable state
    def trainable_state(self):
        """The estimator's own trainable state as a :class:`torch.nn.Module` (RELAX's control
        variates), or None. :meth:`__call__`'s module registers it, so that its
        ``parameters()``, ``state_dict()``, DDP and checkpoints see it."""
        return None

    def setup(self, model, guide, *args, **kwargs):
        """Creates everything the estimator would create on its first step (its trainable
        state, and the program's parameters) from one run of guide and model on example
        arguments, stepping nothing. Call it before building an optimizer over
        :meth:`__call__`'s module's ``parameters()`` (or before wrapping it in DDP).

        :returns: ``self``.
        """
        self.require_max_plate_nesting(model, guide, args, kwargs)
        with torch.no_grad():
            self.create_state(list(self._get_traces(model, guide, args, kwargs)))
        return self

    def state_dict(self):
        """The estimator's bookkeeping (steps, model evaluations, the engine's), plain numbers
        to checkpoint beside the trainable state, so that a resumed run does what an
        uninterrupted one does (e.g. which calls check that the program broadcasts)."""
        return {"num_steps": self.num_steps,
                "num_particle_evaluations": self.num_particle_evaluations,
                "alternatives": self.alternatives.state_dict()}

    def load_state_dict(self, state):
        self.num_steps = state["num_steps"]
        self.num_particle_evaluations = state["num_particle_evaluations"]
        self.alternatives.load_state_dict(state["alternatives"])

    def refuse_late_state(self, name):
        """Raises the ``ValueError`` for trainable state of guide site ``name`` that would be
        created after the first step while ``torch.distributed`` is initialised (it would be
        in no optimizer and never synchronized); call it before creating such state."""
        if self.num_steps and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            raise ValueError(
                "{}: the control variate of guide site '{}' would be created at step {}, "
                "after the optimizer and DDP were set up, so it would be neither optimized "
                "nor synchronized across processes; call elbo.setup(model, guide, *args) "
                "on example arguments before building them".format(
                    type(self).__name__, name, self.num_steps + 1))

    def create_state(self, particles):
        """Creates the trainable state the estimator needs for ``particles`` (see
        :meth:`setup`); nothing by default."""

    def __call__(self, model, guide):
        """A :class:`DiscreteELBOModule`: ``module(*args)`` is
        ``differentiable_loss(model, guide, *args)``, and its ``parameters()`` are those of
        model, guide and the estimator's trainable state."""
        return DiscreteELBOModule(model, guide, self)

    # ------------------------------------------------------------------ extension points
    def redraw_site(self, name, fn, noise):
        """Draws a guide site again under the re-run's distribution ``fn`` (batched over
        alternatives) from the ``noise`` that :meth:`sample_site` recorded, so that an
        unchanged distribution gives the same value. ``None``: a fresh draw."""
        return None

    def site_plan(self, particle, name):
        """The estimator's :class:`~pyro_relax.infer.SitePlan` for guide site ``name`` of
        ``particle`` (a site with a score-function term), or ``None`` to leave the site to
        :meth:`score_function_surrogate`."""
        return None

    def center(self, signals):
        """The leave-one-out baseline of :meth:`score_function_surrogate`: ``signals`` minus
        the mean of the other particles' (particles along dim 0)."""
        return leave_one_out_centered(signals)

    def score_function_surrogate(self, particles, names):
        """REINFORCE for the sites ``names``: each site's score-function term times its
        learning signal, baselined by :meth:`center` over the particles (none with one
        particle). Not yet divided by ``num_particles``."""
        return leave_one_out_surrogate(particles, names, "score", self.max_plate_nesting,
                                       center=self.center)

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        """A differentiable scalar whose gradient estimates the ELBO's gradient, averaged over
        the particles: the pathwise terms, the site plans' terms and REINFORCE for every other
        site with a score-function term."""
        surrogate = sum(pathwise_surrogate(p) for p in particles)
        planned, plain = set(), set()
        for p in particles:
            sites = score_function_sites(p.guide_trace)
            plans = {n: plan for n in sites for plan in [self.site_plan(p, n)] if plan is not None}
            planned.update(plans)
            plain.update(n for n in sites if n not in plans)
            if plans:
                self.require_max_plate_nesting(model, guide, args, kwargs)
                scored = self.alternatives.score(p, plans, self.max_plate_nesting,
                                                 redraw=self.redraw_from_noise(p))
                for name, (f_sample, f_rows) in scored.items():
                    surrogate = surrogate + plans[name].surrogate(f_sample, f_rows)
        if planned & plain:
            raise ValueError("{}: sites {} have a plan in some particles only".format(
                type(self).__name__, sorted(planned & plain)))
        surrogate = surrogate + self.score_function_surrogate(particles, sorted(plain))
        return surrogate / self.num_particles

    def redraw_from_noise(self, particle):
        """The engine's ``redraw(name, fn, site)`` for ``particle``: :meth:`redraw_site` from
        the noise the particle recorded."""
        def redraw(name, fn, site):
            noise = particle.noise.get(name)
            return None if noise is None else self.redraw_site(name, fn, noise)

        return redraw

    # ------------------------------------------------------------------ the ELBO interface
    def estimate(self, particles):
        """The objective's estimate from ``particles``, the negative of the loss: the ELBO
        averaged over the particles (a tensor, or ``0.0`` for a program with no sample
        sites). An estimator of another objective overrides it (:class:`VIMCO_ELBO
        <pyro_relax.infer.VIMCO_ELBO>`: the ``num_particles``-sample bound)."""
        return sum(_elbo_sum(p) for p in particles) / self.num_particles

    def loss(self, model, guide, *args, **kwargs):
        """Estimates the ``-ELBO`` (the negative of :meth:`estimate`).

        :returns: an estimate of ``-ELBO``, averaged over ``num_particles``.
        :rtype: float
        """
        with torch.no_grad():
            loss = -torch_item(self.estimate(list(self._get_traces(model, guide, args, kwargs))))
        warn_if_nan(loss, "loss")
        return loss

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        particles = list(self._get_traces(model, guide, args, kwargs))
        elbo = _detach(self.estimate(particles))
        surrogate_elbo = self.surrogate_elbo(particles, model, guide, args, kwargs)
        self.num_steps += 1
        return -elbo, -surrogate_elbo

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The ``-ELBO`` estimate as a differentiable tensor.

        :returns: a tensor whose value is the ``-ELBO`` estimate and whose gradient is the
            estimator's (``0.0`` for a program with no sites, as :class:`~pyro.infer.Trace_ELBO`);
            without grad mode (``torch.no_grad()``, ``inference_mode``: a validation step) the
            ``-ELBO`` estimate alone, no surrogate built.
        """
        if not torch.is_grad_enabled():
            loss = -self.estimate(list(self._get_traces(model, guide, args, kwargs)))
            warn_if_nan(loss, "loss")
            return loss
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss + (surrogate_loss - _detach(surrogate_loss))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Computes the ``-ELBO`` estimate and backpropagates the estimator's gradient.

        :returns: the ``-ELBO`` estimate.
        :rtype: float
        """
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        if torch.is_tensor(surrogate_loss) and surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss


def _elbo_sum(particle):
    """Sum over the particles in ``particle`` of ``log p - log q`` (a float 0.0 for a program
    with no sample sites)."""
    return particle.model_trace.log_prob_sum() - particle.guide_trace.log_prob_sum()


def _detach(x):
    return x.detach() if torch.is_tensor(x) else x


class DiscreteELBOModule(ELBOModule):
    """Pyro's :class:`~pyro.infer.elbo.ELBOModule` (``module(*args)`` is the ELBO's
    ``differentiable_loss(model, guide, *args)``) with the estimator's trainable state
    registered as the submodule ``estimator_state`` (see
    :meth:`DiscreteELBO.trainable_state`): an optimizer over ``parameters()``, DDP's gradient
    averaging and ``state_dict()`` checkpoints include it.

    :param model: the model (a :class:`torch.nn.Module` for its parameters to be included).
    :param guide: the guide (likewise).
    :param DiscreteELBO elbo: the estimator.
    """

    def __init__(self, model, guide, elbo):
        super().__init__(model, guide, elbo)
        state = elbo.trainable_state()
        if state is not None:
            self.estimator_state = state
