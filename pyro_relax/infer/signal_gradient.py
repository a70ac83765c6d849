"""The shared core of the estimators whose control variates use the gradient of the learning
signal at the samples (:class:`~pyro_relax.infer.DoubleCV_ELBO`,
:class:`~pyro_relax.infer.RODEO_ELBO`)."""

import pyro
import torch
from pyro.nn import PyroModule, PyroParam

from .control_variates import _key
from .discrete_elbo import DiscreteELBO
from .surrogates import pathwise_surrogate, score_function_sites
from .util import discrete_site_info, expand_to_cells, learning_signals

__all__ = ["SignalGradientELBO", "SiteParameters"]


class SiteParameters(PyroModule):
    """One Bernoulli site's control-variate parameters: scalars (``"{prefix}.{site}.alpha"``,
    ...) initialised to 0 and an optional network (``"{prefix}.{site}.net"``), registered with
    :func:`pyro.param` / :func:`pyro.module` when called, so SVI's optimizer steps them and the
    param store saves them.

    :param str name: the Pyro name, ``"{prefix}.{site}"``.
    :param tuple scalars: the scalar parameters' names.
    :param torch.nn.Module net: the network, or None.
    :param torch.Tensor like: a tensor whose dtype and device the parameters take.
    """

    def __init__(self, name, scalars, net=None, like=None):
        super().__init__(name)
        self.scalars = tuple(scalars)
        for s in self.scalars:
            setattr(self, s, PyroParam(like.new_zeros(())))
        self.net = net

    def forward(self):
        """``({scalar: tensor}, net)``, registered in Pyro's param store."""
        values = {s: getattr(self, s) for s in self.scalars}
        net = None
        if self.net is not None:
            net = pyro.module(self._pyro_name + ".net", self.net, update_module_params=True)
        return values, net


