"""The exact-gradient harness: prove an estimator unbiased on a small model.

:func:`exact_loss` computes the exact ``-ELBO`` of a small model and guide as a differentiable
function of their parameters: every joint configuration of the guide's discrete sites is
enumerated (element by element, so ``.to_event`` vectors and plates are covered) and the
reparameterized sites are integrated by Gauss-Hermite quadrature over their standard-normal
noise (exact for the polynomial log-densities of linear-Gaussian models; accurate for smooth
ones). It runs guide and model through Pyro's own
:func:`~pyro.infer.enum.get_importance_trace`, so every guide style works (functions,
autoguides, effect-style :class:`~pyro.poutine.guide.GuideMessenger` guides), and it uses none
of the estimators' code.

:func:`check_unbiased` compares an estimator's mean gradient over many calls with the exact
gradient, element by element, within a number of Monte Carlo standard errors::

    from pyro_relax.testing import check_unbiased
    ok, report = check_unbiased(MyELBO(num_particles=2), model, guide, 600)
    assert ok, report

A deliberately wrong variant of the estimator should fail the same check (a power test).
"""

import itertools
import math

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions import Delta
from pyro.infer.enum import get_importance_trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    Poisson,
    TransformedDistribution,
)

__all__ = [
    "check_unbiased",
    "estimated_grads",
    "exact_grads",
    "exact_iwae_loss",
    "exact_loss",
    "init_params",
    "param_leaves",
]

#: Poisson sites are enumerated on ``0 .. POISSON_TRUNCATION - 1``
POISSON_TRUNCATION = 40
#: the most quadrature points (over all reparameterized sites together) :func:`exact_loss` uses
MAX_QUADRATURE_POINTS = 4096


def _base(fn):
    while isinstance(fn, Independent) or type(fn).__name__ in (
        "MaskedDistribution", "ExpandedDistribution"):
        fn = fn.base_dist
    return fn


def _configurations(value, fn):
    """Every value of a discrete site, enumerated element by element."""
    base = _base(fn)
    if isinstance(base, OneHotCategorical):
        num_categories, shape = value.shape[-1], value.shape[:-1]
        for idx in itertools.product(range(num_categories), repeat=int(np.prod(shape))):
            yield F.one_hot(torch.tensor(idx).reshape(shape), num_categories).to(value.dtype)
        return
    if isinstance(base, Categorical):
        support = range(base.logits.shape[-1])
    elif isinstance(base, Bernoulli):
        support = (0.0, 1.0)
    elif isinstance(base, Poisson):
        support = range(POISSON_TRUNCATION)
    else:
        raise NotImplementedError("the exact oracle cannot enumerate {}".format(type(base).__name__))
    for idx in itertools.product(support, repeat=value.numel()):
        yield torch.tensor(idx, dtype=value.dtype, device=value.device).reshape(value.shape)


