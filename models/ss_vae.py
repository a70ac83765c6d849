"""
The semi-supervised VAE "M2" (Kingma et al. 2014) on dynamically binarized Fashion-MNIST with
3000 labels: the class ``y`` is a discrete latent for unlabelled images, trained with any of
the estimators for categorical latents, or marginalized exactly by enumeration (``enum``).

- model: ``z ~ Normal(0, I)`` (50 dims), ``y ~ OneHotCategorical(uniform)`` (observed for
  labelled images), ``x ~ Bernoulli(logits=decoder(z, y))``; for labelled images also the
  classifier term ``aux_loss_multiplier * log q(y | x)`` (Pyro's ``aux_loss``, as an
  observed site ``y_aux`` under ``poutine.scale``);
- guide: ``y ~ OneHotCategorical(logits=classifier(x - train_mean))`` for unlabelled images,
  then ``z ~ Normal(encoder_z(x - train_mean, y))``: ``q(z | x, y)`` depends on the sampled
  ``y``, so ARSM and RELAX/REBAR re-run the guide downstream of it (common random numbers for
  the Normal site).

Networks as in Pyro's example (``examples/vae/ss_vae_M2.py``): one hidden layer of 500
softplus units in the classifier, ``encoder_z`` and the decoder. Every step takes one
unlabelled batch (the chosen estimator) and one labelled batch (``Trace_ELBO``: nothing
discrete is sampled there, so every estimator would give its gradient) with the auxiliary
classifier loss; the labelled images are the first ``--num-labels / 10`` of each class among
the training images, the others are unlabelled. The ELBOs reported are those of the
unlabelled objective (``y`` a latent); the accuracy is ``argmax q(y | x)`` on the whole
validation and test sets (binarized with a fixed seed). ``--estimator enum`` is
``TraceEnum_ELBO(max_plate_nesting=1)`` with the guide under ``config_enumerate``: the 10
classes are summed exactly in one batched model run.

Examples::

    python -m models.ss_vae --estimator rloo
    python -m models.ss_vae --estimator enum --num-steps 5000 --out runs/m2-enum

Reference:

[1] D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, "Semi-Supervised Learning with Deep
    Generative Models", NeurIPS 2014.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, config_enumerate

from models import cli
from models.vae import (
    CATEGORICAL_ESTIMATORS, EVAL_SEEDS, DiscreteVAE, add_arguments, broadcast_cat, mlp, run,
)
from models.data import binarize

__all__ = ["SSVAE", "build", "main", "make_parser", "select_labels"]

NAME = "ss_vae"


def select_labels(labels, num_labels, classes):
    """The indices of the labelled images: the first ``num_labels // classes`` images of each
    class (in order), and the other indices (unlabelled).

    :raises ValueError: if ``num_labels`` is not a multiple of ``classes`` or a class has too
        few images.
    """
    if num_labels <= 0 or num_labels % classes:
        raise ValueError(f"--num-labels must be a positive multiple of {classes}, got {num_labels}")
    per_class = num_labels // classes
    chosen = []
    for c in range(classes):
        idx = (labels == c).nonzero().squeeze(-1)
        if len(idx) < per_class:
            raise ValueError(
                f"--num-labels {num_labels}: class {c} has only {len(idx)} training images, "
                f"fewer than {per_class}"
            )
        chosen.append(idx[:per_class])
    labelled = torch.cat(chosen).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    mask[labelled] = False
    return labelled, mask.nonzero().squeeze(-1)


class SSVAE(DiscreteVAE):
    """M2 with a OneHotCategorical class latent and a Normal style latent.

    :param int pixels: pixels per image.
    :param int classes: classes (10).
    :param int latents: dimension of ``z``.
    :param int hidden: hidden units of each network.
    :param torch.Tensor train_mean: per-pixel training mean.
    :param torch.Tensor output_bias: the decoder's initial output bias.
    :param float aux_loss_multiplier: weight of the classifier loss on labelled images.
    :param torch.Tensor labelled: indices of the labelled training images.
    :param torch.Tensor unlabelled: the others.
    """

    latent_kind = "categorical"
    estimators = CATEGORICAL_ESTIMATORS + ("enum",)

    def __init__(self, pixels, classes, latents, hidden, train_mean, output_bias,
                 aux_loss_multiplier, labelled, unlabelled):
        super().__init__(train_mean)
        self.classes, self.latents = classes, latents
        self.aux_loss_multiplier = aux_loss_multiplier
        self.classifier = mlp([pixels, hidden, classes], torch.nn.Softplus)
        self.encoder_z = mlp([pixels + classes, hidden, 2 * latents], torch.nn.Softplus)
        self.decoder = mlp([latents + classes, hidden, pixels], torch.nn.Softplus)
        with torch.no_grad():
            self.decoder[-1].bias.copy_(output_bias)
        self.register_buffer("labelled", labelled)
        self.register_buffer("unlabelled", unlabelled)

    def model(self, x, y=None):
        pyro.module("decoder", self.decoder, update_module_params=True)
        zeros = self.train_mean.new_zeros(self.latents)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            y_value = self.prior("y", self.train_mean.new_zeros(self.classes), event_dims=0, obs=y)
            logits = self.decoder(broadcast_cat(z, y_value))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
            if y is not None and self.aux_loss_multiplier > 0:
                pyro.module("classifier", self.classifier, update_module_params=True)
                with poutine.scale(scale=self.aux_loss_multiplier):
                    q_y = dist.OneHotCategorical(logits=self.classifier(x - self.train_mean))
                    pyro.sample("y_aux", q_y, obs=y)

    def guide(self, x, y=None):
        pyro.module("classifier", self.classifier, update_module_params=True)
        pyro.module("encoder_z", self.encoder_z, update_module_params=True)
        h = x - self.train_mean
        with pyro.plate("data", x.shape[0], dim=-1):
            if y is None:
                y = self.discrete("y", self.classifier(h), event_dims=0)
            loc, scale = self.encoder_z(broadcast_cat(h, y)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(scale) + 1e-4).to_event(1))

    def encoder_modules(self):
        return [self.classifier, self.encoder_z]

    def make_svis(self, elbo, optim):
        guide = config_enumerate(self.guide, "parallel") if self.estimator == "enum" else self.guide
        return {
            "unsup": SVI(self.model, guide, optim, elbo),
            "sup": SVI(self.model, self.guide, optim, Trace_ELBO(max_plate_nesting=1)),
        }

    def unsupervised_svi(self, svis):
        return svis["unsup"]

    def _labelled_batch(self, data, batch_size):
        pick = self.labelled[torch.randint(len(self.labelled), (batch_size,),
                                           device=self.labelled.device)]
        y = F.one_hot(data.train_labels[pick], self.classes).to(data.train.dtype)
        return binarize(data.train[pick]), y

    def random_batch(self, data, batch_size):
        pick = self.unlabelled[torch.randint(len(self.unlabelled), (batch_size,),
                                             device=self.unlabelled.device)]
        return (binarize(data.train[pick]),)

    def training_step(self, svis, data, batch_size):
        value = self._elbo_step(svis["unsup"], batch_size, *self.random_batch(data, batch_size))
        svis["sup"].step(*self._labelled_batch(data, batch_size))
        return value

    def gradient_batch(self, data, batch_size, generator):
        return (binarize(data.train[self.unlabelled[:batch_size]], generator),)

    def extra_metrics(self, data, eval_size):
        out = {"num_labels": len(self.labelled)}
        for split, images, labels in (("valid", data.valid, data.valid_labels),
                                      ("test", data.test, data.test_labels)):
            if len(images) == 0:
                continue
            generator = torch.Generator(device=images.device).manual_seed(
                EVAL_SEEDS[split]
            )
            correct = 0
            for start in range(0, len(images), 1000):
                x = binarize(images[start : start + 1000], generator)
                predicted = self.classifier(x - self.train_mean).argmax(-1)
                correct += (predicted == labels[start : start + 1000]).sum().item()
            out[f"{split}_accuracy"] = correct / len(images)
        return out


def build(args, data):
    try:
        labelled, unlabelled = select_labels(data.train_labels, args.num_labels, args.classes)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return SSVAE(data.pixels, args.classes, args.latents, args.hidden, data.train_mean,
                 data.output_bias(), args.aux_loss_multiplier, labelled, unlabelled)


def main(args):
    """Train and evaluate (see :func:`models.run`); returns the metrics dict, with
    ``valid_accuracy`` and ``test_accuracy`` of the classifier ``q(y | x)``."""
    return run(args, NAME, build, SSVAE.estimators,
                          describe=f" (M2, {args.num_labels} labels)")


def make_parser():
    parser = cli.make_parser(
        NAME,
        "Train the semi-supervised VAE M2 (Kingma et al. 2014) on dynamically binarized "
        "Fashion-MNIST with --num-labels labels, the class of the unlabelled images a "
        "OneHotCategorical latent trained by one of the gradient estimators (or summed by "
        "enumeration: --estimator enum), then print the ELBOs, the test importance-weighted "
        "bound (nats per image), the classifier's accuracy and ms/step. Reads the idx files "
        "from --data-dir; nothing is downloaded.",
    )
    parser.add_argument("--num-labels", type=int, default=3000,
                        help="labelled training images, the same number per class")
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--aux-loss-multiplier", type=float, default=46.0,
                        help="weight of the classifier loss -log q(y|x) on labelled images "
                        "(Pyro's example's aux_loss; 0: none)")
    defaults = dict(num_steps=2000, batch_size=100, learning_rate=1e-3, eval_size=1000,
                    latents=50, hidden=500, latents_text="dimension of the Normal latent z",
                    hidden_text="hidden units of the classifier, encoder_z and decoder")
    add_arguments(parser, SSVAE.estimators, defaults)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
