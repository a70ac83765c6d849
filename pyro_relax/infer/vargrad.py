"""VarGrad: the log-variance loss."""

import torch
from pyro.distributions import Delta

from .discrete_elbo import DiscreteELBO
from .particle import SiteSampler
from .surrogates import leave_one_out_surrogate
from .util import base_distribution

__all__ = ["VarGrad_ELBO"]


class VarGrad_ELBO(DiscreteELBO):
    r"""The log-variance loss of Richter et al. (2020) over ``num_particles`` :math:`S \ge 2`
    particles. With :math:`z_s` drawn from the guide and held fixed (no pathwise gradient),
    the guide parameters get the gradient of

    .. math::

        \tfrac12 \widehat{\mathrm{Var}}_s\big[\log q_\phi(z_s) - \log p_\theta(x, z_s)\big]
        = \frac{1}{2(S-1)} \sum_s (f_s - \bar f)^2, \qquad f_s = \log q_\phi(z_s) - \log p(x, z_s),

    whose gradient :math:`\frac{1}{S-1}\sum_s (f_s - \bar f)\nabla_\phi \log q_\phi(z_s)` is an
    unbiased estimate of :math:`\nabla_\phi \mathrm{KL}(q_\phi \| p)`. It is applied to every guide
    site with a density, discrete or continuous, per plate cell: a latent inside
    ``pyro.plate("data", B)`` uses the variance over particles of its own datapoint's (scaled)
    log-ratio plus the global terms, i.e. the sum over datapoints of per-datapoint log-variance
    losses. Under subsampling, the unscaled score is used, so that the gradient stays an
    estimate of the ELBO gradient (the literal gradient of the scaled variance would be
    multiplied by the scale). Model parameters get the usual ELBO gradient
    :math:`\frac1S\sum_s \nabla_\theta \log p_\theta(x, z_s)`; the returned loss is the ``-ELBO``
    estimate.

    **Point masses** (:class:`~pyro.distributions.Delta` sites, as in
    :class:`~pyro.infer.autoguide.AutoDelta`) have no score: their value and log-density keep
    their pathwise gradient (the value is a parameter, not a sample), and the sites downstream
    of them are scored given them.

    **Continuous sites get the score form too.** Reparameterizable guide sites do not keep their
    pathwise gradient here: on guides dominated by continuous sites the log-variance score is
    much noisier (``python -m benchmarks.which_estimator``: on an AIR-like guide the encoder
    gradient's signal-to-noise ratio is several times below :class:`ReinforceLOO_ELBO`'s, and
    training stalls); use :class:`ReinforceLOO_ELBO` there. On guides whose sites are all
    discrete, ``VarGrad_ELBO(S)`` and ``ReinforceLOO_ELBO(S)`` compute the same gradient.

    Reference: L. Richter, A. Boustati, N. Nüsken, F. J. R. Ruiz, Ö. D. Akyildiz, "VarGrad: A
    Low-Variance Gradient Estimator for Variational Inference", NeurIPS 2020.

    :param int num_particles: :math:`S`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    """

    min_particles = 2

    def sampler(self):
        # every latent site with a density is drawn without a graph: the samples are held
        # fixed and log q has gradients with respect to the guide parameters only
        return SiteSampler(self.sample_site, wants=lambda fn: not _is_point_mass(fn))

    def sample_site(self, name, fn):
        with torch.no_grad():
            return fn.sample(), None

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        surrogate = 0.0
        for p in particles:
            for site in p.model_trace.nodes.values():
                if site["type"] == "sample":
                    surrogate = surrogate + site["log_prob_sum"]
            for site in p.guide_trace.nodes.values():  # a point mass's log-density: pathwise
                if site["type"] == "sample" and _is_point_mass(site["fn"]):
                    surrogate = surrogate - site["log_prob_sum"]
        names = list(dict.fromkeys(
            name
            for p in particles
            for name, site in p.guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not _is_point_mass(site["fn"])
        ))
        surrogate = surrogate + leave_one_out_surrogate(
            particles, names, _log_q_at_fixed_value, self.max_plate_nesting, center=self.center)
        return surrogate / self.num_particles


def _is_point_mass(fn):
    return isinstance(base_distribution(fn), Delta)


def _log_q_at_fixed_value(site):
    """``log q(z)`` (unscaled) as a function of the guide parameters at the fixed sample
    ``z``: scored at a copy of the value, so that transforms which cached their own sample
    (flows, Pyro's ``with_cache`` transforms) compute the inverse from the parameters instead
    of returning the cached, graph-free one."""
    return site["fn"].log_prob(site["value"].clone(), *site["args"], **site["kwargs"])
