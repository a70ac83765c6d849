"""Which estimator for which guide? The measurements behind the README's "Which estimator?"
table, side by side in one process.

Four guide shapes, each on binarized 8x8 digits bundled with scikit-learn (batch 32):

1. **discrete only**: a Bernoulli VAE (64-16-64, linear);
2. **mixed, dominated by continuous sites**: an AIR-like sequential guide (3 steps of a
   ``z_pres`` Bernoulli and a 2-d ``z_what`` Normal masked by it, a GRU carrying the state);
3. **dependent discrete sites**: a two-layer sigmoid belief net, ``q(z2 | z1)``;
4. **non-Bernoulli discrete**: a Poisson latent per datapoint.

For each estimator: model evaluations per step, encoder-gradient variance (summed over the
encoder's parameters, at the initial parameters), the signal-to-noise ratio
``|mean| / std`` of the encoder gradient (median over its elements), median ms per
``loss_and_grads`` call, and the loss after ``--train-steps`` SVI steps (Adam, lr ``--lr``,
mean of the last 20 steps; mean and standard deviation over ``--seeds``, with the first 20
steps' mean for scale). It also trains ``ReinforceLOO_ELBO(2)`` and
``VarGrad_ELBO(2)`` side by side on the discrete-only guide from the same seed and reports the
largest parameter difference after ``--train-steps`` steps (the two are the same estimator when
every guide site is discrete).

Usage::

    python -m benchmarks.which_estimator --threads 1
"""

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from models.cli import add_common_arguments
from pyro_relax.infer import make_elbo


def digits(device, batch_size=32):
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data[:batch_size], dtype=torch.get_default_dtype())
    return (images > 7).to(torch.get_default_dtype()).to(device)


def _cat(tensors):
    batch = torch.broadcast_shapes(*[t.shape[:-1] for t in tensors])
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], -1)


# ------------------------------------------------------------------ the four guide shapes
def bernoulli_vae(x, latents=16):
    pixels = x.shape[-1]
    encoder = torch.nn.Linear(pixels, latents).to(x.device)
    decoder = torch.nn.Linear(latents, pixels).to(x.device)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5 * x.new_ones(latents)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=encoder(x)).to_event(1))

    return model, guide, encoder


def air_like(x, num_steps=3, what_dim=2, hidden=32):
    pixels = x.shape[-1]
    decoder = torch.nn.Linear(what_dim, pixels).to(x.device)
    rnn = torch.nn.GRUCell(pixels + what_dim + 1, hidden).to(x.device)
    heads = torch.nn.Linear(hidden, 1 + 2 * what_dim).to(x.device)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z_pres = x.new_ones(len(x))
            logits = x.new_zeros(pixels) - 2.0
            for t in range(num_steps):
                z_pres = pyro.sample("z_pres_{}".format(t), dist.Bernoulli(0.5 * z_pres))
                with poutine.mask(mask=z_pres.bool()):
                    z_what = pyro.sample(
                        "z_what_{}".format(t), dist.Normal(x.new_zeros(what_dim), 1.0).to_event(1)
                    )
                logits = logits + z_pres.unsqueeze(-1) * decoder(z_what)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.heads = rnn, heads

    encoder = Encoder()

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            z_pres = x.new_ones(len(x))
            z_what = x.new_zeros(len(x), what_dim)
            h = x.new_zeros(len(x), hidden)
            for t in range(num_steps):
                inputs = _cat([x, z_what, z_pres.unsqueeze(-1)])
                batch = inputs.shape[:-1]
                h = rnn(inputs.reshape(-1, inputs.shape[-1]), h.expand(batch + (hidden,)).reshape(-1, hidden))
                h = h.reshape(batch + (hidden,))
                out = heads(h)
                p = torch.sigmoid(out[..., 0])
                z_pres = pyro.sample("z_pres_{}".format(t), dist.Bernoulli(z_pres * p))
                loc, log_scale = out[..., 1:].chunk(2, -1)
                with poutine.mask(mask=z_pres.bool()):
                    z_what = pyro.sample(
                        "z_what_{}".format(t), dist.Normal(loc, log_scale.exp()).to_event(1)
                    )

    return model, guide, encoder


