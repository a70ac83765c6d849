"""What ARSM costs, and when leave-one-out REINFORCE at the same number of model evaluations is
the better buy.

1. **Cost against C**: one Categorical site with C categories in a plate of 100 datapoints
   (a Normal likelihood whose mean is indexed by the category): ms per ``loss_and_grads`` call,
   peak resident memory (a fresh subprocess per setting), rows scored, and the distinct pseudo
   actions per datapoint, for the packed scoring (each datapoint's distinct pseudo actions
   packed into rows) against scoring all ``C(C-1)/2`` swaps for the whole batch (what
   ``ARSM_ELBO`` does when the datapoints' signals are not separable, and what it did for every
   model before packing).
2. **ARSM against LOO at equal evaluations**: the same model at logits
   ``phi = sharpness * N(0, 1)`` (0: the uniform start of training; larger: a sharper
   posterior), the variance of the gradient with respect to ``phi`` (summed over its entries)
   for ARSM and for ``ReinforceLOO_ELBO(S)`` with ``S`` the nearest integer to ARSM's mean
   number of model evaluations per datapoint.
3. **The categorical VAE** (``models.categorical_vae``, 20 latents x 10 classes on Fashion-MNIST):
   ARSM trained for ``--vae-steps`` steps; at checkpoints, ms per ``loss_and_grads`` call and
   rows scored with the packed scoring and with all swaps (at the same parameters and batch),
   and the distinct pseudo actions per image (mean / max over the batch).

Usage::

    python -m benchmarks.arsm_cost --threads 1
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import pyro
import pyro.distributions as dist
import torch

from pyro_relax.infer import Alternatives, make_elbo


def program(C, B=100, sharpness=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi0 = sharpness * torch.randn(B, C, generator=g)
    data = torch.randn(B, generator=g)

    def model():
        locs = pyro.param("locs", torch.linspace(-3, 3, C))
        with pyro.plate("data", B):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(C)))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)

    def guide():
        phi = pyro.param("phi", phi0.clone())
        with pyro.plate("data", B):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide


def _measure_cost(C, packed, calls):
    """Runs in a subprocess: ms per call, peak RSS, rows and distinct actions."""
    import resource

    model, guide = program(C)
    elbo = make_elbo("arsm", max_plate_nesting=1, alternatives=Alternatives(pack=packed))
    elbo.loss_and_grads(model, guide)
    evals0 = elbo.num_model_evaluations
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        elbo.loss_and_grads(model, guide)
        times.append(1e3 * (time.perf_counter() - start))
    rows = (elbo.num_model_evaluations - evals0) / calls - 1
    return {
        "ms": statistics.median(times),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
        "distinct": elbo.distinct_actions.get("z"),
    }


def cost_table(args):
    print("\n1. one Categorical site, plate of 100, per loss_and_grads call "
          "(median of {} calls; peak RSS of a fresh process)".format(args.calls))
    print("| C | scoring | ms/call | peak RSS (MB) | rows scored | distinct actions per datapoint (mean / max) |")
    print("|---|---|---|---|---|---|")
    for C in args.categories:
        for packed in (True, False):
            if not packed and C > args.max_unpacked:
                print("| {} | all swaps | not run (C(C-1)/2 = {} rows) | | | |".format(C, C * (C - 1) // 2))
                continue
            cmd = [sys.executable, "-m", "benchmarks.arsm_cost", "--_cost", str(C),
                   "--_packed", str(int(packed)), "--calls", str(args.calls),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print("| {} | {} | failed: {} | | | |".format(
                    C, "packed" if packed else "all swaps", out.stderr.strip().splitlines()[-1][:80]))
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            d = r["distinct"]
            print("| {} | {} | {:.1f} | {:.0f} | {:.0f} | {} |".format(
                C, "packed" if packed else "all swaps", r["ms"], r["rss_mb"], r["rows"],
                "{:.1f} / {}".format(d["mean"], d["max"]) if d else "-"), flush=True)


def variance(make, model, guide, draws):
    elbo = make()
    elbo.loss_and_grads(model, guide)
    evals0 = elbo.num_model_evaluations
    phi = pyro.param("phi").unconstrained()
    grads = []
    for _ in range(draws):
        for p in pyro.get_param_store().values():
            p.unconstrained().grad = None
        elbo.loss_and_grads(model, guide)
        grads.append(phi.grad.reshape(-1).clone())
    evals = (elbo.num_model_evaluations - evals0) / draws
    return torch.stack(grads).var(0).sum().item(), evals


def loo_table(args):
    print("\n2. ARSM against ReinforceLOO_ELBO(S) at S = ARSM's evaluations per datapoint "
          "(gradient variance w.r.t. phi, summed; {} draws)".format(args.draws))
    print("| C | sharpness | ARSM evals | ARSM variance | S | LOO(S) variance | LOO / ARSM |")
    print("|---|---|---|---|---|---|---|")
    for C in args.loo_categories:
        for sharpness in args.sharpness:
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            model, guide = program(C, sharpness=sharpness)
            v_arsm, evals = variance(lambda: make_elbo("arsm", max_plate_nesting=1), model, guide, args.draws)
            S = max(2, round(evals))
            pyro.clear_param_store()
            model, guide = program(C, sharpness=sharpness)
            v_loo, _ = variance(
                lambda: make_elbo("rloo", num_particles=S, vectorize_particles=True, max_plate_nesting=1),
                model, guide, args.draws)
            print("| {} | {} | {:.1f} | {:.3e} | {} | {:.3e} | {:.2f} |".format(
                C, sharpness, evals, v_arsm, S, v_loo, v_loo / v_arsm), flush=True)


def vae_table(args):
    from models import categorical_vae
    from models import vae as vaes

    vae_args = categorical_vae.make_parser().parse_args(
        ["--estimator", "arsm", "--num-steps", str(args.vae_steps), "--threads", str(args.threads),
         "--no-progress"])
    data = vaes.load_data(vae_args)
    num_particles, temperature = vaes.check_estimator_options(
        vae_args, categorical_vae.NAME, categorical_vae.CategoricalVAE.estimators)
    exp = vaes.Experiment(categorical_vae.NAME, categorical_vae.build, vae_args, data,
                          num_particles, temperature)
    svi = exp.svis["elbo"]
    batch = exp.vae.gradient_batch(data, vae_args.batch_size, torch.Generator().manual_seed(0))
    checkpoints = sorted({0, args.vae_steps // 4, args.vae_steps // 2, args.vae_steps})
    print("\n3. categorical VAE (20 x 10, batch {}, Adam {}), ARSM: per loss_and_grads call at "
          "the parameters after each step count, on one batch (median of {} calls)".format(
              vae_args.batch_size, vae_args.learning_rate, args.calls))
    print("| step | distinct actions per image (mean / max) | packed: rows, ms | all swaps: rows, ms |")
    print("|---|---|---|---|")
    def measure(packed):
        exp.elbo.alternatives.pack = packed
        try:
            svi.loss_and_grads(svi.model, svi.guide, *batch)  # warm up
            times, rows = [], []
            for _ in range(args.calls):
                evals0 = exp.elbo.num_model_evaluations
                start = time.perf_counter()
                svi.loss_and_grads(svi.model, svi.guide, *batch)
                times.append(1e3 * (time.perf_counter() - start))
                rows.append(exp.elbo.num_model_evaluations - evals0 - 1)
            for p in pyro.get_param_store().values():
                p.unconstrained().grad = None
            return statistics.median(rows), statistics.median(times), dict(exp.elbo.distinct_actions["z"])
        finally:
            exp.elbo.alternatives.pack = True

    for step in checkpoints:
        exp.train(step, progress=False)
        rows_p, ms_p, counts = measure(True)
        rows_a, ms_a, _ = measure(False)
        print("| {} | {:.1f} / {} | {:.0f}, {:.0f} | {:.0f}, {:.0f} |".format(
            step, counts["mean"], counts["max"], rows_p, ms_p, rows_a, ms_a), flush=True)


def main(args):
    torch.set_num_threads(args.threads)
    if args._cost:
        torch.set_default_dtype(torch.float32)
        print(json.dumps(_measure_cost(args._cost, bool(args._packed), args.calls)))
        return
    print("pyro-relax ARSM cost benchmark | torch {} | pyro {} | threads={} | device=cpu | float32".format(
        torch.__version__, pyro.__version__, torch.get_num_threads()))
    if "cost" in args.parts:
        cost_table(args)
    if "loo" in args.parts:
        loo_table(args)
    if "vae" in args.parts:
        vae_table(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.arsm_cost",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--parts", nargs="+", default=["cost", "loo", "vae"],
                        choices=["cost", "loo", "vae"], help="which tables")
    parser.add_argument("--vae-steps", type=int, default=2000,
                        help="ARSM training steps on the categorical VAE (table 3)")
    parser.add_argument("--categories", type=int, nargs="+", default=[10, 50, 200, 1000],
                        help="C for the cost table")
    parser.add_argument("--max-unpacked", type=int, default=200,
                        help="largest C scored with all swaps")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per setting")
    parser.add_argument("--loo-categories", type=int, nargs="+", default=[3, 10, 30, 100],
                        help="C for the ARSM-against-LOO table")
    parser.add_argument("--sharpness", type=float, nargs="+", default=[0.0, 3.0],
                        help="logits scale: 0 uniform, larger sharper")
    parser.add_argument("--draws", type=int, default=200, help="gradient draws per estimator")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--_cost", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--_packed", type=int, default=1, help=argparse.SUPPRESS)
    main(parser.parse_args())
