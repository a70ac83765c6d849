r"""The REBAR coupling of a discrete sample with its continuous relaxation (Tucker et al. 2017,
Appendix; Grathwohl et al. 2018, Appendix B).

From one draw of noise :math:`(u, v)` and the logits :math:`\alpha`, the coupling gives

- the relaxed pre-activation :math:`z \sim p(z \mid \alpha)`,
- the hard sample :math:`b = H(z)`, distributed as the discrete distribution, and
- :math:`\tilde z \sim p(z \mid b, \alpha)`, the pre-activation conditioned on :math:`H(z) = b`,

with :math:`z` and :math:`\tilde z` differentiable in :math:`\alpha` (for :math:`\tilde z`, at fixed
:math:`b`). The relaxation is :math:`\sigma_\lambda(z)` (a sigmoid or softmax at temperature
:math:`\lambda`). These are the pieces of :class:`~pyro_relax.infer.RELAX_ELBO`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from pyro.distributions import Bernoulli, OneHotCategorical
from torch.distributions import constraints
from torch.distributions.utils import clamp_probs

__all__ = [
    "RebarSample",
    "RelaxedBernoulliConditioned",
    "RelaxedOneHotCategoricalConditioned",
    "bernoulli_conditioned_pre_activation",
    "bernoulli_pre_activation",
    "categorical_conditioned_pre_activation",
    "categorical_pre_activation",
]


class RebarSample(NamedTuple):
    """One draw of the REBAR coupling.

    :ivar torch.Tensor z: the relaxed pre-activation (logistic for a Bernoulli, Gumbel per
        category for a categorical), differentiable in the logits.
    :ivar torch.Tensor b: the hard sample :math:`H(z)` (0/1, or one-hot).
    :ivar torch.Tensor z_tilde: a pre-activation drawn from :math:`p(z \\mid b)`, differentiable
        in the logits at fixed ``b``.
    """

    z: torch.Tensor
    b: torch.Tensor
    z_tilde: torch.Tensor


def _logit(u):
    return torch.log(u) - torch.log1p(-u)


# ------------------------------------------------------------------ Bernoulli
def bernoulli_pre_activation(logits, u):
    r""":math:`z = \alpha + \log u - \log(1 - u)`, a Logistic(:math:`\alpha`, 1) draw; :math:`b = 1[z
    > 0]` is Bernoulli(:math:`\sigma(\alpha)`).

    :param torch.Tensor logits: :math:`\alpha`.
    :param torch.Tensor u: uniform noise in (0, 1), broadcastable with ``logits``.
    """
    return logits + _logit(clamp_probs(u))


def bernoulli_conditioned_pre_activation(logits, b, v):
    r""":math:`\tilde z \sim p(z \mid b)`: with :math:`u' = \sigma(-\alpha)` (the probability of
    :math:`b = 0`), :math:`\tilde u = u' + v (1 - u')` if :math:`b = 1` and :math:`\tilde u = v u'`
    if :math:`b = 0`, then :math:`\tilde z = \alpha + \mathrm{logit}(\tilde u)`, uniform on the
    part of (0, 1) where :math:`H = b`.

    :param torch.Tensor logits: :math:`\alpha`.
    :param torch.Tensor b: the hard sample (0/1).
    :param torch.Tensor v: uniform noise in (0, 1).
    """
    u_prime = torch.sigmoid(-logits)
    u_tilde = torch.where(b > 0.5, u_prime + v * (1 - u_prime), v * u_prime)
    return bernoulli_pre_activation(logits, u_tilde)


# ------------------------------------------------------------------ categorical
def categorical_pre_activation(logits, u):
    r""":math:`z_k = \log\pi_k + G_k` with :math:`G_k = -\log(-\log u_k)` standard Gumbel and
    :math:`\log\pi` the normalized log-probabilities; :math:`\arg\max_k z_k` is a draw of the
    categorical.

    :param torch.Tensor logits: :math:`\alpha`, categories in the last dim.
    :param torch.Tensor u: uniform noise in (0, 1), one per category.
    """
    u = clamp_probs(u)
    return logits.log_softmax(-1) - torch.log(-torch.log(u))


def categorical_conditioned_pre_activation(logits, b, v):
    r""":math:`\tilde z \sim p(z \mid \arg\max z = b)`, the conditional Gumbel construction: the
    chosen class's Gumbel :math:`\tilde z_b = -\log(-\log v_b)` (the maximum of Gumbels with
    normalized probabilities is standard Gumbel), then each other class a Gumbel truncated
    below :math:`\tilde z_b`: :math:`\tilde z_k = -\log(-\log v_k / \pi_k - \log v_b)`.

    :param torch.Tensor logits: :math:`\alpha`, categories in the last dim.
    :param torch.Tensor b: the hard sample, one-hot in the last dim.
    :param torch.Tensor v: uniform noise in (0, 1), one per category.
    """
    v = clamp_probs(v)
    log_probs = logits.log_softmax(-1)
    log_v = torch.log(v)
    log_v_b = (log_v * b).sum(-1, keepdim=True)
    z_b = -torch.log(-log_v_b)
    z_other = -torch.log(-log_v * torch.exp(-log_probs) - log_v_b)
    return torch.where(b > 0.5, z_b.expand_as(z_other), z_other)


# ------------------------------------------------------------------ distributions
def _temperature(temperature, param):
    """The temperature as a tensor on the parameter's device and dtype; a ``ValueError`` naming
    ``temperature`` unless positive (always checked: a non-positive temperature has no
    relaxation)."""
    like = param if torch.is_tensor(param) else torch.tensor(0.0)
    temperature = torch.as_tensor(temperature, dtype=like.dtype, device=like.device)
    if not bool((temperature > 0).all()):
        raise ValueError("temperature: expected a positive value, got {}".format(temperature))
    return temperature


class RelaxedBernoulliConditioned(Bernoulli):
    r"""A Bernoulli with the REBAR coupling to its relaxation (Tucker et al. 2017).

    A ``pyro.sample`` site with this distribution returns the **hard** sample
    :math:`b \in \{0, 1\}`; its :meth:`log_prob` is the Bernoulli log-mass, so it can stand
    wherever a :class:`~pyro.distributions.Bernoulli` can (as a guide site under
    :class:`~pyro_relax.infer.RELAX_ELBO`, its ``temperature`` sets the site's initial relaxation
    temperature). The other two members of the coupling come from :meth:`coupled_sample`, which
    returns a :class:`RebarSample` ``(z, b, z_tilde)`` drawn from one noise draw; the relaxed
    values are :meth:`relax` ``(z) =`` :math:`\sigma(z / \lambda)`.

    :param temperature: the relaxation temperature :math:`\lambda > 0`.
    :param probs: the probability of 1 (give ``probs`` or ``logits``).
    :param logits: the log-odds of 1.
    """

    arg_constraints = dict(Bernoulli.arg_constraints, temperature=constraints.positive)

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        self.temperature = _temperature(temperature, probs if logits is None else logits)
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(RelaxedBernoulliConditioned, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.temperature = self.temperature
        return new

    def coupled_sample(self, sample_shape=torch.Size(), noise=None):
        """Draws :math:`(z, b, \\tilde z)` from one noise draw.

        :param torch.Size sample_shape: leading sample dims.
        :param tuple noise: optional ``(u, v)`` uniform noise of shape
            ``sample_shape + batch_shape``.
        :rtype: RebarSample
        """
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        if noise is None:
            u = torch.rand(shape, dtype=logits.dtype, device=logits.device)
            v = torch.rand(shape, dtype=logits.dtype, device=logits.device)
        else:
            u, v = noise
        z = bernoulli_pre_activation(logits, u)
        b = (z > 0).to(logits.dtype).detach()
        return RebarSample(z, b, bernoulli_conditioned_pre_activation(logits, b, v))

    def relax(self, z):
        r""":math:`\sigma(z / \lambda)`."""
        return torch.sigmoid(z / self.temperature)


class RelaxedOneHotCategoricalConditioned(OneHotCategorical):
    r"""A one-hot categorical with the REBAR coupling to its relaxation (Tucker et al. 2017;
    the conditional Gumbel construction of Grathwohl et al. 2018, Appendix B).

    A ``pyro.sample`` site with this distribution returns the **hard** one-hot sample
    :math:`b`; :meth:`log_prob` is the categorical log-mass, so it stands wherever a
    :class:`~pyro.distributions.OneHotCategorical` can. :meth:`coupled_sample` returns the
    :class:`RebarSample` ``(z, b, z_tilde)`` (Gumbel pre-activations per category, with
    :math:`\tilde z` the Gumbels conditioned on :math:`\arg\max = b`); the relaxed values are
    :meth:`relax` ``(z) =`` :math:`\mathrm{softmax}(z / \lambda)`.

    :param temperature: the relaxation temperature :math:`\lambda > 0`.
    :param probs: category probabilities (give ``probs`` or ``logits``).
    :param logits: unnormalized log-probabilities.
    """

    arg_constraints = dict(OneHotCategorical.arg_constraints, temperature=constraints.positive)

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        self.temperature = _temperature(temperature, probs if logits is None else logits)
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(RelaxedOneHotCategoricalConditioned, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.temperature = self.temperature
        return new

    def coupled_sample(self, sample_shape=torch.Size(), noise=None):
        """Draws :math:`(z, b, \\tilde z)` from one noise draw.

        :param torch.Size sample_shape: leading sample dims.
        :param tuple noise: optional ``(u, v)`` uniform noise of shape
            ``sample_shape + batch_shape + event_shape``.
        :rtype: RebarSample
        """
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        if noise is None:
            u = torch.rand(shape, dtype=logits.dtype, device=logits.device)
            v = torch.rand(shape, dtype=logits.dtype, device=logits.device)
        else:
            u, v = noise
        z = categorical_pre_activation(logits, u)
        b = F.one_hot(z.argmax(-1), shape[-1]).to(logits.dtype).detach()
        return RebarSample(z, b, categorical_conditioned_pre_activation(logits, b, v))

    def relax(self, z):
        r""":math:`\mathrm{softmax}(z / \lambda)` over the categories."""
        return torch.softmax(z / self.temperature, -1)
