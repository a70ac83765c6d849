"""RELAX and REBAR: control variates from the continuous relaxation, trained by their own
variance gradient."""

import numbers
from collections import OrderedDict

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions.util import sum_rightmost
from pyro.poutine.util import site_is_subsample
from torch.distributions import Bernoulli, Independent, OneHotCategorical, constraints

from pyro_relax.distributions.relaxed_conditioned import (
    bernoulli_conditioned_pre_activation,
    bernoulli_pre_activation,
    categorical_conditioned_pre_activation,
    categorical_pre_activation,
)

from .discrete_elbo import DiscreteELBO, _forked_rng
from .substitution import RowPlan, run_rows
from .util import base_distribution, discrete_site_info, learning_signals, left_pad

__all__ = ["ControlVariateMLP", "RELAX_ELBO", "REBAR_ELBO"]

_KINDS = ("rebar", "relax", "neural")


class ControlVariateMLP(torch.nn.Module):
    """The default learned control variate :math:`r_\\rho`: an MLP from the relaxed values of one
    plate cell of a discrete site (its event dims flattened) to a scalar.

    :param int in_features: the number of relaxed values per cell.
    :param tuple hidden_dims: hidden layer widths.
    :param activation: the hidden activation (a :class:`torch.nn.Module` class).
    """

    def __init__(self, in_features, hidden_dims=(200, 200), activation=torch.nn.ReLU):
        super().__init__()
        layers, width = [], in_features
        for hidden in hidden_dims:
            layers += [torch.nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, relaxed, cell_dims):
        """:param torch.Tensor relaxed: relaxed values, ``cell shape + event shape``.
        :param int cell_dims: how many leading dims are cell dims.
        :returns: one value per cell."""
        cell = relaxed.shape[:cell_dims]
        return self.net(relaxed.reshape(cell + (-1,))).squeeze(-1)


