r"""Double control variates (Titsias & Shi 2022) for Bernoulli sites."""

from .signal_gradient import SignalGradientELBO

__all__ = ["DoubleCV_ELBO"]


class DoubleCV_ELBO(SignalGradientELBO):
    r"""Leave-one-out REINFORCE over ``num_particles`` :math:`K \ge 2` particles with the two
    control variates of Titsias & Shi (2022), for Bernoulli guide sites with probabilities
    :math:`\sigma` (per particle): a global one, the first-order Taylor term of ``f`` around
    the other samples, and a local one that reduces the variance of the leave-one-out
    baseline itself. With :math:`g_j = \nabla_b f(b_j)` (the learning signal's gradient at
    sample :math:`j`, ``b`` relaxed to reals) and :math:`\bar g_{-k}` the mean over
    :math:`j \ne k`, the gradient of the ELBO with respect to the logits is estimated by

    .. math::

        \hat g = \frac1K \sum_k \Big[\Big(f_k + \alpha \bar g_{-k}^\top (b_k - \sigma)
            - \frac{1}{K-1}\sum_{j \ne k}\big(f_j + \alpha \bar g_{-j}^\top (b_j - \sigma)\big)
            \Big)(b_k - \sigma) - \alpha\, \sigma(1-\sigma) \odot \bar g_{-k}\Big],

    the last term being the exact expectation of the global control variate's score term
    (so the estimate is unbiased for every :math:`\alpha`). One scalar :math:`\alpha` per site
    (``"double_cv.{site}.alpha"``, initially 0: the estimator starts as
    :class:`ReinforceLOO_ELBO`) drives both, trained online by the gradient of the estimate's
    squared norm, as in the authors' code. Cost: :math:`K` evaluations and one backward pass
    through the model per step. See :class:`~pyro_relax.infer.signal_gradient.SignalGradientELBO`
    for the set-up (vectorized particles, other sites).

    Reference: M. K. Titsias, J. Shi, "Double Control Variates for Gradient Estimation in
    Discrete Latent Variable Models", AISTATS 2022 (the formula of the authors' code,
    ``thjashin/double-cv`` and ``thjashin/rodeo``).

    :param int num_particles: :math:`K`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: must be True.
    """

    prefix = "double_cv"
    scalars = ("alpha",)

    def logit_gradient(self, name, f, g, b, sigma, params):
        alpha = params[0]["alpha"]
        K = f.shape[0]
        g_others = (g.sum(0, keepdim=True) - g) / (K - 1)  # [K, C, D]
        score = b - sigma
        taylor = alpha * (g_others * score).sum(-1)  # [K, C]: alpha g_{-k}^T (b_k - sigma)
        corrected = f + taylor
        baseline = (corrected.sum(0, keepdim=True) - corrected) / (K - 1)
        advantage = f + taylor - baseline
        return advantage.unsqueeze(-1) * score - alpha * sigma * (1 - sigma) * g_others
