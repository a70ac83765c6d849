"""The experiment runner of the VAE command lines: the training loop (tqdm bar, running ELBO,
resumable checkpoints), the evaluation and the files written to ``--out``.

**Timing.** ms/step is the training time per step of the session, the first step (lazy
imports, checks) excluded; evaluation is not included.

**Files in ``--out DIR``.** ``curve.csv`` (step, running mean of the train ELBO over the last
1000 steps, training wall time in s), ``curve.png``, ``metrics.json``, and the checkpoint:
``params.pt`` (:meth:`pyro.get_param_store().save <pyro.params.param_store.ParamStoreDict.save>`),
``optim.pt`` (:meth:`pyro.optim.PyroOptim.save`) and ``state.pt`` (step, RNG state, the ELBO
window and curve), written every ``--save-every`` steps and at the end. ``--resume`` loads
them and continues from the saved step up to ``--num-steps`` (a total, not an increment).
ELBOs are per datapoint, in nats.
"""

import collections
import csv
import json
import math
import os
import sys
import time

import pyro
import torch

from models import cli
from models.data import load_binarized_fashion_mnist
from models.vae.estimators import (
    COUPLED, PARTICLES, check_estimator_options, make_elbo, model_evaluations,
)
from models.vae.evaluation import EVAL_SEEDS, evaluate_bound, forked_rng
from models.vae.optim import make_optimizer
from pyro_relax.infer import VIMCO_ELBO

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is optional
    tqdm = None

__all__ = ["Experiment", "WINDOW", "load_data", "print_metrics", "run"]

#: the window of the running train ELBO
WINDOW = 1000


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
            train_objective=objective_name(self.elbo),
            valid_elbo=evaluate_bound(self.vae, valid, 1, EVAL_SEEDS["valid"]),
            test_elbo=evaluate_bound(self.vae, test, 1, EVAL_SEEDS["test"]),
            test_iw_bound=evaluate_bound(self.vae, test, args.iw_samples, EVAL_SEEDS["test_iw"]),
            iw_samples=args.iw_samples,
            valid_images=len(valid),
            test_images=len(test),
            ms_per_step=self.ms_per_step(),
            model_evaluations_per_step=self.model_evaluations_per_step(),
        )
        with forked_rng(data.train.device), torch.no_grad():
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
    if getattr(args, "trainer", "svi") == "lightning":
        return run_lightning(args, name, build, num_particles, temperature, describe)
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


def run_lightning(args, name, build, num_particles, temperature, describe=""):
    """``--trainer lightning`` (see :mod:`models.vae.lightning`): trains, then evaluates on the
    first process. Returns the metrics dict there, None on the other processes."""
    from models.vae import lightning

    if name == "ss_vae":
        raise SystemExit("error: --trainer lightning: the semi-supervised VAE (its labelled "
                         "objective and classifier loss) is not supported; use --trainer svi")
    if args.accelerator is None:
        args.accelerator = "gpu" if str(args.device).startswith("cuda") else "cpu"
    if args.devices < 1 or args.batch_size % args.devices:
        raise SystemExit(f"error: --batch-size {args.batch_size} must split evenly over "
                         f"--devices {args.devices}")
    args.device = torch.device("cpu")  # Lightning places the module and the batches
    data = load_data(args)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    vae = build(args, data)
    vae.configure(args.estimator, num_particles, temperature, args.st_prior)
    elbo = make_elbo(args.estimator, num_particles, temperature, getattr(args, "num_pairs", None))
    module, trainer, summary = lightning.fit(vae, elbo, data, args)
    if trainer.global_rank != 0:
        return None
    vae = module.vae.cpu()
    vae.configure("eval")
    size = args.eval_size or None
    metrics = collections.OrderedDict(
        model=name, estimator=args.estimator, trainer="lightning", devices=args.devices,
        strategy=args.strategy, steps=summary["steps"],
        train_elbo=summary["train_elbo"], train_elbo_steps=summary["train_elbo_steps"],
        train_objective=objective_name(elbo),
        valid_elbo=evaluate_bound(vae, data.valid[:size], 1, EVAL_SEEDS["valid"]),
        test_elbo=evaluate_bound(vae, data.test[:size], 1, EVAL_SEEDS["test"]),
        test_iw_bound=evaluate_bound(vae, data.test[:size], args.iw_samples, EVAL_SEEDS["test_iw"]),
        iw_samples=args.iw_samples, valid_images=len(data.valid[:size]),
        test_images=len(data.test[:size]),
        ms_per_step=summary["ms_per_step"],
        model_evaluations_per_step=summary["model_evaluations_per_step"],
        identical_across_processes=summary["identical_across_processes"],
        estimator_state_change=summary["estimator_state_change"],
    )
    print(f"# {name}{describe}: estimator={args.estimator} trainer=lightning "
          f"devices={args.devices} strategy={args.strategy} steps={metrics['steps']}", flush=True)
    print_metrics(metrics)
    if metrics["estimator_state_change"] is not None:
        print(f"estimator state (RELAX's control variate): largest change since set-up "
              f"{metrics['estimator_state_change']:.3g}", flush=True)
    print(f"parameters identical across the {args.devices} processes: "
          f"{metrics['identical_across_processes']}", flush=True)
    if args.out:
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics


def objective_name(elbo):
    """What the training loss estimates: ``"ELBO"``, or VIMCO's ``"K-sample bound"``."""
    if isinstance(elbo, VIMCO_ELBO):
        return f"{elbo.num_particles}-sample bound"
    return "ELBO"


def print_metrics(metrics):
    """The summary lines of a run (ELBOs per datapoint, nats)."""
    lines = [
        f"train {metrics.get('train_objective', 'ELBO')} (mean of the last "
        f"{metrics['train_elbo_steps']} steps): "
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
