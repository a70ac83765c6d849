"""REBAR / RELAX's relaxed evaluation: the REBAR coupling, the relaxed rows a particle is
re-run at, their continuous log-masses, and the taint that refuses programs which are not
differentiable functions of a relaxed value."""

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions.util import sum_rightmost
from torch.distributions import Bernoulli, Independent, OneHotCategorical

from pyro_relax.distributions.relaxed_conditioned import (
    bernoulli_conditioned_pre_activation,
    bernoulli_pre_activation,
    categorical_conditioned_pre_activation,
    categorical_pre_activation,
)

from .alternatives import Alternatives, ProgramError
from .substitution import RowPlan
from .util import discrete_site_info, left_pad

__all__ = ["RelaxationError", "RelaxedRows", "RebarCoupling", "relax", "relaxed_log_mass"]


class RebarCoupling:
    r"""The REBAR coupling of a discrete site with logits :math:`\alpha` and noise
    :math:`(u, v)`: the pre-activation :math:`z` (whose hard threshold is the sample :math:`b`)
    and :math:`\tilde z \sim p(z \mid b)` (see
    :mod:`pyro_relax.distributions.relaxed_conditioned`)."""

    def z(self, kind, alpha, u):
        """The pre-activation :math:`z` from uniforms ``u``."""
        if kind == "bernoulli":
            return bernoulli_pre_activation(alpha, u)
        return categorical_pre_activation(alpha, u)

    def z_tilde(self, kind, alpha, b, v):
        r""":math:`\tilde z \sim p(z \mid b)` from uniforms ``v`` (``b`` one-hot for
        categoricals)."""
        if kind == "bernoulli":
            return bernoulli_conditioned_pre_activation(alpha, b, v)
        return categorical_conditioned_pre_activation(alpha, b, v)

    def sample(self, kind, alpha, u):
        """The hard sample :math:`b = H(z)` (an index for a Categorical)."""
        z = self.z(kind, alpha, u)
        if kind == "bernoulli":
            return (z > 0).to(alpha.dtype)
        index = z.argmax(-1)
        return F.one_hot(index, alpha.shape[-1]).to(alpha.dtype) if kind == "one_hot" else index


def relax(kind, z, temperature):
    r""":math:`\sigma_\lambda(z)`: the sigmoid (Bernoulli) or softmax of ``z / temperature``."""
    if kind == "bernoulli":
        return torch.sigmoid(z / temperature)
    return torch.softmax(z / temperature, -1)


def relaxed_log_mass(fn, value, logits=None):
    """The continuous extension of a Bernoulli / OneHotCategorical log-mass at a relaxed
    value (exact at hard values), through ``Independent``, ``Expanded`` and ``Masked``
    wrappers. ``logits``: the full-shape logits to use (the tensor the value was made from)."""
    if isinstance(fn, Independent):
        return sum_rightmost(relaxed_log_mass(fn.base_dist, value, logits),
                             fn.reinterpreted_batch_ndims)
    name = type(fn).__name__
    if name == "MaskedDistribution":
        lp = relaxed_log_mass(fn.base_dist, value, logits)
        mask = fn._mask
        if torch.is_tensor(mask):
            return torch.where(mask, lp, lp.new_zeros(()))
        return lp if mask else lp.new_zeros(lp.shape)
    if name == "ExpandedDistribution":
        return relaxed_log_mass(fn.base_dist, value, logits).expand(fn.batch_shape)
    if isinstance(fn, OneHotCategorical):
        alpha = fn.logits if logits is None else logits
        return (value * alpha.log_softmax(-1)).sum(-1)
    if isinstance(fn, Bernoulli):
        alpha = fn.logits if logits is None else logits
        return value * alpha - F.softplus(alpha)
    return fn.log_prob(value)


