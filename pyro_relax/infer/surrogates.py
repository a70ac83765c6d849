"""Surrogate terms shared by the estimators: the pathwise part of the ELBO and REINFORCE with
a leave-one-out baseline. Each returns a differentiable scalar, not yet divided by the number
of particles."""

import torch
from pyro.distributions.util import is_identically_zero

from .util import learning_signals, leave_one_out_centered, left_pad

__all__ = [
    "by_particle",
    "leave_one_out_surrogate",
    "pathwise_surrogate",
    "score_function_sites",
]


def pathwise_surrogate(particle):
    """:class:`~pyro.infer.Trace_ELBO`'s surrogate without its score-function terms: the
    model's log density (gradients for model parameters and through reparameterized samples)
    minus the entropy terms of the guide's sites (``score_parts.entropy_term``: the whole
    ``log q`` of a reparameterized site, none of a discrete one)."""
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


def score_function_sites(guide_trace):
    """Names of the guide's latent sites whose ``score_parts`` carry a nonzero score-function
    term: discrete sites, and the score part of partially reparameterized ones (e.g.
    :class:`~pyro.distributions.ShapeAugmentedGamma`), as in :class:`~pyro.infer.Trace_ELBO`."""
    return [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not is_identically_zero(site["score_parts"].score_function)
    ]


def by_particle(particles, tensors, max_plate_nesting, what="a site"):
    """One tensor per :class:`~pyro_relax.infer.Particle` laid out as a single tensor with the
    particle dimension first, whether the particles were vectorized (one particle holding
    them all, at ``dim=-max_plate_nesting``) or run in sequence."""
    if len(particles) == 1 and particles[0].num_particles > 1:
        (x,) = tensors
        return left_pad(x, max_plate_nesting).movedim(-max_plate_nesting, 0)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            "{} has a different shape in different particles: {}. Use static shapes, or "
            "vectorize_particles=True.".format(what, sorted(shapes))
        )
    return torch.stack(tensors)


def leave_one_out_surrogate(particles, names, score_key, max_plate_nesting,
                            center=leave_one_out_centered):
    """``sum_s center(f)_s * score_s`` summed over plate cells and sites, with ``f`` the
    learning signal per plate cell and ``score`` the site's score-function term
    (``score_key="score"``: that of ``score_parts``), a trace key such as
    ``"unscaled_log_prob"``, or ``score_key(site)``. ``center`` is the baseline: ``f_s - mean_{s' != s} f_s'`` by
    default (Kool et al. 2019); with one particle the signal is used as it is (REINFORCE).

    A site that only some particles have (a guide whose structure depends on a sample) is
    baselined with the particles that have it (they are independent of the particle being
    baselined, so the estimate stays unbiased)."""
    surrogate = 0.0
    if not names:
        return surrogate
    signals = [learning_signals(p.model_trace, p.guide_trace,
                                [n for n in names if n in p.guide_trace.nodes])
               for p in particles]
    for name in names:
        holders, scores, advantages = [], [], []
        for p, signal in zip(particles, signals):
            site = p.guide_trace.nodes.get(name)
            if site is None:
                continue
            if callable(score_key):
                score = score_key(site)
            else:
                score = site["score_parts"].score_function if score_key == "score" else site[score_key]
            score, f = torch.broadcast_tensors(score, signal[name])
            holders.append(p)
            scores.append(score)
            advantages.append(f)
        what = "site '{}'".format(name)
        score = by_particle(holders, scores, max_plate_nesting, what)
        advantage = by_particle(holders, advantages, max_plate_nesting, what)
        if advantage.shape[0] > 1:
            advantage = center(advantage)
        surrogate = surrogate + (advantage * score).sum()
    return surrogate