def _noise_numel(fn):
    """How many standard normals a reparameterized site's value is a function of."""
    if isinstance(fn, TransformedDistribution):
        return _noise_numel(fn.base_dist)
    base = _base(fn)
    full = fn.batch_shape + fn.event_shape
    if isinstance(base, (Delta, TransformedDistribution)):
        if (base.batch_shape + base.event_shape).numel() != full.numel():
            raise NotImplementedError("the exact oracle cannot expand a {} site".format(
                type(base).__name__))
        return 0 if isinstance(base, Delta) else _noise_numel(base)
    if isinstance(base, LowRankMultivariateNormal):
        return int(full.numel() // full[-1] * (full[-1] + base.cov_factor.shape[-1]))
    if isinstance(base, (Normal, MultivariateNormal)):
        return int(full.numel())
    raise NotImplementedError("the exact oracle integrates Gaussian-noise sites only, not {}"
                              .format(type(base).__name__))


def _reparameterized(fn, eps):
    """The value of a reparameterized site at standard-normal noise ``eps`` (flat)."""
    shape = fn.batch_shape + fn.event_shape
    if isinstance(fn, TransformedDistribution):
        value = _reparameterized(fn.base_dist, eps)
        for t in fn.transforms:
            value = t(value)
        return value
    base = _base(fn)
    if isinstance(base, Delta):
        return base.v.reshape(shape)
    if isinstance(base, TransformedDistribution):
        return _reparameterized(base, eps).reshape(shape)
    if isinstance(base, Normal):
        return base.loc + base.scale * eps.reshape(shape)
    if isinstance(base, MultivariateNormal):
        return base.loc + (base.scale_tril @ eps.reshape(shape).unsqueeze(-1)).squeeze(-1)
    rank = base.cov_factor.shape[-1]  # LowRankMultivariateNormal
    e = eps.reshape(shape[:-1] + (shape[-1] + rank,))
    e_d, e_w = e[..., : shape[-1]], e[..., shape[-1]:]
    return base.loc + (base.cov_factor @ e_w.unsqueeze(-1)).squeeze(-1) + base.cov_diag.sqrt() * e_d


class _Fix(Messenger):
    """Sets the guide's discrete sites to a configuration and its reparameterized sites to
    their value at given noise; records each site's noise size on a first, free run."""

    def __init__(self, discrete=None, noise=None):
        super().__init__()
        self.discrete, self.noise, self.offset = discrete, noise, 0
        self.sites = {}  # name -> ("discrete", value, fn) or ("continuous", numel)

    def _pyro_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg) or msg["done"]:
            return
        name, fn = msg["name"], msg["fn"]
        if not fn.has_rsample:
            if self.discrete is not None:
                msg["value"], msg["done"] = self.discrete[name], True
            return
        numel = _noise_numel(fn)
        self.sites[name] = numel
        if self.noise is not None:
            eps = self.noise[self.offset: self.offset + numel]
            self.offset += numel
            msg["value"], msg["done"] = _reparameterized(fn, eps), True

    def _pyro_post_sample(self, msg):
        if self.discrete is None and not msg["is_observed"] and not site_is_subsample(msg) \
                and not msg["fn"].has_rsample:
            self.sites[msg["name"]] = ("discrete", msg["value"], msg["fn"])


def _traces(model, guide, args, kwargs, fix):
    model_trace, guide_trace = get_importance_trace(
        "flat", float("inf"), model, fix(guide), args, kwargs)
    return model_trace, guide_trace


def _atoms(model, guide, args, kwargs, quadrature_nodes):
    """The guide's discrete sites ``(name, value, fn)`` and the quadrature grid of its
    reparameterized sites' noise: ``(discrete, grid, nodes, weights)``."""
    probe = _Fix()
    _traces(model, guide, args, kwargs, probe)
    discrete = [(n, s[1], s[2]) for n, s in probe.sites.items() if isinstance(s, tuple)]
    dims = sum(s for s in probe.sites.values() if not isinstance(s, tuple))
    if quadrature_nodes is None:
        quadrature_nodes = {0: 1, 1: 30}.get(dims) or max(3, int(MAX_QUADRATURE_POINTS ** (1 / dims)))
    nodes, weights = np.polynomial.hermite.hermgauss(quadrature_nodes)
    grid = list(itertools.product(range(quadrature_nodes), repeat=dims))
    if len(grid) > 4 * MAX_QUADRATURE_POINTS:
        raise ValueError("exact_loss: {} noise dimensions need {} quadrature points".format(
            dims, len(grid)))
    return discrete, grid, nodes, weights


def _atom_traces(model, guide, args, kwargs, quadrature_nodes):
    """For every atom (a joint configuration of the discrete sites and a quadrature node of
    the reparameterized sites' noise): ``(node weight, log q of the configuration, model
    trace, guide trace)``. The configuration's probability uses unscaled densities (scales
    weight the terms only)."""
    discrete, grid, nodes, weights = _atoms(model, guide, args, kwargs, quadrature_nodes)
    for combo in itertools.product(*[list(_configurations(v, fn)) for _, v, fn in discrete]):
        config = {n: v for (n, _, _), v in zip(discrete, combo)}
        for point in grid:
            eps = torch.tensor([math.sqrt(2.0) * nodes[i] for i in point])
            w = float(np.prod([weights[i] / math.sqrt(math.pi) for i in point]))
            model_trace, guide_trace = _traces(model, guide, args, kwargs, _Fix(config, eps))
            log_q = sum((guide_trace.nodes[n]["fn"].log_prob(v).sum() for n, v in config.items()),
                        torch.tensor(0.0))
            yield w, log_q, model_trace, guide_trace


