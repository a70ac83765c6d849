"""ARM / DisARM for Bernoulli sites; the ARM family (AR, ARS, ARSM, ARS+, ARSM+) and the
coupled estimators (DisARM-IW, DisARM-SB, DisARM-Tree) for categorical sites."""

import torch
import torch.nn.functional as F

from . import coupled
from .coupled import CategoricalTree, sort_categories
from .discrete_elbo import DiscreteELBO
from .pseudo_actions import SwapTable, pack, unique_rows
from .util import discrete_site_info, learning_signals, left_pad

__all__ = ["ARSM_ELBO"]

#: the ``categorical`` options that augment a site with Dirichlet noise (Yin, Yue & Zhou 2019)
DIRICHLET_OPTIONS = ("ar", "ars", "arsm", "ars+", "arsm+")
#: the ``categorical`` options that couple antithetic samples (Dong, Mnih & Tucker 2021)
COUPLED_OPTIONS = ("disarm-iw", "disarm-sb", "disarm-tree")
_TREE_KIND = {"disarm-iw": "sb", "disarm-sb": "sb", "disarm-tree": "tree"}


class ARSM_ELBO(DiscreteELBO):
    r"""Augment-REINFORCE-(Swap-)Merge estimators for discrete guide sites, and the coupled
    (antithetic) estimators for categorical sites.

    - **Bernoulli** sites (logits :math:`\alpha`, any shape, ``.to_event`` allowed): ARM
      (Yin & Zhou 2019) draws :math:`u \sim U(0,1)`, sets :math:`b = 1[u > \sigma(-\alpha)]` (the
      sample) and :math:`\tilde b = 1[u < \sigma(\alpha)]` (its antithetic twin) and uses
      :math:`(f(b) - f(\tilde b))(u - \tfrac12)`; with ``bernoulli="disarm"`` DisARM (Dong, Mnih
      & Tucker 2020) integrates out :math:`u` given the pair:
      :math:`\tfrac12 (f(b) - f(\tilde b)) (-1)^{\tilde b} 1[b \ne \tilde b]\, \sigma(|\alpha|)`.
      One extra evaluation per site.
    - **Categorical** and **OneHotCategorical** sites (logits :math:`\phi`, :math:`C \ge 2`
      categories), chosen by ``categorical``:

      - the ARM family (Yin, Yue & Zhou 2019) draws :math:`\pi \sim \mathrm{Dir}(1_C)`, samples
        :math:`z = \arg\min_i (\ln\pi_i - \phi_i)` and evaluates pseudo actions
        :math:`z^{c \rightleftharpoons j}` (swap :math:`\pi_c` and :math:`\pi_j`):

        - ``"ar"``: :math:`\hat g_c = f(z)(1 - C\pi_c)`; no extra evaluation.
        - ``"ars"``: one reference :math:`j` drawn uniformly (shared by the site's cells),
          :math:`\hat g_c = \big(f(z^{c \rightleftharpoons j}) - \frac1C \sum_m
          f(z^{m \rightleftharpoons j})\big)(1 - C\pi_j)`; at most ``C - 1`` extra evaluations
          (the distinct pseudo actions).
        - ``"arsm"`` (default): the mean of the ARS estimator over all ``C`` references; at most
          ``C(C - 1)/2`` extra evaluations.
        - ``"ars+"``, ``"arsm+"``: as ``"ars"``, ``"arsm"``, Rao-Blackwellized: in each
          reference's term :math:`\pi_j` is replaced by its conditional mean given the pseudo
          actions of that reference and every coordinate of :math:`\pi` but :math:`\pi_j` and
          one other :math:`\pi_o` that absorbs the change (uniform on an interval, see
          :meth:`~pyro_relax.infer.pseudo_actions.SwapTable.expected_reference`; averaged over
          the ``C - 1`` choices of :math:`o`), and the term of a variable whose pseudo actions
          for that reference all agree is dropped (its conditional mean given that variable's
          noise is zero). The same evaluations as ``"ars"``, ``"arsm"``; :math:`O(C^2)`
          (ARS+) or :math:`O(C^3)` (ARSM+) extra arithmetic per variable.

      - the coupled estimators (Dong, Mnih & Tucker 2021) sort the categories by ascending
        logit and write them as the leaves of a binary tree of ``C - 1`` decisions (node
        :math:`v` goes right with probability :math:`\sigma(\alpha_v)`, see
        :mod:`pyro_relax.infer.coupled`); uniforms :math:`u` give the sample (right iff
        :math:`u_v < \sigma(\alpha_v)`) and :math:`1 - u` its antithetic twin. With
        ``num_pairs = m`` there are :math:`n = 2m` samples :math:`z_1 = z, \dots, z_n` (``m``
        independent antithetic pairs) and

        .. math::

            \hat g = \frac{1}{n(n-1)} \sum_{s < t} (f(z_s) - f(z_t))
                \big(\nabla \log q(z_s) - \nabla \log q(z_t)\big) \odot W_{st},

        the leave-one-out estimator written over pairs (:math:`W = 1` for independent pairs)
        with, for the antithetic pairs:

        - ``"disarm-iw"``: the stick-breaking coupling and the importance weight
          :math:`W = q(z_s) q(z_t) / p(z_s, z_t)` (per variable; finite because the logits are
          ascending), gradient in :math:`\phi`;
        - ``"disarm-sb"``: the stick-breaking tree, DisARM on its binary decisions,
          Rao-Blackwellized given the pair (the unused decisions integrated out): in
          :math:`\alpha` space :math:`W_v = \sigma(|\alpha_v|)` at the node where the two paths
          part and 1 elsewhere;
        - ``"disarm-tree"``: the same on a balanced binary tree (depth
          :math:`\lceil\log_2 C\rceil`).

        ``2m - 1`` extra evaluations per site (rows equal to the sample or to each other are
        scored once), however many plate cells the site has.

    Here :math:`f = \log p(x, z) - \log q(z)` is the learning signal of the site's plate cell
    (each datapoint's latent uses its own signal, see :class:`DiscreteELBO`). Several discrete
    sites are handled by holding the others at their sample while one is changed; all the
    distinct alternative configurations of all sites are scored by **one** batched run,
    without gradients. The ARM family's pseudo actions are packed, per plate cell, into rows
    when the cells' signals are separable (each row then serves a different pseudo action in
    each cell), else one row per swap, every cell swapped. Reparameterizable guide sites keep
    their pathwise gradient.

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
    - Z. Dong, A. Mnih, G. Tucker, "Coupled Gradient Estimators for Discrete Latent
      Variables", NeurIPS 2021.

    :param int num_particles: number of independent estimates to average.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param str bernoulli: ``"arm"`` (default) or ``"disarm"``.
    :param vectorize_alternatives: ``None`` (batched, one at a time if the program does not
        broadcast), ``True`` (batched or ``ValueError``) or ``False`` (one at a time).
    :param str categorical: the estimator for Categorical and OneHotCategorical sites:
        ``"ar"``, ``"ars"``, ``"arsm"`` (default), ``"ars+"``, ``"arsm+"``, ``"disarm-iw"``,
        ``"disarm-sb"`` or ``"disarm-tree"``.
    :param int num_pairs: antithetic pairs per categorical site for the coupled estimators
        (``2 num_pairs`` samples, ``2 num_pairs - 1`` extra evaluations); 1 for the others.
        Bernoulli sites always use one pair.
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
        categorical="arsm",
        num_pairs=1,
    ):
        if bernoulli not in ("arm", "disarm"):
            raise ValueError(
                "bernoulli: expected 'arm' or 'disarm', got {!r}".format(bernoulli)
            )
        options = DIRICHLET_OPTIONS + COUPLED_OPTIONS
        if categorical not in options:
            raise ValueError(
                "categorical: expected one of {}, got {!r}".format(
                    ", ".join(repr(o) for o in options), categorical
                )
            )
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError("num_pairs: expected a positive int, got {!r}".format(num_pairs))
        if num_pairs > 1 and categorical not in COUPLED_OPTIONS:
            raise ValueError(
                "num_pairs: {} pairs need a coupled categorical estimator ({}); "
                "categorical={!r} uses one sample".format(
                    num_pairs, ", ".join(repr(o) for o in COUPLED_OPTIONS), categorical
                )
            )
        self.bernoulli = bernoulli
        self.categorical = categorical
        self.num_pairs = num_pairs
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            retain_graph=retain_graph,
        )
        self.vectorize_alternatives = self._check_vectorize_alternatives(vectorize_alternatives)
        #: per categorical site of the ARM family, at the last call: the distinct pseudo actions
        #: per plate cell (``"mean"``, ``"max"``; None when the cells are scored together, see
        #: above) and the alternative rows scored (``"rows"``)
        self.distinct_actions = {}

    def _options(self):
        return "ARSM_ELBO(bernoulli={!r}, categorical={!r})".format(
            self.bernoulli, self.categorical
        )

    def _coupling(self):
        return _TREE_KIND.get(self.categorical)

    def _sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None:
            raise ValueError(
                "{} cannot handle guide site '{}' with distribution {}: supported "
                "non-reparameterizable sites are Bernoulli, Categorical and OneHotCategorical "
                "(also with .to_event and in plates); use ReinforceLOO_ELBO or VarGrad_ELBO "
                "for other distributions.".format(self._options(), name, type(fn).__name__)
            )
        logits = info.logits.detach()
        if info.kind == "bernoulli":
            noise = torch.rand_like(logits)
        else:
            C = logits.shape[-1]
            if C < 2:
                raise ValueError(
                    "{} cannot handle guide site '{}': a {} with {} category has nothing to "
                    "estimate (categorical={!r} needs at least 2 categories); make the site "
                    "deterministic or give it more categories.".format(
                        self._options(), name, type(fn).__name__, C, self.categorical
                    )
                )
            if self._coupling() is not None:  # one uniform per binary decision
                noise = logits.new_empty(logits.shape[:-1] + (C - 1,)).uniform_()
            else:  # Dirichlet(1) augmentation
                e = torch.empty_like(logits).exponential_()
                noise = e / e.sum(-1, keepdim=True)
        return _from_noise(info, noise, self._coupling()), noise

    def _redraw_site(self, name, fn, noise):
        info = discrete_site_info(name, fn)
        return None if info is None else _from_noise(info, noise, self._coupling())

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

        # The values each site is scored at besides its sample (see the plans below).
        plans = {}
        for n in names:
            info, value, noise = infos[n], nodes[n]["value"], p.noise[n]
            if info.kind == "bernoulli":
                plans[n] = _BernoulliPlan(self, info, value, noise)
            elif self.categorical in COUPLED_OPTIONS:
                plans[n] = _CoupledPlan(info, value, noise, self.categorical, self.num_pairs)
            else:
                plans[n] = _SwapPlan(info, value, noise, self.categorical, _separable(p, n))
                counts = plans[n].counts  # per cell; None when the cells are scored together
                self.distinct_actions[n] = {
                    "mean": None if counts is None else counts.double().mean().item(),
                    "max": None if counts is None else (int(counts.max()) if counts.numel() else 0),
                }
        alts = {n: plans[n].rows for n in names}

        # One row per alternative of one site, the other sites held at their sample; rows
        # equal to the sample are not scored, nor twice the same row (rows a plan marks
        # distinct are so by construction). Rows are compared as integer keys, exact on any
        # device.
        rank = self.max_plate_nesting
        base = {n: left_pad(base[n], rank) for n in names}
        blocks = []  # per site: (rows to score, kept row ids, each row's kept row)
        for n in names:
            todo, code = _changed_rows(infos[n], alts[n], nodes[n]["value"])
            if plans[n].distinct:
                blocks.append((todo, todo, torch.arange(len(todo), device=todo.device)))
            else:
                unique, inverse = unique_rows(code[todo])
                first = torch.full((len(unique),), -1, dtype=torch.long, device=todo.device)
                first.scatter_(0, inverse.flip(0), todo.flip(0))
                blocks.append((todo, first, inverse))
        for (_, kept, _), n in zip(blocks, names):
            if n in self.distinct_actions:
                self.distinct_actions[n]["rows"] = len(kept)
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
            surrogate = surrogate + plans[n].surrogate(base[n], signals[n])
        return surrogate

    def _bernoulli_grad(self, info, b, b_twin, u, diff):
        diff = diff.reshape(diff.shape + (1,) * info.event_dim)
        if self.bernoulli == "arm":
            return diff * (u - 0.5)
        sign = 1.0 - 2.0 * b_twin
        differ = (b != b_twin).to(diff.dtype)
        return 0.5 * diff * sign * differ * torch.sigmoid(info.logits.detach().abs())


class _BernoulliPlan:
    """A Bernoulli site: its antithetic twin, and ARM's or DisARM's gradient."""

    distinct = True
    counts = None

    def __init__(self, elbo, info, value, noise):
        self.elbo, self.info, self.value, self.noise = elbo, info, value, noise
        twin = (noise < torch.sigmoid(info.logits.detach())).to(value.dtype)
        self.rows = twin.unsqueeze(0)

    def surrogate(self, f_base, f_rows):
        info = self.info
        diff = f_base - f_rows[0]
        g = self.elbo._bernoulli_grad(info, self.value, self.rows[0], self.noise, diff)
        return (g.detach() * info.logits).sum()


def _cells(info):
    """A categorical site's logits as ``(N, K, C)`` (plate cells, variables per cell,
    categories), and the cells' shape."""
    logits = info.logits
    C = logits.shape[-1]
    cell = logits.shape[: logits.dim() - 1 - _cat_event_dims(info)]
    N = int(torch.Size(cell).numel())
    return logits.reshape(N, -1, C), cell


