"""
A two-layer sigmoid belief network (the RELAX paper's "linear two-layer" discrete VAE) on
dynamically binarized Fashion-MNIST, trained with any of the Bernoulli-latent estimators.

Two stochastic layers of 200 Bernoulli units, every conditional linear:

- model: ``z2 ~ Bernoulli(sigmoid(prior_logits))`` (learnable logits),
  ``z1 ~ Bernoulli(logits=W(2 z2 - 1) + b)``, ``x ~ Bernoulli(logits=V(2 z1 - 1) + c)``;
- guide: ``z1 ~ Bernoulli(logits=A(x - train_mean) + a)``, then
  ``z2 ~ Bernoulli(logits=B(2 z1 - 1) + d)``: the guide's second layer depends on the sampled
  first layer, so ARM/DisARM re-run the guide downstream of ``z1`` with common random numbers
  and RELAX/REBAR use ``1 + 2 x 2`` model evaluations per step.

The output bias ``c`` starts at ``logit(clip(train_mean, 0.001, 0.999))``; data as in
:mod:`models.bernoulli_vae`. The RELAX paper trains for 2,000,000 steps of batch 24 (Adam,
learning rate from {5e-3, 1e-3, 5e-4, 1e-4, 5e-5}); the defaults here (batch 50, Adam 1e-3
for every parameter, the prior logits included, 2000 steps) are a short run on a 2-core CPU.

Examples::

    python -m models.sigmoid_belief_net --estimator disarm
    python -m models.sigmoid_belief_net --estimator relax --num-steps 20000 --out runs/sbn-relax

Reference:

[1] W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud, "Backpropagation through the Void:
    Optimizing control variates for black-box gradient estimation", ICLR 2018.
"""

import pyro
import pyro.distributions as dist
import torch

from models import cli
from models.vae import BERNOULLI_ESTIMATORS, DiscreteVAE, LearnedLogits, add_arguments, run

__all__ = ["SigmoidBeliefNet", "build", "main", "make_parser"]

NAME = "sigmoid_belief_net"


class SigmoidBeliefNet(DiscreteVAE):
    """Two linear stochastic layers of ``latents`` Bernoulli units each.

    :param int pixels: pixels per image.
    :param int latents: units per stochastic layer.
    :param torch.Tensor train_mean: per-pixel training mean.
    :param torch.Tensor output_bias: the initial output bias.
    """

    latent_kind = "bernoulli"
    # ARMS draws a site's K samples from one probability; q(z2 | z1) has one per particle
    estimators = tuple(e for e in BERNOULLI_ESTIMATORS if e != "arms")

    def __init__(self, pixels, latents, train_mean, output_bias):
        super().__init__(train_mean)
        self.latents = latents
        self.q1 = torch.nn.Linear(pixels, latents)  # q(z1 | x)
        self.q2 = torch.nn.Linear(latents, latents)  # q(z2 | z1)
        self.p1 = torch.nn.Linear(latents, latents)  # p(z1 | z2)
        self.px = torch.nn.Linear(latents, pixels)  # p(x | z1)
        self.learned_prior = LearnedLogits(latents)
        with torch.no_grad():
            self.px.bias.copy_(output_bias)

    def model(self, x, size=None):
        pyro.module("p1", self.p1, update_module_params=True)
        pyro.module("px", self.px, update_module_params=True)
        prior = pyro.module("prior", self.learned_prior, update_module_params=True).logits
        with self.data_plate(x, size):
            z2 = self.prior("z2", prior)
            z1 = self.prior("z1", self.p1(2 * z2 - 1))
            pyro.sample("x", dist.Bernoulli(logits=self.px(2 * z1 - 1)).to_event(1), obs=x)

    def guide(self, x, size=None):
        pyro.module("q1", self.q1, update_module_params=True)
        pyro.module("q2", self.q2, update_module_params=True)
        with self.data_plate(x, size):
            z1 = self.discrete("z1", self.q1(x - self.train_mean))
            self.discrete("z2", self.q2(2 * z1 - 1))

    def encoder_modules(self):
        return [self.q1, self.q2]


def build(args, data):
    return SigmoidBeliefNet(data.pixels, args.latents, data.train_mean, data.output_bias())


def main(args):
    """Train and evaluate (see :func:`models.run`); returns the metrics dict."""
    return run(args, NAME, build, SigmoidBeliefNet.estimators,
                          describe=f" (2 x {args.latents} linear)")


def make_parser():
    parser = cli.make_parser(
        NAME,
        "Train a two-layer linear sigmoid belief network (200 + 200 Bernoulli latents, the "
        "RELAX paper's 'linear two-layer' model) on dynamically binarized Fashion-MNIST with "
        "one of the Bernoulli-latent gradient estimators, then print the train ELBO, the "
        "validation and test ELBO and the test importance-weighted bound (nats per image). "
        "Reads the idx files from --data-dir; nothing is downloaded.",
    )
    defaults = dict(num_steps=2000, batch_size=50, learning_rate=1e-3, eval_size=1000,
                    latents=200)
    add_arguments(parser, SigmoidBeliefNet.estimators, defaults)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
