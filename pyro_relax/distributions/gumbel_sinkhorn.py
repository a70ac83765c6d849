"""The Gumbel-Sinkhorn relaxation of a distribution over permutation matrices."""

from numbers import Number

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from pyro_relax.ops.matching import matching
from pyro_relax.ops.sinkhorn import _check_no_nan, _check_square, log_sinkhorn

__all__ = ["GumbelSinkhorn", "gumbel_sinkhorn_kl"]

_EULER = 0.5772156649015329


class GumbelSinkhorn(TorchDistribution):
    r"""
    The Gumbel-Sinkhorn distribution over (relaxed) permutation matrices (Mena et al.,
    2018): perturb the scores with i.i.d. standard Gumbel noise :math:`G`, divide by a
    temperature and apply the Sinkhorn operator,

    .. math::

        X = (\log\alpha + G) / \tau, \qquad S = \exp(\mathrm{log\_sinkhorn}(X)).

    ``rsample`` returns :math:`S`, a doubly stochastic matrix (up to ``num_iters``),
    reparametrized in ``log_alpha`` and ``temperature``. As :math:`\tau \to 0`,
    :math:`S` tends to the hard matching of :math:`X`, a sample of the Gumbel-Matching
    distribution.

    **Straight-through samples.** With ``hard=True`` the forward value is the exact
    permutation matrix :func:`~pyro_relax.ops.matching` of :math:`X` (the same as that
    of :math:`S`, because Sinkhorn only adds row and column offsets to :math:`X`), and the
    backward pass uses the gradient of the relaxed :math:`S`:
    ``value = P + S - S.detach()``, as in
    :class:`~pyro.distributions.RelaxedOneHotCategoricalStraightThrough`.

    **Density and KL.** The density of :math:`S` is intractable. Following the treatment
    of latent permutation models in Mena et al. (2018, Sec. 5 and appendix), the sample
    space used by :meth:`log_prob` is the perturbed matrix :math:`X` *before* Sinkhorn,
    whose entries are independent
    :math:`\mathrm{Gumbel}(\text{loc}=\log\alpha_{ij}/\tau,\ \text{scale}=1/\tau)`.
    Every value returned by :meth:`rsample` carries the :math:`X` it came from as the
    attribute ``value._perturbed`` (just as Pyro's straight-through distributions carry
    ``_unquantize``), and ``log_prob(value)`` is the Gumbel log-density of
    ``value._perturbed``, summed over the ``N x N`` event. Hence in
    :class:`~pyro.infer.Trace_ELBO`, with this distribution as a guide site and a prior
    ``GumbelSinkhorn(log_alpha0, tau0)`` (e.g. ``log_alpha0 = 0``: a uniform prior over
    permutations in the zero temperature limit) at the same site in the model,
    ``log q - log p`` is an unbiased estimate of the closed-form KL between the two
    Gumbel matrices (:func:`gumbel_sinkhorn_kl`, registered with
    :func:`torch.distributions.kl.register_kl`, so that
    :class:`~pyro.infer.TraceMeanField_ELBO` uses it analytically). As both sides share
    the deterministic map :math:`X \mapsto S` (use the same ``num_iters``), this KL
    upper-bounds the KL between the relaxed samples by the data-processing inequality,
    so the ELBO computed this way is a lower bound of the relaxed model's ELBO.

    A value without the ``_perturbed`` attribute (e.g. an observed matrix, or a sample
    that went through ``.to()`` or ``.clone()``) cannot be scored: the Sinkhorn map is
    many-to-one, and :meth:`log_prob` raises :class:`ValueError`.

    Reference:

    [1] G. Mena, D. Belanger, S. Linderman, J. Snoek. "Learning Latent Permutations with
        Gumbel-Sinkhorn Networks." ICLR 2018.

    :param torch.Tensor log_alpha: scores of shape ``batch_shape + (N, N)``; forbidden
        entries can be masked with a large finite negative value (see
        :func:`~pyro_relax.ops.log_sinkhorn`).
    :param temperature: positive temperature :math:`\tau`, a number or a tensor
        broadcastable to ``batch_shape``.
    :type temperature: float or torch.Tensor
    :param int num_iters: number of Sinkhorn iterations.
    :param bool hard: return straight-through exact permutation matrices.
    :param bool validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {
        "log_alpha": constraints.independent(constraints.real, 2),
        "temperature": constraints.positive,
    }
    support = constraints.independent(constraints.unit_interval, 2)
    has_rsample = True

    def __init__(
        self, log_alpha, temperature, num_iters=20, hard=False, validate_args=None
    ):
        _check_square("log_alpha", log_alpha)
        _check_no_nan("log_alpha", log_alpha)
        if isinstance(temperature, Number):
            if not temperature > 0:
                raise ValueError(f"temperature must be > 0, got {temperature!r}")
            temperature = log_alpha.new_tensor(float(temperature))
        elif not torch.is_tensor(temperature):
            raise ValueError("temperature must be a positive number or tensor")
        elif not (temperature > 0).all():
            raise ValueError("temperature must be > 0 (got a non-positive or NaN value)")
        if not isinstance(num_iters, int) or num_iters < 1:
            raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}")
        batch_shape = torch.broadcast_shapes(log_alpha.shape[:-2], temperature.shape)
        n = log_alpha.size(-1)
        self.log_alpha = log_alpha.expand(batch_shape + (n, n))
        self.temperature = temperature.to(log_alpha).expand(batch_shape)
        self.num_iters = num_iters
        self.hard = hard
        super().__init__(batch_shape, torch.Size((n, n)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelSinkhorn, _instance)
        batch_shape = torch.Size(batch_shape)
        n = self.log_alpha.size(-1)
        new.log_alpha = self.log_alpha.expand(batch_shape + (n, n))
        new.temperature = self.temperature.expand(batch_shape)
        new.num_iters = self.num_iters
        new.hard = self.hard
        super(GumbelSinkhorn, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def _tau(self):
        return self.temperature[..., None, None]

    @property
    def loc(self):
        """Location ``log_alpha / temperature`` of the Gumbel entries of :math:`X`."""
        return self.log_alpha / self._tau

    @property
    def scale(self):
        """Scale ``1 / temperature`` of the Gumbel entries of :math:`X`."""
        return self.temperature.reciprocal()

    def perturb(self, sample_shape=torch.Size()):
        """
        Draw the perturbed matrix :math:`X = (\\log\\alpha + G) / \\tau`, reparametrized.

        :param torch.Size sample_shape: leading sample shape.
        :returns: a tensor of shape ``sample_shape + batch_shape + (N, N)``.
        """
        shape = self._extended_shape(sample_shape)
        finfo = torch.finfo(self.log_alpha.dtype)
        u = torch.rand(shape, dtype=self.log_alpha.dtype, device=self.log_alpha.device)
        u = u.clamp(min=finfo.tiny, max=1 - finfo.eps)
        gumbel = -torch.log(-torch.log(u))
        return (self.log_alpha + gumbel) / self._tau

    def rsample(self, sample_shape=torch.Size()):
        """
        Draw relaxed permutation matrices :math:`S` (or, with ``hard=True``, exact ones with
        the relaxed gradient), reparametrized in ``log_alpha`` and ``temperature``. The
        perturbed matrix :math:`X` behind each sample is attached as ``value._perturbed``
        for :meth:`log_prob`.

        :param torch.Size sample_shape: leading sample shape.
        :returns: a tensor of shape ``sample_shape + batch_shape + (N, N)``.
        """
        perturbed = self.perturb(sample_shape)
        soft = log_sinkhorn(perturbed, self.num_iters).exp()
        if self.hard:
            value = matching(perturbed) + (soft - soft.detach())
        else:
            value = soft
        value._perturbed = perturbed
        return value

    def log_prob(self, value):
        """
        Gumbel log-density of the perturbed matrix :math:`X` behind ``value`` (see the
        class docstring), summed over the ``N x N`` event.

        :param torch.Tensor value: a sample from :meth:`rsample` of this or of another
            :class:`GumbelSinkhorn` (it must carry ``value._perturbed``).
        :returns: a tensor of shape ``sample_shape + batch_shape``.
        """
        perturbed = getattr(value, "_perturbed", None)
        if perturbed is None:
            raise ValueError(
                "GumbelSinkhorn.log_prob needs value._perturbed, the Gumbel-perturbed "
                "matrix behind a sample, which rsample() attaches; the Sinkhorn map is "
                "not invertible, so other values cannot be scored"
            )
        if self._validate_args:
            self._validate_sample(value)
        z = (perturbed - self.loc) * self._tau
        log_density = -(z + torch.exp(-z)) + self.temperature.log()[..., None, None]
        return log_density.sum((-2, -1))

    def entropy(self):
        """Entropy of the perturbed Gumbel matrix :math:`X` (batch shape)."""
        n = self.log_alpha.size(-1)
        return n * n * (1 + _EULER - self.temperature.log())


def gumbel_sinkhorn_kl(p, q):
    r"""
    Closed-form :math:`\mathrm{KL}(p\,\|\,q)` between the perturbed matrices of two
    :class:`GumbelSinkhorn` distributions (Mena et al., 2018, appendix on latent
    permutation models): a sum over entries of the KL between
    :math:`\mathrm{Gumbel}(\mu_1, \beta_1)` and :math:`\mathrm{Gumbel}(\mu_2, \beta_2)`,

    .. math::

        \log\frac{\beta_2}{\beta_1} + \gamma\Big(\frac{\beta_1}{\beta_2} - 1\Big)
        + \frac{\mu_1 - \mu_2}{\beta_2}
        + e^{(\mu_2 - \mu_1)/\beta_2}\,\Gamma\Big(1 + \frac{\beta_1}{\beta_2}\Big) - 1,

    with :math:`\mu = \log\alpha/\tau`, :math:`\beta = 1/\tau` and :math:`\gamma` the
    Euler-Mascheroni constant. It upper-bounds the KL between the relaxed samples when
    both use the same ``num_iters`` (data-processing inequality).

    :param GumbelSinkhorn p: first distribution (the guide).
    :param GumbelSinkhorn q: second distribution (the prior).
    :returns: the KL, of the broadcast batch shape.
    :rtype: torch.Tensor
    """
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"event shapes differ: {tuple(p.event_shape)} vs {tuple(q.event_shape)}"
        )
    mu1, mu2 = p.loc, q.loc
    b1, b2 = p.scale[..., None, None], q.scale[..., None, None]
    ratio = b1 / b2
    kl = (
        torch.log(b2 / b1)
        + _EULER * (ratio - 1)
        + (mu1 - mu2) / b2
        + torch.exp((mu2 - mu1) / b2 + torch.lgamma(1 + ratio))
        - 1
    )
    return kl.sum((-2, -1))


register_kl(GumbelSinkhorn, GumbelSinkhorn)(gumbel_sinkhorn_kl)
