r"""RELAX and REBAR: control variates from the continuous relaxation, trained by their own
variance gradient (:class:`RELAX_ELBO`, :class:`REBAR_ELBO`).

**Training the control variate.** Every site's :math:`\eta` (init ``eta``), :math:`\lambda`
(init ``temperature``, or the ``temperature`` of a
:class:`~pyro_relax.distributions.RelaxedBernoulliConditioned` site) and network live in
one module, ``elbo.control_variates`` (:class:`~pyro_relax.infer.ControlVariates`), whose
tensors are also Pyro parameters ``"{prefix}.{site}.eta"``, ``"{prefix}.{site}.temperature"``,
``"{prefix}.{site}.net"`` (a shared user network: ``"{prefix}.net"``), so SVI's optimizer
steps them and the param store saves them; ``elbo(model, guide)`` is a module whose
``parameters()`` and ``state_dict()`` include them (:class:`~pyro_relax.infer.DiscreteELBOModule`).
Their gradient is that of the squared estimate :math:`\sum \hat g_\alpha^2 / \mathrm{scale}`
over the per-cell logits (the single-sample variance objective up to a term that does not
depend on them; the cheap choice: the reference VAE code squares the encoder-parameter
gradient, which costs a double backward through the encoder), taken with
``create_graph=True`` and given to those parameters only: the guide's and model's gradients
are exactly the estimator's. ``differentiable_loss`` carries it as a term whose value is zero
and whose gradient vanishes for every other parameter.

**Mini-batches and processes.** Like the learning signal, the network's output is multiplied
by the site's scale (a subsampled plate's ``N / B``, ``poutine.scale``), and the variance
objective divides each cell's square by it, so that a mini-batch's objective estimates the
full data's and, under DDP, the average over processes is the full batch's. Call
``elbo.setup(model, guide, *args)`` (:meth:`~pyro_relax.infer.DiscreteELBO.setup`) before
building the optimizer and wrapping the module in DDP: a control variate created later,
under ``torch.distributed``, is an error.
"""

import numbers
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .control_variates import ControlVariates, check_user_output
from .discrete_elbo import DiscreteELBO
from .relaxation import RebarCoupling, RelaxedRows, relax
from .surrogates import pathwise_surrogate, score_function_sites
from .util import base_distribution, cell_shape, discrete_site_info, expand_to_cells, learning_signals

__all__ = ["RELAX_ELBO", "REBAR_ELBO"]

_KINDS = ("rebar", "relax", "neural")