def _signals_per_cell(f_base, f_rows, cell):
    """Learning signals at the sample ``(N,)`` and at the rows ``(R, N)``."""
    N = int(torch.Size(cell).numel())
    return _per_cell(f_base, cell).reshape(N), _per_cell(f_rows, cell, leading=1).reshape(-1, N)


class _SwapPlan:
    """A categorical site under the ARM family: its pseudo actions (none for AR; the swaps
    with one random reference for ARS and ARS+; all swaps for ARSM and ARSM+), packed per cell
    when the cells are separable, and the family's gradient."""

    def __init__(self, info, value, noise, option, separable):
        self.info, self.option = info, option
        table = self.table = _swap_table(info, noise)
        C, device = table.num_categories, value.device
        self.references = None
        if option in ("ars", "ars+"):
            self.references = torch.randint(C, (1,), device=device)
        self.counts = None
        self.distinct = True
        if option == "ar":
            rows = table.sample.new_zeros((0,) + table.sample.shape)
            self.mode = "none"
        elif separable:
            rows, self.valid, self.counts = table.distinct(self.references)
            self.packed_rows = rows
            self.mode = "packed"
        else:
            if self.references is None:
                cs, js = _pairs(C, device)
            else:
                cs = torch.arange(C, device=device)
                cs = cs[cs != self.references]
                js = self.references.expand(len(cs))
            self.cs, self.js = cs, js
            rows = table.actions(cs, js)
            self.distinct = False
            self.mode = "pairs"
        self.rows = _to_values(info, rows, value)

    def surrogate(self, f_base, f_rows):
        info, table = self.info, self.table
        N, K, C = table.num_cells, table.num_vars, table.num_categories
        cell = info.logits.shape[: info.logits.dim() - 1 - _cat_event_dims(info)]
        f_base, f_rows = _signals_per_cell(f_base, f_rows, cell)
        if self.mode == "none":  # AR
            g = f_base.reshape(N, 1, 1) * (1.0 - C * table.log_pi.exp())
        else:
            if self.mode == "pairs":
                index = torch.zeros(C, C, dtype=torch.long, device=f_base.device)
                index[self.cs, self.js] = torch.arange(1, len(self.cs) + 1, device=f_base.device)
                index[self.js, self.cs] = index[self.cs, self.js]
                f_all = torch.cat([f_base.unsqueeze(0), f_rows])

                def lookup(actions, c, j):
                    return f_all[index[c, j]]

            else:
                lookup = _packed_lookup(table, self.packed_rows, self.valid, f_base, f_rows)
            if self.option.endswith("+"):
                g = table.gradient(lookup, self.references, rao_blackwellize=True)
            elif self.references is not None:
                g = table.gradient(lookup, self.references)
            else:
                g = table.gradient(lookup)  # (N, K, C)
        return (g.reshape(info.logits.shape).detach() * info.logits).sum()


