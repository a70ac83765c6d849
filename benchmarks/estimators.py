"""The discrete-latent estimators side by side on one model of ``models`` (default: the
Bernoulli VAE on Fashion-MNIST), in one process, with the same data, seed and step budget.

For each seed every estimator trains the model for ``--num-steps`` steps from the same
initialization (the model's own CLI defaults: for ``bernoulli_vae`` the ``quick`` protocol),
then one Markdown table reports, per estimator:

- **evals/step**: model evaluations per step (our ELBOs count them in
  ``elbo.num_model_evaluations``; Pyro's ``Trace_ELBO(S)`` / ``TraceGraph_ELBO(S)`` use S);
- **train ELBO**: the mean of the last 1000 steps' single-sample ELBO estimates per image (the
  last quarter of the steps if fewer than 4000 ran);
- **train ELBO @ equal evals**: the same mean over each estimator's first ``t`` steps, where
  ``t`` steps cost as many model evaluations as ``--num-steps`` steps of the cheapest estimator
  in the table (ELBO per model evaluation; ``t`` in parentheses);
- **test bound**: the ``--iw-samples``-sample importance-weighted bound on the first
  ``--eval-size`` test images (binarized with a fixed seed), nats per image;
- **log10 Var @ step t**: the gradient variance of the encoder parameters at the parameters of
  the reference run (``--reference``, default ``rloo``) after ``t`` steps (``--checkpoints``,
  default 0, half and all of the steps): ``--grad-samples`` gradients of each estimator on one
  fixed mini-batch, the variance over draws summed over every encoder coordinate. Every
  estimator is measured at the same parameters. RELAX, REBAR, Double CV and RODEO first train
  their own control variate there for ``--cv-steps`` steps (Adam, ``--cv-learning-rate``, fresh batches; every
  other parameter frozen), as in ``benchmarks/gradient_variance.py``; every estimator makes
  ``--warmup-draws`` discarded draws on fresh batches first: ``TraceGraph_ELBO``'s
  decaying-average baseline (one running average per batch slot) starts at 0 and adapts over
  calls; it is then held fixed during the measured draws, since on one fixed batch it would
  learn each datapoint's own cost, a baseline training (a new batch every step) never has;
- **ms/step**: training milliseconds per step (first step excluded) and the ratio to
  ``trace``'s, the ``Trace_ELBO`` with ``--num-particles`` particles (the particles of the
  reference estimator: 2 by default) run in the same process on the same seed.

With several ``--seeds`` each cell is ``mean ± sd`` (sample standard deviation over the seeds).
Timings are noisy on a shared machine: compare ms/step within one table only.

``storchastic`` (van Krieken et al. 2021) is not run: it is not installed here, and this
benchmark has no adapter for it even when it is importable (the header says which).

Examples::

    python -m benchmarks.estimators
    python -m benchmarks.estimators --estimators rloo disarm relax --num-steps 5000 --seeds 0 1 2
    python -m benchmarks.estimators --model categorical_vae --num-steps 500
    python -m benchmarks.estimators --model categorical_vae --estimators rloo arsm arsm+ \
        disarm-iw disarm-sb disarm-tree --num-pairs 2
"""

import argparse
import copy
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI

from models import bernoulli_vae, categorical_vae, cli, sigmoid_belief_net, ss_vae
from models import vae as vaes

MODELS = {
    "bernoulli_vae": (bernoulli_vae, bernoulli_vae.BernoulliVAE),
    "categorical_vae": (categorical_vae, categorical_vae.CategoricalVAE),
    "sigmoid_belief_net": (sigmoid_belief_net, sigmoid_belief_net.SigmoidBeliefNet),
    "ss_vae": (ss_vae, ss_vae.SSVAE),
}
#: the estimators whose particles ``--num-particles`` sets in this benchmark
PARTICLE_ESTIMATORS = ("trace", "tracegraph", "rloo", "vargrad", "vimco", "arms", "double-cv",
                       "rodeo")


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _storchastic_status():
    try:
        importlib.import_module("storchastic")
    except ImportError:
        return "storchastic: not installed, skipped"
    return "storchastic: importable, but not run (no adapter in this benchmark)"