def exact_loss(model, guide, *args, quadrature_nodes=None, **kwargs):
    """The exact ``-ELBO`` as a differentiable function of the current parameters.

    :param int quadrature_nodes: Gauss-Hermite nodes per noise dimension of the
        reparameterized sites (default: 30 for one dimension, else as many as fit in
        :data:`MAX_QUADRATURE_POINTS` points, at least 3: exact for quadratic log-densities).
    """
    total = 0.0
    for w, log_q, model_trace, guide_trace in _atom_traces(model, guide, args, kwargs,
                                                           quadrature_nodes):
        inner = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
        total = total + w * log_q.exp() * inner
    return -total


def exact_iwae_loss(model, guide, *args, num_particles=2, quadrature_nodes=None, **kwargs):
    r"""The exact negative ``num_particles``-sample importance-weighted bound
    :math:`-\mathbb E[\log \frac1K \sum_k p(x, z_k) / q(z_k)]` as a differentiable function
    of the current parameters: every ``K``-tuple of atoms (a joint configuration of the guide's
    discrete sites and a Gauss-Hermite node of its reparameterized sites' noise, as in
    :func:`exact_loss`) is enumerated. As in :class:`~pyro.infer.RenyiELBO`, the bound is taken
    per cell of the plates common to every sample site and summed over them (every other dim
    summed into the log weights), from unscaled densities, times the program's one scale.

    :param int num_particles: :math:`K`.
    :param int quadrature_nodes: as in :func:`exact_loss` (the tuples number
        ``(configurations x nodes) ** K``: keep programs tiny).
    """
    log_ws, log_ps, scales = [], [], set()
    for w, log_q, model_trace, guide_trace in _atom_traces(model, guide, args, kwargs,
                                                           quadrature_nodes):
        log_ws.append(_cell_log_weight(model_trace, guide_trace, scales))
        log_ps.append(log_q + math.log(w))  # the atom's probability
    if len(scales) > 1:
        raise ValueError("exact_iwae_loss: the sites have different scales {}".format(sorted(scales)))
    shape = torch.broadcast_shapes(*[torch.as_tensor(x).shape for x in log_ws])
    log_w = torch.stack([torch.as_tensor(x).expand(shape) for x in log_ws])  # [atoms, cells]
    log_p = torch.stack(log_ps)
    total = 0.0
    tuples = torch.tensor(list(itertools.product(range(len(log_ws)), repeat=num_particles)))
    for chunk in tuples.split(4096):
        bound = torch.logsumexp(log_w[chunk], 1) - math.log(num_particles)  # [T, cells]
        total = total + (log_p[chunk].sum(1).exp() * bound.reshape(len(chunk), -1).sum(1)).sum()
    return -(scales.pop() if scales else 1.0) * total


def _cell_log_weight(model_trace, guide_trace, scales):
    """``log p - log q`` from unscaled (masked) densities, per cell of the plates common to
    every sample site; adds every site's scale to ``scales``."""
    sites = [(1.0, site) for site in model_trace.nodes.values() if site["type"] == "sample"]
    sites += [(-1.0, site) for name, site in guide_trace.nodes.items()
              if site["type"] == "sample" and not site["is_observed"]]
    if not sites:
        return torch.tensor(0.0)
    common = set.intersection(*[{f.dim for f in site["cond_indep_stack"] if f.dim is not None}
                                for _, site in sites])
    rank = max(site["log_prob"].dim() for _, site in sites)
    log_w = 0.0
    for sign, site in sites:
        x = site["unscaled_log_prob"]
        if site["mask"] is not None:
            x = x * site["mask"]
        x = x.reshape((1,) * (rank - x.dim()) + x.shape)
        dims = [d for d in range(-rank, 0) if d not in common]
        log_w = log_w + sign * (x.sum(dims, keepdim=True) if dims else x)
        scales.add(float(site["scale"]))
    return log_w


