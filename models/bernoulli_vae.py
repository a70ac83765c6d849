"""
A VAE with 200 Bernoulli latents on dynamically binarized Fashion-MNIST, trained with any of
the discrete-latent estimators (the DisARM / RODEO benchmark).

Model: ``z ~ Bernoulli(sigmoid(prior_logits))`` (200 units, learnable logits, or fixed uniform
with ``--protocol rodeo``), ``x ~ Bernoulli(logits=decoder(2z - 1))``; guide
``z ~ Bernoulli(logits=encoder(x - train_mean))``. ``--arch linear``: encoder 784-200 and
decoder 200-784; ``--arch nonlinear``: 784-200-200-200 with LeakyReLU(0.3), decoder mirrored.
The decoder's output bias starts at ``logit(clip(train_mean, 0.001, 0.999))``. As in the DisARM
reference code, the first 50,000 training images train, the other 10,000 validate, and every
batch is binarized afresh (``pixel ~ Bernoulli(intensity)``).

Protocols (``--protocol``) set the defaults of the options left out:

======== ======== ===== ============ =================================== ========= ==========
protocol  arch    batch Adam lr      prior logits                        steps     eval size
======== ======== ===== ============ =================================== ========= ==========
quick    linear    50   1e-3         learned, SGD 1e-2                   2000      1000
disarm   linear    50   1e-4         learned, SGD 1e-2                   1,000,000 all
rodeo    nonlinear 100  3e-4         fixed uniform                       1,000,000 all
======== ======== ===== ============ =================================== ========= ==========

``disarm`` is the DisARM code's (google-research ``disarm/binary``: genmo_lr = infnet_lr =
1e-4 with Adam, prior_lr = 1e-2 with SGD, batch 50, demeaned input, output bias from the
training mean); ``rodeo`` is the RODEO paper's Fashion-MNIST setting (App. C.1: nonlinear,
batch 100, Adam 3e-4, uniform prior). ``quick`` (the default) is a short run for a 2-core CPU.
RELAX's control variate is the default :class:`~pyro_relax.infer.RELAX_ELBO` network
(Adam with ``--cv-learning-rate``; the DisARM code uses Adam(1e-4, beta1 0.999) and a
137-unit network on ``(x, z)``). The train ELBO is single-sample (the DisARM code's train
metric), the test bound uses 100 samples.

Examples::

    python -m models.bernoulli_vae --estimator disarm
    python -m models.bernoulli_vae --protocol disarm --estimator relax --num-steps 100000 --out runs/relax
    python -m models.bernoulli_vae --protocol disarm --estimator relax --num-steps 200000 --out runs/relax --resume

References:

[1] Z. Dong, A. Mnih, G. Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
    Variables", NeurIPS 2020.
[2] J. Shi, Y. Zhou, J. Hwang, M. Titsias, L. Mackey, "Gradient Estimation with Discrete
    Stein Operators", NeurIPS 2022.
"""

import pyro
import pyro.distributions as dist
import torch

from models import cli
from models.vae import BERNOULLI_ESTIMATORS, DiscreteVAE, LearnedLogits, add_arguments, mlp, run

__all__ = ["PROTOCOLS", "BernoulliVAE", "build", "main", "make_parser", "apply_protocol"]

NAME = "bernoulli_vae"

#: protocol -> defaults of the options the user left out
PROTOCOLS = {
    "quick": dict(arch="linear", batch_size=50, learning_rate=1e-3, prior="learned",
                  prior_learning_rate=1e-2, num_steps=2000, eval_size=1000),
    "disarm": dict(arch="linear", batch_size=50, learning_rate=1e-4, prior="learned",
                   prior_learning_rate=1e-2, num_steps=1000000, eval_size=0),
    "rodeo": dict(arch="nonlinear", batch_size=100, learning_rate=3e-4, prior="uniform",
                  prior_learning_rate=None, cv_learning_rate=1e-3, num_steps=1000000,
                  eval_size=0),
}


