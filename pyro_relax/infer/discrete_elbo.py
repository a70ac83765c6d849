"""The estimator core shared by every ELBO in :mod:`pyro_relax.infer`."""

import numbers
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan

from .substitution import RowPlan, run_rows, subsample_trace
from .util import learning_signals, leave_one_out_centered, left_pad

__all__ = ["DiscreteELBO", "Particle"]


class Particle(NamedTuple):
    """One run of guide and model: a single particle, or all of them when
    ``vectorize_particles=True`` (then every site carries the particle dim at
    ``-max_plate_nesting``).

    :ivar model_trace: model trace (subsample sites pruned, ``log_prob`` computed).
    :ivar guide_trace: guide trace (subsample sites pruned, ``score_parts`` computed).
    :ivar replay_trace: the unpruned guide trace, to re-run the model against.
    :ivar model: the model callable that was run (wrapped in the particle plate if vectorized).
    :ivar guide: the guide callable that was run (likewise).
    :ivar dict noise: per-site auxiliary noise recorded by :meth:`DiscreteELBO._sample_site`.
    :ivar int num_particles: how many particles this run holds.
    :ivar tuple args: the model's positional arguments.
    :ivar dict kwargs: the model's keyword arguments.
    """

    model_trace: object
    guide_trace: object
    replay_trace: object
    model: Callable
    guide: Callable
    noise: Dict[str, object]
    num_particles: int
    args: tuple
    kwargs: dict


class _SiteSampler(Messenger):
    """Lets an estimator draw the values of the guide's non-reparameterizable sites itself
    (e.g. ARM's antithetic uniforms, ARSM's Dirichlet noise), recording the noise it used."""

    def __init__(self, sample_site):
        super().__init__()
        self.sample_site = sample_site
        self.noise = {}

    def _pyro_sample(self, msg):
        if (
            msg["done"]
            or msg["is_observed"]
            or site_is_subsample(msg)
            or getattr(msg["fn"], "has_rsample", False)
        ):
            return
        result = self.sample_site(msg["name"], msg["fn"])
        if result is None:
            return
        value, noise = result
        msg["value"] = value
        msg["done"] = True
        self.noise[msg["name"]] = noise


