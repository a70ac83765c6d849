"""The discrete-latent VAE models' shared code, by concern: the base class
(:mod:`models.vae.base`), the estimators they take (:mod:`models.vae.estimators`, from the
package's registry), the optimizer (:mod:`models.vae.optim`), the evaluation
(:mod:`models.vae.evaluation`), the command-line options (:mod:`models.vae.arguments`) and
the experiment runner (:mod:`models.vae.experiment`)."""

from models.vae.arguments import HelpFormatter, add_arguments
from models.vae.base import DiscreteVAE, LearnedLogits, broadcast_cat, mlp
from models.vae.estimators import (
    ARSM_CATEGORICAL,
    BERNOULLI_ESTIMATORS,
    CATEGORICAL_ESTIMATORS,
    COUPLED,
    PARTICLES,
    TEMPERATURES,
    check_estimator_options,
    make_elbo,
    model_evaluations,
)
from models.vae.evaluation import EVAL_SEEDS, evaluate_bound, forked_rng, log_weights
from models.vae.experiment import WINDOW, Experiment, load_data, print_metrics, run
from models.vae.optim import make_optimizer

__all__ = [
    "ARSM_CATEGORICAL",
    "BERNOULLI_ESTIMATORS",
    "CATEGORICAL_ESTIMATORS",
    "COUPLED",
    "DiscreteVAE",
    "EVAL_SEEDS",
    "Experiment",
    "HelpFormatter",
    "LearnedLogits",
    "PARTICLES",
    "TEMPERATURES",
    "WINDOW",
    "add_arguments",
    "broadcast_cat",
    "check_estimator_options",
    "evaluate_bound",
    "forked_rng",
    "load_data",
    "log_weights",
    "make_elbo",
    "make_optimizer",
    "mlp",
    "model_evaluations",
    "print_metrics",
    "run",
]
