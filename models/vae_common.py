"""
Shared code of the discrete-latent VAE command lines (``bernoulli_vae``, ``categorical_vae``,
``sigmoid_belief_net``, ``ss_vae``) and of ``benchmarks/estimators.py``: the estimator
choices, the per-parameter optimizer, the training loop (tqdm bar, running ELBO, resumable
checkpoints), the evaluation (single-sample ELBO and importance-weighted bound on dynamically
binarized images with a fixed seed) and the files written to ``--out``.

Estimators (``--estimator``), each applied to the guide's discrete sites:

=================  ==========================================================================
``trace``          :class:`pyro.infer.Trace_ELBO`: plain REINFORCE (``--num-particles`` S, 1)
``tracegraph``     :class:`pyro.infer.TraceGraph_ELBO` with the decaying-average baseline
                   ``infer={"baseline": {"use_decaying_avg_baseline": True}}`` on the discrete
                   guide sites (set only for this estimator)
``rloo``           :class:`~pyro_relax.infer.ReinforceLOO_ELBO` (S >= 2, default 2)
``vargrad``        :class:`~pyro_relax.infer.VarGrad_ELBO` (S >= 2, default 2)
``arm``            :class:`~pyro_relax.infer.ARSM_ELBO` ``(bernoulli="arm")``: Bernoulli latents
``disarm``         :class:`~pyro_relax.infer.ARSM_ELBO` ``(bernoulli="disarm")``: Bernoulli latents
``arsm``           :class:`~pyro_relax.infer.ARSM_ELBO` (``categorical="arsm"``, the default):
                   categorical latents, all swaps (1 + the distinct swap pseudo actions)
``ar``             ``ARSM_ELBO(categorical="ar")``: AR, no extra evaluation
``ars``            ``ARSM_ELBO(categorical="ars")``: one random reference (at most C - 1
                   extra evaluations per latent)
``ars+``           ``ARSM_ELBO(categorical="ars+")``: ARS, Rao-Blackwellized
``arsm+``          ``ARSM_ELBO(categorical="arsm+")``: ARSM, Rao-Blackwellized
``disarm-iw``      ``ARSM_ELBO(categorical="disarm-iw", num_pairs=M)``: coupled (Dong,
                   Mnih & Tucker 2021), importance-weighted stick-breaking; ``--num-pairs``
                   M antithetic pairs (default 1): 2M samples, 2M - 1 extra evaluations
``disarm-sb``      ``ARSM_ELBO(categorical="disarm-sb", num_pairs=M)``: DisARM on the
                   stick-breaking tree's binary decisions
``disarm-tree``    ``ARSM_ELBO(categorical="disarm-tree", num_pairs=M)``: DisARM on a
                   balanced binary tree
``rebar``          :class:`~pyro_relax.infer.REBAR_ELBO`
``relax``          :class:`~pyro_relax.infer.RELAX_ELBO` with its default control-variate network
``st``             the biased straight-through Gumbel baseline: the guide samples Pyro's
                   :class:`~pyro.distributions.RelaxedBernoulliStraightThrough` /
                   :class:`~pyro.distributions.RelaxedOneHotCategoricalStraightThrough`
                   (``--temperature``, default 1) and :class:`pyro.infer.Trace_ELBO` trains it;
                   the model's prior scores the quantized (hard) value
``enum``           :class:`pyro.infer.TraceEnum_ELBO` with the discrete site enumerated
                   (``config_enumerate``, ``max_plate_nesting=1``): ``ss_vae`` only
=================  ==========================================================================

Every ELBO is built with ``max_plate_nesting=1`` and, with S > 1 particles,
``vectorize_particles=True``. The ARM family (``ar`` ... ``arsm+``) and the coupled estimators
(``disarm-iw``, ``disarm-sb``, ``disarm-tree``) apply to categorical latents only.

**``st``.** Pyro's straight-through distributions score the *relaxed* sample with the Concrete
density, while the model's prior (by default, ``--st-prior discrete``, as in Pyro's own
straight-through usage) scores the quantized value with the discrete mass, so
``Trace_ELBO``'s loss is not the discrete ELBO (with 20 x 10 categorical latents it is off by
about a hundred nats). The train ELBO reported for ``st`` is the discrete ELBO at the same hard
sample, ``-loss + log q_concrete(soft) - log q(hard)`` (``+ log p(hard) - log p_concrete(soft)``
with ``--st-prior relaxed``, where the prior is Pyro's straight-through distribution too and
the training objective is the relaxed ELBO with a Concrete KL), the differences being recorded
by the ``pyro.sample`` statements at no extra model evaluation. Evaluation always uses the
discrete guide (``Bernoulli`` / ``OneHotCategorical`` with the trained logits) and the discrete
prior, whatever the training estimator.

**Timing.** ms/step is the training time per step of the session, the first step (lazy
imports, checks) excluded; evaluation is not included.

**Optimizer.** One :class:`pyro.optim.PyroOptim` whose constructor builds a torch optimizer
per parameter from that parameter's arguments: ``{"optimizer": "sgd", "lr": ...}`` gives
:class:`torch.optim.SGD`, anything else :class:`torch.optim.Adam`. ``PyroOptim`` accepts any
callable as its constructor and makes one optimizer per parameter, so a per-parameter callable
can switch the optimizer type; SVI, ``PyroOptim.save`` / ``load`` work unchanged. The
Bernoulli VAE's ``--protocol disarm`` uses it for SGD on the prior logits; the control variate
of RELAX / REBAR (parameters ``relax.*`` / ``rebar.*``) gets Adam with ``--cv-learning-rate``.

**Files in ``--out DIR``.** ``curve.csv`` (step, running mean of the train ELBO over the last
1000 steps, training wall time in s), ``curve.png``, ``metrics.json``, and the checkpoint:
``params.pt`` (:meth:`pyro.get_param_store().save <pyro.params.param_store.ParamStoreDict.save>`),
``optim.pt`` (:meth:`pyro.optim.PyroOptim.save`) and ``state.pt`` (step, RNG state, the ELBO
window and curve), written every ``--save-every`` steps and at the end. ``--resume`` loads
them and continues from the saved step up to ``--num-steps`` (a total, not an increment).
ELBOs are per datapoint, in nats.
"""

