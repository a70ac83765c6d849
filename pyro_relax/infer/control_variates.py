"""The trainable state of RELAX / REBAR's control variates, as one :class:`torch.nn.Module`."""

import re

import pyro
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

__all__ = ["ControlVariateMLP", "ControlVariates", "SiteControlVariate", "check_user_output"]


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


class SiteControlVariate(PyroModule):
    """One discrete site's control-variate state: the temperature :math:`\\lambda`
    (``"{prefix}.{site}.temperature"``, positive), the scale :math:`\\eta`
    (``"{prefix}.{site}.eta"``, REBAR's term only) and the site's own network
    (``"{prefix}.{site}.net"``, the default :class:`ControlVariateMLP`) as Pyro parameters:
    calling it registers them with :func:`pyro.param` / :func:`pyro.module`, so SVI's optimizer
    steps them and the param store saves (and, on resume, restores) them.

    :param str name: the Pyro name, ``"{prefix}.{site}"``.
    :param torch.Tensor temperature: the initial temperature.
    :param torch.Tensor eta: the initial scale, or None (no REBAR term).
    :param torch.nn.Module net: the site's own network, or None.
    """

    def __init__(self, name, temperature, eta=None, net=None):
        super().__init__(name)
        self.temperature = PyroParam(temperature, constraint=constraints.positive)
        if eta is not None:
            self.eta = PyroParam(eta)
        self.has_eta = eta is not None
        self.net = net

    def forward(self):
        """``(temperature, eta, net)`` (``eta``, ``net`` None where the site has none), the
        parameters registered in Pyro's param store."""
        temperature = self.temperature
        eta = self.eta if self.has_eta else None
        net = None
        if self.net is not None:
            net = pyro.module(self._pyro_name + ".net", self.net, update_module_params=True)
        return temperature, eta, net


class ControlVariates(torch.nn.Module):
    """Every site's control-variate state of one RELAX / REBAR ELBO, in one module: its
    :meth:`parameters`, ``state_dict`` and pickling hold all of it (each tensor once, a network
    shared by several sites included once), and the same tensors are Pyro parameters under
    the documented names (see :class:`SiteControlVariate`; a user's network shared by every
    site is ``"{prefix}.net"``).

    :param str prefix: the prefix of the Pyro names.
    :param torch.nn.Module network: a network shared by every site, or None.
    """

    def __init__(self, prefix, network=None):
        super().__init__()
        self.prefix = prefix
        self.sites = torch.nn.ModuleDict()
        self.network = network
        self._keys = {}

    def __contains__(self, name):
        return name in self._keys

    def names(self):
        """The sites that have state, in order of creation."""
        return list(self._keys)

    def add_site(self, name, temperature, eta=None, mlp=None, like=None):
        """Creates site ``name``'s state (see :class:`SiteControlVariate`).

        :param float temperature: the initial temperature.
        :param float eta: the initial scale, or None (no REBAR term).
        :param dict mlp: the arguments of the site's own :class:`ControlVariateMLP`, or None.
        :param torch.Tensor like: a tensor whose dtype and device the state takes.
        """
        new = {} if like is None else dict(dtype=like.dtype, device=like.device)
        net = None
        if mlp is not None:
            with torch.random.fork_rng(devices=_cuda_devices()):  # the user's RNG stream stays
                net = ControlVariateMLP(**mlp).to(**new)
        eta = None if eta is None else torch.tensor(float(eta), **new)
        key = _key(name, self.sites)
        self.sites[key] = SiteControlVariate("{}.{}".format(self.prefix, name),
                                             torch.tensor(float(temperature), **new), eta, net)
        self._keys[name] = key
        return self.sites[key]

    def site(self, name):
        """``(temperature, eta, net)`` of site ``name``, registered as Pyro parameters; ``net``
        is the shared network where there is one."""
        temperature, eta, net = self.sites[self._keys[name]]()
        if self.network is not None:
            net = pyro.module(self.prefix + ".net", self.network, update_module_params=True)
        return temperature, eta, net


def _cuda_devices():
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _key(name, taken):
    """A module key for site ``name`` (a site name may hold characters a key cannot)."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not key or key[0].isdigit():
        key = "site_" + key
    while key in taken or hasattr(torch.nn.ModuleDict, key):
        key = key + "_"
    return key


def check_user_output(r, relaxed, cell_dims, name):
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
                name, tuple(r.shape), tuple(cell)))
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
                    "the gradient would be biased".format(name))
    return r
