"""ARM / DisARM for Bernoulli sites and ARSM for categorical sites."""

import torch
import torch.nn.functional as F

from .discrete_elbo import DiscreteELBO
from .util import discrete_site_info, learning_signals, left_pad

__all__ = ["ARSM_ELBO"]


class ARSM_ELBO(DiscreteELBO):
    r"""Augment-REINFORCE-(Swap-)Merge estimators for discrete guide sites.

    - **Bernoulli** sites (logits :math:`\alpha`, any shape, ``.to_event`` allowed): ARM
      (Yin & Zhou 2019) draws :math:`u \sim U(0,1)`, sets :math:`b = 1[u > \sigma(-\alpha)]` (the
      sample) and :math:`\tilde b = 1[u < \sigma(\alpha)]` (its antithetic twin) and uses
      :math:`(f(b) - f(\tilde b))(u - \tfrac12)`; with ``bernoulli="disarm"`` DisARM (Dong, Mnih
      & Tucker 2020) integrates out :math:`u` given the pair:
      :math:`\tfrac12 (f(b) - f(\tilde b)) (-1)^{\tilde b} 1[b \ne \tilde b]\, \sigma(|\alpha|)`.
    - **Categorical** and **OneHotCategorical** sites (logits :math:`\phi`, :math:`C`
      categories): ARSM (Yin, Yue & Zhou 2019) draws :math:`\pi \sim \mathrm{Dir}(1_C)`, samples
      :math:`z = \arg\min_i (\ln\pi_i - \phi_i)` and evaluates the pseudo actions
      :math:`z^{c \rightleftharpoons j}` obtained by swapping :math:`\pi_c` and :math:`\pi_j`:

      .. math::

          \hat g_c = \frac1C \sum_{j=1}^C \Big(f(z^{c \rightleftharpoons j})
              - \frac1C \sum_{m=1}^C f(z^{m \rightleftharpoons j})\Big)(1 - C \pi_j).

    Here :math:`f = \log p(x, z) - \log q(z)` is the learning signal of the site's plate cell
    (each datapoint's latent uses its own signal, see :class:`DiscreteELBO`). Several discrete
    sites are handled by holding the others at their sample while one is swapped; all the
    distinct alternative configurations of all sites (``C(C-1)/2`` swaps per categorical site,
    one antithetic twin per Bernoulli site, duplicates removed) are scored by **one** batched
    run, without gradients. Reparameterizable guide sites keep their pathwise gradient.

    **Dependent guides** (``q(z | x, y)`` with ``y`` discrete, a second stochastic layer, AIR's
    sequence of ``z_pres``, also a Python branch on a sample): for each alternative the guide
    is run again from the changed site on, every later site drawn again with common random
    numbers (the same uniform or Dirichlet noise for a discrete site, the same standard normal
    for a Normal site; a fresh draw for other families), so that :math:`f` at an alternative is
    an unbiased estimate of the expected learning signal given that value. Terms that do not
    depend on the changed site are equal in both evaluations and cancel. A guide whose discrete
    sites come last (a VAE encoder) is not run again.

    The alternatives run batched over a new leftmost dimension, so model and guide should
    broadcast over it (as for ``vectorize_particles=True``). With
    ``vectorize_alternatives=None`` (default) a program that fails to (``.item()``, ``float()``
    or a Python branch on a sampled value) is detected by the failure and its alternatives are
    scored one at a time from then on; ``False`` always does so; ``True`` raises a
    ``ValueError`` naming the site instead.

    References:

    - M. Yin, M. Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
      ICLR 2019.
    - M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
      Backpropagation Through Categorical Variables", ICML 2019.
    - Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
      Variables", NeurIPS 2020.

    :param int num_particles: number of independent estimates to average.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param str bernoulli: ``"arm"`` (default) or ``"disarm"``.
    :param vectorize_alternatives: ``None`` (batched, one at a time if the program does not
        broadcast), ``True`` (batched or ``ValueError``) or ``False`` (one at a time).
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        strict_enumeration_warning=True,
        retain_graph=None,
        bernoulli="arm",
        vectorize_alternatives=None,
    ):
        if bernoulli not in ("arm", "disarm"):
            raise ValueError(
                "bernoulli: expected 'arm' or 'disarm', got {!r}".format(bernoulli)
            )
        self.bernoulli = bernoulli
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            retain_graph=retain_graph,
        )
        self.vectorize_alternatives = self._check_vectorize_alternatives(vectorize_alternatives)

    def _sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None:
            raise ValueError(
                "ARSM_ELBO cannot handle guide site '{}' with distribution {}: supported "
                "non-reparameterizable sites are Bernoulli, Categorical and OneHotCategorical "
                "(also with .to_event and in plates); use ReinforceLOO_ELBO or VarGrad_ELBO "
                "for other distributions.".format(name, type(fn).__name__)
            )
        logits = info.logits.detach()
        if info.kind == "bernoulli":
            noise = torch.rand_like(logits)
        else:  # Dirichlet(1) augmentation
            e = torch.empty_like(logits).exponential_()
            noise = e / e.sum(-1, keepdim=True)
        return _from_noise(info, noise), noise

    def _redraw_site(self, name, fn, noise):
        info = discrete_site_info(name, fn)
        return None if info is None else _from_noise(info, noise)

    def _surrogate_elbo(self, particles, model, guide, args, kwargs):
        surrogate = 0.0
        for p in particles:
            surrogate = surrogate + self._pathwise_surrogate(p)
            if p.noise:
                self._prepare_substitution(model, guide, args, kwargs)
                surrogate = surrogate + self._discrete_surrogate(p)
        return surrogate / self.num_particles

    # ------------------------------------------------------------------------------------
    def _alternatives(self, info, value, noise):
        """The values each site must be scored at besides its sample: the antithetic twin of a
        Bernoulli site, or the pseudo actions of every swap ``c < j`` of a categorical site."""
        logits = info.logits.detach()
        if info.kind == "bernoulli":
            return (noise < torch.sigmoid(logits)).to(logits.dtype).unsqueeze(0)
        num_categories = logits.shape[-1]
        cs, js = _pairs(num_categories, logits.device)
        perms = torch.arange(num_categories, device=logits.device).repeat(len(cs), 1)
        rows = torch.arange(len(cs), device=logits.device)
        perms[rows, cs] = js
        perms[rows, js] = cs
        swapped = noise.log()[..., perms]  # (..., P, C)
        z = (swapped - logits.unsqueeze(-2)).argmin(-1).movedim(-1, 0)  # (P, ...)
        if info.kind == "one_hot":
            z = F.one_hot(z, num_categories).to(value.dtype)
        return z

    def _discrete_surrogate(self, p):
        nodes = p.guide_trace.nodes
        names = list(p.noise)
        infos = {n: discrete_site_info(n, nodes[n]["fn"]) for n in names}
        alts = {n: self._alternatives(infos[n], nodes[n]["value"], p.noise[n]) for n in names}
        base = learning_signals(p.model_trace, p.guide_trace, names)

        # One row per alternative of one site, the other sites held at their sample.
        sizes = [alts[n].shape[0] for n in names]
        num_rows = sum(sizes)
        rows, offset = {}, 0
        for n, size in zip(names, sizes):
            value = nodes[n]["value"]
            row = value.unsqueeze(0).expand((num_rows,) + value.shape).clone()
            row[offset : offset + size] = alts[n]
            rows[n] = row
            offset += size

        # Score only the distinct rows that differ from the sample, in one batched model run.
        # Rows are compared as integer keys (0/1 or category indices), exact on any device.
        flat = [rows[n].reshape(num_rows, -1).long() for n in names]
        key = torch.cat(flat, -1)
        base_key = torch.cat([nodes[n]["value"].reshape(1, -1).long() for n in names], -1)
        todo = (key != base_key).any(-1).nonzero().squeeze(-1)
        rank = self.max_plate_nesting
        base = {n: left_pad(base[n], rank) for n in names}
        signals = {n: base[n].expand((num_rows,) + base[n].shape) for n in names}
        if len(todo):
            unique, inverse = torch.unique(key[todo], dim=0, return_inverse=True)
            values = dict(zip(names, unique.split([x.shape[1] for x in flat], -1)))
            for n in names:
                value = nodes[n]["value"]
                values[n] = values[n].to(value.dtype).reshape((-1,) + value.shape)
            evaluated = self._evaluate(p, values, names)
            for n in names:
                e = evaluated[n]
                cell = torch.broadcast_shapes(base[n].shape, e.shape[1:])
                full = base[n].expand((num_rows,) + cell).clone()
                full[todo] = e.expand((e.shape[0],) + cell)[inverse]
                signals[n] = full

        surrogate = 0.0
        offset = 0
        for n, size in zip(names, sizes):
            info, site = infos[n], nodes[n]
            f_alt = signals[n][offset : offset + size]
            offset += size
            if info.kind == "bernoulli":
                g = self._bernoulli_grad(
                    info, site["value"], alts[n][0], p.noise[n], base[n] - f_alt[0]
                )
            else:
                g = self._categorical_grad(info, base[n], f_alt, p.noise[n])
            surrogate = surrogate + (g.detach() * info.logits).sum()
        return surrogate

    def _bernoulli_grad(self, info, b, b_twin, u, diff):
        diff = diff.reshape(diff.shape + (1,) * info.event_dim)
        if self.bernoulli == "arm":
            return diff * (u - 0.5)
        sign = 1.0 - 2.0 * b_twin
        differ = (b != b_twin).to(diff.dtype)
        return 0.5 * diff * sign * differ * torch.sigmoid(info.logits.detach().abs())

    @staticmethod
    def _categorical_grad(info, f_base, f_pairs, pi):
        num_categories = pi.shape[-1]
        cs, js = _pairs(num_categories, pi.device)
        cell = torch.broadcast_shapes(f_base.shape, f_pairs.shape[1:])
        f_all = torch.cat([f_base.expand(cell).unsqueeze(0), f_pairs.expand((len(cs),) + cell)])
        index = torch.zeros(num_categories, num_categories, dtype=torch.long, device=pi.device)
        pair_ids = torch.arange(1, len(cs) + 1, device=pi.device)
        index[cs, js] = pair_ids
        index[js, cs] = pair_ids
        table = f_all[index]  # (C_c, C_j, *cell): f(z^{c<->j})
        table = table - table.mean(0, keepdim=True)
        table = table.movedim(0, -1).movedim(0, -1)  # (*cell, C_c, C_j)
        cat_event_dims = info.event_dim - (1 if info.kind == "one_hot" else 0)
        table = table.reshape(cell + (1,) * cat_event_dims + (num_categories, num_categories))
        weight = (1.0 - num_categories * pi).unsqueeze(-2)  # (..., 1, C_j)
        return (table * weight).sum(-1) / num_categories


def _from_noise(info, noise):
    """ARM's ``b = 1[u > sigmoid(-alpha)]``, or ARSM's ``z = argmin(log pi - phi)`` (a
    Categorical(softmax(phi)) draw), from the noise of a site with logits ``info.logits``
    (which may carry more leading dims than the noise)."""
    logits = info.logits.detach()
    noise = left_pad(noise, logits.dim())
    if info.kind == "bernoulli":
        return (noise > torch.sigmoid(-logits)).to(logits.dtype)
    z = (noise.log() - logits).argmin(-1)
    if info.kind == "one_hot":
        z = F.one_hot(z, logits.shape[-1]).to(logits.dtype)
    return z


def _pairs(num_categories, device):
    cs, js = torch.triu_indices(num_categories, num_categories, offset=1, device=device)
    return cs, js
