"""The estimator core shared by every ELBO in :mod:`pyro_relax.infer`."""

import weakref
from typing import Callable, Dict, List, NamedTuple, Optional

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer.elbo import ELBO
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape, warn_if_nan

from .util import guide_log_prob_at, learning_signals, leave_one_out_centered, left_pad

__all__ = ["DiscreteELBO", "Particle"]


class Particle(NamedTuple):
    """One run of guide and model: a single particle, or all of them when
    ``vectorize_particles=True`` (then every site carries the particle dim at
    ``-max_plate_nesting``).

    :ivar model_trace: model trace (subsample sites pruned, ``log_prob`` computed).
    :ivar guide_trace: guide trace (subsample sites pruned, ``score_parts`` computed).
    :ivar replay_trace: the unpruned guide trace, to re-run the model against.
    :ivar model: the model callable that was run (wrapped in the particle plate if vectorized).
    :ivar dict noise: per-site auxiliary noise recorded by :meth:`DiscreteELBO._sample_site`.
    :ivar int num_particles: how many particles this run holds.
    :ivar tuple args: the model's positional arguments.
    :ivar dict kwargs: the model's keyword arguments.
    """

    model_trace: object
    guide_trace: object
    replay_trace: object
    model: Callable
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
    :class:`~pyro.infer.Trace_ELBO`) and can re-run the model with other values substituted at
    discrete sites, batched over a leading dimension. Reparameterizable sites keep their
    pathwise gradient.

    A subclass states its estimator by overriding

    - :meth:`_surrogate_elbo` (required): a differentiable scalar whose gradient is the estimate
      of the ELBO gradient, from the list of :class:`Particle` s;
    - :meth:`_sample_site` (optional): draw a discrete guide site's value from its own noise;
    - :meth:`_sample_guide` (optional): how the guide trace is drawn (e.g. detached).

    The returned loss is always the ``-ELBO`` estimate averaged over particles, as in Pyro.

    :param int num_particles: number of particles (at least :attr:`min_particles`).
    :param int max_plate_nesting: bound on nested plates (guessed from one run if omitted).
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param bool strict_enumeration_warning: as in :class:`pyro.infer.ELBO`.
    :param bool retain_graph: passed to ``backward``.
    """

    #: smallest ``num_particles`` the estimator accepts
    min_particles = 1

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        strict_enumeration_warning=True,
        retain_graph=None,
    ):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise ValueError(
                "num_particles: expected an int, got {!r}".format(num_particles)
            )
        if num_particles < self.min_particles:
            raise ValueError(
                "num_particles: {} needs num_particles >= {}, got {}".format(
                    type(self).__name__, self.min_particles, num_particles
                )
            )
        if max_plate_nesting != float("inf") and (
            not isinstance(max_plate_nesting, int) or max_plate_nesting < 0
        ):
            raise ValueError(
                "max_plate_nesting: expected a non-negative int, got {!r}".format(
                    max_plate_nesting
                )
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            retain_graph=retain_graph,
        )
        self._independence_checked = weakref.WeakKeyDictionary()
        #: model evaluations so far, counted per particle (a diagnostic for benchmarks)
        self.num_model_evaluations = 0

    # ------------------------------------------------------------------ extension points
    def _sample_site(self, name: str, fn) -> Optional[tuple]:
        """Draws a non-reparameterizable guide site's value. Return ``(value, noise)`` to set the
        value (``noise`` is stored in :attr:`Particle.noise`), or ``None`` for ``fn.sample()``."""
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
    def _get_trace(self, model, guide, args, kwargs):
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
        vectorized = self.vectorize_particles and self.num_particles > 1
        self.num_model_evaluations += self.num_particles if vectorized else 1
        return Particle(
            model_trace,
            pruned_guide,
            guide_trace,
            model,
            noise,
            self.num_particles if vectorized else 1,
            args,
            kwargs,
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
                "{} needs every particle to have the same shapes; got {}. Use static model "
                "and guide structure.".format(type(self).__name__, sorted(shapes))
            )
        return torch.stack(tensors)

    def _evaluate(
        self,
        particle: Particle,
        values: Dict[str, torch.Tensor],
        names,
        grad: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Re-runs the model with the guide sites in ``values`` replaced by a batch of
        alternative values, batched over a new leftmost dimension of size ``R`` (a plate at
        ``dim=-(max_plate_nesting + 1)``; the model must broadcast over it, as with
        ``vectorize_particles``), keeping all other latent values. Returns, for each site in
        ``names``, its learning signal at each alternative: shape ``(R,) + cell shape``.

        Call :meth:`_prepare_substitution` first: the other guide sites must not depend on
        the substituted ones, and ``max_plate_nesting`` must be known.

        :param Particle particle: the particle to re-run.
        :param dict values: site name -> tensor of shape ``(R,) + value shape``.
        :param names: sites to return signals for.
        :param bool grad: keep the autograd graph (RELAX) or not (ARM, ARSM).
        """
        if self.max_plate_nesting == float("inf"):
            raise ValueError(
                "max_plate_nesting: must be known to re-evaluate the model; call "
                "_prepare_substitution first or pass max_plate_nesting"
            )
        rank = self.max_plate_nesting + 1
        num_rows = next(iter(values.values())).shape[0]
        replay = particle.replay_trace.copy()
        for name, value in values.items():
            site = particle.guide_trace.nodes[name]
            event_dim = site["fn"].event_dim
            batch = value.shape[1 : value.dim() - event_dim]
            event = value.shape[value.dim() - event_dim :]
            batch = (1,) * (self.max_plate_nesting - len(batch)) + tuple(batch)
            replay.nodes[name] = dict(
                replay.nodes[name], value=value.reshape((num_rows,) + batch + event)
            )
        self.num_model_evaluations += num_rows * particle.num_particles
        rows_model = pyro.plate("_pyro_relax_rows", num_rows, dim=-rank)(particle.model)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            model_trace = poutine.trace(poutine.replay(rows_model, trace=replay)).get_trace(
                *particle.args, **particle.kwargs
            )
            model_trace = prune_subsample_sites(model_trace)
            model_trace.compute_log_prob()
            guide_log_probs = {
                name: guide_log_prob_at(
                    particle.guide_trace.nodes[name], model_trace.nodes[name]["value"]
                )
                for name in values
            }
            return learning_signals(
                model_trace,
                particle.guide_trace,
                names,
                guide_log_probs=guide_log_probs,
                rank=rank,
                detach=not grad,
            )

    # ------------------------------------------------------------------ checks
    def _prepare_substitution(self, model, guide, names, args, kwargs):
        """What :meth:`_evaluate` needs before values of the discrete sites ``names`` are
        substituted: a guide whose other sites do not depend on them (see
        :meth:`_check_independent`), and a known ``max_plate_nesting`` (guessed from one run if
        needed). Takes the user's (unwrapped) model and guide."""
        self._check_independent(guide, names, args, kwargs)
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    def _check_independent(self, guide, names, args, kwargs):
        """Raises ``ValueError`` if a guide site's distribution depends on the value of one of
        the discrete sites ``names`` (checked once per guide with Pyro's provenance tracking)."""
        key = getattr(guide, "__func__", guide)
        try:
            if self._independence_checked.get(key):
                return
        except TypeError:
            key = None
        with poutine.block():
            with TrackNonReparam():
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
        names = set(names)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
                continue
            log_prob = site["fn"].log_prob(detach_provenance(site["value"]))
            parents = (get_provenance(log_prob) & names) - {name}
            if parents:
                raise ValueError(
                    "{} cannot handle guide site '{}': its distribution depends on the "
                    "value of discrete site(s) {}. Only guides whose distributions do not "
                    "depend on sampled discrete values are supported; use "
                    "ReinforceLOO_ELBO or VarGrad_ELBO for such guides.".format(
                        type(self).__name__, name, sorted(parents)
                    )
                )
        if key is not None:
            try:
                self._independence_checked[key] = True
            except TypeError:
                pass

    # ------------------------------------------------------------------ the ELBO interface
    def loss(self, model, guide, *args, **kwargs):
        """:returns: an estimate of ``-ELBO``, averaged over ``num_particles``.
        :rtype: float"""
        elbo = 0.0
        with torch.no_grad():
            for particle in self._get_traces(model, guide, args, kwargs):
                elbo += torch_item(_elbo_sum(particle)) / self.num_particles
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        particles = list(self._get_traces(model, guide, args, kwargs))
        elbo = sum(_elbo_sum(p).detach() for p in particles) / self.num_particles
        surrogate_elbo = self._surrogate_elbo(particles, model, guide, args, kwargs)
        return -elbo, -surrogate_elbo

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """:returns: a tensor whose value is the ``-ELBO`` estimate and whose gradient is the
        estimator's."""
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss + (surrogate_loss - surrogate_loss.detach())

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
        ``"unscaled_log_prob"``). Not yet divided by ``num_particles``."""
        surrogate = 0.0
        if not names:
            return surrogate
        signals = [learning_signals(p.model_trace, p.guide_trace, names) for p in particles]
        for name in names:
            scores, advantages = [], []
            for p, signal in zip(particles, signals):
                site = p.guide_trace.nodes[name]
                score = (
                    site["score_parts"].score_function
                    if score_key == "score"
                    else site[score_key]
                )
                score, signal = torch.broadcast_tensors(score, signal[name])
                scores.append(score)
                advantages.append(signal)
            score = self._by_particle(particles, scores)
            advantage = leave_one_out_centered(self._by_particle(particles, advantages))
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
    """Sum over the particles in ``particle`` of ``log p - log q``."""
    return particle.model_trace.log_prob_sum() - particle.guide_trace.log_prob_sum()
