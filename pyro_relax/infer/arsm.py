"""ARM / DisARM for Bernoulli sites and ARSM for categorical sites."""

import torch
import torch.nn.functional as F

from .discrete_elbo import DiscreteELBO
from .pseudo_actions import SwapTable, pack, unique_rows
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
    def _discrete_surrogate(self, p):
        nodes = p.guide_trace.nodes
        names = list(p.noise)
        infos = {n: discrete_site_info(n, nodes[n]["fn"]) for n in names}
        base = learning_signals(p.model_trace, p.guide_trace, names)
        self.distinct_actions = {}

        # The values each site is scored at besides its sample: a Bernoulli site's antithetic
        # twin; a categorical site's distinct pseudo actions, packed per plate cell when the
        # cells' signals are separable (else one row per swap c < j, the cells together).
        alts, plans = {}, {}
        for n in names:
            info, value, noise = infos[n], nodes[n]["value"], p.noise[n]
            if info.kind == "bernoulli":
                alts[n] = (noise < torch.sigmoid(info.logits.detach())).to(value.dtype)
                alts[n] = alts[n].unsqueeze(0)
                continue
            table = _swap_table(info, noise)
            if _separable(p, n):
                rows, valid, counts = table.distinct()
                plans[n] = ("packed", table, rows, valid)
                self.distinct_actions[n] = {
                    "mean": counts.to(torch.get_default_dtype()).mean().item(),
                    "max": int(counts.max()) if counts.numel() else 0,
                }
            else:
                cs, js = _pairs(table.num_categories, value.device)
                rows = table.actions(cs, js)
                plans[n] = ("pairs", table, cs, js)
            alts[n] = _to_values(info, rows, value)

        # One row per alternative of one site, the other sites held at their sample; rows
        # equal to the sample are not scored, nor twice the same row (packed rows are distinct
        # by construction). Rows are compared as integer keys, exact on any device.
        rank = self.max_plate_nesting
        base = {n: left_pad(base[n], rank) for n in names}
        blocks = []  # per site: (rows to score, kept row ids, each row's kept row)
        for n in names:
            todo, code = _changed_rows(infos[n], alts[n], nodes[n]["value"])
            if infos[n].kind == "bernoulli" or plans[n][0] == "packed":
                # one twin row, or packed rows: distinct by construction
                blocks.append((todo, todo, torch.arange(len(todo), device=todo.device)))
            else:
                unique, inverse = unique_rows(code[todo])
                first = torch.full((len(unique),), -1, dtype=torch.long, device=todo.device)
                first.scatter_(0, inverse.flip(0), todo.flip(0))
                blocks.append((todo, first, inverse))
        sizes = [alts[n].shape[0] for n in names]
        num_rows = sum(len(kept) for _, kept, _ in blocks)
        signals = {n: base[n].expand((sizes[i],) + base[n].shape) for i, n in enumerate(names)}
        if num_rows:
            values = {}
            for i, n in enumerate(names):
                value = nodes[n]["value"]
                rows = value.unsqueeze(0).expand((num_rows,) + value.shape).clone()
                offset = sum(len(kept) for _, kept, _ in blocks[:i])
                kept = blocks[i][1]
                rows[offset : offset + len(kept)] = alts[n][kept]
                values[n] = rows
            evaluated = self._evaluate(p, values, names)
            offset = 0
            for i, n in enumerate(names):
                todo, kept, inverse = blocks[i]
                e = evaluated[n][offset : offset + len(kept)]
                offset += len(kept)
                cell = torch.broadcast_shapes(base[n].shape, e.shape[1:])
                full = base[n].expand((sizes[i],) + cell).clone()
                full[todo] = e.expand((len(kept),) + cell)[inverse]
                signals[n] = full

        surrogate = 0.0
        for n in names:
            info, site = infos[n], nodes[n]
            f_alt = signals[n]
            if info.kind == "bernoulli":
                g = self._bernoulli_grad(
                    info, site["value"], alts[n][0], p.noise[n], base[n] - f_alt[0]
                )
            else:
                g = self._categorical_grad(info, base[n], f_alt, plans[n])
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
    def _categorical_grad(info, f_base, f_rows, plan):
        """ARSM's gradient for a categorical site from its learning signals at the sample
        (``f_base``, per cell) and at the alternative rows (``f_rows``)."""
        table = plan[1]
        N, K, C = table.num_cells, table.num_vars, table.num_categories
        cell = info.logits.shape[: info.logits.dim() - 1 - _cat_event_dims(info)]
        f_base = _per_cell(f_base, cell).reshape(N)
        f_rows = _per_cell(f_rows, cell, leading=1).reshape(-1, N)
        if plan[0] == "pairs":
            cs, js = plan[2], plan[3]
            index = torch.zeros(C, C, dtype=torch.long, device=f_base.device)
            index[cs, js] = torch.arange(1, len(cs) + 1, device=f_base.device)
            index[js, cs] = index[cs, js]
            f_all = torch.cat([f_base.unsqueeze(0), f_rows])

            def lookup(actions, c, j):
                return f_all[index[c, j]]

        else:
            lookup = _packed_lookup(table, plan[2], plan[3], f_base, f_rows)
        g = table.gradient(lookup)  # (N, K, C)
        return g.reshape(info.logits.shape)