class RELAX_ELBO(DiscreteELBO):
    r"""RELAX (Grathwohl et al. 2018) and REBAR (Tucker et al. 2017) for Bernoulli,
    Categorical and OneHotCategorical guide sites, with a learned control variate :math:`c`.

    For a discrete site with logits :math:`\alpha` (per plate cell, see :class:`DiscreteELBO`),
    noise :math:`(u, v)` gives the coupling of
    :mod:`~pyro_relax.distributions.relaxed_conditioned`: the pre-activation :math:`z`, the
    sample :math:`b = H(z)` and :math:`\tilde z \sim p(z \mid b)`. The logits get

    .. math::

        \hat g_\alpha = \big[f(b) - c(\tilde z)\big] \nabla_\alpha \log q(b)
            + \nabla_\alpha c(z) - \nabla_\alpha c(\tilde z),

    with :math:`f` the cell's learning signal, fed into the guide as
    ``(g.detach() * logits).sum()``; model parameters and reparameterized sites keep the plain
    ELBO gradient, as in the reference code. ``control_variate`` chooses :math:`c`:

    - ``"rebar"``: :math:`c = \eta\, f(\sigma_\lambda(z))`, the learning signal with the relaxed
      value :math:`\sigma_\lambda(z)` (sigmoid or softmax at temperature :math:`\lambda`)
      substituted at the site: guide and model are re-run with it, and ``log q`` and the model's
      own prior at the site are the continuous extension of their log-mass
      (:math:`v\alpha - \mathrm{softplus}(\alpha)`, or :math:`\sum_k v_k \log\pi_k`);
    - ``"relax"`` (default): :math:`c = \eta\, f(\sigma_\lambda(z)) + r_\rho(\sigma_\lambda(z))`;
    - ``"neural"``: :math:`c = r_\rho(\sigma_\lambda(z))` alone, for programs that cannot take
      relaxed values (a Categorical site's value is an index); one model evaluation per step;
    - a :class:`torch.nn.Module`: ``"neural"`` with that module as :math:`r_\rho`.

    :math:`r_\rho` is, by default, one :class:`ControlVariateMLP` per site (built on first use)
    on the relaxed values of the cell. A user's module (``control_variate=module`` or
    ``network=module``) is called once per discrete site ``k`` as
    ``module(relaxed, *args, **kwargs)`` with ``relaxed`` an ordered dict: the sampled values of
    the discrete sites before ``k`` in the guide, then ``k``'s relaxed value last; it returns
    ``k``'s control variate, one value per plate cell. A cell's output may depend only on that
    cell's relaxed value (checked at a random cell on every call; a ``ValueError`` otherwise).

    **Several sites, dependent guides.** Each site ``k`` has its own pair of relaxed rows: the
    sites before it at their sample, ``k`` at :math:`\sigma_\lambda(z)` or
    :math:`\sigma_\lambda(\tilde z)`, the later guide sites drawn again from the same noise
    (discrete ones relaxed, :math:`\sigma_\lambda(\alpha' + \mathrm{logit}(u))` with their re-run
    logits :math:`\alpha'`), so that :math:`c` is a continuous function of :math:`z` and
    :math:`\hat g` is unbiased whatever the dependence; all ``2K`` rows of ``K`` sites run in
    one batched evaluation (``vectorize_alternatives`` as in :class:`ARSM_ELBO`). A step costs
    ``1 + 2K`` model evaluations (``1`` for ``"neural"``).

    **Training the control variate.** :math:`\eta` (init ``eta``), :math:`\lambda` (init
    ``temperature``, or the ``temperature`` of a
    :class:`~pyro_relax.distributions.RelaxedBernoulliConditioned` site) and :math:`\rho` are
    registered per site with :func:`pyro.param` / :func:`pyro.module` (``"{prefix}.{site}.eta"``,
    ``"{prefix}.{site}.temperature"``, ``"{prefix}.{site}.net"``), so SVI's optimizer steps them
    and the param store saves them. Their gradient is that of the squared estimate
    :math:`\sum \hat g_\alpha^2` over the per-cell logits (the single-sample variance objective
    up to a term that does not depend on them; the cheap choice: the reference VAE code squares
    the encoder-parameter gradient, which costs a double backward through the encoder), taken
    with ``create_graph=True`` and given to those parameters only: the guide's and model's
    gradients are exactly the estimator's. ``differentiable_loss`` carries it as a term whose
    value is zero and whose gradient vanishes for every other parameter.

    References:

    - G. Tucker, A. Mnih, C. J. Maddison, D. Lawson, J. Sohl-Dickstein, "REBAR: Low-variance,
      unbiased gradient estimates for discrete latent variable models", NeurIPS 2017.
    - W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud, "Backpropagation through the Void:
      Optimizing control variates for black-box gradient estimation", ICLR 2018.

    :param int num_particles: number of independent estimates to average.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param control_variate: ``"relax"`` (default), ``"rebar"``, ``"neural"`` or a module.
    :param float temperature: initial relaxation temperature :math:`\lambda` (REBAR's 0.5).
    :param float eta: initial scale :math:`\eta` of the relaxed learning signal (REBAR's 1).
    :param torch.nn.Module network: a user's :math:`r_\rho` for ``"relax"`` / ``"neural"``.
    :param tuple hidden_dims: hidden widths of the default :class:`ControlVariateMLP`.
    :param activation: its hidden activation class.
    :param str prefix: the prefix of the parameter names.
    :param vectorize_alternatives: as in :class:`ARSM_ELBO`.
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        strict_enumeration_warning=True,
        retain_graph=None,
        control_variate="relax",
        temperature=0.5,
        eta=1.0,
        network=None,
        hidden_dims=(200, 200),
        activation=torch.nn.ReLU,
        prefix="relax",
        vectorize_alternatives=None,
    ):
        if isinstance(control_variate, torch.nn.Module):
            if network is not None:
                raise ValueError("network: give the module once, as control_variate or network")
            control_variate, network = "neural", control_variate
        if control_variate not in _KINDS:
            raise ValueError(
                "control_variate: expected 'rebar', 'relax', 'neural' or a torch.nn.Module, "
                "got {!r}".format(control_variate)
            )
        if network is not None and not isinstance(network, torch.nn.Module):
            raise ValueError("network: expected a torch.nn.Module, got {!r}".format(network))
        if network is not None and control_variate == "rebar":
            raise ValueError("network: control_variate='rebar' has no network; use 'relax'")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not temperature > 0
        ):
            raise ValueError(
                "temperature: expected a positive number, got {!r}".format(temperature)
            )
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
            raise ValueError("eta: expected a number, got {!r}".format(eta))
        if not all(isinstance(h, numbers.Integral) and h > 0 for h in hidden_dims):
            raise ValueError(
                "hidden_dims: expected positive ints, got {!r}".format(hidden_dims)
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            retain_graph=retain_graph,
        )
        self.control_variate = control_variate
        self.temperature = float(temperature)
        self.eta = float(eta)
        self.network = network
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.activation = activation
        self.prefix = prefix
        self.vectorize_alternatives = self._check_vectorize_alternatives(vectorize_alternatives)
        self._nets = {}

    @property
    def _uses_rebar(self):
        return self.control_variate in ("rebar", "relax")

    @property
    def _uses_network(self):
        return self.control_variate in ("relax", "neural")

    # ------------------------------------------------------------------ sampling
    def _sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None:
            raise ValueError(
                "{} cannot handle guide site '{}' with distribution {}: supported "
                "non-reparameterizable sites are Bernoulli, Categorical and OneHotCategorical "
                "(also with .to_event and in plates); use ReinforceLOO_ELBO or VarGrad_ELBO "
                "for other distributions.".format(type(self).__name__, name, type(fn).__name__)
            )
        if info.kind == "categorical" and self._uses_rebar:
            raise ValueError(
                "control_variate={!r} cannot relax guide site '{}': a Categorical's value is an "
                "index, which has no relaxation. Use control_variate='neural', or a "
                "OneHotCategorical site.".format(self.control_variate, name)
            )
        logits = info.logits.detach()
        u = torch.rand_like(logits)
        v = torch.rand_like(logits)
        if info.kind == "bernoulli":
            value = (bernoulli_pre_activation(logits, u) > 0).to(logits.dtype)
        else:
            value = categorical_pre_activation(logits, u).argmax(-1)
            if info.kind == "one_hot":
                value = F.one_hot(value, logits.shape[-1]).to(logits.dtype)
        return value, (u, v)

    # ------------------------------------------------------------------ the estimator
    def _surrogate_elbo(self, particles, model, guide, args, kwargs):
        surrogate, variance = 0.0, 0.0
        self._surrogate_params = OrderedDict()
        for p in particles:
            surrogate = surrogate + self._pathwise_surrogate(p)
            if p.noise:
                if self._uses_rebar:
                    self._prepare_substitution(model, guide, args, kwargs)
                discrete, var = self._discrete_surrogate(p)
                surrogate = surrogate + discrete
                variance = variance + var
        surrogate = surrogate - self._variance_term(variance) * self.num_particles
        return surrogate / self.num_particles

    def _variance_term(self, variance):
        """A term of value 0 whose gradient is ``d variance / d(eta, lambda, rho)`` for the
        control variate's parameters and zero for every other parameter."""
        params = list(self._surrogate_params.values())
        if not (torch.is_tensor(variance) and variance.requires_grad and params):
            return 0.0
        grads = torch.autograd.grad(variance, params, allow_unused=True)
        term = sum((g.detach() * q).sum() for g, q in zip(grads, params) if g is not None)
        return term - term.detach() if torch.is_tensor(term) else 0.0

    def _site_params(self, name, site, cell_dims, relaxed_like):
        """The control variate's trainable state for site ``name``."""
        prefix = "{}.{}".format(self.prefix, name)
        fn = site["fn"]
        init = getattr(base_distribution(fn), "temperature", None)
        init = self.temperature if init is None else init
        dtype, device = relaxed_like.dtype, relaxed_like.device
        temperature = pyro.param(
            prefix + ".temperature",
            lambda: torch.as_tensor(init, dtype=dtype, device=device).clone(),
            constraint=constraints.positive,
        )
        # the variance gradient goes to the unconstrained leaves SVI's optimizer steps
        self._surrogate_params[prefix + ".temperature"] = temperature.unconstrained()
        eta = None
        if self._uses_rebar:
            eta = pyro.param(
                prefix + ".eta", lambda: torch.tensor(self.eta, dtype=dtype, device=device)
            )
            self._surrogate_params[prefix + ".eta"] = eta.unconstrained()
        net = None
        if self._uses_network:
            if self.network is not None:
                net = pyro.module(self.prefix + ".net", self.network, update_module_params=True)
            else:
                if name not in self._nets:
                    in_features = int(torch.Size(relaxed_like.shape[cell_dims:]).numel())
                    with _forked_rng():  # building it must not move the user's RNG stream
                        self._nets[name] = ControlVariateMLP(
                            in_features, self.hidden_dims, self.activation
                        ).to(device=device, dtype=dtype)
                net = pyro.module(prefix + ".net", self._nets[name], update_module_params=True)
            for pname, q in net.named_parameters():
                self._surrogate_params["{}.net.{}".format(prefix, pname)] = q
        return temperature, eta, net

    def _discrete_surrogate(self, p):
        nodes = p.guide_trace.nodes
        names = list(p.noise)
        infos = {n: discrete_site_info(n, nodes[n]["fn"]) for n in names}
        base = learning_signals(p.model_trace, p.guide_trace, names)
        sites = {}
        for n in names:
            info, value = infos[n], nodes[n]["value"]
            alpha = info.logits.detach().requires_grad_()
            u, v = p.noise[n]
            b = value
            if info.kind == "categorical":
                b = F.one_hot(value.long(), alpha.shape[-1]).to(alpha.dtype)
            pre, cond = _coupling(info.kind)
            z, z_tilde = pre(alpha, u), cond(alpha, b, v)
            # cell dims: the site's batch dims (event dims, and a categorical's classes, trail)
            trailing = info.event_dim + (1 if info.kind == "categorical" else 0)
            cell_dims = alpha.dim() - trailing
            temperature, eta, net = self._site_params(n, nodes[n], cell_dims, z)
            sites[n] = dict(
                info=info, alpha=alpha, b=b, z=z, z_tilde=z_tilde, u=u, trailing=trailing,
                cell_dims=cell_dims, temperature=temperature, eta=eta, net=net,
            )

        rebar = self._rebar_terms(p, names, sites) if self._uses_rebar else None

        surrogate, variance = 0.0, 0.0
        for i, n in enumerate(names):
            s = sites[n]
            alpha, b, trailing = s["alpha"], s["b"], s["trailing"]
            f = _cells(base[n], s["cell_dims"], alpha)
            c_z, c_zt = 0.0, 0.0
            grad_c = torch.zeros_like(alpha)
            if rebar is not None:
                f_z, f_zt, d_z, d_zt = rebar[n]
                c_z = c_z + s["eta"] * _cells(f_z, s["cell_dims"], alpha)
                c_zt = c_zt + s["eta"] * _cells(f_zt, s["cell_dims"], alpha)
                grad_c = grad_c + s["eta"] * (d_z - d_zt)
            if s["net"] is not None:
                r_z, r_zt = self._network_terms(p, names[:i], n, s)
                c_zt = c_zt + r_zt
                (d_r,) = torch.autograd.grad(
                    (r_z - r_zt).sum(), alpha, create_graph=True, allow_unused=True
                )
                if d_r is not None:
                    grad_c = grad_c + d_r
            if s["info"].kind == "bernoulli":
                score = b - torch.sigmoid(alpha.detach())
            else:
                score = b - torch.softmax(alpha.detach(), -1)
            advantage = f - c_zt
            advantage = advantage.reshape(advantage.shape + (1,) * trailing)
            g = advantage * score + grad_c
            surrogate = surrogate + (g.detach() * s["info"].logits).sum()
            variance = variance + (g / self.num_particles).pow(2).sum()
        return surrogate, variance

    def _network_terms(self, p, before, name, s):
        """``r(sigma(z))`` and ``r(sigma(z~))`` per cell for site ``name``."""
        out = []
        for pre in (s["z"], s["z_tilde"]):
            relaxed = _relax(s["info"].kind, pre, s["temperature"])
            if self.network is None:
                r = s["net"](relaxed, s["cell_dims"])
            else:
                inputs = OrderedDict(
                    (m, p.guide_trace.nodes[m]["value"].detach()) for m in before
                )
                inputs[name] = relaxed
                r = s["net"](inputs, *p.args, **p.kwargs)
                r = _check_user_output(r, relaxed, s["cell_dims"], name)
            out.append(r)
        return out

    def _rebar_terms(self, p, names, sites):
        """Per site: the relaxed learning signals ``f(sigma(z))``, ``f(sigma(z~))`` per cell and
        the gradients of the rows' totals with respect to the site's logits in its two rows."""
        order = [
            m
            for m, site in p.replay_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and m in names
        ]
        positions = {
            m: i
            for i, m in enumerate(
                m
                for m, site in p.replay_trace.nodes.items()
                if site["type"] == "sample" and not site_is_subsample(site)
            )
        }
        check = self._check_broadcast_now()
        num_rows = 2 * len(order) + (1 if check else 0)  # the last row: the sample itself
        device = sites[order[0]]["alpha"].device
        owner = torch.arange(num_rows, device=device) // 2  # the site index of each row
        first = torch.tensor(
            [positions[order[k]] if k < len(order) else len(positions) for k in owner.tolist()],
            device=device,
        )
        tilde = (torch.arange(num_rows, device=device) % 2) == 1
        index = {m: k for k, m in enumerate(order)}
        targets = []  # (name, row or None, logits tensor) recorded in the re-run
        logits_of = {}  # id(fn) -> the logits tensor used for its relaxed value

        def choose(name, fn, site, row):
            s, k = sites[name], index[name]
            alpha = discrete_site_info(name, fn).logits
            if not alpha.requires_grad:  # constant logits: a leaf to differentiate at
                alpha = alpha.detach().requires_grad_()
            logits_of[id(fn)] = alpha
            targets.append((name, row, alpha))
            u, v = p.noise[name]
            pre, cond = _coupling(s["info"].kind)
            temperature = s["temperature"]
            if row is not None:
                j = int(owner[row])
                if j < k:  # downstream of the row's site: relaxed, same noise
                    return _taint(_relax(s["info"].kind, pre(alpha, u), temperature))
                if j > k:  # upstream: the sample
                    return site["value"]
                z = cond(alpha, s["b"], v) if bool(tilde[row]) else pre(alpha, u)
                return _taint(_relax(s["info"].kind, z, temperature))
            u = left_pad(u, alpha.dim())
            v = left_pad(v, alpha.dim())
            b = left_pad(s["b"], alpha.dim())
            relaxed_z = _relax(s["info"].kind, pre(alpha, u), temperature)
            relaxed_zt = _relax(s["info"].kind, cond(alpha, b, v), temperature)
            shape = (num_rows,) + (1,) * (alpha.dim() - 1)
            own = (owner == k).reshape(shape)
            upstream = (owner > k).reshape(shape)
            value = torch.where(own & tilde.reshape(shape), relaxed_zt, relaxed_z)
            value = torch.where(upstream, left_pad(site["value"], alpha.dim()).to(value.dtype), value)
            return _taint(value)

        def log_mass(fn, value):
            return _relaxed_log_mass(fn, value, logits_of.get(id(fn)))

        def reset():
            targets.clear()
            logits_of.clear()

        plan = RowPlan(
            num_rows,
            first,
            order,
            choose=choose,
            log_prob={m: log_mass for m in order},
            sample_row=check,
            reset=reset,
        )
        try:
            # argument validation compares values; a relaxed value is checked by the taint
            with pyro.validation_enabled(False):
                signals, totals = run_rows(self, p, plan, grad=True, totals=True)
        except RelaxationError as error:
            raise ValueError(
                "{}(control_variate={!r}) evaluates model and guide at relaxed values of the "
                "discrete sites {} (each in its own evaluation, the later guide sites drawn "
                "from it), and they must be differentiable functions of those values; {} {}. "
                "Use control_variate='neural', which does not evaluate the program at relaxed "
                "values.".format(
                    type(self).__name__, self.control_variate, order,
                    str(error).strip().splitlines()[0], getattr(error, "where", ""),
                )
            ) from error
        signals = {m: _plain(x) for m, x in signals.items()}
        totals = _plain(totals)
        grads = torch.autograd.grad(
            totals.sum(), [t for _, _, t in targets], create_graph=True, allow_unused=True
        )
        grads = [None if g is None else _plain(g) for g in grads]
        out = {}
        for m in order:
            k = index[m]
            d = {}
            for (name, row, _), g in zip(targets, grads):
                if name != m:
                    continue
                if g is None:
                    g = torch.zeros_like(sites[m]["alpha"])
                if row is None:
                    d[2 * k] = g[2 * k]
                    d[2 * k + 1] = g[2 * k + 1]
                elif row in (2 * k, 2 * k + 1):
                    d[row] = g
            shape = sites[m]["alpha"].shape
            out[m] = (
                signals[m][2 * k],
                signals[m][2 * k + 1],
                d[2 * k].reshape(shape),
                d[2 * k + 1].reshape(shape),
            )
        return out


