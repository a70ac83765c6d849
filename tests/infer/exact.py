"""Exact -ELBO gradients by brute-force enumeration, and the Monte Carlo check against them.

The oracle enumerates every joint configuration of the guide's discrete sites (element by
element, so ``.to_event`` vectors and plates are covered) and, for continuous guide sites,
integrates with Gauss-Hermite quadrature (exact for the polynomial log-densities used in the
tests). It uses only ``poutine.condition`` and trace log-densities, never the estimators' code.
"""

import itertools
import math

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical, Poisson

POISSON_TRUNCATION = 40
QUADRATURE_NODES = 30


def _base(fn):
    while isinstance(fn, Independent) or type(fn).__name__ in (
        "MaskedDistribution",
        "ExpandedDistribution",
    ):
        fn = fn.base_dist
    return fn


def _configurations(site):
    """Every value of a discrete site, enumerated element by element."""
    fn, value = site["fn"], site["value"]
    base = _base(fn)
    if isinstance(base, OneHotCategorical):
        num_categories = value.shape[-1]
        shape = value.shape[:-1]
        n = int(np.prod(shape))
        for idx in itertools.product(range(num_categories), repeat=n):
            yield F.one_hot(torch.tensor(idx).reshape(shape), num_categories).to(value.dtype)
        return
    if isinstance(base, Categorical):
        support = range(base.logits.shape[-1])
    elif isinstance(base, Bernoulli):
        support = (0.0, 1.0)
    elif isinstance(base, Poisson):
        support = range(POISSON_TRUNCATION)
    else:
        raise NotImplementedError(type(base))
    n = value.numel()
    for idx in itertools.product(support, repeat=n):
        yield torch.tensor(idx, dtype=value.dtype).reshape(value.shape)


def _trace(fn, data, args, kwargs):
    tr = poutine.trace(poutine.condition(fn, data=data)).get_trace(*args, **kwargs)
    tr = prune_subsample_sites(tr)
    tr.compute_log_prob()
    return tr


def exact_loss(model, guide, *args, **kwargs):
    """The exact -ELBO as a differentiable function of the current parameters."""
    sample = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
    latents = [
        (name, site)
        for name, site in sample.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]
    discrete = [(n, s) for n, s in latents if not s["fn"].has_rsample]
    continuous = [n for n, s in latents if s["fn"].has_rsample]
    assert len(continuous) <= 1, "the oracle integrates one continuous site"
    nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    total = 0.0
    for combo in itertools.product(*[list(_configurations(s)) for _, s in discrete]):
        data = {n: v for (n, _), v in zip(discrete, combo)}
        tr = _trace(guide, data, args, kwargs)
        # the probability of the configuration: unscaled densities (scales weight terms only)
        log_q_discrete = sum(
            (tr.nodes[n]["fn"].log_prob(v).sum() for n, v in data.items()), torch.tensor(0.0)
        )
        if continuous:
            (c,) = continuous
            fn = tr.nodes[c]["fn"]
            base = _base(fn)
            assert isinstance(base, Normal) and base.loc.numel() == 1
            inner = 0.0
            for x, w in zip(nodes, weights):
                value = (base.loc + base.scale * math.sqrt(2.0) * x).reshape(tr.nodes[c]["value"].shape)
                d = dict(data, **{c: value})
                gtr, mtr = _trace(guide, d, args, kwargs), _trace(model, d, args, kwargs)
                inner = inner + w / math.sqrt(math.pi) * (mtr.log_prob_sum() - gtr.log_prob_sum())
        else:
            inner = _trace(model, data, args, kwargs).log_prob_sum() - tr.log_prob_sum()
        total = total + log_q_discrete.exp() * inner
    return -total


def init_params(model, guide, *args, **kwargs):
    """Runs guide and model once (traced, so observed sites raise no warning) to create params."""
    poutine.trace(guide).get_trace(*args, **kwargs)
    poutine.trace(model).get_trace(*args, **kwargs)


def param_leaves():
    return dict(pyro.get_param_store().named_parameters())


def exact_grads(model, guide, *args, loss_fn=exact_loss, **kwargs):
    """Exact gradients of the -ELBO for every parameter the program uses (parameters the
    exact -ELBO does not depend on at all, such as an estimator's control variate, are left
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
    with poutine.block():
        tr = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
        tm = poutine.trace(model, param_only=True).get_trace(*args, **kwargs)
    return set(tr.nodes) | set(tm.nodes)


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


def check_unbiased(
    elbo, model, guide, num_samples, *args, num_se=4.0, loss_fn=exact_loss, **kwargs
):
    """Compares the estimator's mean gradient with the exact one for every parameter element
    (``loss_fn(model, guide, *args)``: the exact -ELBO, :func:`exact_loss` by default).

    :returns: ``(ok, report)`` where ``ok`` is True iff every element satisfies
        ``|mean - exact| <= num_se * standard error`` (plus a 1e-9 floor for round-off, which
        matters only for estimators with zero variance).
    """
    # Create the parameters first so the oracle and the estimator see the same leaves.
    init_params(model, guide, *args, **kwargs)
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
        z = (err / se.clamp(min=1e-30)).max().item()
        lines.append(
            "{}: exact={} mean={} se={} max|z|={:.2f}".format(
                name, exact[name].flatten().tolist(), mean.flatten().tolist(),
                se.flatten().tolist(), z,
            )
        )
        if bad.any():
            ok = False
    return ok, "\n".join(lines)