class _CoupledPlan:
    """A categorical site under a coupled estimator: ``num_pairs`` antithetic pairs of
    samples (the first sample is the site's own), and the pairwise leave-one-out gradient with
    the coupling's weights on the antithetic pairs."""

    distinct = False
    counts = None

    def __init__(self, info, value, noise, option, num_pairs):
        self.info, self.option = info, option
        logits, cell = _cells(info)
        logits = logits.detach()
        N, K, C = logits.shape
        self.perm = sort_categories(logits)
        self.tree = CategoricalTree.get(C, _TREE_KIND[option], logits.device)
        alpha = self.tree.node_logits(logits.gather(-1, self.perm))
        self.sigma = torch.sigmoid(alpha)
        u = noise.expand(info.logits.shape[:-1] + (C - 1,)).reshape(N, K, C - 1)
        # the sample's own position (as drawn by _from_noise from u), then its twin from 1 - u
        sample = value.argmax(-1) if info.kind == "one_hot" else value
        sample = sample.long().expand(info.logits.shape[:-1]).reshape(N, K)
        own = self.perm.argsort(-1).gather(-1, sample.unsqueeze(-1)).squeeze(-1)
        # the other pairs' uniforms as one leading dimension: u_2, 1 - u_2, u_3, 1 - u_3, ...
        ua = u.new_empty((num_pairs - 1,) + u.shape).uniform_()
        noises = torch.cat([(1.0 - u).unsqueeze(0), torch.stack([ua, 1.0 - ua], 1).flatten(0, 1)])
        self.leaves = torch.cat([own.unsqueeze(0), self.tree.decode(noises < self.sigma)])
        z = self.perm.unsqueeze(0).expand(self.leaves.shape[:1] + self.perm.shape)
        z = z.gather(-1, self.leaves.unsqueeze(-1)).squeeze(-1)  # categories
        self.rows = _to_values(info, z[1:], value)

    def surrogate(self, f_base, f_rows):
        logits, cell = _cells(self.info)
        f_base, f_rows = _signals_per_cell(f_base, f_rows, cell)
        f = torch.cat([f_base.unsqueeze(0), f_rows])  # (n, N)
        sorted_logits = logits.gather(-1, self.perm)  # differentiable
        if self.option == "disarm-iw":
            g = coupled.iw_gradient(self.tree, self.sigma, self.leaves, f)
            return (g.detach() * sorted_logits).sum()
        g = coupled.tree_gradient(self.tree, self.sigma, self.leaves, f)
        return (g.detach() * self.tree.node_logits(sorted_logits)).sum()


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