class REBAR_ELBO(RELAX_ELBO):
    r"""REBAR (Tucker et al. 2017): :class:`RELAX_ELBO` with ``control_variate="rebar"``,
    :math:`c = \eta\, f(\sigma_\lambda(z))` with a learned scale :math:`\eta` and temperature
    :math:`\lambda` (REBAR's defaults 1 and 0.5).

    :param int num_particles: number of independent estimates to average.
    :param int max_plate_nesting: bound on nested plates.
    :param bool vectorize_particles: run the particles as a tensor dimension.
    :param float temperature: initial relaxation temperature.
    :param float eta: initial scale.
    :param str prefix: the prefix of the parameter names.
    :param vectorize_alternatives: as in :class:`ARSM_ELBO`.
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        strict_enumeration_warning=True,
        retain_graph=None,
        temperature=0.5,
        eta=1.0,
        prefix="rebar",
        vectorize_alternatives=None,
    ):
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            retain_graph=retain_graph,
            control_variate="rebar",
            temperature=temperature,
            eta=eta,
            prefix=prefix,
            vectorize_alternatives=vectorize_alternatives,
        )


# ------------------------------------------------------------------ relaxed values in a program
class RelaxationError(ValueError):
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


def _is_tainted(x):
    return isinstance(x, _Relaxed)


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
        tainted = [a for a in _flat(args, kwargs) if _is_tainted(a)]
        if tainted:
            if name in _STEP_METHODS or name == "data" or _casts_to_step(name, args, kwargs):
                raise RelaxationError(
                    "`{}` applied to a relaxed value (or a value computed from one)".format(name)
                )
            with torch._C.DisableTorchFunctionSubclass():
                integral = any(not a.dtype.is_floating_point for a in tainted)
            if integral:
                raise RelaxationError(
                    "`{}` applied to indices computed from a relaxed value".format(name)
                )
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


# ------------------------------------------------------------------ helpers
def _coupling(kind):
    if kind == "bernoulli":
        return bernoulli_pre_activation, bernoulli_conditioned_pre_activation
    return categorical_pre_activation, categorical_conditioned_pre_activation


def _relax(kind, z, temperature):
    if kind == "bernoulli":
        return torch.sigmoid(z / temperature)
    return torch.softmax(z / temperature, -1)


def _cells(x, cell_dims, alpha):
    """A per-cell tensor (possibly left-padded with singleton dims) with the site's cell
    dims: shape broadcastable to ``alpha.shape[:cell_dims]``."""
    x = torch.as_tensor(x)
    while x.dim() > cell_dims:
        if x.shape[0] != 1:
            raise ValueError("internal: a per-cell tensor of shape {} for cells {}".format(
                tuple(x.shape), tuple(alpha.shape[:cell_dims])))
        x = x.squeeze(0)
    return x


def _relaxed_log_mass(fn, value, logits=None):
    """The continuous extension of a Bernoulli / OneHotCategorical log-mass at a relaxed
    value (exact at hard values), through ``Independent``, ``Expanded`` and ``Masked``
    wrappers. ``logits``: the full-shape logits to use (the tensor the value was made from)."""
    if isinstance(fn, Independent):
        lp = _relaxed_log_mass(fn.base_dist, value, logits)
        return sum_rightmost(lp, fn.reinterpreted_batch_ndims)
    name = type(fn).__name__
    if name == "MaskedDistribution":
        lp = _relaxed_log_mass(fn.base_dist, value, logits)
        mask = fn._mask
        return torch.where(mask, lp, lp.new_zeros(())) if torch.is_tensor(mask) else (
            lp if mask else lp.new_zeros(lp.shape))
    if name == "ExpandedDistribution":
        return _relaxed_log_mass(fn.base_dist, value, logits).expand(fn.batch_shape)
    if isinstance(fn, OneHotCategorical):
        alpha = fn.logits if logits is None else logits
        return (value * alpha.log_softmax(-1)).sum(-1)
    if isinstance(fn, Bernoulli):
        alpha = fn.logits if logits is None else logits
        return value * alpha - F.softplus(alpha)
    return fn.log_prob(value)


def _check_user_output(r, relaxed, cell_dims, name):
    """A user's control variate: one value per cell, depending on that cell only."""
    cell = relaxed.shape[:cell_dims]
    r = torch.as_tensor(r)
    try:
        shape = torch.broadcast_shapes(r.shape, cell)
    except RuntimeError:
        shape = None
    if shape != cell:
        raise ValueError(
            "network: the control variate for site '{}' has shape {}, but the site's "
            "per-cell learning signal has shape {}; return one value per plate cell".format(
                name, tuple(r.shape), tuple(cell)
            )
        )
    r = r.expand(cell)
    if r.numel() > 1 and r.requires_grad:
        flat = r.reshape(-1)
        idx = int(torch.randint(flat.numel(), ()))
        (grad,) = torch.autograd.grad(flat[idx], relaxed, retain_graph=True, allow_unused=True)
        if grad is not None:
            per_cell = grad.reshape(cell + (-1,)).abs().sum(-1).reshape(-1)
            per_cell[idx] = 0
            if bool((per_cell > 0).any()):
                raise ValueError(
                    "network: the control variate for site '{}' at one plate cell depends on "
                    "other cells' relaxed values (e.g. BatchNorm in training mode, or a sum "
                    "over the batch); each cell's output may use only that cell's values, or "
                    "the gradient would be biased".format(name)
                )
    return r
