"""Gradient variance and cost of the discrete-latent estimators, side by side in one process.

At fixed parameters, each estimator's gradient is drawn many times; the script prints the
variance per parameter (averaged over parameters, and its log10), the ratio to Pyro's
``Trace_ELBO`` at an equal number of model evaluations, and the median ms per
``loss_and_grads`` call over repeats, on

1. the Bernoulli toy :math:`E[(b - 0.499)^2]` at :math:`p = 0.5` (RELAX paper Fig. 1),
2. the ARSM toy (:math:`C = R = 30`, :math:`\\phi = 0`),
3. a small Bernoulli VAE (linear encoder/decoder, 16 latents) on a batch of binarized
   8x8 digits bundled with scikit-learn (encoder-parameter variance).

``Trace_ELBO`` with one particle is single-sample REINFORCE; ``TraceGraph_ELBO`` adds Pyro's
dependency-aware Rao-Blackwellization. "evals" is model evaluations per call: ``S`` for an
S-particle estimator, 2 for ARM/DisARM, ``1 +`` the distinct pseudo actions for ARSM (mean).

Usage::

    python -m benchmarks.gradient_variance --threads 1
"""

import argparse
import math
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from models.cli import add_common_arguments
from models.toys import bernoulli_toy, categorical_toy
from pyro_relax.infer import make_elbo


def train_control_variate(elbo, model, guide, args, steps, lr=0.01):
    """Trains an estimator's own control variate (RELAX, REBAR) at the fixed model and guide
    parameters: Adam with learning rate 0 for everything else."""
    if not hasattr(elbo, "control_variate") or steps <= 0:
        return
    prefix = elbo.prefix + "."

    def optim_args(module_name, param_name):
        return {"lr": lr if (module_name or param_name).startswith(prefix) else 0.0}

    svi = SVI(model, guide, Adam(optim_args), elbo)
    for _ in range(steps):
        svi.step(*args)


def draw_gradients(make_elbo, model, guide, args, num_samples, params, cv_steps=0):
    elbo = make_elbo()
    elbo.loss_and_grads(model, guide, *args)  # warm up (plate guessing, checks)
    train_control_variate(elbo, model, guide, args, cv_steps)
    evals0 = getattr(elbo, "num_model_evaluations", None)
    grads = []
    for _ in range(num_samples):
        for p in params:
            p.grad = None
        elbo.loss_and_grads(model, guide, *args)
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    if evals0 is None:
        evals = elbo.num_particles
    else:
        evals = (elbo.num_model_evaluations - evals0) / num_samples
    return torch.stack(grads), evals


def time_calls(make_elbo, model, guide, args, calls, repeats):
    """Median ms per ``loss_and_grads`` call (gradients left to accumulate)."""
    elbo = make_elbo()
    elbo.loss_and_grads(model, guide, *args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            elbo.loss_and_grads(model, guide, *args)
        times.append(1e3 * (time.perf_counter() - start) / calls)
    return statistics.median(times)


def run_problem(title, setup, estimators, num_samples, calls, repeats, cv_steps=0):
    print("\n" + title)
    header = "{:<22} {:>6} {:>12} {:>8} {:>12} {:>9}".format(
        "estimator", "evals", "variance", "log10", "vs Trace(=)", "ms/call")
    print(header)
    print("-" * len(header))
    results = {}
    for name, make in estimators.items():
        pyro.clear_param_store()
        model, guide, args, params = setup()
        grads, evals = draw_gradients(make, model, guide, args, num_samples, params, cv_steps)
        var = grads.var(0).mean().item()
        ms = time_calls(make, model, guide, args, calls, repeats)
        results[name] = (evals, var, ms, grads.mean(0))
    # ratio against Trace_ELBO at the nearest number of model evaluations
    trace_rows = {v[0]: v[1] for k, v in results.items() if k.startswith("Trace_ELBO")}
    for name, (evals, var, ms, _) in results.items():
        match = min(trace_rows, key=lambda e: abs(e - evals)) if trace_rows else None
        ratio = "" if match is None else "{:.2e}".format(var / trace_rows[match])
        print("{:<22} {:>6.1f} {:>12.3e} {:>8.2f} {:>12} {:>9.2f}".format(
            name, evals, var, math.log10(var) if var > 0 else float("-inf"), ratio, ms))
    return results


def bernoulli_setup(device):
    def setup():
        model, guide = bernoulli_toy(0.499, device)
        guide()
        return model, guide, (), [pyro.param("theta").unconstrained()]
    return setup


def categorical_setup(device):
    def setup():
        model, guide = categorical_toy(30, 30, device)
        guide()
        return model, guide, (), [pyro.param("phi").unconstrained()]
    return setup


def vae_setup(device, batch_size=32, latents=16):
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data[:batch_size], dtype=torch.get_default_dtype())
    data = (images > 7).to(torch.get_default_dtype()).to(device)
    pixels = data.shape[-1]

    def setup():
        torch.manual_seed(0)
        encoder = torch.nn.Linear(pixels, latents).to(device)
        decoder = torch.nn.Linear(latents, pixels).to(device)

        def model(x):
            pyro.module("decoder", decoder)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(latents, device=device)).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder", encoder)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

        return model, guide, (data,), list(encoder.parameters())
    return setup


