"""
A VAE with 20 categorical latents of 10 classes on dynamically binarized Fashion-MNIST (the
ARSM paper's setting), trained with any of the estimators that apply to categorical latents.

Model: ``z ~ OneHotCategorical(uniform)`` for each of the 20 latents (one ``pyro.sample`` site
with ``.to_event(1)`` over the 20), ``x ~ Bernoulli(logits=decoder(z))`` with ``z`` flattened
to 200 inputs; guide ``z ~ OneHotCategorical(logits=encoder(x - train_mean))``. Encoder
784-512-256-200 with LeakyReLU(0.3), the 200 outputs read as 20 x 10 logits; decoder
200-256-512-784, mirrored. The decoder's output bias starts at
``logit(clip(train_mean, 0.001, 0.999))``; data as in :mod:`models.bernoulli_vae` (first
50,000 training images train, the other 10,000 validate, fresh binarization every batch).

The ARSM paper (Yin, Yue & Zhou 2019, Sec. 5.2, arXiv v2) trains this model on thresholded
MNIST with batch 200 and Adam with a learning rate chosen from {1..5} x 1e-4; the defaults
here (batch 50, Adam 1e-3, 2000 steps) are a short run on a 2-core CPU: pass
``--batch-size 200 --learning-rate 3e-4 --num-steps 140000`` for a paper-length run. ARSM
scores all distinct swap pseudo-actions of the 20 latents in one batched model run (up to
1 + 45 evaluations per step).

Examples::

    python -m models.categorical_vae --estimator arsm
    python -m models.categorical_vae --estimator st --temperature 0.5 --out runs/cat-st

Reference:

[1] M. Yin, Y. Yue, M. Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
    Backpropagation Through Categorical Variables", ICML 2019.
"""

import pyro
import pyro.distributions as dist
import torch

from models import cli
from models.vae import CATEGORICAL_ESTIMATORS, DiscreteVAE, add_arguments, mlp, run

__all__ = ["CategoricalVAE", "build", "main", "make_parser"]

NAME = "categorical_vae"


class CategoricalVAE(DiscreteVAE):
    """``latents`` OneHotCategorical latents of ``classes`` classes, uniform prior.

    :param int pixels: pixels per image.
    :param int latents: categorical latents (20).
    :param int classes: classes per latent (10).
    :param tuple hidden: the encoder's hidden widths (512, 256); the decoder mirrors them.
    :param torch.Tensor train_mean: per-pixel training mean.
    :param torch.Tensor output_bias: the decoder's initial output bias.
    """

    latent_kind = "categorical"
    estimators = CATEGORICAL_ESTIMATORS

    def __init__(self, pixels, latents, classes, hidden, train_mean, output_bias):
        super().__init__(train_mean)
        self.latents, self.classes = latents, classes
        self.encoder = mlp([pixels, *hidden, latents * classes])
        self.decoder = mlp([latents * classes, *reversed(hidden), pixels])
        with torch.no_grad():
            self.decoder[-1].bias.copy_(output_bias)

    def model(self, x, size=None):
        pyro.module("decoder", self.decoder, update_module_params=True)
        logits = self.train_mean.new_zeros(self.latents, self.classes)
        with self.data_plate(x, size):
            z = self.prior("z", logits)
            h = z.reshape(z.shape[:-2] + (-1,))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=x)

    def guide(self, x, size=None):
        pyro.module("encoder", self.encoder, update_module_params=True)
        with self.data_plate(x, size):
            logits = self.encoder(x - self.train_mean)
            self.discrete("z", logits.reshape(logits.shape[:-1] + (self.latents, self.classes)))

    def encoder_modules(self):
        return [self.encoder]


def build(args, data):
    hidden = (args.hidden, max(1, args.hidden // 2))
    return CategoricalVAE(data.pixels, args.latents, args.classes, hidden, data.train_mean,
                          data.output_bias())


def main(args):
    """Train and evaluate (see :func:`models.run`); returns the metrics dict."""
    return run(args, NAME, build, CategoricalVAE.estimators,
                          describe=f" ({args.latents} x {args.classes})")


def make_parser():
    parser = cli.make_parser(
        NAME,
        "Train a VAE with 20 categorical latents of 10 classes (the ARSM paper's setting) on "
        "dynamically binarized Fashion-MNIST with one of the gradient estimators for "
        "categorical latents, then print the train ELBO, the validation and test ELBO and the "
        "test importance-weighted bound (nats per image). Reads the idx files from --data-dir; "
        "nothing is downloaded.",
    )
    parser.add_argument("--classes", type=int, default=10, help="classes per latent")
    defaults = dict(
        num_steps=2000, batch_size=50, learning_rate=1e-3, eval_size=1000, latents=20,
        hidden=512, latents_text="categorical latents",
        hidden_text="the encoder's first hidden width H: encoder pixels-H-H/2-(latents x "
        "classes) with LeakyReLU(0.3), decoder mirrored",
    )
    add_arguments(parser, CategoricalVAE.estimators, defaults)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