def _from_noise(info, noise, coupling=None):
    """ARM's ``b = 1[u > sigmoid(-alpha)]``; ARSM's ``z = argmin(log pi - phi)`` (a
    Categorical(softmax(phi)) draw); or, with ``coupling`` (``"sb"`` or ``"tree"``), the leaf
    that the decisions ``u_v < sigmoid(alpha_v)`` reach in that tree over the categories sorted
    by ascending logit; from the noise of a site with logits ``info.logits`` (which may carry
    more leading dims than the noise)."""
    logits = info.logits.detach()
    noise = left_pad(noise, logits.dim())
    if info.kind == "bernoulli":
        return (noise > torch.sigmoid(-logits)).to(logits.dtype)
    if coupling is None:
        z = (noise.log() - logits).argmin(-1)
    else:
        C = logits.shape[-1]
        tree = CategoricalTree.get(C, coupling, logits.device)
        perm = sort_categories(logits)
        sigma = torch.sigmoid(tree.node_logits(logits.gather(-1, perm)))
        leaf = tree.decode(noise < sigma)
        z = perm.gather(-1, leaf.unsqueeze(-1)).squeeze(-1)
    if info.kind == "one_hot":
        z = F.one_hot(z, logits.shape[-1]).to(logits.dtype)
    return z


def _pairs(num_categories, device):
    cs, js = torch.triu_indices(num_categories, num_categories, offset=1, device=device)
    return cs, js
