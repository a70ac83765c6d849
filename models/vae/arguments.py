"""The command-line options shared by the VAE models."""

import argparse

from models import cli
from models.data import TRAIN_SIZE
from pyro_relax.infer import ESTIMATORS

__all__ = ["HelpFormatter", "add_arguments"]


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

    listing = "; ".join(f"{name}: {ESTIMATORS[name].description}" for name in estimators)
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
    parser.add_argument("--trainer", default="svi", choices=["svi", "lightning"],
                        help="train with pyro.infer.SVI in this process (svi), or with PyTorch "
                        "Lightning, data-parallel over --devices processes (lightning; needs "
                        "the lightning extra)")
    parser.add_argument("--devices", type=int, default=1,
                        help="--trainer lightning: processes (--batch-size is split over them)")
    parser.add_argument("--strategy", default="auto", choices=["auto", "ddp", "ddp_spawn"],
                        help="--trainer lightning: Lightning's strategy")
    parser.add_argument("--accelerator", default=None, choices=["cpu", "gpu", "auto"],
                        help="--trainer lightning: Lightning's accelerator (default: gpu with "
                        "--device cuda, else cpu)")
    cli.add_common_arguments(parser)
    return parser
