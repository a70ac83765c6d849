"""The models' optimizer: one :class:`pyro.optim.PyroOptim` whose constructor builds a torch
optimizer per parameter from that parameter's arguments: ``{"optimizer": "sgd", "lr": ...}``
gives :class:`torch.optim.SGD`, anything else :class:`torch.optim.Adam`. ``PyroOptim`` accepts
any callable as its constructor and makes one optimizer per parameter, so a per-parameter
callable can switch the optimizer type; SVI, ``PyroOptim.save`` / ``load`` work unchanged. The
Bernoulli VAE's ``--protocol disarm`` uses it for SGD on the prior logits; the control variate
of RELAX / REBAR, Double CV and RODEO (parameters ``relax.*``, ``rebar.*``, ``double_cv.*``,
``rodeo.*``) gets Adam with ``--cv-learning-rate``."""

import torch
from pyro.optim import PyroOptim

__all__ = ["CONTROL_VARIATE_PREFIXES", "make_optimizer"]

#: the Pyro name prefixes of the estimators' own control-variate parameters
CONTROL_VARIATE_PREFIXES = ("relax.", "rebar.", "double_cv.", "rodeo.")


def _per_parameter_optimizer(params, optimizer="adam", **kwargs):
    """``PyroOptim``'s constructor: a torch optimizer of the type the parameter's args name."""
    if optimizer == "sgd":
        return torch.optim.SGD(params, **kwargs)
    if optimizer == "adam":
        return torch.optim.Adam(params, **kwargs)
    raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {optimizer!r}")


def make_optimizer(learning_rate, cv_learning_rate=None, sgd_params=None):
    """One :class:`pyro.optim.PyroOptim` with a per-parameter optimizer type: SGD with the
    given learning rate for the parameters named in ``sgd_params``, Adam with
    ``cv_learning_rate`` for the estimators' control variates (:data:`CONTROL_VARIATE_PREFIXES`) and
    Adam with ``learning_rate`` for every other parameter.

    :param float learning_rate: Adam's learning rate for encoder and decoder.
    :param float cv_learning_rate: Adam's learning rate for the control variate (default:
        ``learning_rate``).
    :param dict sgd_params: parameter name -> SGD learning rate.
    """
    sgd_params = dict(sgd_params or {})
    cv_learning_rate = learning_rate if cv_learning_rate is None else cv_learning_rate

    def optim_args(name):
        if name in sgd_params:
            return {"optimizer": "sgd", "lr": sgd_params[name]}
        if name.startswith(CONTROL_VARIATE_PREFIXES):
            return {"optimizer": "adam", "lr": cv_learning_rate}
        return {"optimizer": "adam", "lr": learning_rate}

    return PyroOptim(_per_parameter_optimizer, optim_args)
