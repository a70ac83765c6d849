r"""RODEO: discrete Stein operators as control variates (Shi et al. 2022), Bernoulli sites."""

import torch

from .signal_gradient import SignalGradientELBO

__all__ = ["RODEO_ELBO", "SteinControlNet"]


class SteinControlNet(torch.nn.Module):
    r"""RODEO's control network :math:`(f, \ell) \mapsto (H, H') \in \mathbb R^2`: each scalar
    input through its own linear layer (``hidden`` units, summed), LeakyReLU(0.3), a linear
    layer to 2 outputs, as in the authors' ``SteinControlNNSingleLayer`` (Xavier-uniform
    weights, zero biases).

    :param int hidden: hidden units (100 in the paper).
    """

    def __init__(self, hidden=100):
        super().__init__()
        self.linear_term = torch.nn.Linear(1, hidden)
        self.signal = torch.nn.Linear(1, hidden)
        self.out = torch.nn.Linear(hidden, 2)
        for layer in (self.linear_term, self.signal, self.out):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, f, linear):
        """``f`` and ``linear`` broadcastable; returns their shape with a trailing 2."""
        f, linear = torch.broadcast_tensors(f, linear)
        hidden = self.linear_term(linear.unsqueeze(-1)) + self.signal(f.unsqueeze(-1))
        return self.out(torch.nn.functional.leaky_relu(hidden, 0.3))


class RODEO_ELBO(SignalGradientELBO):
    r"""RODEO (Shi, Zhou, Hwang, Titsias & Mackey 2022): leave-one-out REINFORCE over
    ``num_particles`` :math:`K \ge 2` particles with control variates built from a discrete
    Stein operator, for Bernoulli guide sites. With the random-scan Gibbs operator over
    single-coordinate flips of a site's :math:`d` coordinates,

    .. math::

        (A h)(x) = \frac1d \sum_{i=1}^d q(1 - x_i)\,\big[h(\mathrm{flip}_i\, x) - h(x)\big],
        \qquad \mathbb E_q[(A h)(x)] = 0 \text{ for every } h,

    and the control functions of sample :math:`k`, built from the other samples only,
    :math:`h_k(y) = \frac{1}{K-1}\sum_{j\ne k} H(f_j, g_j^\top (y - b_j))` and :math:`h'_k`
    likewise with :math:`H'` (:math:`(H, H')` one :class:`SteinControlNet`,
    :math:`g_j = \nabla_b f(b_j)`), the gradient with respect to the logits is estimated by

    .. math::

        \hat g = \frac1K \sum_k \Big[\Big(f_k - \frac{1}{K-1}\sum_{j\ne k}
            \big(f_j + \alpha (A h_j)(b_j)\big)\Big)(b_k - \sigma)
            + \beta\, (A \tilde h'_k)(b_k)\Big],
        \qquad \tilde h'_k(y) = h'_k(y)\,(y - \sigma),

    unbiased for every network and :math:`\alpha, \beta` (paper eq. 18 with the scalars of the
    authors' code, both initially 0: the estimator starts as :class:`ReinforceLOO_ELBO`). The
    network (``"rodeo.{site}.net"``), :math:`\alpha` and :math:`\beta`
    (``"rodeo.{site}.alpha"`` / ``".beta"``) are trained online by the gradient of the
    estimate's squared norm. Cost: :math:`K` evaluations, one backward pass through the model
    and :math:`K(K-1)(d+1)` evaluations of the small network per plate cell (the ``output_avg``
    form, computed in :math:`O(K^2 d)` memory). The Gibbs operator uses the site's own
    probabilities: a site downstream of another sampled site is handled given that site's
    value. See :class:`~pyro_relax.infer.signal_gradient.SignalGradientELBO` for the set-up.

    Reference: J. Shi, Y. Zhou, J. Hwang, M. K. Titsias, L. Mackey, "Gradient Estimation with
    Discrete Stein Operators", NeurIPS 2022 (``thjashin/rodeo``).

    :param int num_particles: :math:`K`, at least 2.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: must be True.
    :param int hidden: hidden units of each site's network (100).
    """

    prefix = "rodeo"
    scalars = ("alpha", "beta")

    def __init__(self, num_particles=2, max_plate_nesting=float("inf"),
                 vectorize_particles=True, hidden=100, **kwargs):
        if int(hidden) < 1:
            raise ValueError("hidden: expected a positive number of units, got {!r}".format(hidden))
        self.hidden = int(hidden)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, **kwargs)

    def make_net(self):
        return SteinControlNet(self.hidden)

    def pairs(self, K, device):
        """``(k, j)`` index tensors, sample-major with the same count per ``k``: the samples
        ``j`` whose terms make sample ``k``'s control functions, every ``j != k`` (sample
        ``k``'s own must not be among them, or the estimate is biased)."""
        k, j = torch.meshgrid(torch.arange(K, device=device), torch.arange(K, device=device),
                              indexing="ij")
        others = k != j
        return k[others], j[others]

    def flip_probability(self, b, sigma):
        """:math:`q(1 - b_i)`: the Gibbs operator's probability of flipping coordinate i."""
        return sigma * (1 - b) + (1 - sigma) * b

    def logit_gradient(self, name, f, g, b, sigma, params):
        scalars, net = params
        alpha, beta = scalars["alpha"], scalars["beta"]
        K, C, D = b.shape
        k, j = self.pairs(K, b.device)
        per = len(k) // K  # pairs per sample
        # l = g_j^T (y - b_j), H's linear input, at y = b_k and at y = flip_i(b_k)
        at_sample = ((g[j] * b[k]).sum(-1) - (g * b).sum(-1)[j])  # [pairs, C]
        flip = 1 - 2 * b  # flip_i(b_k) - b_k at coordinate i
        at_flip = at_sample.unsqueeze(-1) + g[j] * flip[k]  # [pairs, C, D]
        h_x = net(f[j], at_sample).reshape(K, per, C, 2).mean(1)  # h_k(b_k), [K, C, 2]
        h_flip = net(f[j].unsqueeze(-1), at_flip).reshape(K, per, C, D, 2).mean(1)
        delta = h_flip - h_x.unsqueeze(-2)  # [k, C, D, 2]
        w = self.flip_probability(b, sigma)
        score = b - sigma
        stein = (w * delta[..., 0]).sum(-1) / D  # (A h_k)(b_k), [k, C]
        stein_score = (score * (w * delta[..., 1]).sum(-1, keepdim=True)
                       + w * h_flip[..., 1] * flip) / D  # (A h~'_k)(b_k), [k, C, D]
        corrected = f + alpha * stein
        baseline = (corrected.sum(0, keepdim=True) - corrected) / (K - 1)
        return (f - baseline).unsqueeze(-1) * score + beta * stein_score
