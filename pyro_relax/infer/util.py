"""Shared helpers for the estimator core: plate-aware learning signals, particle layout and
the discrete distributions the estimators understand.

Every helper here is a small, pure function of traces and tensors; the ELBO classes in
:mod:`pyro_relax.infer` compose them.
"""

from typing import Dict, Iterable, NamedTuple, Optional

import torch
from pyro.infer.util import MultiFrameTensor, get_plate_stacks
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

__all__ = [
    "DiscreteSite",
    "base_distribution",
    "cell_shape",
    "expand_to_cells",
    "discrete_site_info",
    "leave_one_out_centered",
    "learning_signals",
    "left_pad",
]


def left_pad(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Prepends singleton dims so that ``x`` has at least ``rank`` dims."""
    if x.dim() >= rank:
        return x
    return x.reshape((1,) * (rank - x.dim()) + x.shape)


def learning_signals(
    model_trace,
    guide_trace,
    names: Iterable[str],
    guide_log_probs: Optional[Dict[str, torch.Tensor]] = None,
    rank: Optional[int] = None,
    detach: bool = True,
) -> Dict[str, torch.Tensor]:
    """Per-plate-cell learning signals ``log p - log q`` for each site in ``names``.

    As in :class:`pyro.infer.Trace_ELBO`, a site inside ``pyro.plate("data", B)`` is credited
    with the (scaled) ``log p - log q`` terms of its own plate slice plus every term outside that
    plate; terms of plates the site is not in are summed out. The result is detached.

    :param model_trace: a model trace with ``log_prob`` computed.
    :param guide_trace: the matching guide trace with ``log_prob`` computed.
    :param names: the guide sites to build signals for.
    :param dict guide_log_probs: optional replacement (already scaled) ``log q`` tensors by site
        name, e.g. evaluated at substituted values.
    :param int rank: if given, each signal is left-padded to this many dims.
    :param bool detach: detach the terms (the default); RELAX keeps the graph of substituted
        relaxed values.
    :returns: a dict from site name to a tensor of the site's plate-cell shape.
    """
    guide_log_probs = guide_log_probs or {}
    stacks = get_plate_stacks(model_trace)
    terms = MultiFrameTensor()
    reference = None
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        log_r = reference = site["log_prob"]
        if not site["is_observed"]:
            log_q = guide_log_probs.get(name)
            if log_q is None:
                log_q = guide_trace.nodes[name]["log_prob"]
            if rank is not None:
                log_r, log_q = left_pad(log_r, rank), left_pad(log_q, rank)
            log_r = log_r - log_q
        elif rank is not None:
            log_r = left_pad(log_r, rank)
        terms.add((stacks[name], log_r))
    # Sites of the guide alone (pyro.factor in a guide, auxiliary latents) enter as -log q.
    guide_stacks = get_plate_stacks(guide_trace)
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or name in model_trace.nodes:
            continue
        log_q = guide_log_probs.get(name)
        log_q = site["log_prob"] if log_q is None else log_q
        reference = log_q
        terms.add((guide_stacks[name], -(log_q if rank is None else left_pad(log_q, rank))))
    out = {}
    for name in names:
        value = terms.sum_to(stacks[name] if name in stacks else guide_stacks[name])
        if not torch.is_tensor(value):  # no terms at all: a zero on the traces' device
            value = reference.new_zeros(()) if reference is not None else torch.zeros(())
        if detach:
            value = value.detach()
        out[name] = value if rank is None else left_pad(value, rank)
    return out


def leave_one_out_centered(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``x_s - mean_{s' != s} x_s'`` along ``dim`` (Kool et al. 2019). Needs at least 2 entries."""
    n = x.shape[dim]
    return x - (x.sum(dim, keepdim=True) - x) / (n - 1)


class DiscreteSite(NamedTuple):
    """What the estimators need to know of a discrete guide site.

    :ivar str kind: ``"bernoulli"``, ``"categorical"`` or ``"one_hot"``.
    :ivar torch.Tensor logits: natural parameters broadcast to the site's full shape
        (``batch_shape + event_shape`` for Bernoulli and Categorical, with a trailing category
        dim for Categorical; ``batch_shape + event_shape`` for OneHotCategorical).
    :ivar int event_dim: the site's ``event_dim``.
    """

    kind: str
    logits: torch.Tensor
    event_dim: int


def base_distribution(fn):
    """The distribution under ``.to_event`` (``Independent``), plate broadcasting
    (``ExpandedDistribution``) and ``.mask`` (``MaskedDistribution``) wrappers."""
    while isinstance(fn, Independent) or type(fn).__name__ in (
        "MaskedDistribution",
        "ExpandedDistribution",
    ):
        fn = fn.base_dist
    return fn


def discrete_site_info(name: str, fn) -> Optional[DiscreteSite]:
    """Recognizes Bernoulli, Categorical and OneHotCategorical guide distributions (possibly
    reinterpreted with ``.to_event`` and broadcast by plates); returns ``None`` otherwise."""
    base = base_distribution(fn)
    shape = fn.batch_shape + fn.event_shape
    if isinstance(base, Bernoulli):
        return DiscreteSite("bernoulli", base.logits.expand(shape), fn.event_dim)
    if isinstance(base, OneHotCategorical):
        return DiscreteSite("one_hot", base.logits.expand(shape), fn.event_dim)
    if isinstance(base, Categorical):
        num_categories = base.logits.shape[-1]
        return DiscreteSite(
            "categorical", base.logits.expand(shape + (num_categories,)), fn.event_dim
        )
    return None


def cell_shape(info):
    """The plate cells of a discrete site: the dims of its logits before the event dims (and
    a categorical's category dim)."""
    logits = info.logits
    trailing = info.event_dim + (1 if info.kind == "categorical" else 0)
    return logits.shape[: logits.dim() - trailing]


def expand_to_cells(x, cell, leading=0):
    """A per-cell tensor (left-padded with singleton dims, ``leading`` dims kept in front)
    broadcast to ``leading dims + cell``."""
    head = x.shape[:leading]
    while x.dim() - leading > len(cell) and x.shape[leading] == 1:
        x = x.squeeze(leading)
    return x.expand(head + tuple(cell))