import argparse
import collections
import csv
import json
import math
import os
import sys
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from pyro.optim import PyroOptim

from models import cli
from models.data import TRAIN_SIZE, binarize, load_binarized_fashion_mnist
from pyro_relax.infer import ARSM_ELBO, REBAR_ELBO, RELAX_ELBO, ReinforceLOO_ELBO, VarGrad_ELBO

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is optional
    tqdm = None

__all__ = [
    "BERNOULLI_ESTIMATORS",
    "ARSM_CATEGORICAL",
    "CATEGORICAL_ESTIMATORS",
    "COUPLED",
    "ESTIMATORS",
    "DiscreteVAE",
    "Experiment",
    "add_arguments",
    "evaluate_bound",
    "log_weights",
    "make_elbo",
    "make_optimizer",
    "run",
]

#: estimator name -> what it is (shown by ``--help``)
ESTIMATORS = collections.OrderedDict(
    trace="Trace_ELBO (REINFORCE)",
    tracegraph="TraceGraph_ELBO + decaying-average baseline",
    rloo="ReinforceLOO_ELBO",
    vargrad="VarGrad_ELBO",
    arm="ARSM_ELBO(bernoulli='arm')",
    disarm="ARSM_ELBO(bernoulli='disarm')",
    ar="ARSM_ELBO(categorical='ar') (AR, no extra evaluation)",
    ars="ARSM_ELBO(categorical='ars') (ARS, one random reference)",
    arsm="ARSM_ELBO (categorical: ARSM, all swaps)",
    **{
        "ars+": "ARSM_ELBO(categorical='ars+') (ARS, Rao-Blackwellized)",
        "arsm+": "ARSM_ELBO(categorical='arsm+') (ARSM, Rao-Blackwellized)",
        "disarm-iw": "ARSM_ELBO(categorical='disarm-iw') (coupled, importance-weighted; "
        "--num-pairs)",
        "disarm-sb": "ARSM_ELBO(categorical='disarm-sb') (coupled, DisARM on the "
        "stick-breaking tree; --num-pairs)",
        "disarm-tree": "ARSM_ELBO(categorical='disarm-tree') (coupled, DisARM on a balanced "
        "tree; --num-pairs)",
    },
    rebar="REBAR_ELBO",
    relax="RELAX_ELBO",
    st="straight-through Gumbel + Trace_ELBO (biased)",
    enum="TraceEnum_ELBO, label enumerated",
)
BERNOULLI_ESTIMATORS = (
    "trace", "tracegraph", "rloo", "vargrad", "arm", "disarm", "rebar", "relax", "st",
)
#: the ARM family and the coupled estimators, built as ``ARSM_ELBO(categorical=NAME)``
ARSM_CATEGORICAL = (
    "ar", "ars", "arsm", "ars+", "arsm+", "disarm-iw", "disarm-sb", "disarm-tree",
)
#: the coupled estimators, which take ``--num-pairs``
COUPLED = ("disarm-iw", "disarm-sb", "disarm-tree")
CATEGORICAL_ESTIMATORS = (
    "trace", "tracegraph", "rloo", "vargrad", *ARSM_CATEGORICAL, "rebar", "relax", "st",
)
#: the estimators that take ``--num-particles``, and their default
PARTICLES = {"trace": 1, "tracegraph": 1, "rloo": 2, "vargrad": 2, "st": 1, "enum": 1}
#: the estimators that take ``--temperature``, and their default
TEMPERATURES = {"st": 1.0, "rebar": 0.5, "relax": 0.5}
#: the window of the running train ELBO
WINDOW = 1000
#: fixed seeds of the evaluation's binarization and latent samples (the same for every run)
EVAL_SEEDS = {"valid": 1, "test": 2, "test_iw": 3}


