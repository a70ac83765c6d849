"""The base class of the discrete-latent VAE models and the small network helpers."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI

from models.data import binarize

__all__ = ["DiscreteVAE", "LearnedLogits", "broadcast_cat", "mlp"]


def broadcast_cat(*tensors):
    """Concatenates along the last dim after broadcasting the leading dims (particles,
    alternatives and enumeration add leading dims to some inputs only)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


def mlp(sizes, activation=lambda: torch.nn.LeakyReLU(0.3)):
    """``Linear`` layers of the given widths with ``activation`` between them (none after
    the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(activation())
        layers.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*layers)


class LearnedLogits(torch.nn.Module):
    """Learned prior logits as a module parameter (``logits``), registered with
    :func:`pyro.module` by the model so that SVI's param store, an optimizer over the module's
    ``parameters()`` (Lightning, DDP) and checkpoints all see the same tensor.

    :param int size: how many logits.
    """

    def __init__(self, size):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(size))


class DiscreteVAE(torch.nn.Module):
    """Base class of the models: the estimator-dependent guide statement for discrete sites
    (:meth:`discrete`), the default training step and the hooks the runner needs.

    Subclasses define ``model(x, size=None)`` and ``guide(x, size=None)`` (both under
    :meth:`data_plate`, broadcasting over extra leading dims), :attr:`latent_kind`,
    :attr:`estimators` and :meth:`encoder_modules`.

    :param torch.Tensor train_mean: per-pixel mean intensity of the training images (the
        encoder sees ``x - train_mean``).
    """

    #: ``"bernoulli"`` or ``"categorical"``: the family of the discrete guide sites
    latent_kind = "bernoulli"
    #: the estimators that apply (see :mod:`models.vae.estimators`)
    estimators = ()
    #: names of parameters trained by SGD, with their learning rate (see :func:`make_optimizer`)
    sgd_params = {}

    def __init__(self, train_mean):
        super().__init__()
        self.register_buffer("train_mean", train_mean.detach().clone())
        self.configure("eval")

    def configure(self, estimator, num_particles=1, temperature=None, st_prior="discrete"):
        """Sets how :meth:`discrete` and :meth:`prior` sample: ``"eval"`` (or any estimator but
        ``st`` / ``tracegraph``) the plain discrete distribution; ``"tracegraph"`` adds the
        decaying-average baseline; ``"st"`` the straight-through relaxation at
        ``temperature`` in the guide, and in the model's prior too if ``st_prior`` is
        ``"relaxed"``."""
        self.estimator = estimator
        self.num_particles = num_particles
        self.temperature = temperature
        self.st_prior = st_prior
        self.st_gap = 0.0

    @staticmethod
    def data_plate(x, size=None):
        """The plate of the images ``x``: unscaled (``size`` None: the batch is the data), or a
        mini-batch of a data set of ``size`` images, scaled by ``size / len(x)`` (so that the
        loss estimates the whole data set's, and DDP's average over processes is the global
        batch's)."""
        if size is None:
            return pyro.plate("data", x.shape[0], dim=-1)
        index = torch.arange(x.shape[0], device=x.device)
        return pyro.plate("data", size, subsample=index, dim=-1)

    def _exact(self, logits):
        if self.latent_kind == "bernoulli":
            return dist.Bernoulli(logits=logits)
        return dist.OneHotCategorical(logits=logits)

    def _straight_through(self, logits):
        temperature = torch.as_tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        if self.latent_kind == "bernoulli":
            return dist.RelaxedBernoulliStraightThrough(temperature, logits=logits)
        # validate_args=False: in float32 at temperatures below ~1, Pyro's straight-through
        # categorical clamps its soft sample off the simplex by more than the Simplex check's
        # 1e-6, and its own log_prob then raises; the prior still validates the hard value.
        return dist.RelaxedOneHotCategoricalStraightThrough(
            temperature, logits=logits, validate_args=False
        )

    def prior(self, name, logits, event_dims=1, obs=None):
        """The model's ``pyro.sample`` statement for a discrete latent with ``logits``: the
        plain discrete distribution, which scores the straight-through (quantized) value of
        ``st`` as well; with ``st`` and ``st_prior="relaxed"`` Pyro's straight-through
        distribution at the same temperature, which scores the relaxed value (a Concrete KL,
        Maddison et al. 2017)."""
        exact = self._exact(logits)
        if self.estimator != "st" or self.st_prior != "relaxed" or obs is not None:
            return pyro.sample(name, exact.to_event(event_dims) if event_dims else exact, obs=obs)
        relaxed = self._straight_through(logits)
        value = pyro.sample(name, relaxed.to_event(event_dims) if event_dims else relaxed)
        with torch.no_grad():  # log p(hard) - log p_concrete(soft): see the module docstring
            self.st_gap = self.st_gap + (exact.log_prob(value) - relaxed.log_prob(value)).sum()
        return value

    def discrete(self, name, logits, event_dims=1):
        """The guide's ``pyro.sample`` statement for a discrete site with ``logits``
        (Bernoulli logits, or categorical logits with the classes last)."""
        exact = self._exact(logits)
        infer = {}
        if self.estimator == "tracegraph":
            infer["baseline"] = {"use_decaying_avg_baseline": True}
        if self.estimator != "st":
            fn = exact.to_event(event_dims) if event_dims else exact
            return pyro.sample(name, fn, infer=infer)
        relaxed = self._straight_through(logits)
        value = pyro.sample(name, relaxed.to_event(event_dims) if event_dims else relaxed)
        with torch.no_grad():  # log q_concrete(soft) - log q(hard): see the module docstring
            self.st_gap = self.st_gap + (relaxed.log_prob(value) - exact.log_prob(value)).sum()
        return value

    def encoder_modules(self):
        """The guide's networks (their parameters are "the encoder parameters")."""
        raise NotImplementedError

    def encoder_parameters(self):
        return [p for m in self.encoder_modules() for p in m.parameters()]

    def make_svis(self, elbo, optim):
        """The SVI objects of a training step."""
        return {"elbo": SVI(self.model, self.guide, optim, elbo)}

    def random_batch(self, data, batch_size):
        """The arguments of the (unsupervised) objective for a random, dynamically binarized
        mini-batch of training images (drawn with replacement across steps)."""
        train = data.train
        return (binarize(train[torch.randint(len(train), (batch_size,), device=train.device)]),)

    def training_step(self, svis, data, batch_size):
        """One step on a dynamically binarized mini-batch; returns the ELBO estimate per
        datapoint (for ``st``, the discrete ELBO at the hard sample)."""
        return self._elbo_step(svis["elbo"], batch_size, *self.random_batch(data, batch_size))

    def _elbo_step(self, svi, batch_size, *args):
        self.st_gap = 0.0
        loss = svi.step(*args)
        return (-loss + float(self.st_gap) / self.num_particles) / batch_size

    def gradient_batch(self, data, batch_size, generator):
        """The fixed arguments at which gradients are drawn (``benchmarks/estimators.py``)."""
        return (binarize(data.train[:batch_size], generator),)

    def unsupervised_svi(self, svis):
        return svis["elbo"]

    def extra_metrics(self, data, eval_size):
        """Model-specific metrics after training (e.g. a classifier's accuracy)."""
        return {}
