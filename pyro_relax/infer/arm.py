r"""ARM and DisARM for Bernoulli guide sites (strategies of :class:`~pyro_relax.infer.ARSM_ELBO`).

A Bernoulli site with logits :math:`\alpha` draws :math:`u \sim U(0, 1)` and samples
:math:`b = 1[u > \sigma(-\alpha)]`; its antithetic twin is :math:`\tilde b = 1[u < \sigma(\alpha)]`
(one extra evaluation, the twin of every cell at once: both estimators are derived for the
joint value).
"""

import torch

from .site_plan import SitePlan
from .strategy import SiteStrategy
from .util import left_pad

__all__ = ["ARM", "DisARM"]


class ARM(SiteStrategy):
    r"""ARM (Yin & Zhou 2019): :math:`\hat g_\alpha = (f(b) - f(\tilde b))(u - \tfrac12)`.

    Reference: M. Yin, M. Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary
    Networks", ICLR 2019.
    """

    name = "arm"
    kinds = ("bernoulli",)

    def sample(self, info):
        noise = torch.rand_like(info.logits.detach())
        return self.redraw(info, noise), noise

    def redraw(self, info, noise):
        logits = info.logits.detach()
        return (left_pad(noise, logits.dim()) > torch.sigmoid(-logits)).to(logits.dtype)

    def plan(self, info, value, noise, separable):
        return _TwinPlan(self, info, value, noise)

    def gradient(self, info, b, twin, u, diff):
        """The estimate for the logits, from ``diff = f(b) - f(twin)`` per cell."""
        return _with_event_dims(diff, info) * (u - 0.5)


class DisARM(ARM):
    r"""DisARM (Dong, Mnih & Tucker 2020): ARM with :math:`u` integrated out given the pair,
    :math:`\hat g_\alpha = \tfrac12 (f(b) - f(\tilde b)) (-1)^{\tilde b} 1[b \ne \tilde b]\,
    w(\alpha)` with :math:`w(\alpha) = \sigma(|\alpha|)` (:meth:`weight`).

    Reference: Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for
    Binary Latent Variables", NeurIPS 2020.
    """

    name = "disarm"

    def weight(self, logits):
        r""":math:`\sigma(|\alpha|)`."""
        return torch.sigmoid(logits.abs())

    def gradient(self, info, b, twin, u, diff):
        sign = 1.0 - 2.0 * twin
        differ = (b != twin).to(diff.dtype)
        return 0.5 * _with_event_dims(diff, info) * sign * differ * self.weight(info.logits.detach())


class _TwinPlan(SitePlan):
    """A Bernoulli site's antithetic twin, and its strategy's gradient."""

    def __init__(self, strategy, info, value, noise):
        twin = (noise < torch.sigmoid(info.logits.detach())).to(value.dtype)
        super().__init__(twin.unsqueeze(0), joint=True, distinct=True)
        self.strategy, self.info, self.value, self.noise = strategy, info, value, noise

    def surrogate(self, f_sample, f_rows):
        diff = f_sample - f_rows[0]
        g = self.strategy.gradient(self.info, self.value, self.rows[0], self.noise, diff)
        return (g.detach() * self.info.logits).sum()


def _with_event_dims(diff, info):
    return diff.reshape(diff.shape + (1,) * info.event_dim)
