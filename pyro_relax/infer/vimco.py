"""VIMCO: the multi-sample (importance-weighted) bound with per-sample leave-one-out baselines."""

import math

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask

from .discrete_elbo import DiscreteELBO
from .util import left_pad

__all__ = ["VIMCO_ELBO"]


class VIMCO_ELBO(DiscreteELBO):
    r"""The :math:`K`-sample importance-weighted bound (IWAE) with the VIMCO gradient of Mnih &
    Rezende (2016), over ``num_particles`` :math:`K \ge 2` particles:

    .. math::

        \mathcal L_K = \log \frac1K \sum_{k=1}^K w_k, \qquad
        w_k = \frac{p_\theta(x, z_k)}{q_\phi(z_k)}, \qquad z_1, \dots, z_K \sim q_\phi,

    .. math::

        \hat g = \sum_k \big(\mathcal L_K - c_k\big) \nabla_\phi \log q_\phi(z_k)
               + \sum_k \tilde w_k \nabla \log w_k, \qquad
        c_k = \log \frac1K \Big(\sum_{j \ne k} w_j
               + \exp\Big(\frac{1}{K-1}\sum_{j\ne k} \log w_j\Big)\Big),

    with :math:`\tilde w_k = w_k / \sum_j w_j`: each sample's learning signal is baselined by
    the bound with its own weight replaced by the geometric mean of the others' (which does not
    depend on :math:`z_k`, so the estimate is unbiased). The score-function term applies to
    every guide site that has one (discrete sites, the score part of partially reparameterized
    ones); the second term carries the pathwise gradient of reparameterized sites and the
    model's gradient. The loss is :math:`-\mathcal L_K`, not the ``-ELBO``;
    ``VIMCO_ELBO(K)``'s gradient is an unbiased estimate of :math:`\nabla \mathcal L_K` (proven
    by enumeration against :func:`pyro_relax.testing.exact_iwae_loss`).

    **Plates.** As :class:`~pyro.infer.RenyiELBO` does, the bound is taken per cell of the
    plates common to every sample site (each datapoint of ``pyro.plate("data", B)`` in a VAE
    gets its own bound and baselines) and summed over them; every other plate and batch dim
    is summed into the log weights. Under subsampling the bound is computed from unscaled
    densities and then scaled, which needs one scale for the whole program: a subsampled plate
    with a site outside it (a global latent) or a ``poutine.scale`` on some sites is refused
    with a ``ValueError``.

    Reference: A. Mnih, D. J. Rezende, "Variational Inference for Monte Carlo Objectives",
    ICML 2016.

    :param int num_particles: :math:`K`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    """

    min_particles = 2

    def estimate(self, particles):
        """The :math:`K`-sample bound :math:`\\mathcal L_K`, summed over the common plate cells
        and scaled."""
        log_w, _, _, scale = self._log_weights(particles)
        if log_w is None:
            return 0.0
        return scale * (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).sum()

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        """A differentiable scalar whose gradient is the VIMCO estimate of
        :math:`\\nabla \\mathcal L_K` (not divided by :math:`K`: the bound is not an average
        of per-particle terms)."""
        log_w, weighted, scores, scale = self._log_weights(particles)
        if log_w is None:
            return 0.0
        K = log_w.shape[0]
        log_w = log_w.detach()
        bound = torch.logsumexp(log_w, 0) - math.log(K)
        # c_k: the bound with log w_k replaced by the mean of the other particles' log weights
        others = (log_w.sum(0, keepdim=True) - log_w) / (K - 1)
        replaced = log_w.unsqueeze(0).expand((K,) + log_w.shape).clone()
        index = torch.arange(K, device=log_w.device)
        replaced[index, index] = others
        baselines = torch.logsumexp(replaced, 1) - math.log(K)
        normalized = torch.softmax(log_w, 0)
        surrogate = (normalized * weighted).sum()
        if scores is not None:  # Pyro leaves score functions unscaled: the bound's scale here
            surrogate = surrogate + scale * ((bound - baselines) * scores).sum()
        return surrogate

    def _log_weights(self, particles):
        """Per particle (dim 0) and common plate cell: the unscaled log weights, the scaled
        ``log p - log q`` with its graph (the pathwise part), the score-function terms (unscaled,
        as Pyro's ``score_parts`` keep them; None if no site has one), and the program's one scale. ``(None, ...)`` for a program
        with no sample sites."""
        signed = [_signed_sites(p) for p in particles]
        if not any(signed):
            return None, None, None, 1.0
        scale = _common_scale(signed, type(self).__name__)
        rank = max(s["log_prob"].dim() for ss in signed for _, s in ss
                   if torch.is_tensor(s["log_prob"]))
        vectorized = len(particles) == 1 and particles[0].num_particles > 1
        if vectorized:
            rank = max(rank, self.max_plate_nesting)
        log_ws, weights, scores = [], [], []
        for ss in signed:
            common = set.intersection(*[{f.dim for f in s["cond_indep_stack"] if f.dim is not None}
                                        for _, s in ss])
            log_w = weight = score = 0.0
            for sign, s in ss:
                log_w = log_w + sign * _to_cells(
                    scale_and_mask(s["unscaled_log_prob"], 1.0, s["mask"]), rank, common)
                weight = weight + sign * _to_cells(s["log_prob"], rank, common)
                term = s["score_parts"].score_function if sign < 0 else 0.0
                if not s["is_observed"] and not is_identically_zero(term):
                    score = score + _to_cells(term, rank, common)
            log_ws.append(log_w)
            weights.append(weight)
            scores.append(score)
        reference = next(x for x in log_ws + weights if torch.is_tensor(x))
        shape = torch.broadcast_shapes(*[x.shape for x in log_ws + weights + scores
                                         if torch.is_tensor(x)])

        def stack(xs):
            xs = [reference.new_zeros(shape) + x for x in xs]  # broadcast, and 0.0 as zeros
            if vectorized:
                return xs[0].movedim(-self.max_plate_nesting, 0)
            return torch.stack(xs)

        if all(not torch.is_tensor(x) for x in scores):
            scores = None
        else:
            scores = stack(scores)
        return stack(log_ws), stack(weights), scores, scale


