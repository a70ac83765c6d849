"""Which estimators the VAE models take, and their options, from the package's registry
(:data:`pyro_relax.infer.ESTIMATORS`).

Every ELBO is built with ``max_plate_nesting=1`` and, with S > 1 particles,
``vectorize_particles=True``. The ARM family (``ar`` ... ``arsm+``) and the coupled estimators
(``disarm-iw``, ``disarm-sb``, ``disarm-tree``) apply to categorical latents only; ``arm`` and
``disarm`` to Bernoulli latents only. ``tracegraph`` sets the decaying-average baseline
``infer={"baseline": {"use_decaying_avg_baseline": True}}`` on the discrete guide sites (for
that estimator only); ``enum`` enumerates the discrete site (``config_enumerate``, the
semi-supervised VAE only).

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
"""

from pyro_relax.infer import ESTIMATORS, estimators_for
from pyro_relax.infer import make_elbo as registry_elbo

__all__ = [
    "ARSM_CATEGORICAL",
    "BERNOULLI_ESTIMATORS",
    "CATEGORICAL_ESTIMATORS",
    "COUPLED",
    "PARTICLES",
    "TEMPERATURES",
    "check_estimator_options",
    "make_elbo",
    "model_evaluations",
]

#: the estimators of the models with Bernoulli latents
BERNOULLI_ESTIMATORS = estimators_for("bernoulli")
#: the estimators of the models with categorical latents
CATEGORICAL_ESTIMATORS = estimators_for("categorical")
#: the ARM family and the coupled estimators, built as ``ARSM_ELBO(categorical=NAME)``
ARSM_CATEGORICAL = tuple(n for n, e in ESTIMATORS.items() if e.kinds == ("categorical",))
#: the coupled estimators, which take ``--num-pairs``
COUPLED = tuple(n for n, e in ESTIMATORS.items() if e.num_pairs)
#: the estimators that take ``--num-particles``, and their default
PARTICLES = {n: e.num_particles for n, e in ESTIMATORS.items() if e.num_particles is not None}
#: the estimators that take ``--temperature``, and their default
TEMPERATURES = {n: e.temperature for n, e in ESTIMATORS.items() if e.temperature is not None}


def make_elbo(estimator, num_particles=None, temperature=None, num_pairs=None):
    """The ELBO of ``estimator`` from the registry, with ``max_plate_nesting=1`` (``st``'s
    temperature belongs to the guide, see :meth:`models.vae.base.DiscreteVAE.configure`)."""
    e = ESTIMATORS[estimator]
    if e.guide == "straight-through":
        temperature = None
    options = dict(max_plate_nesting=1)
    if e.num_particles is not None:
        S = e.num_particles if num_particles is None else num_particles
        options.update(num_particles=S, vectorize_particles=S > 1)
    if e.num_pairs:
        options["num_pairs"] = num_pairs or 1
    return registry_elbo(estimator, temperature=temperature, **options)


def model_evaluations(elbo, steps):
    """Model evaluations per step: our ELBOs count them (``num_model_evaluations``); Pyro's
    ELBOs evaluate the model once per particle (``TraceEnum_ELBO`` once per particle too, the
    enumerated values batched in that one call)."""
    count = getattr(elbo, "num_model_evaluations", None)
    if count is None:
        return float(elbo.num_particles)
    return count / max(1, steps)


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
        least = ESTIMATORS[args.estimator].min_particles
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