def _changed_rows(info, alt, value):
    """The indices of the rows of ``alt`` that differ from the sample ``value``, and every
    row's integer code (0/1 or category indices)."""
    if info.kind == "one_hot":
        alt, value = alt.argmax(-1), value.argmax(-1)
    code = alt.reshape(alt.shape[0], value.numel()).long()
    return (code != value.reshape(1, -1).long()).any(-1).nonzero().squeeze(-1), code


def _cat_event_dims(info):
    """Event dims of a categorical site besides the category dim."""
    return info.event_dim - (1 if info.kind == "one_hot" else 0)


def _swap_table(info, noise):
    C = info.logits.shape[-1]
    logits = info.logits.detach()
    cell_dims = logits.dim() - 1 - _cat_event_dims(info)
    N = int(torch.Size(logits.shape[:cell_dims]).numel())
    noise = noise.expand(logits.shape)
    return SwapTable(logits.reshape(N, -1, C), noise.reshape(N, -1, C))


def _to_values(info, rows, value):
    """Rows of pseudo actions ``(R, N, K)`` as values of the site, ``(R,) + value.shape``."""
    R = rows.shape[0]
    if info.kind == "one_hot":
        rows = F.one_hot(rows, info.logits.shape[-1])
    return rows.reshape((R,) + value.shape).to(value.dtype)


def _per_cell(x, cell, leading=0):
    """A per-cell tensor (left-padded with singleton dims, ``leading`` dims kept in front)
    broadcast to ``leading dims + cell``."""
    head = x.shape[:leading]
    x = x.reshape(head + x.shape[leading:])
    while x.dim() - leading > len(cell) and x.shape[leading] == 1:
        x = x.squeeze(leading)
    return x.expand(head + tuple(cell))


def _packed_lookup(table, rows, valid, f_base, f_rows):
    """``lookup(actions, c, j)``: each cell's learning signal at its pseudo actions, from the
    signals of its distinct actions (packed rows) and of its sample."""
    N, K, C = table.num_cells, table.num_vars, table.num_categories
    cells = torch.arange(N, device=f_base.device)
    if K == 1:
        values = f_base.unsqueeze(-1).expand(N, C).clone()
        r, n = valid.nonzero(as_tuple=True)
        values[n, rows[r, n, 0]] = f_rows[r, n]

        def lookup(actions, c, j):
            return values[cells, actions[..., 0]]

        return lookup
    r, n = valid.nonzero(as_tuple=True)
    keys = torch.cat([pack(n, rows[r, n], C), pack(cells, table.sample, C)])
    known = torch.cat([f_rows[r, n], f_base])

    def lookup(actions, c, j):
        M = actions.shape[0]
        query = pack(cells.expand(M, N).reshape(-1), actions.reshape(M * N, K), C)
        unique, inverse = unique_rows(torch.cat([keys, query]))
        f = known.new_full((len(unique),), float("nan"))
        f[inverse[: len(keys)]] = known
        out = f[inverse[len(keys):]].reshape(M, N)
        if bool(torch.isnan(out).any()):
            raise RuntimeError("ARSM_ELBO: a pseudo action without a signal (internal error)")
        return out

    return lookup


def _separable(particle, name):
    """Whether each plate cell's learning signal depends only on that cell's value of site
    ``name``: no sample site after it (in model or guide) lies outside its plates. Then one row
    can hold a different pseudo action in each cell."""
    plates = {f.name for f in particle.guide_trace.nodes[name]["cond_indep_stack"] if f.vectorized}
    for trace in (particle.model_trace, particle.guide_trace):
        after = False
        for other, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if other == name:
                after = True
                continue
            if after and not plates <= {f.name for f in site["cond_indep_stack"] if f.vectorized}:
                return False
    return True


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
