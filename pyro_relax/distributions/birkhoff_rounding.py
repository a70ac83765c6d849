"""Rounding toward permutation matrices (Linderman et al., 2018, Sec. 3.2)."""

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from pyro_relax.ops import matching

__all__ = ["BirkhoffRounding"]


class BirkhoffRounding(TorchDistribution):
    r"""
    Relaxed permutation matrices by rounding (Linderman et al., 2018, Sec. 3.2):

    .. math::

        \Psi = M + V \odot \xi, \quad \xi_{ij} \sim \mathcal{N}(0, 1), \qquad
        X = \tau \Psi + (1 - \tau)\, \mathsf{round}(\Psi),

    where :math:`\mathsf{round}(\Psi)` is the permutation matrix nearest to :math:`\Psi`
    in Frobenius norm, i.e. the :func:`~pyro_relax.ops.matching` maximizing
    :math:`\langle P, \Psi \rangle`. ``loc`` is :math:`M`, meant to be a point of the
    Birkhoff polytope; the paper obtains it with Sinkhorn from free parameters, e.g.
    ``loc = log_sinkhorn(params, 10).exp()`` (any real matrix is accepted).

    **Density (exact).** Rounding cells are convex, so :math:`\mathsf{round}(X) =
    \mathsf{round}(\Psi)` and, with :math:`P = \mathsf{round}(X)`,
    :math:`\Psi = (X - (1-\tau) P)/\tau`. Within a cell the map is affine with
    :math:`\log|\det| = N^2 \log\tau`, and cell boundaries have measure zero, so

    .. math::

        \log q(X) = \sum_{ij} \log \mathcal{N}(\Psi_{ij} \mid M_{ij}, V_{ij}^2)
        - N^2 \log \tau \quad \text{if } \mathsf{round}(\Psi) = P,

    and :math:`-\infty` otherwise (the "hole" around the barycentre that the map never
    reaches, checked with a second matching). This is exact up to ties in the matching
    (a null set). The support is a subset of :math:`\mathbb{R}^{N \times N}`, not the
    polytope: samples are near, not in, the Birkhoff polytope.

    **Gradients (approximate).** :meth:`rsample` is differentiable in ``loc`` and
    ``scale`` with :math:`\mathsf{round}(\Psi)` held fixed, as in the paper, which does
    not differentiate through the matching. This is the exact pathwise derivative almost
    everywhere, but it omits the boundary terms from the cells' discontinuities, so the
    resulting ELBO gradient is biased (less so for larger :math:`\tau`).

    Shapes: ``loc`` and ``scale`` broadcast to ``batch_shape + (N, N)``; samples are
    ``sample_shape + batch_shape + (N, N)``, ``event_shape == (N, N)``.

    Reference:

    [1] S. Linderman, G. Mena, H. Cooper, L. Paninski, J. Cunningham. "Reparameterizing
        the Birkhoff Polytope for Variational Permutation Inference." AISTATS 2018,
        Section 3.2 and Appendix B.

    :param torch.Tensor loc: the centre :math:`M`, shape ``batch_shape + (N, N)``.
    :param torch.Tensor scale: the perturbation scales :math:`V > 0`, broadcastable to
        ``loc``.
    :param float temperature: :math:`\tau \in (0, 1]`; :math:`\tau \to 0` concentrates
        on permutation matrices, :math:`\tau = 1` is the Gaussian itself.
    """

    arg_constraints = {
        "loc": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, loc, scale, temperature=0.5, validate_args=None):
        if not torch.is_tensor(loc) or loc.dim() < 2 or loc.size(-1) != loc.size(-2):
            shape = tuple(loc.shape) if torch.is_tensor(loc) else type(loc).__name__
            raise ValueError(f"loc must have shape batch_shape + (N, N), got {shape}")
        if torch.isnan(loc).any():
            raise ValueError("loc contains NaN")
        if torch.is_tensor(scale) and torch.isnan(scale).any():
            raise ValueError("scale contains NaN")
        t = temperature.item() if torch.is_tensor(temperature) else temperature
        if not (isinstance(t, (int, float)) and 0 < t <= 1):
            raise ValueError(f"temperature must be in (0, 1], got {temperature!r}")
        self.temperature = float(t)
        self.loc, self.scale = broadcast_all(loc, scale)
        if self.scale.shape != self.loc.shape:
            raise ValueError(
                f"scale must broadcast to loc's shape {tuple(loc.shape)}, "
                f"got {tuple(self.scale.shape)}"
            )
        self._cache = None
        n = self.loc.size(-1)
        super().__init__(self.loc.shape[:-2], torch.Size((n, n)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BirkhoffRounding, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.event_shape
        new.loc = self.loc.expand(shape)
        new.scale = self.scale.expand(shape)
        new.temperature = self.temperature
        new._cache = None
        super(BirkhoffRounding, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        """
        Draw :math:`X = \\tau \\Psi + (1 - \\tau)\\, \\mathsf{round}(\\Psi)`, differentiable in
        ``loc`` and ``scale`` with the rounding held fixed (see the class docstring).

        :param torch.Size sample_shape: leading sample shape.
        :returns: a tensor of shape ``sample_shape + batch_shape + (N, N)``.
        """
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        psi = self.loc + self.scale * eps
        perm = matching(psi.detach())
        value = self.temperature * psi + (1 - self.temperature) * perm
        self._cache = (value, perm)
        return value

    def log_prob(self, value):
        """
        Exact log-density of ``value`` (see the class docstring); ``-inf`` outside the image
        of the rounding map. A sample that :meth:`rsample` just returned is scored without
        solving the matching again.

        :param torch.Tensor value: matrices of shape ``sample_shape + batch_shape + (N, N)``.
        :returns: a tensor of shape ``sample_shape + batch_shape``.
        """
        if self._validate_args:
            self._validate_sample(value)
        n = self.event_shape[-1]
        tau = self.temperature
        cache = self._cache
        own = cache is not None and cache[0] is value
        if own:  # our own sample: in the image of the map by construction
            perm = cache[1]
        else:
            if torch.isnan(value).any():
                raise ValueError("value contains NaN")
            perm = matching(value.detach())
        psi = (value - (1 - tau) * perm) / tau
        z = (psi - self.loc) / self.scale
        lp = -0.5 * z.pow(2) - self.scale.log() - 0.5 * math.log(2 * math.pi)
        lp = lp.sum((-1, -2)) - n * n * math.log(tau)
        if not own:
            in_support = (matching(psi.detach()) == perm).all(-1).all(-1)
            lp = torch.where(in_support, lp, lp.new_full((), -math.inf))
        return lp