class DiscreteELBO(ELBO):
    """Base class of the discrete-latent ELBOs: it runs the guide and the model with
    ``num_particles`` particles (as a tensor dimension when ``vectorize_particles=True``),
    finds the guide's non-reparameterizable sites, builds per-plate-cell learning signals (a
    latent inside ``pyro.plate("data", B)`` is credited only with the ``log p - log q`` terms of
    its own slice plus the global terms, with subsampling scales as in
    :class:`~pyro.infer.Trace_ELBO`) and can re-run guide and model with other values
    substituted at discrete sites, batched over a leading dimension (guide sites downstream of a
    substituted site are drawn again, see :mod:`pyro_relax.infer.substitution`).
    Reparameterizable sites keep their pathwise gradient. Particles run in sequence share the
    mini-batch of every subsampled plate (the first particle's indices are replayed), so that
    per-datapoint baselines compare the same datapoints.

    A subclass states its estimator by overriding

    - :meth:`_surrogate_elbo` (required): a differentiable scalar whose gradient is the estimate
      of the ELBO gradient, from the list of :class:`Particle` s;
    - :meth:`_sample_site` (optional): draw a discrete guide site's value from its own noise;
    - :meth:`_redraw_site` (optional): draw it again from the same noise under a changed
      distribution (common random numbers when a substitution upstream changed it);
    - :meth:`_sample_guide` (optional): how the guide trace is drawn (e.g. detached).

    The returned loss is always the ``-ELBO`` estimate averaged over particles, as in Pyro.
    ``infer={"baseline": ...}`` on a guide site (a :class:`~pyro.infer.TraceGraph_ELBO`
    option) is not used by these estimators; it triggers a warning naming the site.

    :param int num_particles: number of particles (at least :attr:`min_particles`).
    :param int max_plate_nesting: bound on nested plates (guessed from one run if omitted).
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param bool strict_enumeration_warning: as in :class:`pyro.infer.ELBO`.
    :param bool retain_graph: passed to ``backward``.
    """

    #: smallest ``num_particles`` the estimator accepts
    min_particles = 1
    #: alternatives scored in a batch include, on the first call and every this many calls,
    #: a row holding the sample itself, to check that the program broadcasts over the batch
    check_broadcast_every = 50

    def __init__(
        self,
        num_particles=None,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        strict_enumeration_warning=True,
        retain_graph=None,
    ):
        if num_particles is None:
            num_particles = max(1, self.min_particles)
        if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
            raise ValueError(
                "num_particles: expected an int, got {!r}".format(num_particles)
            )
        num_particles = int(num_particles)
        if num_particles < self.min_particles:
            raise ValueError(
                "num_particles: {} needs num_particles >= {}, got {}".format(
                    type(self).__name__, self.min_particles, num_particles
                )
            )
        if max_plate_nesting != float("inf"):
            if isinstance(max_plate_nesting, bool) or not isinstance(
                max_plate_nesting, numbers.Integral
            ) or max_plate_nesting < 0:
                raise ValueError(
                    "max_plate_nesting: expected a non-negative int, got {!r}".format(
                        max_plate_nesting
                    )
                )
            max_plate_nesting = int(max_plate_nesting)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            retain_graph=retain_graph,
        )
        #: model evaluations so far, counted per particle (a diagnostic for benchmarks)
        self.num_model_evaluations = 0
        #: how alternatives are scored (see :func:`~pyro_relax.infer.substitution.run_rows`);
        #: set by the estimators that score alternatives
        self.vectorize_alternatives = None
        self._rows_one_at_a_time = False
        self._alternative_calls = 0
        self._warned_baseline = set()

    @staticmethod
    def _check_vectorize_alternatives(value):
        if value not in (None, True, False):
            raise ValueError(
                "vectorize_alternatives: expected None (batched, falling back to one at a "
                "time), True or False, got {!r}".format(value)
            )
        return value

    # ------------------------------------------------------------------ extension points
    def _sample_site(self, name: str, fn) -> Optional[tuple]:
        """Draws a non-reparameterizable guide site's value. Return ``(value, noise)`` to set the
        value (``noise`` is stored in :attr:`Particle.noise <pyro_relax.infer.Particle>`), or ``None`` for ``fn.sample()``."""
        return None

    def _redraw_site(self, name: str, fn, noise) -> Optional[torch.Tensor]:
        """Draws a guide site again under the re-run's distribution ``fn`` (batched over
        alternatives) from the ``noise`` that :meth:`_sample_site` recorded, so that an
        unchanged distribution gives the same value. ``None``: a fresh draw."""
        return None

    def _sample_guide(self, guide, args, kwargs):
        """Returns the guide's unpruned trace (sampled with :meth:`_sample_site`) and the
        recorded noise."""
        sampler = _SiteSampler(self._sample_site)
        guide_trace = poutine.trace(sampler(guide)).get_trace(*args, **kwargs)
        return guide_trace, sampler.noise

    def _surrogate_elbo(self, particles: List[Particle], model, guide, args, kwargs):
        """A differentiable scalar whose gradient estimates the ELBO's gradient, averaged
        over all particles."""
        raise NotImplementedError

    # ------------------------------------------------------------------ running model and guide
    def _get_traces(self, model, guide, args, kwargs):
        if self.vectorize_particles:
            if self.max_plate_nesting == float("inf"):
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            yield self._get_vectorized_trace(model, guide, args, kwargs)
            return
        # Particles in sequence share each subsampled plate's mini-batch.
        minibatch = None
        for _ in range(self.num_particles):
            particle = self._get_trace(model, guide, args, kwargs, minibatch)
            if minibatch is None:
                minibatch = subsample_trace(particle.replay_trace)
            yield particle

    def _get_trace(self, model, guide, args, kwargs, minibatch=None):
        if minibatch is not None and len(minibatch.nodes):
            guide = poutine.replay(guide, trace=minibatch)
        guide_trace, noise = self._sample_guide(guide, args, kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        _check_plate_sizes(model_trace, guide_trace)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        pruned_guide = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        _compute_log_probs(model_trace, pruned_guide)
        if is_validation_enabled():
            check_if_enumerated(pruned_guide)
            for trace in (model_trace, pruned_guide):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
        self._warn_baselines(pruned_guide)
        vectorized = self.vectorize_particles and self.num_particles > 1
        self.num_model_evaluations += self.num_particles if vectorized else 1
        return Particle(
            model_trace,
            pruned_guide,
            guide_trace,
            model,
            guide,
            noise,
            self.num_particles if vectorized else 1,
            args,
            kwargs,
        )

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Pyro's guess runs model and guide once; keep it off the user's random stream, so that
        # a run resumed from a saved param store and RNG state draws what it would have drawn.
        with _forked_rng():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def _warn_baselines(self, guide_trace):
        for name, site in guide_trace.nodes.items():
            if (
                site["type"] == "sample"
                and site["infer"].get("baseline")
                and name not in self._warned_baseline
            ):
                self._warned_baseline.add(name)
                warnings.warn(
                    "{} ignores infer={{'baseline': ...}} at guide site '{}': that option "
                    "belongs to TraceGraph_ELBO; this estimator uses its own control "
                    "variates.".format(type(self).__name__, name),
                    UserWarning,
                )

    def _by_particle(self, particles: List[Particle], tensors: List[torch.Tensor]):
        """Lays out one tensor per :class:`Particle` as a single tensor with the particle
        dimension first, whether the particles were vectorized or run in sequence."""
        if len(particles) == 1 and particles[0].num_particles > 1:
            (x,) = tensors  # vectorized: max_plate_nesting is known
            return left_pad(x, self.max_plate_nesting).movedim(-self.max_plate_nesting, 0)
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(
                "{} needs a site to have the same shape in every particle; got {}. Use "
                "static shapes, or vectorize_particles=True.".format(
                    type(self).__name__, sorted(shapes)
                )
            )
        return torch.stack(tensors)

    def _evaluate(
        self,
        particle: Particle,
        values: Dict[str, torch.Tensor],
        names,
        grad: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Scores alternatives of the guide sites in ``values``, one site changed per row (the
        others at their sample): re-runs the guide from the changed site on (its downstream
        sites drawn again with common random numbers, see :meth:`_redraw_site`) and the model,
        all rows batched over a new leftmost dimension (or one at a time, see
        ``vectorize_alternatives``). Returns, for each site in ``names``, its learning signal at
        each row: shape ``(R,) + cell shape``. Call :meth:`_prepare_substitution` first.

        :param Particle particle: the particle to re-run.
        :param dict values: site name -> tensor of shape ``(R,) + value shape``; in each row
            exactly one site differs from its sample.
        :param names: sites to return signals for.
        :param bool grad: keep the autograd graph or not.
        """
        if self.max_plate_nesting == float("inf"):
            raise ValueError(
                "max_plate_nesting: must be known to re-evaluate the model; call "
                "_prepare_substitution first or pass max_plate_nesting"
            )
        order = [
            name
            for name, site in particle.replay_trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
        ]
        check = self._check_broadcast_now()
        if check:  # one more row: the sample itself
            values = {
                name: torch.cat([value, particle.replay_trace.nodes[name]["value"].unsqueeze(0)])
                for name, value in values.items()
            }
        num_rows = next(iter(values.values())).shape[0]
        device = next(iter(values.values())).device
        first = torch.full((num_rows,), len(order), dtype=torch.long, device=device)
        changed = {}
        for name, value in values.items():
            sample = particle.replay_trace.nodes[name]["value"]
            changed[name] = (value != sample).reshape(num_rows, -1).any(-1)
            position = torch.full_like(first, order.index(name))
            first = torch.where(changed[name], torch.minimum(first, position), first)
        plan = RowPlan(
            num_rows,
            first,
            names,
            values=values,
            changed=changed,
            redraw=self._redraw_from_noise(particle),
            sample_row=check,
        )
        return run_rows(self, particle, plan, grad=grad)

    def _check_broadcast_now(self):
        """Whether this batch of alternatives should carry the sample row (see
        :class:`~pyro_relax.infer.substitution.RowPlan`)."""
        if self.vectorize_alternatives is False or self._rows_one_at_a_time:
            return False
        due = self._alternative_calls % self.check_broadcast_every == 0
        self._alternative_calls += 1
        return due

    def _redraw_from_noise(self, particle):
        def redraw(name, fn, site):
            noise = particle.noise.get(name)
            return None if noise is None else self._redraw_site(name, fn, noise)

        return redraw

    # ------------------------------------------------------------------ checks
    def _prepare_substitution(self, model, guide, args, kwargs):
        """What :meth:`_evaluate` needs before values are substituted: a known
        ``max_plate_nesting`` (guessed from one run of the user's model and guide if needed).
        No independence check is needed: sites downstream of a substituted one are redrawn."""
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    # ------------------------------------------------------------------ the ELBO interface
    def loss(self, model, guide, *args, **kwargs):
        """Estimates the ``-ELBO``.

        :returns: an estimate of ``-ELBO``, averaged over ``num_particles``.
        :rtype: float
        """
        elbo = 0.0
        with torch.no_grad():
            for particle in self._get_traces(model, guide, args, kwargs):
                elbo += torch_item(_elbo_sum(particle)) / self.num_particles
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        particles = list(self._get_traces(model, guide, args, kwargs))
        elbo = sum(_detach(_elbo_sum(p)) for p in particles) / self.num_particles
        surrogate_elbo = self._surrogate_elbo(particles, model, guide, args, kwargs)
        return -elbo, -surrogate_elbo

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The ``-ELBO`` estimate as a differentiable tensor.

        :returns: a tensor whose value is the ``-ELBO`` estimate and whose gradient is the
            estimator's (``0.0`` for a program with no sites, as :class:`~pyro.infer.Trace_ELBO`).
        """
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

    # ------------------------------------------------------------------ shared pieces of math
    def _leave_one_out_surrogate(self, particles: List[Particle], names, score_key: str):
        """``sum_s (f_s - mean_{s' != s} f_s') * score_s`` summed over plate cells and sites, with
        ``f`` the learning signal and ``score`` the site's ``score_key`` entry (``"score"`` for
        the score-function term of ``score_parts``, else a trace key such as
        ``"unscaled_log_prob"``). Not yet divided by ``num_particles``.

        A site that only some particles have (a guide whose structure depends on a sample) is
        baselined with the particles that have it (they are independent of the particle being
        baselined, so the estimate stays unbiased); a site only one particle has gets no
        baseline."""
        surrogate = 0.0
        if not names:
            return surrogate
        signals = [learning_signals(p.model_trace, p.guide_trace, _site_names(p, names))
                   for p in particles]
        for name in names:
            scores, advantages = [], []
            for p, signal in zip(particles, signals):
                site = p.guide_trace.nodes.get(name)
                if site is None:
                    continue
                score = (
                    site["score_parts"].score_function
                    if score_key == "score"
                    else site[score_key]
                )
                score, signal = torch.broadcast_tensors(score, signal[name])
                scores.append(score)
                advantages.append(signal)
            holders = [p for p in particles if name in p.guide_trace.nodes]
            score = self._by_particle(holders, scores)
            advantage = self._by_particle(holders, advantages)
            if advantage.shape[0] > 1:
                advantage = leave_one_out_centered(advantage)
            surrogate = surrogate + (advantage * score).sum()
        return surrogate

    @staticmethod
    def _pathwise_surrogate(particle: Particle):
        """Trace_ELBO's surrogate without its score-function terms: the model's log density
        (gradients for model parameters and through reparameterized samples) minus the entropy
        terms of reparameterized guide sites."""
        surrogate = 0.0
        for site in particle.model_trace.nodes.values():
            if site["type"] == "sample":
                surrogate = surrogate + site["log_prob_sum"]
        for site in particle.guide_trace.nodes.values():
            if site["type"] == "sample":
                entropy_term = site["score_parts"].entropy_term
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - entropy_term.sum()
        return surrogate


def _forked_rng():
    """Torch's CPU (and initialized CUDA) random state, restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


def _check_plate_sizes(model_trace, guide_trace):
    """A plate shared by model and guide must have one size; otherwise Pyro would silently
    replay the guide's indices as a subsample of the model's plate."""
    for name, site in model_trace.nodes.items():
        if not site_is_subsample(site) or name not in guide_trace.nodes:
            continue
        model_size = site["fn"].size
        guide_size = guide_trace.nodes[name]["fn"].size
        if model_size != guide_size:
            raise ValueError(
                "plate '{}' has size {} in the model but {} in the guide; model and guide "
                "must use the same plates (name and size)".format(name, model_size, guide_size)
            )


def _compute_log_probs(model_trace, guide_trace):
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()


def _elbo_sum(particle: Particle):
    """Sum over the particles in ``particle`` of ``log p - log q`` (a float 0.0 for a program
    with no sample sites)."""
    return particle.model_trace.log_prob_sum() - particle.guide_trace.log_prob_sum()


def _detach(x):
    return x.detach() if torch.is_tensor(x) else x


def _site_names(particle, names):
    return [name for name in names if name in particle.guide_trace.nodes]