class RelaxedRows:
    """The ``2K`` relaxed rows of REBAR / RELAX for the ``K`` discrete sites of a particle:
    site ``k``'s rows hold :math:`\\sigma_\\lambda(z)` and :math:`\\sigma_\\lambda(\\tilde z)` at
    ``k``, the earlier sites at their sample and the later guide sites drawn again from the
    same noise (discrete ones relaxed, from their re-run logits), so that the control variate
    is a continuous function of :math:`z`. :meth:`terms` gives each site's relaxed signals and
    the gradients of the rows' totals with respect to its logits.

    :param particle: the :class:`~pyro_relax.infer.Particle`.
    :param dict sites: site name -> dict with ``info``, ``b`` (one-hot for categoricals),
        ``temperature`` and ``alpha`` (the particle's logits).
    :param RebarCoupling coupling: the coupling.
    :param bool sample_row: add the sample row that checks broadcasting.
    """

    def __init__(self, particle, sites, coupling, sample_row):
        self.particle, self.sites, self.coupling = particle, sites, coupling
        order = Alternatives.site_order(particle)
        positions = {m: i for i, m in enumerate(order)}
        self.order = [m for m in order if m in sites]
        self.index = {m: k for k, m in enumerate(self.order)}
        num_rows = 2 * len(self.order) + (1 if sample_row else 0)  # the last: the sample
        device = sites[self.order[0]]["alpha"].device
        self.owner = torch.arange(num_rows, device=device) // 2  # the site index of each row
        self.tilde = (torch.arange(num_rows, device=device) % 2) == 1
        first = [positions[self.order[k]] if k < len(self.order) else len(positions)
                 for k in self.owner.tolist()]
        self.targets = []  # (name, row or None, logits tensor) recorded in the re-run
        self.logits_of = {}  # id(fn) -> the logits tensor used for its relaxed value
        self.plan = RowPlan(num_rows, torch.tensor(first, device=device), self.order,
                            choose=self.choose, log_prob={m: self.log_mass for m in self.order},
                            sample_row=sample_row, reset=self.reset)

    def reset(self):
        self.targets.clear()
        self.logits_of.clear()

    def log_mass(self, fn, value):
        return relaxed_log_mass(fn, value, self.logits_of.get(id(fn)))

    def choose(self, name, fn, site, row):
        """Site ``name``'s value in the re-run (``fn`` its re-run distribution)."""
        s, k = self.sites[name], self.index[name]
        alpha = discrete_site_info(name, fn).logits
        if not alpha.requires_grad:  # constant logits: a leaf to differentiate at
            alpha = alpha.detach().requires_grad_()
        self.logits_of[id(fn)] = alpha
        self.targets.append((name, row, alpha))
        u, v = self.particle.noise[name]
        kind, temperature = s["info"].kind, s["temperature"]
        if row is not None:
            j = int(self.owner[row])
            if j > k:  # the row's site is downstream of this one: this one at its sample
                return site["value"]
            if j == k and bool(self.tilde[row]):
                return _taint(relax(kind, self.coupling.z_tilde(kind, alpha, s["b"], v), temperature))
            return _taint(relax(kind, self.coupling.z(kind, alpha, u), temperature))
        relaxed_z = relax(kind, self.coupling.z(kind, alpha, left_pad(u, alpha.dim())), temperature)
        z_tilde = self.coupling.z_tilde(kind, alpha, left_pad(s["b"], alpha.dim()),
                                        left_pad(v, alpha.dim()))
        shape = (self.plan.num_rows,) + (1,) * (alpha.dim() - 1)
        own = (self.owner == k).reshape(shape)
        value = torch.where(own & self.tilde.reshape(shape), relax(kind, z_tilde, temperature),
                            relaxed_z)
        upstream = (self.owner > k).reshape(shape)
        sample = left_pad(site["value"], alpha.dim()).to(value.dtype)
        return _taint(torch.where(upstream, sample, value))

    def evaluate(self, engine, max_plate_nesting, who):
        """The rows run by ``engine`` (an :class:`~pyro_relax.infer.Alternatives`); returns
        :meth:`terms`. A program that is not differentiable in a relaxed value is refused with
        a ``ValueError`` naming the estimator ``who``, the sites and where it happened."""
        try:
            # argument validation compares values; a relaxed value is checked by the taint
            with pyro.validation_enabled(False):
                signals, totals = engine.run(self.particle, self.plan, max_plate_nesting,
                                             grad=True, totals=True)
        except RelaxationError as error:
            raise ValueError(
                "{} evaluates model and guide at relaxed values of the discrete sites {} (each "
                "in its own evaluation, the later guide sites drawn from it), and they must be "
                "differentiable functions of those values; {} {}. Use "
                "control_variate='neural', which does not evaluate the program at relaxed "
                "values.".format(who, self.order, str(error).strip().splitlines()[0], error.where)
            ) from error
        return self.terms(signals, totals)

    def terms(self, signals, totals):
        """Per site: ``(f(sigma(z)), f(sigma(z~)), d total / d alpha at z, at z~)``."""
        signals = {m: _plain(x) for m, x in signals.items()}
        grads = torch.autograd.grad(_plain(totals).sum(), [t for _, _, t in self.targets],
                                    create_graph=True, allow_unused=True)
        out = {}
        for m in self.order:
            k, alpha = self.index[m], self.sites[m]["alpha"]
            d = {}
            for (name, row, _), g in zip(self.targets, grads):
                if name != m:
                    continue
                g = torch.zeros_like(alpha) if g is None else _plain(g)
                if row is None:
                    d[2 * k], d[2 * k + 1] = g[2 * k], g[2 * k + 1]
                elif row in (2 * k, 2 * k + 1):
                    d[row] = g
            out[m] = (signals[m][2 * k], signals[m][2 * k + 1],
                      d[2 * k].reshape(alpha.shape), d[2 * k + 1].reshape(alpha.shape))
        return out