class SignalGradientELBO(DiscreteELBO):
    r"""Base class of the estimators for Bernoulli guide sites whose control variates use
    :math:`f(b_j)` and :math:`\nabla_b f(b_j)` at the other particles' samples (``f`` the
    site's per-plate-cell learning signal, its gradient taken with ``b`` relaxed to reals: one
    backward pass through the model, no extra evaluation). The particles run as a tensor
    dimension (``vectorize_particles=True``, required). Each Bernoulli site gets
    :meth:`logit_gradient`, an estimate of the gradient of the ELBO with respect to its
    logits per particle; its control variates' parameters (:meth:`site_parameters`, one
    module :attr:`control_variates` that ``elbo(model, guide)`` registers) are trained online
    by the gradient of the estimate's squared norm, as the papers do (summed over datapoints
    and divided by the plate's scale, so that every mini-batch size estimates the same
    objective). A Bernoulli site whose value the estimator did not draw (one replayed or
    conditioned from outside) gets leave-one-out REINFORCE. Every other guide site
    with a score-function term gets REINFORCE with the leave-one-out baseline.

    A subclass defines :attr:`prefix`, :attr:`scalars`, :meth:`make_net` and
    :meth:`logit_gradient`.
    """

    min_particles = 2
    #: the Pyro name prefix of the control variates' parameters
    prefix = "cv"
    #: the scalar parameters per site
    scalars = ()

    def __init__(self, num_particles=2, max_plate_nesting=float("inf"),
                 vectorize_particles=True, **kwargs):
        if not vectorize_particles:
            raise ValueError("vectorize_particles: {} builds its control variates across the "
                             "K particles as a tensor dimension, so it needs "
                             "vectorize_particles=True".format(type(self).__name__))
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=True, **kwargs)
        #: every site's control-variate parameters (one module)
        self.control_variates = torch.nn.ModuleDict()
        self._keys = {}

    def trainable_state(self):
        return self.control_variates

    def create_state(self, particles):
        for p in particles:
            for name in self._bernoulli_sites(p):
                self.site_parameters(name, p.guide_trace.nodes[name]["value"])

    def make_net(self):
        """The network of a site's control variate (a new one per site), or None."""
        return None

    def site_parameters(self, name, like):
        """``({scalar: tensor}, net)`` of site ``name``, created on first use."""
        if name not in self._keys:
            self.refuse_late_state(name)
            with torch.random.fork_rng(devices=[]):  # the user's random stream stays
                net = self.make_net()
            if net is not None:
                net = net.to(dtype=like.dtype, device=like.device)
            key = _key(name, self.control_variates)
            self.control_variates[key] = SiteParameters(
                "{}.{}".format(self.prefix, name), self.scalars, net, like.detach())
            self._keys[name] = key
        return self.control_variates[self._keys[name]]()

    # ------------------------------------------------------------------ sampling
    def sample_site(self, name, fn):
        info = discrete_site_info(name, fn)
        if info is None or info.kind != "bernoulli":
            return None
        # a leaf that requires grad: the learning signal's gradient at the sample
        return fn.sample().detach().requires_grad_(), None

    def _bernoulli_sites(self, p):
        return [n for n in score_function_sites(p.guide_trace)
                if getattr(discrete_site_info(n, p.guide_trace.nodes[n]["fn"]), "kind", None)
                == "bernoulli" and p.guide_trace.nodes[n]["value"].requires_grad]

    # ------------------------------------------------------------------ the estimator
    def logit_gradient(self, name, f, g, b, sigma, params):
        """The estimate of the ELBO's gradient with respect to the logits, per particle.

        :param str name: the site.
        :param torch.Tensor f: learning signals, ``[K, C]`` (``C`` plate cells).
        :param torch.Tensor g: their gradients at the samples, ``[K, C, D]`` (``D`` the
            site's event elements).
        :param torch.Tensor b: the samples, ``[K, C, D]``.
        :param torch.Tensor sigma: their probabilities, ``[K, C, D]``.
        :param tuple params: :meth:`site_parameters`' ``(scalars, net)``.
        :returns: ``[K, C, D]``, averaged over ``K`` by the caller; differentiable in the
            control variates' parameters only.
        """
        raise NotImplementedError

    def surrogate_elbo(self, particles, model, guide, args, kwargs):
        (p,) = particles
        K = self.num_particles
        surrogate, variance = pathwise_surrogate(p), 0.0
        names = self._bernoulli_sites(p)
        signals = learning_signals(p.model_trace, p.guide_trace, names, detach=False)
        for name in names:
            node = p.guide_trace.nodes[name]
            info = discrete_site_info(name, node["fn"])
            b = node["value"]
            cell = info.logits.shape[: info.logits.dim() - info.event_dim]
            f = expand_to_cells(signals[name], cell)
            # None where the signal does not depend on b differentiably (.item(), a Python
            # branch): the control variates then use g = 0, still unbiased (any g_j that is a
            # function of sample j alone keeps them so)
            (g,) = torch.autograd.grad(f.sum(), b, retain_graph=True, allow_unused=True)
            g = torch.zeros_like(b) if g is None else g
            logits = info.logits
            dim = logits.dim() - self.max_plate_nesting - info.event_dim  # the particle dim

            def flat(x):  # [K, C, D]
                x = x.expand(logits.shape).movedim(dim, 0)
                return x.reshape(K, -1, max(1, int(torch.Size(logits.shape[len(cell):]).numel())))

            estimate = self.logit_gradient(
                name, flat(f.detach().reshape(cell + (1,) * info.event_dim)).mean(-1),
                flat(g.detach()), flat(b.detach()), flat(torch.sigmoid(logits.detach())),
                self.site_parameters(name, b))
            surrogate = surrogate + (estimate.detach() * flat(logits)).sum()
            # the squared estimate over the scale (as RELAX_ELBO): a sum over datapoints, so
            # that mini-batches of any size (and DDP's average) estimate the same objective
            scale = torch.as_tensor(node["scale"], dtype=b.dtype, device=b.device)
            scale = flat(expand_to_cells(scale, cell).reshape(cell + (1,) * info.event_dim))
            variance = variance + (estimate.mean(0).pow(2) / scale[0]).sum()
        others = [n for n in score_function_sites(p.guide_trace) if n not in names]
        surrogate = surrogate + self.score_function_surrogate(particles, others)
        # the control variates descend on the estimate's squared norm (value 0)
        variance_term = variance - variance.detach() if torch.is_tensor(variance) else 0.0
        return surrogate / K - variance_term