# ------------------------------------------------------------------ models
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


class DiscreteVAE(torch.nn.Module):
    """Base class of the models: the estimator-dependent guide statement for discrete sites
    (:meth:`discrete`), the default training step and the hooks the runner needs.

    Subclasses define ``model(x)`` and ``guide(x)`` (both under ``pyro.plate("data", ...,
    dim=-1)``, broadcasting over extra leading dims), :attr:`latent_kind`,
    :attr:`estimators` and :meth:`encoder_modules`.

    :param torch.Tensor train_mean: per-pixel mean intensity of the training images (the
        encoder sees ``x - train_mean``).
    """

    #: ``"bernoulli"`` or ``"categorical"``: the family of the discrete guide sites
    latent_kind = "bernoulli"
    #: the estimators that apply
    estimators = BERNOULLI_ESTIMATORS
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


# ------------------------------------------------------------------ estimators and optimizer
def make_elbo(estimator, num_particles=None, temperature=None, num_pairs=None):
    """The ELBO of ``estimator`` (see the module docstring), with ``max_plate_nesting=1``;
    ``num_pairs`` (default 1) applies to the coupled estimators only."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    S = PARTICLES.get(estimator, 1) if num_particles is None else num_particles
    vec = dict(num_particles=S, vectorize_particles=S > 1, max_plate_nesting=1)
    if estimator in ("trace", "st"):
        return Trace_ELBO(**vec)
    if estimator == "tracegraph":
        return TraceGraph_ELBO(**vec)
    if estimator == "enum":
        return TraceEnum_ELBO(**vec)
    if estimator == "rloo":
        return ReinforceLOO_ELBO(**vec)
    if estimator == "vargrad":
        return VarGrad_ELBO(**vec)
    if estimator in ("arm", "disarm"):
        return ARSM_ELBO(bernoulli=estimator, max_plate_nesting=1)
    if estimator in ARSM_CATEGORICAL:
        pairs = {"num_pairs": num_pairs or 1} if estimator in COUPLED else {}
        return ARSM_ELBO(categorical=estimator, max_plate_nesting=1, **pairs)
    temperature = TEMPERATURES[estimator] if temperature is None else temperature
    cls = REBAR_ELBO if estimator == "rebar" else RELAX_ELBO
    return cls(max_plate_nesting=1, temperature=temperature)


def model_evaluations(elbo, steps):
    """Model evaluations per step: our ELBOs count them (``num_model_evaluations``); Pyro's
    ELBOs evaluate the model once per particle (``TraceEnum_ELBO`` once per particle too, the
    enumerated values batched in that one call)."""
    count = getattr(elbo, "num_model_evaluations", None)
    if count is None:
        return float(elbo.num_particles)
    return count / max(1, steps)


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
    ``cv_learning_rate`` for RELAX / REBAR's control variate (``relax.*``, ``rebar.*``) and
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
        if name.startswith(("relax.", "rebar.")):
            return {"optimizer": "adam", "lr": cv_learning_rate}
        return {"optimizer": "adam", "lr": learning_rate}

    return PyroOptim(_per_parameter_optimizer, optim_args)


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def log_weights(vae, x, num_samples, *args):
    """``log p(x, z) - log q(z | x)`` for ``num_samples`` draws of the (discrete) guide per
    datapoint, as a ``(num_samples, len(x))`` tensor (the draws batched in a plate at dim -2)."""
    with pyro.plate("samples", num_samples, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, *args)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
            x, *args
        )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_w = torch.zeros(num_samples, len(x), dtype=x.dtype, device=x.device)
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            log_w = log_w + site["log_prob"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            log_w = log_w - site["log_prob"]
    return log_w


def _forked_rng(device):
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def evaluate_bound(vae, images, num_samples=1, seed=0, rows=10000):
    """The ``num_samples``-sample importance-weighted bound (``num_samples=1``: the ELBO)
    per datapoint, averaged over ``images`` binarized with a fixed ``seed``; the random state
    of the caller is left untouched.

    :param int rows: ``num_samples x images`` evaluated at once (memory).
    """
    if len(images) == 0:
        return float("nan")
    previous = vae.estimator, vae.num_particles, vae.temperature, vae.st_prior
    vae.configure("eval")
    chunk = max(1, rows // num_samples)
    total = 0.0
    try:
        with _forked_rng(images.device):
            torch.manual_seed(seed)
            generator = torch.Generator(device=images.device).manual_seed(seed)
            for start in range(0, len(images), chunk):
                x = binarize(images[start : start + chunk], generator)
                log_w = log_weights(vae, x, num_samples)
                total += (torch.logsumexp(log_w, 0) - math.log(num_samples)).sum().item()
    finally:
        vae.configure(*previous)
    return total / len(images)


# ------------------------------------------------------------------ arguments
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where the help text already says where the default comes from."""

    def _get_help_string(self, action):
        if "default:" in (action.help or "") or "default from" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser, estimators, defaults):
    """Adds the options shared by the VAE CLIs.

    :param argparse.ArgumentParser parser: from :func:`models.cli.make_parser`.
    :param tuple estimators: the estimators that apply to the model.
    :param dict defaults: defaults of ``num_steps``, ``batch_size``, ``learning_rate``,
        ``latents``, ``hidden`` (left out: no ``--hidden``) and ``eval_size`` (``None`` where a ``--protocol`` sets them,
        with the help text in ``defaults["<name>_help"]``); ``latents_text`` and
        ``hidden_text`` replace the help of ``--latents`` and ``--hidden``.
    """
    parser.formatter_class = HelpFormatter

    def default_help(name, text):
        extra = defaults.get(name + "_help")
        return f"{text} (default: {extra})" if extra else text

    listing = "; ".join(f"{name}: {ESTIMATORS[name]}" for name in estimators)
    parser.add_argument(
        "--estimator", default="rloo", choices=list(ESTIMATORS), metavar="NAME",
        help=f"gradient estimator for the discrete latents, one of: {listing}",
    )
    parser.add_argument("--num-steps", type=int, default=defaults["num_steps"],
                        help=default_help("num_steps", "total optimization steps (with "
                                          "--resume: the total to reach)"))
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                        help=default_help("batch_size", "images per step"))
    parser.add_argument("--learning-rate", type=float, default=defaults["learning_rate"],
                        help=default_help("learning_rate", "Adam learning rate of encoder and "
                                          "decoder"))
    parser.add_argument("--cv-learning-rate", type=float, default=None,
                        help="Adam learning rate of RELAX/REBAR's control variate (default: "
                        "the --learning-rate)")
    parser.add_argument("--num-particles", type=int, default=None,
                        help="particles per step for trace, tracegraph, st, enum (default: 1) "
                        "and rloo, vargrad (default: 2); an error for the other estimators, "
                        "whose cost is fixed (arm/disarm: 2 model evaluations, ar: 1, "
                        "ars/ars+/arsm/arsm+: 1 + the distinct swaps, disarm-iw/-sb/-tree: "
                        "2 x --num-pairs, rebar/relax: 3 per discrete site)")
    parser.add_argument("--num-pairs", type=int, default=None,
                        help="antithetic pairs per categorical site for disarm-iw, disarm-sb, "
                        "disarm-tree (default: 1): 2M samples, 2M - 1 extra model evaluations "
                        "(fewer when samples coincide); an error for the other estimators")
    parser.add_argument("--temperature", type=float, default=None,
                        help="st: the Gumbel-softmax temperature (default: 1.0); rebar/relax: "
                        "the initial relaxation temperature, then learned (default: 0.5); an "
                        "error for the other estimators")
    parser.add_argument("--st-prior", default="discrete", choices=["discrete", "relaxed"],
                        help="st only: the model's prior at the discrete latents scores the "
                        "quantized value with the discrete distribution (discrete, as in "
                        "Pyro's straight-through usage), or the relaxed value with Pyro's "
                        "straight-through distribution at the same temperature (relaxed: a "
                        "Concrete KL, Maddison et al. 2017)")
    parser.add_argument("--latents", type=int, default=defaults["latents"],
                        help=default_help("latents", defaults.get(
                            "latents_text", "latent units per stochastic layer")))
    if "hidden" in defaults:
        parser.add_argument("--hidden", type=int, default=defaults["hidden"],
                            help=default_help("hidden", defaults.get(
                                "hidden_text", "hidden units per deterministic layer")))
    cli.add_data_argument(parser)
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE,
                        help="the first N training images train, the rest are the validation "
                        "set (the DisARM code's split)")
    parser.add_argument("--eval-size", type=int, default=defaults["eval_size"],
                        help=default_help("eval_size", "evaluate on the first N images of the "
                                          "validation and test sets; 0: all"))
    parser.add_argument("--iw-samples", type=int, default=100,
                        help="samples of the importance-weighted bound on the test set")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for curve.csv, curve.png, metrics.json and the checkpoint "
                        "(params.pt, optim.pt, state.pt); nothing is written without it")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out, up to --num-steps")
    parser.add_argument("--save-every", type=int, default=10000,
                        help="checkpoint every N steps (and at the end) when --out is given")
    parser.add_argument("--log-every", type=int, default=10,
                        help="add a row to the curve every N steps")
    parser.add_argument("--no-progress", action="store_true",
                        help="no tqdm progress bar")
    cli.add_common_arguments(parser)
    return parser