# ------------------------------------------------------------------ the taint
class RelaxationError(ProgramError):
    """A program used a relaxed value in a way that is not a differentiable function of it."""


_STEP_METHODS = {
    "item", "tolist", "numpy", "__array__", "__bool__", "__int__", "__float__", "__index__",
    "__complex__", "detach", "detach_", "long", "int", "short", "char", "byte", "bool",
    "round", "floor", "ceil", "trunc", "frac", "sign", "sgn", "heaviside", "fmod",
    "remainder", "argmax", "argmin", "argsort", "gt", "ge", "lt", "le", "eq", "ne",
    "__gt__", "__ge__", "__lt__", "__le__", "__eq__", "__ne__", "greater", "greater_equal",
    "less", "less_equal", "equal", "not_equal", "isclose", "allclose", "bucketize",
    "searchsorted", "nonzero", "unique", "one_hot", "floor_divide", "__floordiv__",
    "__rfloordiv__", "__mod__", "__rmod__",
}
_INTEGRAL_OUTPUT = {"max", "min", "sort", "topk", "kthvalue", "mode", "median", "nanmedian"}


class _Relaxed(torch.Tensor):
    """A relaxed value, and everything computed from it, in REBAR/RELAX's relaxed evaluation.
    Operations that are not differentiable (continuous) functions of it raise
    :class:`RelaxationError`: conversion to Python or NumPy (``.item()``, ``float()``, ``if``),
    ``.detach()``, integer and boolean casts, comparisons, rounding, ``argmax``, indices."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is torch.Tensor.data.__get__:
            name = "data"
        tainted = [a for a in _flat(args, kwargs) if isinstance(a, _Relaxed)]
        if tainted:
            if name in _STEP_METHODS or name == "data" or _casts_to_step(name, args, kwargs):
                raise RelaxationError(
                    "`{}` applied to a relaxed value (or a value computed from one)".format(name))
            with torch._C.DisableTorchFunctionSubclass():
                integral = any(not a.dtype.is_floating_point for a in tainted)
            if integral:
                raise RelaxationError(
                    "`{}` applied to indices computed from a relaxed value".format(name))
        out = super().__torch_function__(func, types, args, kwargs)
        if tainted and name not in _INTEGRAL_OUTPUT:
            return _untaint_integral(out)
        return out


def _flat(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _casts_to_step(name, args, kwargs):
    """``.to(torch.long)``, ``.type(torch.bool)``, ...: casts to an integral or boolean dtype."""
    if name not in ("to", "type"):
        return False
    for a in list(args[1:]) + list(kwargs.values()):
        if isinstance(a, torch.dtype) and not (a.is_floating_point or a.is_complex):
            return True
    return False


def _untaint_integral(out):
    """Integral outputs that do not derive from the relaxed input (e.g. the index operand of
    ``broadcast_tensors``) stay plain tensors."""
    if isinstance(out, _Relaxed):
        with torch._C.DisableTorchFunctionSubclass():
            floating = out.dtype.is_floating_point
        return out if floating else out.as_subclass(torch.Tensor)
    if isinstance(out, (list, tuple)) and not hasattr(out, "_fields"):
        return type(out)(_untaint_integral(o) for o in out)
    return out


def _taint(x):
    return x.as_subclass(_Relaxed)


def _plain(x):
    return x.as_subclass(torch.Tensor) if isinstance(x, _Relaxed) else x
