r"""ARMS: antithetic multi-sample REINFORCE for Bernoulli sites (Dimitriev & Zhou 2021)."""

import torch

from .discrete_elbo import DiscreteELBO
from .surrogates import leave_one_out_surrogate
from .util import base_distribution, discrete_site_info

__all__ = ["ARMS_ELBO"]


class ARMS_ELBO(DiscreteELBO):
    r"""ARMS (antithetic REINFORCE multi-sample) over ``num_particles`` :math:`K \ge 2`
    particles drawn jointly: every coordinate of a Bernoulli guide site with probability
    :math:`p` gets :math:`K` antithetic samples from the Dirichlet copula,

    .. math::

        E_k = -\log U_k,\quad D_k = \frac{E_k}{\sum_m E_m},\quad V_k = (1 - D_k)^{K-1},\quad
        b_k = 1[V_k < p]\ (p < \tfrac12), \quad b_k = 1[1 - V_k < p]\ (p \ge \tfrac12),

    (each :math:`V_k` is uniform, the :math:`K` of them negatively correlated), and the
    gradient of its logits is leave-one-out REINFORCE debiased for the correlation:

    .. math::

        \hat g = \frac{c(p)}{K} \sum_k \Big(f(b_k) - \frac{1}{K-1}\sum_{j\ne k} f(b_j)\Big)
                 (b_k - p), \qquad c(p) = \frac{p(1-p)}{p - P(b_k = b_j = 1)},

    with :math:`P(b_k = b_j = 1) = C(p)` for :math:`p < \frac12` and :math:`2p - 1 + C(1-p)`
    otherwise, :math:`C(p) = \max(2p^{1/(K-1)} - 1, 0)^{K-1}` (the copula's diagonal). With
    :math:`K = 2` it is DisARM. Learning signals are per plate cell as in
    :class:`ReinforceLOO_ELBO`; the other guide sites with a score-function term get
    REINFORCE with the leave-one-out baseline (unbiased: given its own particle's upstream
    values, such a site is drawn independently of the other particles).

    The :math:`K` samples of a site must share its probabilities, so the particles run as a
    tensor dimension (``vectorize_particles=True``, required) and a Bernoulli site whose
    probabilities differ between particles (downstream of another sampled site) is refused
    with a ``ValueError``: use :class:`ReinforceLOO_ELBO` there.

    Reference: A. Dimitriev, M. Zhou, "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for
    Binary Variables", ICML 2021 (the Dirichlet copula and debiasing as in the authors' code,
    ``alekdimi/arms``).

    :param int num_particles: :math:`K`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: must be True.
    """

    min_particles = 2

    def __init__(self, num_particles=2, max_plate_nesting=float("inf"),
                 vectorize_particles=True, **kwargs):
        if not vectorize_particles:
            raise ValueError("vectorize_particles: ARMS_ELBO draws its K particles jointly "
                             "(antithetic samples), so it needs vectorize_particles=True")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=True, **kwargs)

    def sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None or info.kind != "bernoulli":
            return None  # REINFORCE with the leave-one-out baseline
        logits = info.logits.detach()
        dim = logits.dim() - self.max_plate_nesting - info.event_dim  # the particle dim
        if dim < 0 or logits.shape[dim] != self.num_particles:
            raise ValueError("ARMS_ELBO: site '{}' has no particle dim of size {}".format(
                name, self.num_particles))
        if not torch.equal(logits, logits.narrow(dim, 0, 1).expand_as(logits)):
            raise ValueError(
                "ARMS_ELBO: site '{}' has different probabilities in different particles (its "
                "distribution depends on another sampled value), but ARMS draws the K samples "
                "of a site jointly from one probability; use ReinforceLOO_ELBO".format(name))
        p = torch.sigmoid(logits)
        tiny = torch.finfo(p.dtype).tiny
        e = -torch.rand_like(p).clamp_min(tiny).log()
        v = (1 - e / e.sum(dim, keepdim=True)).pow(self.num_particles - 1)
        u = torch.where(p < 0.5, v, 1 - v)
        return (u < p).to(p.dtype), None

    def debias(self, p):
        r""":math:`c(p) = p(1-p) / (p - P(b_k = b_j = 1))` (1 where :math:`p(1-p) = 0`)."""
        K = self.num_particles

        def diagonal(q):
            return (2 * q.pow(1.0 / (K - 1)) - 1).clamp_min(0).pow(K - 1)

        joint = torch.where(p < 0.5, diagonal(p), 2 * p - 1 + diagonal(1 - p))
        var = p * (1 - p)
        gap = p - joint
        return torch.where(var > 0, var / gap.clamp_min(torch.finfo(p.dtype).tiny),
                           torch.ones_like(p))

    def _debiased_score(self, site):
        """``sum over event dims of c(p) * log q(b)`` (``c`` detached), per batch cell."""
        fn = site["fn"]
        info = discrete_site_info(site["name"], fn)
        base = base_distribution(fn)
        log_q = base.log_prob(site["value"]) * self.debias(torch.sigmoid(info.logits.detach()))
        return log_q.sum(list(range(-info.event_dim, 0))) if info.event_dim else log_q

    def score_function_surrogate(self, particles, names):
        bernoulli = [n for n in names if any(
            n in p.guide_trace.nodes and getattr(discrete_site_info(
                n, p.guide_trace.nodes[n]["fn"]), "kind", None) == "bernoulli"
            for p in particles)]
        others = [n for n in names if n not in bernoulli]
        return (leave_one_out_surrogate(particles, bernoulli, self._debiased_score,
                                        self.max_plate_nesting, center=self.center)
                + super().score_function_surrogate(particles, others))
