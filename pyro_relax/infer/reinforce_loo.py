"""REINFORCE with the leave-one-out baseline."""

from .discrete_elbo import DiscreteELBO

__all__ = ["ReinforceLOO_ELBO"]


class ReinforceLOO_ELBO(DiscreteELBO):
    r"""REINFORCE with the leave-one-out baseline over ``num_particles`` :math:`S \ge 2`
    particles ("REINFORCE+" in the ARSM and DisARM papers):

    .. math::

        \hat g = \frac{1}{S} \sum_{s=1}^S \Big(f(z_s) - \frac{1}{S-1}\sum_{s' \ne s} f(z_{s'})\Big)
                 \nabla_\phi \log q_\phi(z_s),
        \qquad f = \log p(x, z) - \log q_\phi(z),

    applied per plate cell (each datapoint's latent gets its own signal and baseline) to the
    score-function term of every guide site that has one, of any distribution (Bernoulli,
    Categorical, Poisson, the score part of a partially reparameterized site, ...).
    Reparameterizable sites keep their pathwise gradient, so a guide with no discrete site gets
    :class:`~pyro.infer.Trace_ELBO`'s gradient. This is :class:`DiscreteELBO` with no
    estimator of its own: :meth:`DiscreteELBO.score_function_surrogate` for every site.

    Reference: W. Kool, H. van Hoof, M. Welling, "Buy 4 REINFORCE samples, get a baseline for
    free!", ICLR Deep RL Meets Structured Prediction workshop, 2019.

    :param int num_particles: :math:`S`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    """

    min_particles = 2
