r"""Coupled pairs of categorical samples (Dong, Mnih & Tucker 2021).

A categorical variable with logits :math:`\phi` (``C`` categories) is written as a sequence of
binary decisions: the categories are sorted by ascending logit and placed at the leaves of a
binary tree with ``C - 1`` internal nodes; node :math:`v` splits its leaves into a left and a right
part and goes right with probability :math:`\sigma(\alpha_v)`,
:math:`\alpha_v = \operatorname{logsumexp}\phi_{\mathrm{right}(v)}
- \operatorname{logsumexp}\phi_{\mathrm{left}(v)}`. The category is the leaf reached from the
root. Two trees are used:

- **stick breaking** (``"sb"``): node :math:`i` separates the :math:`i`-th smallest category
  (left: stop) from the larger ones (right: go on);
- **balanced tree** (``"tree"``): each node splits its leaves in two halves (by count).

With uniforms :math:`u_v`, the sample goes right at :math:`v` iff :math:`u_v < \sigma(\alpha_v)`
and its antithetic twin iff :math:`1 - u_v < \sigma(\alpha_v)`: the pair :math:`(z, \tilde z)`
has the right marginals and is coupled node by node. This module holds the tree structure and
the per-pair quantities the estimators need (paths, lowest common ancestors, importance
weights); :class:`~pyro_relax.infer.ARSM_ELBO` assembles the estimators.
"""

import functools

import torch

__all__ = [
    "CategoricalTree",
    "coupled_log_weight",
    "iw_gradient",
    "parting_weight",
    "sort_categories",
    "tree_gradient",
]


def sort_categories(logits):
    """The permutation sorting each variable's categories by ascending logit (a stable sort of
    the detached logits), shape of ``logits``."""
    return logits.detach().argsort(dim=-1, stable=True)