def _signed_sites(particle):
    """``(+1, site)`` for every sample site of the model (observed and latent), ``(-1,
    site)`` for every sample site of the guide (its latents, and sites of the guide alone)."""
    model, guide = particle.model_trace, particle.guide_trace
    out = [(1.0, s) for s in model.nodes.values() if s["type"] == "sample"]
    out += [(-1.0, s) for s in guide.nodes.values()
            if s["type"] == "sample" and not s["is_observed"]]
    return out


def _to_cells(x, rank, common):
    """``x`` left-padded to ``rank`` dims, every dim that is not a common plate's summed
    (kept as size 1)."""
    x = left_pad(x, rank)
    dims = [d for d in range(-rank, 0) if d not in common and x.shape[d] > 1]
    return x.sum(dims, keepdim=True) if dims else x


def _common_scale(signed, name):
    """The one scale of every site (a float), or a ``ValueError``."""
    scales = {}
    for ss in signed:
        for _, s in ss:
            scale = s["scale"]
            if torch.is_tensor(scale):
                if scale.numel() != 1:
                    raise ValueError(
                        "{}: site '{}' has a tensor-valued scale (poutine.scale); the "
                        "K-sample bound needs one number for the whole program".format(
                            name, s["name"]))
                scale = float(scale)
            scales.setdefault(float(scale), s["name"])
    if len(scales) > 1:
        raise ValueError(
            "{}: the K-sample bound needs one scale for the whole program, but sites have "
            "different scales ({}): a subsampled plate with a site outside it (a global "
            "latent), or poutine.scale on some sites. Subsample a plate that holds every "
            "site, or use an ELBO estimator (ReinforceLOO_ELBO).".format(
                name, ", ".join("'{}': {:g}".format(n, v) for v, n in sorted(scales.items()))))
    return next(iter(scales))