def estimator_args(args, estimator, seed):
    """The model CLI's parsed options for one run of ``estimator``."""
    module, _ = MODELS[args.model]
    argv = [
        "--estimator", estimator, "--num-steps", str(args.num_steps), "--seed", str(seed),
        "--data-dir", args.data_dir, "--train-size", str(args.train_size),
        "--eval-size", str(args.eval_size), "--iw-samples", str(args.iw_samples),
        "--threads", str(args.threads), "--device", str(args.device), "--no-progress",
    ]
    for option in ("batch_size", "learning_rate", "latents", "hidden", "cv_learning_rate"):
        value = getattr(args, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    if estimator in PARTICLE_ESTIMATORS:
        argv += ["--num-particles", str(args.num_particles)]
    if estimator in vaes.COUPLED and args.num_pairs is not None:
        argv += ["--num-pairs", str(args.num_pairs)]
    argv += args.model_args
    parsed = module.make_parser().parse_args(argv)
    if hasattr(module, "apply_protocol"):
        module.apply_protocol(parsed)
    return parsed


def _tail_mean(values, steps):
    """Mean of the last 1000 values, or of the last quarter of ``steps`` if fewer than 4000."""
    values = list(values)
    keep = min(len(values), 1000 if steps >= 4000 else max(1, steps // 4))
    return sum(values[-keep:]) / keep if keep else float("nan")


def _snapshot():
    state = pyro.get_param_store().get_state()
    return copy.deepcopy({
        "params": {k: v.detach().clone().requires_grad_(v.requires_grad)
                   for k, v in state["params"].items()},
        "constraints": state["constraints"],
    })


def _initialize_params(experiment):
    """Runs guide and model once (without moving the RNG) so that every parameter exists."""
    vae = experiment.vae
    with vaes.forked_rng(experiment.data.train.device):
        batch = vae.random_batch(experiment.data, 2)
        previous = vae.estimator, vae.num_particles, vae.temperature, vae.st_prior
        vae.configure("eval")
        vaes.log_weights(vae, batch[0], 1, *batch[1:])
        vae.configure(*previous)


def _label(estimator, elbo):
    """How the ELBO was built, for the table."""
    name = type(elbo).__name__
    if estimator in ("arm", "disarm"):
        return f"{name}(bernoulli='{estimator}')"
    if estimator in vaes.ARSM_CATEGORICAL:
        pairs = f", num_pairs={elbo.num_pairs}" if elbo.num_pairs > 1 else ""
        return f"{name}(categorical='{estimator}'{pairs})"
    if estimator in vaes.PARTICLES:
        name = f"{name}({elbo.num_particles})"
    if estimator == "relax-neural":
        name = f"{name}(control_variate='neural')"
    return name + (" + straight-through guide" if estimator == "st" else "")


def train_run(args, estimator, seed, data, checkpoints=()):
    """Trains one estimator; returns its row and, if ``checkpoints``, the parameter snapshots
    at those steps (by step)."""
    module, _ = MODELS[args.model]
    run_args = estimator_args(args, estimator, seed)
    num_particles, temperature = vaes.check_estimator_options(
        run_args, args.model, MODELS[args.model][1].estimators
    )
    experiment = vaes.Experiment(args.model, module.build, run_args, data, num_particles,
                                       temperature)
    snapshots = {}
    values = []  # every step's train ELBO estimate

    def callback(exp):
        if exp.step == len(values) + 1:
            values.append(exp.window[-1])
        if exp.step in checkpoints and exp.step not in snapshots:
            if exp.step == 0:
                _initialize_params(exp)
            snapshots[exp.step] = _snapshot()

    experiment.train(args.num_steps, progress=not args.no_progress, callback=callback)
    metrics = experiment.evaluate()
    row = {
        "estimator": estimator,
        "elbo": _label(estimator, experiment.elbo),
        "evals": metrics["model_evaluations_per_step"],
        "train_elbo": _tail_mean(experiment.window, args.num_steps),
        "step_elbos": values,
        "test_bound": metrics["test_iw_bound"],
        "ms": metrics["ms_per_step"],
    }
    for key in ("test_accuracy",):
        if key in metrics:
            row[key] = metrics[key]
    return row, snapshots


def _cv_training(experiment, steps, lr):
    """Trains the estimator's own control variate (RELAX, REBAR, Double CV, RODEO) at fixed
    model and guide parameters."""
    elbo = experiment.elbo
    if getattr(elbo, "trainable_state", lambda: None)() is None or steps <= 0:
        return
    prefix = elbo.prefix + "."
    optim = pyro.optim.Adam(lambda name: {"lr": lr if name.startswith(prefix) else 0.0})
    vae = experiment.vae
    svi = vae.unsupervised_svi(experiment.svis)
    cv_svi = SVI(svi.model, svi.guide, optim, elbo)
    for _ in range(steps):
        cv_svi.step(*vae.random_batch(experiment.data, experiment.args.batch_size))


def gradient_variance(args, estimator, seed, data, snapshots):
    """log10 of the summed variance of the encoder-parameter gradient, per checkpoint."""
    module, _ = MODELS[args.model]
    out = {}
    for step, snapshot in sorted(snapshots.items()):
        run_args = estimator_args(args, estimator, seed)
        num_particles, temperature = vaes.check_estimator_options(
            run_args, args.model, MODELS[args.model][1].estimators
        )
        experiment = vaes.Experiment(args.model, module.build, run_args, data,
                                           num_particles, temperature)
        store = pyro.get_param_store()
        store.set_state(copy.deepcopy(snapshot))
        vae = experiment.vae
        svi = vae.unsupervised_svi(experiment.svis)
        generator = torch.Generator(device=data.train.device).manual_seed(1000 + seed)
        batch = vae.gradient_batch(data, run_args.batch_size, generator)
        pyro.set_rng_seed(2000 + seed + step)
        _cv_training(experiment, args.cv_steps, args.cv_learning_rate or 1e-3)

        def draw(arguments):
            for name in store.keys():
                store.get_param(name).unconstrained().grad = None
            svi.loss_and_grads(svi.model, svi.guide, *arguments)
            # the encoder's parameters as they are now: pyro.module may have swapped in the
            # param store's tensors during the call
            encoder = list(vae.encoder_parameters())
            if not all(p.requires_grad for p in encoder):
                raise RuntimeError("gradient_variance: an encoder parameter does not require "
                                   "grad (its variance would read as 0)")
            return torch.cat([
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in encoder
            ])

        for _ in range(args.warmup_draws):  # on fresh batches, as in training
            draw(vae.random_batch(data, run_args.batch_size))
        # TraceGraph_ELBO's decaying-average baseline is state: it is held at its value after
        # the warm-up, else it would learn the fixed batch's own costs over the draws
        held = {name: store[name].detach().clone()
                for name in store.keys() if name.startswith("__baseline")}

        def measured_draw():
            for name, value in held.items():
                store[name] = value.clone()
            return draw(batch)

        grads = torch.stack([measured_draw() for _ in range(args.grad_samples)])
        variance = grads.double().var(0).sum().item()
        out[step] = math.log10(variance) if variance > 0 else float("-inf")
    return out


def _mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values, spec, num_seeds):
    mean, sd = _mean_sd(values)
    if not math.isfinite(mean):
        return "—"
    return f"{mean:{spec}}" if num_seeds == 1 else f"{mean:{spec}} ± {sd:{spec}}"


def equal_evaluations(rows, num_steps):
    """Adds ``train_elbo_equal_evals`` to each row (and drops its ``step_elbos``): the train
    ELBO (tail mean, as ``train_elbo``) over the first ``t`` steps, where ``t`` steps cost the
    model evaluations that ``num_steps`` steps of the cheapest estimator cost."""
    budget = num_steps * min(row["evals"] for row in rows.values())
    for row in rows.values():
        values = row.pop("step_elbos")
        t = max(1, min(len(values), int(round(budget / row["evals"]))))
        row["equal_evals_steps"] = t
        row["train_elbo_equal_evals"] = _tail_mean(values[:t], t)
    return budget


def make_table(rows_by_seed, estimators, checkpoints, num_seeds):
    """The Markdown table: one row per estimator, cells ``mean ± sd`` over the seeds."""
    extra = [k for k in ("test_accuracy",) if k in rows_by_seed[0][estimators[0]]]
    head = ["estimator", "ELBO", "evals/step", "train ELBO", "test bound",
            "train ELBO @ equal evals (steps)"]
    head += [f"log10 Var @{c}" for c in checkpoints] + ["ms/step", "vs trace"]
    head += ["test accuracy" for _ in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in estimators:
        runs = [rows[e] for rows in rows_by_seed]
        ratios = [rows[e]["ms"] / rows["trace"]["ms"] for rows in rows_by_seed if "trace" in rows]
        cells = [
            e,
            f"`{runs[0]['elbo']}`",
            _cell([r["evals"] for r in runs], ".1f", num_seeds),
            _cell([r["train_elbo"] for r in runs], ".2f", num_seeds),
            _cell([r["test_bound"] for r in runs], ".2f", num_seeds),
            _cell([r["train_elbo_equal_evals"] for r in runs], ".2f", num_seeds)
            + " ({})".format(runs[0]["equal_evals_steps"]),
        ]
        cells += [_cell([r["log10_var"].get(c) for r in runs], ".2f", num_seeds)
                  for c in checkpoints]
        cells += [_cell([r["ms"] for r in runs], ".1f", num_seeds),
                  _cell(ratios, ".2f", num_seeds) if ratios else "—"]
        cells += [_cell([r[k] for r in runs], ".4f", num_seeds) for k in extra]
        if e == "vimco":  # its loss, so its train column, is the K-sample bound
            cells[3] += " (K-sample bound)"
            cells[5] = cells[5].replace(" (", " (K-sample bound; ", 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args):
    """Runs the benchmark and prints the header and the table; returns a dict with
    ``header``, ``table`` and ``rows`` (one dict per seed: estimator -> row)."""
    start = time.perf_counter()
    if args.model not in MODELS:
        raise SystemExit(f"error: --model must be one of {', '.join(MODELS)}, got {args.model}")
    applicable = MODELS[args.model][1].estimators
    estimators = list(args.estimators or applicable)
    wrong = [e for e in estimators if e not in applicable]
    if wrong:
        raise SystemExit(f"error: --estimators {' '.join(wrong)}: do not apply to {args.model}; "
                         f"estimators that apply: {', '.join(applicable)}")
    if args.reference not in applicable:
        raise SystemExit(f"error: --reference {args.reference} does not apply to {args.model}")
    if args.reference not in estimators:
        estimators.insert(0, args.reference)
    checkpoints = sorted(set(args.checkpoints if args.checkpoints is not None
                             else (0, args.num_steps // 2, args.num_steps)))
    if any(not 0 <= c <= args.num_steps for c in checkpoints):
        raise SystemExit(f"error: --checkpoints must lie in [0, --num-steps], got {checkpoints}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.device = device
    probe = estimator_args(args, args.reference, args.seeds[0])
    data = vaes.load_data(probe)
    describe = args.model + (f" ({probe.arch}, protocol {probe.protocol})"
                             if hasattr(probe, "protocol") else "")
    header = [
        f"# pyro-relax estimators benchmark: {describe} on {data.folder}: "
        f"train {len(data.train)} / valid {len(data.valid)} / test {len(data.test)} images, "
        f"{args.num_steps} steps, batch {probe.batch_size}, Adam {probe.learning_rate}, "
        f"seeds {' '.join(map(str, args.seeds))}",
        f"# threads={torch.get_num_threads()} device={device} | python "
        f"{platform.python_version()} torch {torch.__version__} pyro {pyro.__version__} "
        f"pyro-relax {_version('pyro-relax')} numpy {np.__version__} | {_storchastic_status()}",
        f"# train ELBO: mean of the last {'1000 steps' if args.num_steps >= 4000 else 'quarter of the steps'}"
        f"; test bound: {args.iw_samples} samples on {args.eval_size or len(data.test)} test "
        "images; nats per image",
        f"# log10 Var: encoder-gradient variance summed over coordinates, {args.grad_samples} "
        f"draws on one batch of {probe.batch_size}, at the {args.reference} run's parameters "
        f"after {', '.join(map(str, checkpoints))} steps ({args.warmup_draws} discarded draws "
        f"first; rebar/relax/double-cv/rodeo: control variate trained {args.cv_steps} steps "
        f"first)",
        "# train ELBO @ equal evals: the train ELBO (same tail mean) over the steps that cost "
        "as many model evaluations as --num-steps steps of the cheapest estimator (its steps "
        "in parentheses, first seed)",
        f"# ms/step: training, first step excluded; 'vs trace' = ratio to Trace_ELBO"
        f"({args.num_particles}) (trace with the {args.num_particles} particles of the "
        f"{args.reference} reference) in the same run",
    ]
    print("\n".join(header), flush=True)
    rows_by_seed = []
    for seed in args.seeds:
        rows, snapshots = {}, {}
        for e in [args.reference] + [x for x in estimators if x != args.reference]:
            row, snaps = train_run(args, e, seed, data,
                                   checkpoints if e == args.reference else ())
            snapshots.update(snaps)
            rows[e] = row
            print(f"# seed {seed} {e}: train ELBO {row['train_elbo']:.2f}, test bound "
                  f"{row['test_bound']:.2f}, {row['ms']:.1f} ms/step", flush=True)
        budget = equal_evaluations(rows, args.num_steps)
        print(f"# seed {seed}: equal evaluations: {budget:.0f} model evaluations per estimator",
              flush=True)
        for e in estimators:
            rows[e]["log10_var"] = gradient_variance(args, e, seed, data, snapshots)
            print(f"# seed {seed} {e}: log10 Var " + ", ".join(
                f"@{c} {v:.2f}" for c, v in rows[e]["log10_var"].items()), flush=True)
        rows_by_seed.append(rows)
    table = make_table(rows_by_seed, estimators, checkpoints, len(args.seeds))
    seconds = time.perf_counter() - start
    print(table)
    print(f"# total wall time: {seconds:.0f} s", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "estimators.md"), "w") as f:
            f.write("\n".join(header) + "\n\n" + table + "\n")
        with open(os.path.join(args.out, "estimators.json"), "w") as f:
            json.dump({"header": header, "rows": rows_by_seed, "seconds": seconds}, f, indent=2,
                      default=str)
    return {"header": header, "table": table, "rows": rows_by_seed, "seconds": seconds}


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.estimators",
        description="The discrete-latent estimators side by side on one model (same data, "
        "seed and step budget): train ELBO, test importance-weighted bound, encoder-gradient "
        "variance at fixed checkpoints, model evaluations and ms per step, as one Markdown "
        "table. Reads Fashion-MNIST from --data-dir; nothing is downloaded.",
        formatter_class=vaes.HelpFormatter,
    )
    parser.add_argument("--model", default="bernoulli_vae", choices=list(MODELS),
                        help="the model (its CLI's defaults apply)")
    parser.add_argument("--estimators", nargs="+", default=None,
                        help="estimators to compare (default: every one that applies)")
    parser.add_argument("--num-steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds; the table shows mean ± sd over them")
    parser.add_argument("--num-particles", type=int, default=2,
                        help="particles of trace, tracegraph, rloo and vargrad (st and enum: 1)")
    parser.add_argument("--num-pairs", type=int, default=None,
                        help="antithetic pairs of disarm-iw, disarm-sb, disarm-tree (default: "
                        "the model's, 1)")
    parser.add_argument("--reference", default="rloo",
                        help="the estimator whose run gives the checkpoints of the gradient "
                        "variance")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=None,
                        help="steps of the reference run where gradients are drawn (default: "
                        "0, half and all of --num-steps)")
    parser.add_argument("--grad-samples", type=int, default=100,
                        help="gradient draws per estimator and checkpoint")
    parser.add_argument("--warmup-draws", type=int, default=30,
                        help="discarded gradient draws before those")
    parser.add_argument("--cv-steps", type=int, default=300,
                        help="steps training the estimator's own control variate (RELAX, "
                        "REBAR, Double CV, RODEO) at a checkpoint")
    parser.add_argument("--cv-learning-rate", type=float, default=None,
                        help="Adam learning rate of the control variate (in training runs "
                        "default: the model's --learning-rate; at checkpoints default: 1e-3)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step (default: the model's)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam learning rate (default: the model's)")
    parser.add_argument("--latents", type=int, default=None,
                        help="latent units (default: the model's)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="hidden units (default: the model's; not for sigmoid_belief_net)")
    parser.add_argument("--model-args", nargs=argparse.REMAINDER, default=[],
                        help="further options passed to the model's CLI, e.g. --model-args "
                        "--protocol rodeo (must come last)")
    cli.add_data_argument(parser)
    parser.add_argument("--train-size", type=int, default=50000,
                        help="the first N training images train, the rest validate")
    parser.add_argument("--eval-size", type=int, default=1000,
                        help="test images of the importance-weighted bound (0: all)")
    parser.add_argument("--iw-samples", type=int, default=100,
                        help="samples of the importance-weighted bound")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="also write estimators.md and estimators.json there")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    cli.add_common_arguments(parser, seed=False)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
