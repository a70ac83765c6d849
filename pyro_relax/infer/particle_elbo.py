"""The part of the estimator core that runs guide and model: particles, in sequence or as a
tensor dimension, each from Pyro's own :func:`~pyro.infer.enum.get_importance_trace`."""

import numbers
import warnings

import torch
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.util import check_if_enumerated

from .particle import Particle, SiteSampler, run_particle

__all__ = ["ParticleELBO", "forked_rng"]


class ParticleELBO(ELBO):
    """An :class:`~pyro.infer.ELBO` that runs guide and model with ``num_particles`` particles
    (as a tensor dimension when ``vectorize_particles=True``) through Pyro's own
    :func:`~pyro.infer.enum.get_importance_trace`, the guide wrapped in the estimator's
    :class:`~pyro_relax.infer.particle.SiteSampler`; particles run in sequence share the
    mini-batch of every subsampled plate. The base of :class:`~pyro_relax.infer.DiscreteELBO`.

    :param int num_particles: number of particles (at least :attr:`min_particles`).
    :param int max_plate_nesting: bound on nested plates (guessed from one run if omitted).
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param bool strict_enumeration_warning: as in :class:`pyro.infer.ELBO`.
    :param bool retain_graph: passed to ``backward``.
    """

    #: smallest ``num_particles`` the estimator accepts
    min_particles = 1

    def __init__(self, num_particles=None, max_plate_nesting=float("inf"),
                 vectorize_particles=False, strict_enumeration_warning=True, retain_graph=None):
        if num_particles is None:
            num_particles = max(1, self.min_particles)
        if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
            raise ValueError("num_particles: expected an int, got {!r}".format(num_particles))
        if int(num_particles) < self.min_particles:
            raise ValueError("num_particles: {} needs num_particles >= {}, got {}".format(
                type(self).__name__, self.min_particles, num_particles))
        if max_plate_nesting != float("inf"):
            if isinstance(max_plate_nesting, bool) or not isinstance(
                    max_plate_nesting, numbers.Integral) or max_plate_nesting < 0:
                raise ValueError("max_plate_nesting: expected a non-negative int, got {!r}"
                                 .format(max_plate_nesting))
            max_plate_nesting = int(max_plate_nesting)
        super().__init__(num_particles=int(num_particles), max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning,
                         retain_graph=retain_graph)
        #: the particles' own model evaluations so far (counted per particle)
        self.num_particle_evaluations = 0
        self._warned_baseline = set()

    def sample_site(self, name, fn):
        """Draws a guide site's value (called for non-reparameterizable sites). Return
        ``(value, noise)`` to set the value (``noise`` is stored in
        :attr:`Particle.noise <pyro_relax.infer.Particle>`), or ``None`` for ``fn.sample()``."""
        return None

    # ------------------------------------------------------------------ running model and guide
    def sampler(self):
        """The :class:`~pyro_relax.infer.particle.SiteSampler` a particle's guide runs in."""
        return SiteSampler(self.sample_site)

    def _get_traces(self, model, guide, args, kwargs):
        if self.vectorize_particles:
            if self.max_plate_nesting == float("inf"):
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            yield self._get_vectorized_trace(model, guide, args, kwargs)
            return
        minibatch = None  # particles in sequence share each subsampled plate's mini-batch
        for _ in range(self.num_particles):
            particle = self._get_trace(model, guide, args, kwargs, minibatch)
            minibatch = particle.minibatch if minibatch is None else minibatch
            yield particle

    def _get_trace(self, model, guide, args, kwargs, minibatch=None):
        sampler = self.sampler()
        model_trace, guide_trace = run_particle(
            model, guide, args, kwargs, self.max_plate_nesting, sampler, minibatch)
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        self._warn_baselines(guide_trace)
        num = self.num_particles if self.vectorize_particles and self.num_particles > 1 else 1
        self.num_particle_evaluations += num
        return Particle(model_trace, guide_trace, sampler.minibatch, model, guide,
                        sampler.noise, num, args, kwargs)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Pyro's guess runs model and guide once; keep it off the user's random stream, so that
        # a run resumed from a saved param store and RNG state draws what it would have drawn.
        with forked_rng():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def require_max_plate_nesting(self, model, guide, args, kwargs):
        """Makes ``max_plate_nesting`` known (the engine needs it), guessing it from one run
        of the user's model and guide if it was not given."""
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    def _warn_baselines(self, guide_trace):
        for name, site in guide_trace.nodes.items():
            if (site["type"] == "sample" and site["infer"].get("baseline")
                    and name not in self._warned_baseline):
                self._warned_baseline.add(name)
                warnings.warn(
                    "{} ignores infer={{'baseline': ...}} at guide site '{}': that option "
                    "belongs to TraceGraph_ELBO; this estimator uses its own control "
                    "variates.".format(type(self).__name__, name), UserWarning)



def forked_rng():
    """Torch's CPU (and initialized CUDA) random state, restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)