class RELAX_ELBO(DiscreteELBO):
    r"""RELAX (Grathwohl et al. 2018) and REBAR (Tucker et al. 2017) for Bernoulli,
    Categorical and OneHotCategorical guide sites, with a learned control variate :math:`c`.

    For a discrete site with logits :math:`\alpha` (per plate cell, see :class:`DiscreteELBO`),
    noise :math:`(u, v)` gives the coupling of
    :mod:`~pyro_relax.distributions.relaxed_conditioned` (:class:`~pyro_relax.infer.relaxation.RebarCoupling`):
    the pre-activation :math:`z`, the sample :math:`b = H(z)` and :math:`\tilde z \sim p(z \mid b)`.
    The logits get

    .. math::

        \hat g_\alpha = \big[f(b) - c(\tilde z)\big] \nabla_\alpha \log q(b)
            + \nabla_\alpha c(z) - \nabla_\alpha c(\tilde z),

    with :math:`f` the cell's learning signal, fed into the guide as
    ``(g.detach() * logits).sum()``; model parameters and reparameterized sites keep the plain
    ELBO gradient, as in the reference code. ``control_variate`` chooses :math:`c`:

    - ``"rebar"``: :math:`c = \eta\, f(\sigma_\lambda(z))`, the learning signal with the relaxed
      value :math:`\sigma_\lambda(z)` (sigmoid or softmax at temperature :math:`\lambda`)
      substituted at the site: guide and model are re-run with it (see
      :class:`~pyro_relax.infer.relaxation.RelaxedRows`), and ``log q`` and the model's own
      prior at the site are the continuous extension of their log-mass
      (:math:`v\alpha - \mathrm{softplus}(\alpha)`, or :math:`\sum_k v_k \log\pi_k`);
    - ``"relax"`` (default): :math:`c = \eta\, f(\sigma_\lambda(z)) + r_\rho(\sigma_\lambda(z))`;
    - ``"neural"``: :math:`c = r_\rho(\sigma_\lambda(z))` alone, for programs that cannot take
      relaxed values (a Categorical site's value is an index); one model evaluation per step;
    - a :class:`torch.nn.Module`: ``"neural"`` with that module as :math:`r_\rho`.

    :math:`r_\rho` is, by default, one :class:`ControlVariateMLP` per site (built on first use)
    on the relaxed values of the cell. A user's module (``control_variate=module`` or
    ``network=module``) is shared by every site and called once per discrete site ``k`` as
    ``module(relaxed, *args, **kwargs)`` with ``relaxed`` an ordered dict: the sampled values of
    the discrete sites before ``k`` in the guide, then ``k``'s relaxed value last; it returns
    ``k``'s control variate, one value per plate cell. A cell's output may depend only on that
    cell's relaxed value (checked at a random cell on every call; a ``ValueError`` otherwise).

    **Several sites, dependent guides.** Each site ``k`` has its own pair of relaxed rows (the
    sites before it at their sample, the later guide sites drawn again from the same noise), so
    :math:`\hat g` is unbiased whatever the dependence; all ``2K`` rows of ``K`` sites run in
    one batched evaluation of the :class:`~pyro_relax.infer.Alternatives` engine
    (``vectorize_alternatives`` as in :class:`ARSM_ELBO`). A step costs ``1 + 2K`` model
    evaluations (``1`` for ``"neural"``). The score part of a partially reparameterized site
    gets REINFORCE (:meth:`DiscreteELBO.score_function_surrogate`).

    Training the control variate, mini-batches, DDP: :mod:`pyro_relax.infer.relax`.
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
    :param RebarCoupling coupling: the coupling (default :class:`~pyro_relax.infer.relaxation.RebarCoupling`).
    :param alternatives: the :class:`~pyro_relax.infer.Alternatives` engine (default: new).
    """

    def __init__(self, num_particles=1, max_plate_nesting=float("inf"), vectorize_particles=False,
                 strict_enumeration_warning=True, retain_graph=None, control_variate="relax",
                 temperature=0.5, eta=1.0, network=None, hidden_dims=(200, 200),
                 activation=torch.nn.ReLU, prefix="relax", vectorize_alternatives=None,
                 coupling=None, alternatives=None):
        if isinstance(control_variate, torch.nn.Module):
            if network is not None:
                raise ValueError("network: give the module once, as control_variate or network")
            control_variate, network = "neural", control_variate
        _check_options(control_variate, network, temperature, eta, hidden_dims)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning,
                         retain_graph=retain_graph, vectorize_alternatives=vectorize_alternatives,
                         alternatives=alternatives)
        self.control_variate = control_variate
        self.temperature = float(temperature)
        self.eta = float(eta)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.activation = activation
        self.prefix = prefix
        self.coupling = RebarCoupling() if coupling is None else coupling
        #: every site's control-variate state (one module; see the class docstring)
        self.control_variates = ControlVariates(prefix, network)

    network = property(lambda self: self.control_variates.network,
                       doc="The user's network shared by every site (None: one per site).")

    uses_rebar = property(lambda self: self.control_variate in ("rebar", "relax"),
                          doc="Whether :math:`c` has REBAR's relaxed-signal term.")
    uses_network = property(lambda self: self.control_variate in ("relax", "neural"),
                            doc="Whether :math:`c` has a network term.")

    def trainable_state(self):
        return self.control_variates

    def create_state(self, particles):
        for p in particles:
            for name in p.noise:
                self._site(p, name)

    # ------------------------------------------------------------------ sampling
    def sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None:
            raise ValueError(
                "{} cannot handle guide site '{}' with distribution {}: supported "
                "non-reparameterizable sites are Bernoulli, Categorical and OneHotCategorical "
                "(also with .to_event and in plates); use ReinforceLOO_ELBO or VarGrad_ELBO "
                "for other distributions.".format(type(self).__name__, name, type(fn).__name__))
        if info.kind == "categorical" and self.uses_rebar:
            raise ValueError(
                "control_variate={!r} cannot relax guide site '{}': a Categorical's value is an "
                "index, which has no relaxation. Use control_variate='neural', or a "
                "OneHotCategorical site.".format(self.control_variate, name))
        logits = info.logits.detach()
        u, v = torch.rand_like(logits), torch.rand_like(logits)
        return self.coupling.sample(info.kind, logits, u), (u, v)

    # ------------------------------------------------------------------ the estimator
    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        surrogate, variance = 0.0, 0.0
        for p in particles:
            surrogate = surrogate + pathwise_surrogate(p)
            if p.noise:
                if self.uses_rebar:
                    self.require_max_plate_nesting(model, guide, args, kwargs)
                discrete, var = self._discrete_surrogate(p)
                surrogate = surrogate + discrete
                variance = variance + var
        rest = sorted({n for p in particles for n in score_function_sites(p.guide_trace)
                       if n not in p.noise})
        surrogate = surrogate + self.score_function_surrogate(particles, rest)
        surrogate = surrogate - self.variance_term(variance) * self.num_particles
        return surrogate / self.num_particles

    def variance_term(self, variance):
        """A term of value 0 whose gradient is ``d variance / d(eta, lambda, rho)`` for the
        control variate's parameters and zero for every other parameter."""
        params = list(self.control_variates.parameters())
        if not (torch.is_tensor(variance) and variance.requires_grad and params):
            return 0.0
        grads = torch.autograd.grad(variance, params, allow_unused=True)
        term = sum((g.detach() * q).sum() for g, q in zip(grads, params) if g is not None)
        return term - term.detach() if torch.is_tensor(term) else 0.0

    def site_state(self, name, info, cell_dims, like, fn):
        """``(temperature, eta, net)`` of site ``name`` (created on first use: the
        temperature from a relaxed site's own ``temperature`` or the ``temperature`` option)."""
        if name not in self.control_variates:
            self.refuse_late_state(name)
            init = getattr(base_distribution(fn), "temperature", None)
            mlp = None
            if self.uses_network and self.network is None:
                mlp = dict(in_features=int(torch.Size(like.shape[cell_dims:]).numel()),
                           hidden_dims=self.hidden_dims, activation=self.activation)
            self.control_variates.add_site(
                name, self.temperature if init is None else init,
                self.eta if self.uses_rebar else None, mlp, like)
        return self.control_variates.site(name)

    def _discrete_surrogate(self, p):
        names = list(p.noise)
        base = learning_signals(p.model_trace, p.guide_trace, names)
        sites = OrderedDict((n, self._site(p, n)) for n in names)
        rebar = self._relaxed_terms(p, sites) if self.uses_rebar else None
        surrogate, variance = 0.0, 0.0
        for i, (n, s) in enumerate(sites.items()):
            f = expand_to_cells(base[n], cell_shape(s["info"]))
            c_z, c_zt, grad_c = self.control_variate_terms(p, names[:i], n, s, rebar)
            score = s["b"] - (torch.sigmoid(s["alpha"].detach()) if s["info"].kind == "bernoulli"
                              else torch.softmax(s["alpha"].detach(), -1))
            advantage = f - c_zt
            g = advantage.reshape(advantage.shape + (1,) * s["trailing"]) * score + grad_c
            surrogate = surrogate + (g.detach() * s["info"].logits).sum()
            variance = variance + ((g / self.num_particles).pow(2) / s["scale"]).sum()
        return surrogate, variance

    def _site(self, p, name):
        """What the estimator needs of one discrete site of particle ``p``."""
        node = p.guide_trace.nodes[name]
        info = discrete_site_info(name, node["fn"])
        alpha = info.logits.detach().requires_grad_()
        u, v = p.noise[name]
        b = node["value"]
        if info.kind == "categorical":
            b = F.one_hot(b.long(), alpha.shape[-1]).to(alpha.dtype)
        kind = info.kind
        z, z_tilde = self.coupling.z(kind, alpha, u), self.coupling.z_tilde(kind, alpha, b, v)
        trailing = info.event_dim + (1 if kind == "categorical" else 0)
        cell_dims = alpha.dim() - trailing  # the site's batch dims (event dims, classes trail)
        temperature, eta, net = self.site_state(name, info, cell_dims, z, node["fn"])
        scale = torch.as_tensor(node["scale"], dtype=alpha.dtype, device=alpha.device)
        scale = expand_to_cells(scale, alpha.shape[:cell_dims])  # per cell
        return dict(info=info, alpha=alpha, b=b, z=z, z_tilde=z_tilde, trailing=trailing,
                    cell_dims=cell_dims, temperature=temperature, eta=eta, net=net,
                    scale=scale.reshape(scale.shape + (1,) * trailing))

    def control_variate_terms(self, p, before, name, s, rebar):
        """``(c(z), c(z~), d(c(z) - c(z~))/d alpha)`` for site ``name``, per cell: REBAR's
        relaxed-signal term (from ``rebar``) plus the network's."""
        cell = cell_shape(s["info"])
        c_z, c_zt, grad_c = 0.0, 0.0, torch.zeros_like(s["alpha"])
        if rebar is not None:
            f_z, f_zt, d_z, d_zt = rebar[name]
            c_z = c_z + s["eta"] * expand_to_cells(f_z, cell)
            c_zt = c_zt + s["eta"] * expand_to_cells(f_zt, cell)
            grad_c = grad_c + s["eta"] * (d_z - d_zt)
        if s["net"] is not None:
            scale = s["scale"].reshape(s["scale"].shape[: s["cell_dims"]])
            r_z, r_zt = (scale * self._network(p, before, name, s, pre)
                         for pre in (s["z"], s["z_tilde"]))
            c_z, c_zt = c_z + r_z, c_zt + r_zt
            (d_r,) = torch.autograd.grad((r_z - r_zt).sum(), s["alpha"], create_graph=True,
                                         allow_unused=True)
            if d_r is not None:
                grad_c = grad_c + d_r
        return c_z, c_zt, grad_c

    def _network(self, p, before, name, s, pre):
        """``r(sigma(pre))`` per cell for site ``name``."""
        relaxed = relax(s["info"].kind, pre, s["temperature"])
        if self.network is None:
            return s["net"](relaxed, s["cell_dims"])
        inputs = OrderedDict((m, p.guide_trace.nodes[m]["value"].detach()) for m in before)
        inputs[name] = relaxed
        r = s["net"](inputs, *p.args, **p.kwargs)
        return check_user_output(r, relaxed, s["cell_dims"], name)

    def _relaxed_terms(self, p, sites):
        """REBAR's relaxed signals and their logit gradients, from the engine's batched run
        of the relaxed rows (see :class:`~pyro_relax.infer.relaxation.RelaxedRows`)."""
        rows = RelaxedRows(p, sites, self.coupling, self.alternatives.sample_row_due())
        who = "{}(control_variate={!r})".format(type(self).__name__, self.control_variate)
        return rows.evaluate(self.alternatives, self.max_plate_nesting, who)


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

    def __init__(self, num_particles=1, max_plate_nesting=float("inf"), vectorize_particles=False,
                 strict_enumeration_warning=True, retain_graph=None, temperature=0.5, eta=1.0,
                 prefix="rebar", vectorize_alternatives=None, **kwargs):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning,
                         retain_graph=retain_graph, control_variate="rebar",
                         temperature=temperature, eta=eta, prefix=prefix,
                         vectorize_alternatives=vectorize_alternatives, **kwargs)


def _check_options(control_variate, network, temperature, eta, hidden_dims):
    if control_variate not in _KINDS:
        raise ValueError("control_variate: expected 'rebar', 'relax', 'neural' or a "
                         "torch.nn.Module, got {!r}".format(control_variate))
    if network is not None and not isinstance(network, torch.nn.Module):
        raise ValueError("network: expected a torch.nn.Module, got {!r}".format(network))
    if network is not None and control_variate == "rebar":
        raise ValueError("network: control_variate='rebar' has no network; use 'relax'")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError("temperature: expected a positive number, got {!r}".format(temperature))
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise ValueError("eta: expected a number, got {!r}".format(eta))
    if not all(isinstance(h, numbers.Integral) and h > 0 for h in hidden_dims):
        raise ValueError("hidden_dims: expected positive ints, got {!r}".format(hidden_dims))