def check_estimator_options(args, name, estimators):
    """Exits with a one-line message if the estimator does not apply to the model or an
    option does not apply to the estimator. Returns ``(num_particles, temperature)``."""
    if args.estimator not in estimators:
        raise SystemExit(
            f"error: --estimator {args.estimator} does not apply to {name}; estimators that "
            f"apply: {', '.join(estimators)}"
        )
    if args.num_particles is not None:
        if args.estimator not in PARTICLES:
            raise SystemExit(
                f"error: --num-particles applies to "
                f"{', '.join(e for e in estimators if e in PARTICLES)}, not to "
                f"--estimator {args.estimator} (its number of model evaluations per step is "
                "fixed by the estimator)"
            )
        least = 2 if args.estimator in ("rloo", "vargrad") else 1
        if args.num_particles < least:
            raise SystemExit(
                f"error: --num-particles must be >= {least} for --estimator {args.estimator}, "
                f"got {args.num_particles}"
            )
    if args.temperature is not None:
        if args.estimator not in TEMPERATURES:
            raise SystemExit(
                f"error: --temperature applies to "
                f"{', '.join(e for e in estimators if e in TEMPERATURES)}, not to "
                f"--estimator {args.estimator}"
            )
        if not args.temperature > 0:
            raise SystemExit(f"error: --temperature must be positive, got {args.temperature}")
    num_pairs = getattr(args, "num_pairs", None)
    if num_pairs is not None:
        if args.estimator not in COUPLED:
            raise SystemExit(
                f"error: --num-pairs applies to "
                f"{', '.join(e for e in estimators if e in COUPLED) or 'no estimator of this model'}"
                f", not to --estimator {args.estimator}"
            )
        if num_pairs < 1:
            raise SystemExit(f"error: --num-pairs must be >= 1, got {num_pairs}")
    if args.st_prior != "discrete" and args.estimator != "st":
        raise SystemExit(f"error: --st-prior applies to --estimator st, not {args.estimator}")
    if args.resume and not args.out:
        raise SystemExit("error: --resume needs --out DIR (the folder holding the checkpoint)")
    for option in ("num_steps", "batch_size", "iw_samples", "log_every"):
        value = getattr(args, option)
        if value is None or value < (0 if option == "num_steps" else 1):
            raise SystemExit(f"error: --{option.replace('_', '-')} must be positive, got {value}")
    num_particles = args.num_particles
    if num_particles is None and args.estimator in PARTICLES:
        num_particles = PARTICLES[args.estimator]
    temperature = args.temperature
    if temperature is None and args.estimator in TEMPERATURES:
        temperature = TEMPERATURES[args.estimator]
    return num_particles or 1, temperature


