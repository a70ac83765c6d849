"""One run of guide and model, built with Pyro's own :func:`~pyro.infer.enum.get_importance_trace`.

Every guide style Pyro supports runs through that function: plain functions,
:class:`~pyro.nn.PyroModule` s, autoguides and effect-style guides
(:class:`~pyro.poutine.guide.GuideMessenger`, which run the model themselves). The estimators
only wrap the guide in :class:`SiteSampler`, which lets them draw the values of discrete sites
from their own noise and records the mini-batch of every subsampled plate.
"""

from typing import Callable, Dict, NamedTuple

import pyro.poutine as poutine
from pyro.infer.enum import get_importance_trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

__all__ = [
    "MinibatchRecorder",
    "Particle",
    "SiteSampler",
    "check_plate_sizes",
    "is_guide_messenger",
    "run_particle",
    "with_minibatch",
]


class Particle(NamedTuple):
    """One run of guide and model: a single particle, or all of them when
    ``vectorize_particles=True`` (then every site carries the particle dim at
    ``-max_plate_nesting``).

    :ivar model_trace: the model trace, as :func:`~pyro.infer.enum.get_importance_trace`
        returns it (subsample sites pruned, ``log_prob`` computed).
    :ivar guide_trace: the guide trace, likewise (``score_parts`` computed).
    :ivar minibatch: a trace of the subsample sites of the run (the mini-batch of every
        subsampled plate), to run the program again on the same mini-batch.
    :ivar model: the model callable that was run (wrapped in the particle plate if vectorized).
    :ivar guide: the guide callable that was run (likewise).
    :ivar dict noise: per-site auxiliary noise recorded by the estimator's ``sample_site``.
    :ivar int num_particles: how many particles this run holds.
    :ivar tuple args: the model's positional arguments.
    :ivar dict kwargs: the model's keyword arguments.
    """

    model_trace: object
    guide_trace: object
    minibatch: object
    model: Callable
    guide: Callable
    noise: Dict[str, object]
    num_particles: int
    args: tuple
    kwargs: dict


class MinibatchRecorder(Messenger):
    """Records the subsample sites of a run (the mini-batch of every subsampled plate) in
    :attr:`minibatch`, a trace that :func:`~pyro.poutine.replay` can replay.

    :param minibatch: the trace to add to (a new one by default).
    """

    def __init__(self, minibatch=None):
        super().__init__()
        self.minibatch = poutine.Trace() if minibatch is None else minibatch

    def _pyro_post_sample(self, msg):
        if site_is_subsample(msg) and msg["name"] not in self.minibatch.nodes:
            self.minibatch.add_node(msg["name"], **msg.copy())


class SiteSampler(MinibatchRecorder):
    """Lets an estimator draw the values of guide sites itself (e.g. ARM's antithetic
    uniforms, ARSM's Dirichlet noise), recording the noise it used, and records the subsample
    sites of the run (see :class:`MinibatchRecorder`).

    :param sample_site: ``sample_site(name, fn) -> (value, noise) or None``, called for every
        latent site for which ``wants(fn)`` holds; ``None`` leaves the site to ``fn``.
    :param wants: ``wants(fn) -> bool`` (default: the site is not reparameterizable).
    """

    def __init__(self, sample_site, wants=None):
        super().__init__()
        self.sample_site = sample_site
        self.wants = wants or (lambda fn: not getattr(fn, "has_rsample", False))
        self.noise = {}

    def _pyro_sample(self, msg):
        if msg["done"] or msg["is_observed"] or site_is_subsample(msg) or not self.wants(msg["fn"]):
            return
        result = self.sample_site(msg["name"], msg["fn"])
        if result is None:
            return
        value, noise = result
        msg["value"] = value
        msg["done"] = True
        self.noise[msg["name"]] = noise


def is_guide_messenger(guide):
    """Whether ``guide`` is an effect-style guide (a :class:`~pyro.poutine.messenger.Messenger`
    such as :class:`~pyro.poutine.guide.GuideMessenger`, possibly wrapped in handlers): it runs
    the model itself, as :func:`~pyro.infer.enum.get_importance_trace` dispatches."""
    return isinstance(poutine.unwrap(guide), Messenger)


def run_particle(model, guide, args, kwargs, max_plate_nesting, sampler, minibatch=None):
    """Guide and model traces of one run, from :func:`~pyro.infer.enum.get_importance_trace`
    with the guide wrapped in ``sampler`` (a :class:`SiteSampler`, which also records the
    model's own subsample sites) and, if given, the ``minibatch`` of every subsampled plate
    replayed in guide and model.

    :returns: ``(model_trace, guide_trace)``.
    """
    if minibatch is not None and len(minibatch.nodes):
        guide = poutine.replay(guide, trace=minibatch)
        model = poutine.replay(model, trace=minibatch)
    model = MinibatchRecorder(sampler.minibatch)(model)
    model_trace, guide_trace = get_importance_trace(
        "flat", max_plate_nesting, model, sampler(guide), args, kwargs
    )
    check_plate_sizes(model_trace, guide_trace)
    return model_trace, guide_trace


def with_minibatch(trace, minibatch):
    """A copy of ``trace`` with the subsample sites of ``minibatch`` added (those it lacks),
    so that replaying the model against it keeps every plate's mini-batch."""
    out = trace.copy()
    for name, site in minibatch.nodes.items():
        if name not in out.nodes:
            out.add_node(name, **site)
    return out


def _plate_sizes(trace):
    sizes = {}
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            full = frame.full_size if frame.full_size is not None else frame.size
            sizes.setdefault(frame.name, full)
    return sizes


def check_plate_sizes(model_trace, guide_trace):
    """A plate shared by model and guide must have one size; otherwise Pyro would silently
    replay the guide's indices as a subsample of the model's plate (and scale by the ratio)."""
    guide_sizes = _plate_sizes(guide_trace)
    for name, model_size in _plate_sizes(model_trace).items():
        guide_size = guide_sizes.get(name)
        if guide_size is not None and guide_size != model_size:
            raise ValueError(
                "plate '{}' has size {} in the model but {} in the guide; model and guide "
                "must use the same plates (name and size)".format(name, model_size, guide_size)
            )