def sigmoid_belief_net(x, latents=16):
    pixels = x.shape[-1]
    enc1 = torch.nn.Linear(pixels, latents).to(x.device)
    enc2 = torch.nn.Linear(latents, latents).to(x.device)
    prior2 = torch.nn.Linear(latents, latents).to(x.device)
    decoder = torch.nn.Linear(latents, pixels).to(x.device)
    encoder = torch.nn.ModuleList([enc1, enc2])

    def model(x):
        pyro.module("prior2", prior2)
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z2 = pyro.sample("z2", dist.Bernoulli(0.5 * x.new_ones(latents)).to_event(1))
            z1 = pyro.sample("z1", dist.Bernoulli(logits=prior2(z2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z1)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=enc1(x)).to_event(1))
            pyro.sample("z2", dist.Bernoulli(logits=enc2(2.0 * z1 - 1.0)).to_event(1))

    return model, guide, encoder


def poisson_latent(x):
    pixels = x.shape[-1]
    encoder = torch.nn.Linear(pixels, 1).to(x.device)
    decoder = torch.nn.Linear(1, pixels).to(x.device)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            n = pyro.sample("n", dist.Poisson(x.new_tensor(3.0)))
            pyro.sample("x", dist.Bernoulli(logits=decoder(n.unsqueeze(-1).sqrt())).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            pyro.sample("n", dist.Poisson(torch.nn.functional.softplus(encoder(x)).squeeze(-1) + 0.1))

    return model, guide, encoder


# ------------------------------------------------------------------ measurements
def gradient_stats(make_elbo, model, guide, x, params, num_samples):
    elbo = make_elbo()
    elbo.loss_and_grads(model, guide, x)  # warm up
    evals0 = getattr(elbo, "num_model_evaluations", None)
    grads = []
    for _ in range(num_samples):
        for p in params:
            p.grad = None
        elbo.loss_and_grads(model, guide, x)
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    grads = torch.stack(grads)
    evals = elbo.num_particles if evals0 is None else (elbo.num_model_evaluations - evals0) / num_samples
    snr = (grads.mean(0).abs() / grads.std(0).clamp(min=1e-30)).median().item()
    return grads.var(0).sum().item(), snr, evals


def ms_per_call(make_elbo, model, guide, x, calls, repeats):
    elbo = make_elbo()
    elbo.loss_and_grads(model, guide, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            elbo.loss_and_grads(model, guide, x)
        times.append(1e3 * (time.perf_counter() - start) / calls)
    return statistics.median(times)


def train(make_elbo, model, guide, x, steps, lr):
    svi = SVI(model, guide, Adam({"lr": lr}), make_elbo())
    losses = [svi.step(x) for _ in range(steps)]
    return statistics.mean(losses[:20]), statistics.mean(losses[-20:])


def run_problem(title, build, estimators, x, args):
    print("\n" + title)
    header = ("| estimator | evals/step | encoder-grad variance | median SNR | ms/call | "
              "loss, first 20 steps | loss, last 20 steps (mean +- sd over {} seeds) |".format(len(args.seeds)))
    print(header)
    print("|---|---|---|---|---|---|---|")
    for name, make in estimators.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        model, guide, encoder = build(x)
        guide(x)  # create the params
        params = list(encoder.parameters())
        var, snr, evals = gradient_stats(make, model, guide, x, params, args.num_samples)
        ms = ms_per_call(make, model, guide, x, args.calls, args.repeats)
        firsts, lasts = [], []
        for seed in args.seeds:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            model, guide, encoder = build(x)
            first, last = train(make, model, guide, x, args.train_steps, args.lr)
            firsts.append(first)
            lasts.append(last)
        print("| {} | {:.1f} | {:.3e} | {:.3f} | {:.2f} | {:.1f} | {:.1f} +- {:.1f} |".format(
            name, evals, var, snr, ms, statistics.mean(firsts), statistics.mean(lasts),
            statistics.stdev(lasts) if len(lasts) > 1 else 0.0))


def loo_vs_vargrad(x, args):
    """Trains LOO(2) and VarGrad(2) from the same seed on the discrete-only guide."""
    results = {}
    for name, make in [
        ("ReinforceLOO_ELBO(2)", lambda: make_elbo("rloo", num_particles=2, max_plate_nesting=1)),
        ("VarGrad_ELBO(2)", lambda: make_elbo("vargrad", num_particles=2, max_plate_nesting=1)),
    ]:
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        model, guide, encoder = bernoulli_vae(x)
        svi = SVI(model, guide, Adam({"lr": args.lr}), make())
        start = time.perf_counter()
        for _ in range(args.train_steps):
            svi.step(x)
        seconds = time.perf_counter() - start
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        results[name] = (params, 1e3 * seconds / args.train_steps)
    (a, ta), (b, tb) = results.values()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print("\nLOO(2) vs VarGrad(2) on the discrete-only guide, {} SVI steps from one seed:".format(
        args.train_steps))
    print("largest parameter difference: {:.3g} | ms/step: LOO {:.2f}, VarGrad {:.2f} (ratio {:.2f})".format(
        diff, ta, tb, tb / ta))


def main(args):
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device)
    print("pyro-relax which-estimator benchmark | torch {} | pyro {} | threads={} | device={} | float64".format(
        torch.__version__, pyro.__version__, torch.get_num_threads(), device))
    print("gradient samples: {} | timing: median of {} x {} calls | training: {} steps, Adam lr {}".format(
        args.num_samples, args.repeats, args.calls, args.train_steps, args.lr))
    x = digits(device)

    def pair(**kw):
        return dict(max_plate_nesting=1, **kw)

    common = {
        "Trace_ELBO(2)": lambda: make_elbo("trace", num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        "TraceGraph_ELBO(2)": lambda: make_elbo("tracegraph", num_particles=2, max_plate_nesting=1),
        "ReinforceLOO_ELBO(2)": lambda: make_elbo("rloo", num_particles=2, vectorize_particles=True, **pair()),
        "VarGrad_ELBO(2)": lambda: make_elbo("vargrad", num_particles=2, vectorize_particles=True, **pair()),
    }
    arm = {
        "ARSM_ELBO (ARM)": lambda: make_elbo("arm", **pair()),
        "ARSM_ELBO (DisARM)": lambda: make_elbo("disarm", **pair()),
    }
    problems = {
        "discrete": ("1. discrete only: Bernoulli VAE 64-16-64", bernoulli_vae, dict(common, **arm)),
        "mixed": ("2. mixed, continuous-dominated: AIR-like, 3 steps of z_pres + 2-d z_what", air_like,
                  dict(common, **arm)),
        "dependent": ("3. dependent discrete: two-layer sigmoid belief net q(z1|x) q(z2|z1)", sigmoid_belief_net,
                      dict(common, **arm)),
        "poisson": ("4. non-Bernoulli discrete: a Poisson latent per datapoint", poisson_latent, common),
    }
    for key in args.problems:
        title, build, estimators = problems[key]
        run_problem(title, build, estimators, x, args)
    if "discrete" in args.problems:
        loo_vs_vargrad(x, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.which_estimator",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--num-samples", type=int, default=300, help="gradient draws per estimator")
    parser.add_argument("--calls", type=int, default=20, help="calls per timing repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    parser.add_argument("--train-steps", type=int, default=300, help="SVI steps per estimator")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument(
        "--problems", nargs="+", default=["discrete", "mixed", "dependent", "poisson"],
        choices=["discrete", "mixed", "dependent", "poisson"], help="guide shapes to run",
    )
    add_common_arguments(parser)
    main(parser.parse_args())