# ------------------------------------------------------------------ the experiment
class Experiment:
    """A model, its data, estimator, optimizer and training state.

    :param str name: the model's CLI name.
    :param build: ``build(args, data) -> DiscreteVAE``.
    :param args: parsed options (see :func:`add_arguments`).
    :param data: :class:`~models.data.BinarizedSplits` on the device.
    :param int num_particles: from :func:`check_estimator_options`.
    :param float temperature: likewise.
    """

    def __init__(self, name, build, args, data, num_particles, temperature):
        self.name, self.args, self.data = name, args, data
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()
        self.vae = build(args, data).to(data.train.device)
        self.vae.configure(args.estimator, num_particles, temperature, args.st_prior)
        self.elbo = make_elbo(args.estimator, num_particles, temperature,
                              getattr(args, "num_pairs", None))
        self.optim = make_optimizer(args.learning_rate, args.cv_learning_rate, self.vae.sgd_params)
        self.svis = self.vae.make_svis(self.elbo, self.optim)
        self.step = 0
        self.window = collections.deque(maxlen=WINDOW)
        self.curve = []  # (step, running train ELBO, training wall time)
        self.wall = 0.0  # training seconds, all sessions
        self.session_steps = 0
        self.session_seconds = 0.0

    # -------------------------------------------------------------- training
    def train(self, num_steps, progress=True, callback=None, out=None):
        """Trains up to ``num_steps`` (total). ``callback(experiment)`` is called before the
        first step and after every step (e.g. to save checkpoints)."""
        args = self.args
        bar = None
        if progress and tqdm is not None and self.step < num_steps:
            bar = tqdm(total=num_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       desc=f"{self.name} {args.estimator}", mininterval=0.5)
        if callback is not None:
            callback(self)
        evals0 = getattr(self.elbo, "num_model_evaluations", 0)
        try:
            while self.step < num_steps:
                start = time.perf_counter()
                value = self.vae.training_step(self.svis, self.data, args.batch_size)
                seconds = time.perf_counter() - start
                self.wall += seconds
                self.session_steps += 1
                if self.session_steps > 1:  # the first step warms up (lazy imports, checks)
                    self.session_seconds += seconds
                self.step += 1
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"{self.name} --estimator {args.estimator}: the ELBO estimate is "
                        f"{value} at step {self.step}"
                    )
                self.window.append(value)
                if self.step % args.log_every == 0 or self.step == num_steps:
                    running = sum(self.window) / len(self.window)
                    self.curve.append((self.step, running, self.wall))
                    if bar is not None:
                        bar.set_postfix_str(f"ELBO {running:.2f}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if callback is not None:
                    callback(self)
                if out and args.save_every and self.step % args.save_every == 0:
                    self.save(out)
        finally:
            if bar is not None:
                bar.close()
        self.session_evaluations = (
            getattr(self.elbo, "num_model_evaluations", 0) - evals0
        )
        return self

    def train_elbo(self):
        """Mean of the last (up to 1000) steps' ELBO estimates, per datapoint."""
        return sum(self.window) / len(self.window) if self.window else float("nan")

    def ms_per_step(self):
        """Training milliseconds per step in this session, the first (warm-up) step excluded."""
        timed = self.session_steps - 1
        return 1e3 * self.session_seconds / timed if timed > 0 else float("nan")

    def model_evaluations_per_step(self):
        if not self.session_steps:
            return float("nan")
        if hasattr(self.elbo, "num_model_evaluations"):
            return self.session_evaluations / self.session_steps
        return model_evaluations(self.elbo, self.session_steps)

    # -------------------------------------------------------------- evaluation
    def evaluate(self):
        """Train ELBO, validation and test ELBO (one sample) and the test
        ``--iw-samples``-sample bound, per datapoint, plus the model's own metrics."""
        args, data = self.args, self.data
        size = args.eval_size or None
        valid, test = data.valid[:size], data.test[:size]
        metrics = collections.OrderedDict(
            model=self.name,
            estimator=args.estimator,
            steps=self.step,
            train_elbo=self.train_elbo(),
            train_elbo_steps=len(self.window),
            valid_elbo=evaluate_bound(self.vae, valid, 1, EVAL_SEEDS["valid"]),
            test_elbo=evaluate_bound(self.vae, test, 1, EVAL_SEEDS["test"]),
            test_iw_bound=evaluate_bound(self.vae, test, args.iw_samples, EVAL_SEEDS["test_iw"]),
            iw_samples=args.iw_samples,
            valid_images=len(valid),
            test_images=len(test),
            ms_per_step=self.ms_per_step(),
            model_evaluations_per_step=self.model_evaluations_per_step(),
        )
        with _forked_rng(data.train.device), torch.no_grad():
            metrics.update(self.vae.extra_metrics(data, size))
        return metrics

    # -------------------------------------------------------------- checkpoints
    def save(self, out):
        """Writes the checkpoint and the curve to ``out``."""
        os.makedirs(out, exist_ok=True)
        pyro.get_param_store().save(os.path.join(out, "params.pt"))
        self.optim.save(os.path.join(out, "optim.pt"))
        rng = pyro.util.get_rng_state()
        if torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            dict(model=self.name, estimator=self.args.estimator, step=self.step,
                 window=list(self.window), curve=self.curve, wall=self.wall, rng=rng),
            os.path.join(out, "state.pt"),
        )
        self.write_curve(out)

    def load(self, out):
        """Loads the checkpoint in ``out`` (see :meth:`save`)."""
        path = os.path.join(out, "state.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"error: --resume: no checkpoint in {os.path.abspath(out)} "
                             "(state.pt is missing)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if (state["model"], state["estimator"]) != (self.name, self.args.estimator):
            raise SystemExit(
                f"error: --resume: {os.path.abspath(out)} holds a {state['model']} run with "
                f"--estimator {state['estimator']}, not {self.name} with --estimator "
                f"{self.args.estimator}"
            )
        device = self.data.train.device
        pyro.get_param_store().load(os.path.join(out, "params.pt"), map_location=device)
        self.optim.load(os.path.join(out, "optim.pt"), map_location=device)
        self.step, self.wall = state["step"], state["wall"]
        self.window = collections.deque(state["window"], maxlen=WINDOW)
        self.curve = [tuple(row) for row in state["curve"]]
        rng = state["rng"]
        pyro.util.set_rng_state(rng)
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        return self

    def write_curve(self, out):
        with open(os.path.join(out, "curve.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "train_elbo", "wall_time_s"])
            for step, value, wall in self.curve:
                writer.writerow([step, f"{value:.4f}", f"{wall:.3f}"])

    def write_outputs(self, out, metrics):
        """The checkpoint, ``curve.csv``, ``curve.png`` and ``metrics.json``."""
        self.save(out)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("# matplotlib is not installed: no curve.png", flush=True)
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        if self.curve:
            steps, values, _ = zip(*self.curve)
            ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_ylabel(f"train ELBO (nats, running mean of {WINDOW} steps)")
        ax.set_title(f"{self.name}, {self.args.estimator}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "curve.png"), dpi=100)
        plt.close(fig)


def load_data(args):
    """Checks ``--data-dir`` (printing the folder) and loads the binarized splits."""
    folder = cli.check_data_dir(args.data_dir, ("train", "test"))
    try:
        return load_binarized_fashion_mnist(folder, args.train_size, device=args.device)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def run(args, name, build, estimators, describe=""):
    """The whole CLI: checks, data, training (resumed with ``--resume``), evaluation, printed
    summary and ``--out`` files. Returns the metrics dict (see :meth:`Experiment.evaluate`)
    with ``curve`` (the rows of ``curve.csv``) added."""
    num_particles, temperature = check_estimator_options(args, name, estimators)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.device = device
    data = load_data(args)
    experiment = Experiment(name, build, args, data, num_particles, temperature)
    if args.resume:
        experiment.load(args.out)
        print(f"# resuming {os.path.abspath(args.out)} at step {experiment.step}", flush=True)
    particles = f" particles={num_particles}" if args.estimator in PARTICLES else ""
    if args.estimator in COUPLED:
        particles = f" num_pairs={getattr(args, 'num_pairs', None) or 1}"
    temp = f" temperature={temperature}" if temperature is not None else ""
    if args.estimator == "st":
        temp += f" st_prior={args.st_prior}"
    print(
        f"# {name}{describe}: estimator={args.estimator}{particles}{temp} "
        f"steps={args.num_steps} batch={args.batch_size} lr={args.learning_rate} "
        f"train={len(data.train)} valid={len(data.valid)} test={len(data.test)} "
        f"pixels={data.pixels} seed={args.seed} device={device} threads={args.threads} "
        f"| torch {torch.__version__} pyro {pyro.__version__}",
        flush=True,
    )
    experiment.train(args.num_steps, progress=not args.no_progress, out=args.out)
    metrics = experiment.evaluate()
    print_metrics(metrics)
    if args.out:
        experiment.write_outputs(args.out, metrics)
        print(f"# wrote {os.path.abspath(args.out)}", flush=True)
    metrics["curve"] = list(experiment.curve)
    return metrics


def print_metrics(metrics):
    """The summary lines of a run (ELBOs per datapoint, nats)."""
    lines = [
        f"train ELBO (mean of the last {metrics['train_elbo_steps']} steps): "
        f"{metrics['train_elbo']:.2f}",
        f"validation ELBO (1 sample, {metrics['valid_images']} images): "
        f"{metrics['valid_elbo']:.2f}",
        f"test ELBO (1 sample, {metrics['test_images']} images): {metrics['test_elbo']:.2f}",
        f"test {metrics['iw_samples']}-sample bound ({metrics['test_images']} images): "
        f"{metrics['test_iw_bound']:.2f}",
        f"ms/step: {metrics['ms_per_step']:.2f}, model evaluations/step: "
        f"{metrics['model_evaluations_per_step']:.1f}",
    ]
    for key in ("valid_accuracy", "test_accuracy"):
        if key in metrics:
            lines.append(f"{key.replace('_', ' ')} of q(y|x): {metrics[key]:.4f}")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