class BernoulliVAE(DiscreteVAE):
    """One stochastic layer of Bernoulli latents.

    :param int pixels: pixels per image.
    :param int latents: Bernoulli latents.
    :param str arch: ``"linear"`` or ``"nonlinear"``.
    :param int hidden: hidden units of the nonlinear networks.
    :param torch.Tensor train_mean: per-pixel training mean.
    :param torch.Tensor output_bias: the decoder's initial output bias.
    :param bool learn_prior: learn the prior logits (else a uniform prior).
    :param float prior_sgd: SGD learning rate of the prior logits (``None``: Adam, as the
        other parameters).
    """

    latent_kind = "bernoulli"
    estimators = BERNOULLI_ESTIMATORS

    def __init__(self, pixels, latents, arch, hidden, train_mean, output_bias, learn_prior=True,
                 prior_sgd=None):
        super().__init__(train_mean)
        if arch == "linear":
            self.encoder = torch.nn.Linear(pixels, latents)
            self.decoder = torch.nn.Linear(latents, pixels)
        elif arch == "nonlinear":
            self.encoder = mlp([pixels, hidden, hidden, latents])
            self.decoder = mlp([latents, hidden, hidden, pixels])
        else:
            raise ValueError(f"arch: expected 'linear' or 'nonlinear', got {arch!r}")
        last = self.decoder if arch == "linear" else self.decoder[-1]
        with torch.no_grad():
            last.bias.copy_(output_bias)
        self.latents = latents
        self.learn_prior = learn_prior
        self.learned_prior = LearnedLogits(latents) if learn_prior else None
        # PyroOptim names a module parameter "module.attribute" (the store: "prior$$$logits")
        self.sgd_params = {"prior.logits": prior_sgd} if learn_prior and prior_sgd else {}

    def prior_logits(self):
        if not self.learn_prior:
            return self.train_mean.new_zeros(self.latents)
        return pyro.module("prior", self.learned_prior, update_module_params=True).logits

    def model(self, x, size=None):
        pyro.module("decoder", self.decoder, update_module_params=True)
        logits = self.prior_logits()
        with self.data_plate(x, size):
            z = self.prior("z", logits)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(2 * z - 1)).to_event(1), obs=x)

    def guide(self, x, size=None):
        pyro.module("encoder", self.encoder, update_module_params=True)
        with self.data_plate(x, size):
            self.discrete("z", self.encoder(x - self.train_mean))

    def encoder_modules(self):
        return [self.encoder]


def apply_protocol(args):
    """Fills the options left out (``None``) from ``PROTOCOLS[args.protocol]``."""
    for key, value in PROTOCOLS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build(args, data):
    apply_protocol(args)
    return BernoulliVAE(
        data.pixels, args.latents, args.arch, args.hidden, data.train_mean, data.output_bias(),
        learn_prior=args.prior == "learned", prior_sgd=args.prior_learning_rate,
    )


def main(args):
    """Train and evaluate (see :func:`models.run`); returns the metrics dict."""
    apply_protocol(args)
    return run(args, NAME, build, BernoulliVAE.estimators,
                          describe=f" ({args.arch}, protocol {args.protocol})")


def _protocol_help(key):
    return ", ".join(f"{name} {p[key] if p[key] is not None else '-'}" for name, p in PROTOCOLS.items())


def make_parser():
    parser = cli.make_parser(
        NAME,
        "Train a VAE with 200 Bernoulli latents on dynamically binarized Fashion-MNIST with one "
        "of the discrete-latent gradient estimators, then print the train ELBO, the validation "
        "and test ELBO and the test importance-weighted bound (nats per image). Reads the idx "
        "files from --data-dir; nothing is downloaded.",
    )
    parser.add_argument("--protocol", default="quick", choices=sorted(PROTOCOLS),
                        help="preset of the options below that are left out: quick (short, "
                        "for 2 CPU cores), disarm (the DisARM code's), rodeo (the RODEO "
                        "paper's Fashion-MNIST setting)")
    parser.add_argument("--arch", default=None, choices=["linear", "nonlinear"],
                        help=f"linear 784-200 or nonlinear 784-200-200-200 (LeakyReLU 0.3), "
                        f"decoder mirrored (default from --protocol: {_protocol_help('arch')})")
    parser.add_argument("--prior", default=None, choices=["learned", "uniform"],
                        help="learned prior logits, or a fixed uniform prior (default from "
                        f"--protocol: {_protocol_help('prior')})")
    parser.add_argument("--prior-learning-rate", type=float, default=None,
                        help="SGD learning rate of the learned prior logits (default from "
                        f"--protocol: {_protocol_help('prior_learning_rate')})")
    defaults = dict(
        num_steps=None, num_steps_help="from --protocol: " + _protocol_help("num_steps"),
        batch_size=None, batch_size_help="from --protocol: " + _protocol_help("batch_size"),
        learning_rate=None,
        learning_rate_help="from --protocol: " + _protocol_help("learning_rate"),
        eval_size=None, eval_size_help="from --protocol: " + _protocol_help("eval_size"),
        latents=200, hidden=200,
    )
    add_arguments(parser, BernoulliVAE.estimators, defaults)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