def main(args):
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device)
    pyro.set_rng_seed(args.seed)
    print("pyro-relax gradient-variance benchmark | torch {} | pyro {} | threads={} | device={}".format(
        torch.__version__, pyro.__version__, torch.get_num_threads(), device))
    print("samples per estimator: {} | timing: median of {} repeats x {} calls".format(
        args.num_samples, args.repeats, args.calls))

    bern = {
        "Trace_ELBO(1)": lambda: make_elbo("trace"),
        "Trace_ELBO(2)": lambda: make_elbo("trace", num_particles=2),
        "TraceGraph_ELBO(2)": lambda: make_elbo("tracegraph", num_particles=2),
        "ReinforceLOO(2)": lambda: make_elbo("rloo", num_particles=2, max_plate_nesting=0),
        "VarGrad(2)": lambda: make_elbo("vargrad", num_particles=2, max_plate_nesting=0),
        "ARM": lambda: make_elbo("arm", max_plate_nesting=0),
        "DisARM": lambda: make_elbo("disarm", max_plate_nesting=0),
        "REBAR": lambda: make_elbo("rebar", max_plate_nesting=0),
        "RELAX": lambda: make_elbo("relax", max_plate_nesting=0, hidden_dims=(10,), activation=torch.nn.Tanh),
    }
    if "bernoulli" in args.problems:
        run_problem("1. Bernoulli toy E[(b - 0.499)^2] at p = 0.5 (exact gradient 5.0e-04)",
                    bernoulli_setup(device), bern, args.num_samples, args.calls, args.repeats,
                    args.cv_steps)

    cat = {
        "Trace_ELBO(1)": lambda: make_elbo("trace"),
        "Trace_ELBO(30)": lambda: make_elbo("trace", num_particles=30, vectorize_particles=True, max_plate_nesting=0),
        "TraceGraph_ELBO(30)": lambda: make_elbo("tracegraph", num_particles=30, vectorize_particles=True, max_plate_nesting=0),
        "ReinforceLOO(30)": lambda: make_elbo("rloo", num_particles=30, vectorize_particles=True, max_plate_nesting=0),
        "VarGrad(30)": lambda: make_elbo("vargrad", num_particles=30, vectorize_particles=True, max_plate_nesting=0),
        "ARSM": lambda: make_elbo("arsm", max_plate_nesting=0),
    }
    if "categorical" in args.problems:
        run_problem("2. ARSM toy, C = R = 30, phi = 0 (variance per logit, averaged)",
                    categorical_setup(device), cat, args.num_samples, args.calls, args.repeats)

    vae = {
        "Trace_ELBO(1)": lambda: make_elbo("trace"),
        "Trace_ELBO(2)": lambda: make_elbo("trace", num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        "TraceGraph_ELBO(2)": lambda: make_elbo("tracegraph", num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        "ReinforceLOO(2)": lambda: make_elbo("rloo", num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        "VarGrad(2)": lambda: make_elbo("vargrad", num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        "Trace_ELBO(3)": lambda: make_elbo("trace", num_particles=3, vectorize_particles=True, max_plate_nesting=1),
        "ReinforceLOO(3)": lambda: make_elbo("rloo", num_particles=3, vectorize_particles=True, max_plate_nesting=1),
        "ARM": lambda: make_elbo("arm", max_plate_nesting=1),
        "DisARM": lambda: make_elbo("disarm", max_plate_nesting=1),
        "REBAR": lambda: make_elbo("rebar", max_plate_nesting=1),
        "RELAX": lambda: make_elbo("relax", max_plate_nesting=1),
    }
    if "vae" in args.problems:
        results = run_problem(
            "3. Bernoulli VAE (64-16-64 linear, batch 32 binarized digits): encoder-gradient variance",
            vae_setup(device), vae, args.vae_samples, args.calls // 4, args.repeats, args.cv_steps)
        print("time ratio RELAX / Trace_ELBO(2): {:.2f}; REBAR / Trace_ELBO(2): {:.2f}".format(
            results["RELAX"][2] / results["Trace_ELBO(2)"][2],
            results["REBAR"][2] / results["Trace_ELBO(2)"][2]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gradient_variance",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--num-samples", type=int, default=4000,
                        help="gradient draws per estimator (toys)")
    parser.add_argument("--vae-samples", type=int, default=400,
                        help="gradient draws per estimator (VAE)")
    parser.add_argument("--calls", type=int, default=200, help="calls per timing repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    parser.add_argument("--cv-steps", type=int, default=300,
                        help="Adam steps (lr 0.01) training RELAX/REBAR's control variate at the "
                        "fixed parameters before its gradients are drawn")
    add_common_arguments(parser)
    parser.add_argument("--problems", nargs="+", default=["bernoulli", "categorical", "vae"],
                        help="problems to run",
                        choices=["bernoulli", "categorical", "vae"])
    main(parser.parse_args())
