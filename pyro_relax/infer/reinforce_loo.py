"""REINFORCE with the leave-one-out baseline."""

from .discrete_elbo import DiscreteELBO
from .util import nonreparam_sites

__all__ = ["ReinforceLOO_ELBO"]


class ReinforceLOO_ELBO(DiscreteELBO):
    r"""REINFORCE with the leave-one-out baseline over ``num_particles`` :math:`S \ge 2`
    particles ("REINFORCE+" in the ARSM and DisARM papers):

    .. math::

        \hat g = \frac{1}{S} \sum_{s=1}^S \Big(f(z_s) - \frac{1}{S-1}\sum_{s' \ne s} f(z_{s'})\Big)
                 \nabla_\phi \log q_\phi(z_s),
        \qquad f = \log p(x, z) - \log q_\phi(z),

    applied per plate cell (each datapoint's latent gets its own signal and baseline) to every
    non-reparameterizable guide site, of any distribution (Bernoulli, Categorical, Poisson, ...).
    Reparameterizable sites keep their pathwise gradient, so a guide with no discrete site gets
    :class:`~pyro.infer.Trace_ELBO`'s gradient.

    Reference: W. Kool, H. van Hoof, M. Welling, "Buy 4 REINFORCE samples, get a baseline for
    free!", ICLR Deep RL Meets Structured Prediction workshop, 2019.

    :param int num_particles: :math:`S`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    """

    min_particles = 2

    def _surrogate_elbo(self, particles, model, guide, args, kwargs):
        surrogate = sum(self._pathwise_surrogate(p) for p in particles)
        names = list(dict.fromkeys(n for p in particles for n in nonreparam_sites(p.guide_trace)))
        surrogate = surrogate + self._leave_one_out_surrogate(particles, names, "score")
        return surrogate / self.num_particles
