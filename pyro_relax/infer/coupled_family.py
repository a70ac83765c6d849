r"""The coupled estimators for categorical guide sites: DisARM-IW, DisARM-SB, DisARM-Tree
(strategies of :class:`~pyro_relax.infer.ARSM_ELBO`, on the trees of
:mod:`pyro_relax.infer.coupled`).

The categories are sorted by ascending logit and written as the leaves of a binary tree of
``C - 1`` decisions; uniforms :math:`u` give the sample (right iff :math:`u_v < \sigma(\alpha_v)`)
and :math:`1 - u` its antithetic twin. With ``num_pairs = m`` there are :math:`n = 2m` samples
(``m`` independent antithetic pairs, the first sample the site's own) and

.. math::

    \hat g = \frac{1}{n(n-1)} \sum_{s < t} (f(z_s) - f(z_t))
        \big(\nabla \log q(z_s) - \nabla \log q(z_t)\big) \odot W_{st},

the leave-one-out estimator written over pairs (:math:`W = 1` for independent pairs) with the
coupling's weights on the antithetic pairs. ``2m - 1`` extra evaluations per site (rows equal
to the sample or to each other are scored once).

Reference: Z. Dong, A. Mnih, G. Tucker, "Coupled Gradient Estimators for Discrete Latent
Variables", NeurIPS 2021.
"""

import numbers

import torch
import torch.nn.functional as F

from . import coupled
from .coupled import CategoricalTree, sort_categories
from .site_plan import SitePlan
from .strategy import SiteStrategy, check_categories, uniform_noise
from .util import cell_shape, expand_to_cells, left_pad

__all__ = ["Coupled", "DisARM_IW", "DisARM_SB", "DisARM_Tree"]


class Coupled(SiteStrategy):
    """Base class of the coupled estimators.

    :param int num_pairs: antithetic pairs per site (``2 num_pairs`` samples).
    """

    kinds = ("categorical", "one_hot")
    #: the tree: ``"sb"`` (stick breaking) or ``"tree"`` (balanced)
    tree_kind = "sb"

    def __init__(self, num_pairs=1):
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, numbers.Integral) or num_pairs < 1:
            raise ValueError("num_pairs: expected a positive int, got {!r}".format(num_pairs))
        self.num_pairs = int(num_pairs)

    def __repr__(self):
        return "{}(num_pairs={})".format(type(self).__name__, self.num_pairs)

    def check(self, who, name, info, fn):
        check_categories(self, who, name, info, fn)

    def sample(self, info):
        noise = uniform_noise(info.logits.detach(), info.logits.shape[-1] - 1)
        return self.redraw(info, noise), noise

    def redraw(self, info, noise):
        logits = info.logits.detach()
        noise = left_pad(noise, logits.dim())
        tree = CategoricalTree.get(logits.shape[-1], self.tree_kind, logits.device)
        perm = sort_categories(logits)
        sigma = torch.sigmoid(tree.node_logits(logits.gather(-1, perm)))
        z = perm.gather(-1, tree.decode(noise < sigma).unsqueeze(-1)).squeeze(-1)
        return F.one_hot(z, logits.shape[-1]).to(logits.dtype) if info.kind == "one_hot" else z

    def plan(self, info, value, noise, separable):
        return _CoupledPlan(self, info, value, noise)

    def log_weight(self, tree, sigma, leaf_a, leaf_b):
        """The log importance weight of an antithetic pair (DisARM-IW)."""
        return coupled.coupled_log_weight(tree, sigma, leaf_a, leaf_b)

    def parting_weight(self, sigma):
        """DisARM's weight at the node where an antithetic pair's paths part."""
        return coupled.parting_weight(sigma)


class DisARM_IW(Coupled):
    """DisARM-IW: the stick-breaking coupling and the importance weight
    :math:`W = q(z_s) q(z_t) / p(z_s, z_t)` (per variable), gradient in the logits."""

    name = "disarm-iw"

    def gradient(self, tree, sigma, leaves, f, sorted_logits):
        g = coupled.iw_gradient(tree, sigma, leaves, f, log_weight=self.log_weight)
        return (g.detach() * sorted_logits).sum()


class DisARM_SB(Coupled):
    r"""DisARM-SB: DisARM on the stick-breaking tree's binary decisions, Rao-Blackwellized
    given the pair: :math:`W_v = \sigma(|\alpha_v|)` at the node where the paths part."""

    name = "disarm-sb"

    def gradient(self, tree, sigma, leaves, f, sorted_logits):
        g = coupled.tree_gradient(tree, sigma, leaves, f, parting=self.parting_weight)
        return (g.detach() * tree.node_logits(sorted_logits)).sum()


class DisARM_Tree(DisARM_SB):
    """DisARM-Tree: DisARM-SB on a balanced binary tree (depth ``ceil(log2 C)``)."""

    name = "disarm-tree"
    tree_kind = "tree"


class _CoupledPlan(SitePlan):
    """``num_pairs`` antithetic pairs of samples of a categorical site (the first sample the
    site's own): the other ``2 num_pairs - 1`` are the rows, one joint value each."""

    def __init__(self, strategy, info, value, noise):
        self.strategy, self.info = strategy, info
        logits = _cells(info).detach()
        N, K, C = logits.shape
        self.perm = sort_categories(logits)
        self.tree = CategoricalTree.get(C, strategy.tree_kind, logits.device)
        self.sigma = torch.sigmoid(self.tree.node_logits(logits.gather(-1, self.perm)))
        u = noise.expand(info.logits.shape[:-1] + (C - 1,)).reshape(N, K, C - 1)
        # the sample's own position (as drawn from u), then its twin from 1 - u
        sample = value.argmax(-1) if info.kind == "one_hot" else value
        sample = sample.long().expand(info.logits.shape[:-1]).reshape(N, K)
        own = self.perm.argsort(-1).gather(-1, sample.unsqueeze(-1)).squeeze(-1)
        # the other pairs' uniforms as one leading dimension: u_2, 1 - u_2, u_3, 1 - u_3, ...
        ua = u.new_empty((strategy.num_pairs - 1,) + u.shape).uniform_()
        noises = torch.cat([(1.0 - u).unsqueeze(0), torch.stack([ua, 1.0 - ua], 1).flatten(0, 1)])
        self.leaves = torch.cat([own.unsqueeze(0), self.tree.decode(noises < self.sigma)])
        z = self.perm.unsqueeze(0).expand(self.leaves.shape[:1] + self.perm.shape)
        z = z.gather(-1, self.leaves.unsqueeze(-1)).squeeze(-1)[1:]  # categories
        rows = F.one_hot(z, C) if info.kind == "one_hot" else z
        super().__init__(rows.reshape((z.shape[0],) + value.shape).to(value.dtype), joint=True)

    def surrogate(self, f_sample, f_rows):
        logits, cell = _cells(self.info), cell_shape(self.info)
        N = logits.shape[0]
        f_base = expand_to_cells(f_sample, cell).reshape(N)
        f_rows = expand_to_cells(f_rows, cell, leading=1).reshape(-1, N)
        f = torch.cat([f_base.unsqueeze(0), f_rows])  # (n, N)
        sorted_logits = logits.gather(-1, self.perm)  # differentiable
        return self.strategy.gradient(self.tree, self.sigma, self.leaves, f, sorted_logits)


def _cells(info):
    """A categorical site's logits as ``(N, K, C)`` (plate cells, variables per cell,
    categories)."""
    N = int(torch.Size(cell_shape(info)).numel())
    return info.logits.reshape(N, -1, info.logits.shape[-1])