def init_params(model, guide, *args, **kwargs):
    """Runs guide and model once (as :func:`~pyro.infer.enum.get_importance_trace` does, so
    observed sites raise no warning) to create their parameters."""
    get_importance_trace("flat", float("inf"), model, guide, args, kwargs)


def param_leaves():
    """The unconstrained leaves of the param store, by name."""
    return dict(pyro.get_param_store().named_parameters())


def exact_grads(model, guide, *args, loss_fn=exact_loss, **kwargs):
    """Exact gradients of the ``-ELBO`` for every parameter the program uses (parameters the
    exact ``-ELBO`` does not depend on at all, such as an estimator's control variate, are left
    out)."""
    loss = loss_fn(model, guide, *args, **kwargs)
    params = param_leaves()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    used = _used_params(model, guide, args, kwargs)
    return {
        name: torch.zeros_like(p) if g is None else g
        for (name, p), g in zip(params.items(), grads)
        if g is not None or name in used
    }


def _used_params(model, guide, args, kwargs):
    """Names of the parameters that model and guide create or read."""
    with poutine.block(), poutine.trace(param_only=True) as tr:
        get_importance_trace("flat", float("inf"), model, guide, args, kwargs)
    return set(tr.trace.nodes)


def estimated_grads(elbo, model, guide, num_samples, *args, **kwargs):
    """Stacks the gradients of ``num_samples`` calls of ``elbo.loss_and_grads``."""
    draws = {}
    for _ in range(num_samples):
        for p in param_leaves().values():
            p.grad = None
        elbo.loss_and_grads(model, guide, *args, **kwargs)
        for name, p in param_leaves().items():
            g = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            draws.setdefault(name, []).append(g)
    return {name: torch.stack(gs) for name, gs in draws.items()}


def check_unbiased(elbo, model, guide, num_samples, *args, num_se=4.0, loss_fn=exact_loss,
                   exact=None, **kwargs):
    """Compares the estimator's mean gradient with the exact one for every parameter element
    (``loss_fn(model, guide, *args)``: the exact ``-ELBO``, :func:`exact_loss` by default).

    :param elbo: an ELBO with ``loss_and_grads`` (any of :mod:`pyro_relax.infer`, Pyro's, or
        a user's).
    :param int num_samples: gradient draws; enough that a wrong estimator fails (600 in the
        package's own tests).
    :param float num_se: the tolerance in standard errors of the mean.
    :param dict exact: the exact gradients by parameter name, if known already (then
        ``loss_fn`` is not called).
    :returns: ``(ok, report)`` where ``ok`` is True iff every element satisfies
        ``|mean - exact| <= num_se * standard error`` (plus a 1e-9 floor for round-off, which
        matters only for estimators with zero variance).
    """
    # Create the parameters first so the oracle and the estimator see the same leaves.
    init_params(model, guide, *args, **kwargs)
    if exact is None:
        exact = exact_grads(model, guide, *args, loss_fn=loss_fn, **kwargs)
    draws = estimated_grads(elbo, model, guide, num_samples, *args, **kwargs)
    ok, lines = True, []
    for name, g in draws.items():
        if name not in exact:
            continue  # an estimator's own state (a control variate), not in the ELBO
        mean = g.mean(0)
        se = g.std(0) / math.sqrt(num_samples)
        err = (mean - exact[name]).abs()
        bad = err > num_se * se + 1e-9
        varies = se > 0
        z = (err[varies] / se[varies]).max().item() if bool(varies.any()) else 0.0
        exact_part = ""
        if not bool(varies.all()):  # elements the estimator gets without noise
            exact_part = " (zero-variance elements: max|mean - exact|={:.1e})".format(
                err[~varies].max().item())
        lines.append("{}: exact={} mean={} se={} max|z|={:.2f}{}".format(
            name, exact[name].flatten().tolist(), mean.flatten().tolist(),
            se.flatten().tolist(), z, exact_part))
        if bad.any():
            ok = False
    return ok, "\n".join(lines)