class CategoricalTree:
    """The binary tree of a categorical with ``C`` categories, in sorted-position space (leaf
    ``p`` is the ``p``-th smallest category).

    :param int num_categories: ``C >= 2``.
    :param str kind: ``"sb"`` (stick breaking) or ``"tree"`` (balanced).

    :ivar torch.Tensor lo, mid, hi: node ``v`` splits leaves ``[lo, hi)`` into ``[lo, mid)`` (left)
        and ``[mid, hi)`` (right); ``(C - 1,)`` long tensors.
    :ivar torch.Tensor path_mask: ``(C, C - 1)`` bool, node ``v`` on leaf ``p``'s path.
    :ivar torch.Tensor path_right: ``(C, C - 1)`` bool, leaf ``p``'s path goes right at ``v``.
    """

    def __init__(self, num_categories, kind):
        C = int(num_categories)
        if C < 2:
            raise ValueError("CategoricalTree: needs at least 2 categories, got {}".format(C))
        if kind not in ("sb", "tree"):
            raise ValueError("CategoricalTree: kind must be 'sb' or 'tree', got {!r}".format(kind))
        self.num_categories, self.kind = C, kind
        nodes = []  # (lo, mid, hi), breadth first
        queue = [(0, C)]
        while queue:
            lo, hi = queue.pop(0)
            mid = lo + 1 if kind == "sb" else lo + (hi - lo) // 2
            nodes.append((lo, mid, hi))
            for a, b in ((lo, mid), (mid, hi)):
                if b - a > 1:
                    queue.append((a, b))
        self.num_nodes = len(nodes)
        assert self.num_nodes == C - 1
        index = {(lo, hi): v for v, (lo, mid, hi) in enumerate(nodes)}
        left = [index.get((lo, mid), -1) for lo, mid, hi in nodes]
        right = [index.get((mid, hi), -1) for lo, mid, hi in nodes]
        self.lo = torch.tensor([n[0] for n in nodes])
        self.mid = torch.tensor([n[1] for n in nodes])
        self.hi = torch.tensor([n[2] for n in nodes])
        self.left_child = torch.tensor(left)
        self.right_child = torch.tensor(right)
        leaves = torch.arange(C).unsqueeze(-1)
        self.path_mask = (leaves >= self.lo) & (leaves < self.hi)
        self.path_right = self.path_mask & (leaves >= self.mid)
        self.depth = int(self.path_mask.sum(-1).max())

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def get(num_categories, kind, device):
        """A cached tree, its tensors on ``device``."""
        tree = CategoricalTree(num_categories, kind)
        for name in ("lo", "mid", "hi", "left_child", "right_child", "path_mask", "path_right"):
            setattr(tree, name, getattr(tree, name).to(device))
        return tree

    def node_logits(self, sorted_logits):
        r""":math:`\alpha_v`, differentiable, from logits sorted ascending (``(..., C)`` ->
        ``(..., C - 1)``). Range sums of ``exp`` use a cumulative sum, which is accurate because
        the logits are ascending (a range's sum is at least its largest term, the last)."""
        shift = sorted_logits.detach().max(-1, keepdim=True).values
        e = (sorted_logits - shift).exp()
        cum = torch.cat([torch.zeros_like(e[..., :1]), e.cumsum(-1)], -1)

        def range_log(a, b):
            return (cum[..., b] - cum[..., a]).log()

        return range_log(self.mid, self.hi) - range_log(self.lo, self.mid)

    def decode(self, right):
        """The leaf (sorted position) reached by the decisions ``right`` (``(..., C - 1)``
        bool, True: go right), ``(...)`` long."""
        if self.kind == "sb":  # the first node that stops (goes left), else the last leaf
            stop = ~right
            any_stop = stop.any(-1)
            first = stop.to(torch.int8).argmax(-1)
            return torch.where(any_stop, first, torch.full_like(first, self.num_categories - 1))
        node = torch.zeros(right.shape[:-1], dtype=torch.long, device=right.device)
        leaf = torch.full_like(node, -1)
        for _ in range(self.depth):
            active = leaf < 0
            go = right.gather(-1, node.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            child = torch.where(go, self.right_child[node], self.left_child[node])
            reached = torch.where(go, self.mid[node], self.lo[node])  # the leaf if child < 0
            leaf = torch.where(active & (child < 0), reached, leaf)
            node = torch.where(active & (child >= 0), child, node)
        return leaf

    def scores(self, leaf, sigma):
        r"""The score of the tree parameterization, :math:`\partial_{\alpha_v} \log q(z) =
        (1[\text{right at } v] - \sigma(\alpha_v))` on the path of leaf ``leaf``, 0 off it."""
        mask = self.path_mask[leaf].to(sigma.dtype)
        return (self.path_right[leaf].to(sigma.dtype) - sigma) * mask

    def split(self, leaf_a, leaf_b):
        """For pairs of leaves: ``(common, lca, a_right)``: the nodes both paths take in the
        same direction (``(..., C - 1)`` bool), the node where they part (``(...)`` long; 0 where
        the leaves are equal) and whether ``leaf_a`` goes right there."""
        ma, mb = self.path_mask[leaf_a], self.path_mask[leaf_b]
        ra, rb = self.path_right[leaf_a], self.path_right[leaf_b]
        both = ma & mb
        common = both & (ra == rb)
        parts = both & (ra != rb)
        lca = parts.to(torch.int8).argmax(-1)
        a_right = ra.gather(-1, lca.unsqueeze(-1)).squeeze(-1)
        return common, lca, a_right


def coupled_log_weight(tree, sigma, leaf_a, leaf_b):
    r"""Log importance weight :math:`\log q(z) q(\tilde z) / p(z, \tilde z)` of an antithetic
    pair under the tree coupling: :math:`\sigma(|\alpha|)` at the node where the paths part
    and, above it, :math:`q_v(d)^2 / p_v(d, d)` with :math:`p_v(1, 1) = 2\sigma_v - 1`,
    :math:`p_v(0, 0) = 1 - 2\sigma_v`. (Only where :math:`p > 0` on every pair of distinct
    leaves is the weight finite: the stick-breaking tree over ascending logits, where every
    node above a parting node goes right with probability above 1/2.) ``-inf`` where the leaves
    are equal (the pair's term vanishes there)."""
    common, lca, a_right = tree.split(leaf_a, leaf_b)
    right = tree.path_right[leaf_a]
    q = torch.where(right, sigma, 1.0 - sigma)
    p = torch.where(right, 2.0 * sigma - 1.0, 1.0 - 2.0 * sigma)
    terms = torch.where(common, 2.0 * q.log() - p.clamp(min=torch.finfo(p.dtype).tiny).log(),
                        torch.zeros_like(q))
    s = sigma.expand(right.shape).gather(-1, lca.unsqueeze(-1)).squeeze(-1)
    log_w = terms.sum(-1) + parting_weight(s).log()
    return torch.where(leaf_a == leaf_b, torch.full_like(log_w, float("-inf")), log_w)


def parting_weight(sigma):
    r"""DisARM's weight :math:`\sigma(|\alpha|) = \max(\sigma, 1 - \sigma)` at the node where an
    antithetic pair's paths part."""
    return torch.maximum(sigma, 1.0 - sigma)


def _pair_differences(f):
    """``f_s - f_t`` for all samples ``s, t``: ``(n, n, N)`` from ``(n, N)``."""
    return f.unsqueeze(1) - f.unsqueeze(0)


def iw_gradient(tree, sigma, leaves, f, log_weight=None):
    r"""DisARM-IW: :math:`\frac{1}{n(n-1)} \sum_{s<t} (f_s - f_t)(e_{z_s} - e_{z_t}) W_{st}` with
    :math:`W_{st} = q(z_s) q(z_t) / p(z_s, z_t)` for the antithetic pairs ``(0, 1), (2, 3), ...``
    and 1 for the others; the gradient with respect to the sorted logits.

    :param CategoricalTree tree: the stick-breaking tree (the coupling).
    :param torch.Tensor sigma: :math:`\sigma(\alpha)`, ``(N, K, C - 1)``.
    :param torch.Tensor leaves: the samples' sorted positions, ``(n, N, K)``, ``n`` even.
    :param torch.Tensor f: their learning signals, ``(n, N)``.
    :param log_weight: the pair's log weight (default :func:`coupled_log_weight`).
    :returns: ``(N, K, C)``.
    """
    log_weight = coupled_log_weight if log_weight is None else log_weight
    n, N, K = leaves.shape
    diff = _pair_differences(f)
    weight = diff.new_ones(n, n, N, K)
    first = torch.arange(0, n, 2, device=leaves.device)  # the pairs, as one tensor dimension
    w = log_weight(tree, sigma, leaves[0::2], leaves[1::2]).exp()  # (n / 2, N, K)
    weight[first, first + 1] = w
    weight[first + 1, first] = w
    A = (diff.unsqueeze(-1) * weight).sum(1)  # (n, N, K)
    onehot = torch.nn.functional.one_hot(leaves, tree.num_categories).to(A.dtype)
    return (onehot * A.unsqueeze(-1)).sum(0) / (n * (n - 1))


def tree_gradient(tree, sigma, leaves, f, parting=None):
    r"""DisARM-SB / DisARM-Tree: :math:`\frac{1}{n(n-1)} \sum_{s<t} (f_s - f_t)(S_s - S_t) \odot
    W_{st}` with :math:`S` the score in :math:`\alpha` (:meth:`CategoricalTree.scores`) and, for
    the antithetic pairs ``(0, 1), (2, 3), ...``, :math:`W_v = \sigma(|\alpha_v|)` at the node
    where their paths part (1 elsewhere): DisARM on the tree's decisions given the pair, the
    decisions that only one of the two paths (or neither) uses integrated out; 1 for the other
    pairs (independent samples: leave-one-out). The gradient with respect to :math:`\alpha`.

    Given the pair, the antithetic decisions at a node are independent of the other nodes';
    above the parting node both paths go the same way (no term), at it they differ (DisARM's
    :math:`\tfrac12 \Delta f (-1)^{\tilde b}\sigma(|\alpha|)`), and below it the decision of the
    path that does not use the node is integrated out given the other's, which gives
    :math:`\tfrac12\Delta f\,(b - \sigma)` on one path and :math:`-\tfrac12\Delta f\,(\tilde b -
    \sigma)` on the other, that is the score difference.

    ``parting``: the weight at the parting node (default :func:`parting_weight`).

    :returns: ``(N, K, C - 1)``.
    """
    parting = parting_weight if parting is None else parting
    n, N, K = leaves.shape
    diff = _pair_differences(f)
    scores = tree.scores(leaves, sigma)  # (n, N, K, C - 1)
    g = (scores * diff.sum(1).reshape(n, N, 1, 1)).sum(0)
    # the antithetic pairs' corrections, the pairs as one tensor dimension
    a, b = leaves[0::2], leaves[1::2]  # (n / 2, N, K)
    first = torch.arange(0, n, 2, device=leaves.device)
    _, lca, a_right = tree.split(a, b)
    sig = sigma.expand(a.shape + sigma.shape[-1:]).gather(-1, lca.unsqueeze(-1)).squeeze(-1)
    sign = 2.0 * a_right.to(sig.dtype) - 1.0
    corr = diff[first, first + 1].unsqueeze(-1) * sign * (parting(sig) - 1.0)
    corr = torch.where(a == b, torch.zeros_like(corr), corr)
    g = g + torch.zeros_like(scores[0::2]).scatter_add(
        -1, lca.unsqueeze(-1), corr.unsqueeze(-1)).sum(0)
    return g / (n * (n - 1))
