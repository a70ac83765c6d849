"""The papers' toy problems, driven through Pyro's ``SVI`` and the ELBO API.

- **Bernoulli toy**, as compared in the DisARM paper (Dong, Mnih & Tucker 2020; the problem
  is from Tucker et al. 2017 and Grathwohl et al. 2018, Fig. 1): minimise
  :math:`E_{b \\sim \\mathrm{Bern}(\\sigma(\\theta))}[(b - t)^2]` with :math:`t = 0.499`; the exact
  gradient at :math:`p = 0.5` is :math:`0.25 (1 - 2t)`.
- **RELAX toy** (Grathwohl et al. 2018, Fig. 1): the same objective minimised with Adam (lr
  0.01) by REINFORCE, REBAR, RELAX (surrogate 1-10(tanh)-1 on :math:`\\sigma(z / \\lambda)`),
  LOO, ARM and DisARM: loss and gradient log-variance curves, over seeds.
- **ARSM toy** (Yin, Yue & Zhou 2019, Sec. 5.1): maximise
  :math:`E_{z \\sim \\mathrm{Cat}(\\mathrm{softmax}(\\phi))}[0.5 + (z + 1) / (C R)]` with
  :math:`C = R = 30`, :math:`\\phi = 0`, plain gradient ascent with step 1.

Both objectives are expectations under the guide, not ELBOs. They are written as Pyro programs
whose ELBO *is* that expectation: the latent site is wrapped in ``poutine.mask(mask=False)`` in
model and guide, so its log-densities drop out of ``log p - log q`` (while its score function
stays, as Pyro never masks score functions), and the objective enters through ``pyro.factor``.

Examples::

    python -m models.toys                       # the Bernoulli and ARSM toys
    python -m models.toys bernoulli --num-samples 20000
    python -m models.toys relax --seeds 0 1 2 3 4 --out results/toys
    python -m models.toys categorical --num-steps 5000 --seeds 0 1 2
"""

import json
import math
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import SGD

from models import cli
from pyro_relax.infer import ARSM_ELBO, REBAR_ELBO, RELAX_ELBO, ReinforceLOO_ELBO, VarGrad_ELBO

__all__ = [
    "bernoulli_toy",
    "bernoulli_exact_grad",
    "bernoulli_expected_loss",
    "train_bernoulli_toy",
    "categorical_toy",
    "categorical_exact_grad",
    "train_categorical",
    "main",
]


def bernoulli_toy(target=0.499, device=None):
    """Model and guide whose ``-ELBO`` is :math:`E_q[(b - t)^2]`, with guide logit ``theta``.

    :param float target: :math:`t`.
    :returns: ``(model, guide)``.
    """

    def model():
        with poutine.mask(mask=False):
            b = pyro.sample("b", dist.Bernoulli(torch.tensor(0.5, device=device)))
        pyro.factor("objective", -((b - target) ** 2))

    def guide():
        theta = pyro.param("theta", torch.tensor(0.0, device=device))
        with poutine.mask(mask=False):
            pyro.sample("b", dist.Bernoulli(logits=theta))

    return model, guide


def bernoulli_exact_grad(theta, target=0.499):
    """:math:`\\partial_\\theta E[(b - t)^2] = \\sigma'(\\theta)((1 - t)^2 - t^2)`."""
    p = torch.sigmoid(torch.as_tensor(theta))
    return p * (1 - p) * ((1 - target) ** 2 - target**2)


def categorical_toy(num_categories=30, R=30, device=None):
    """Model and guide whose ``-ELBO`` is :math:`-E_q[0.5 + (z + 1)/(C R)]`, guide logits ``phi``.

    :param int num_categories: :math:`C`.
    :param float R: the reward scale :math:`R`.
    :returns: ``(model, guide)``.
    """

    def model():
        with poutine.mask(mask=False):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(num_categories, device=device)))
        pyro.factor("objective", 0.5 + (z + 1.0) / (num_categories * R))

    def guide():
        phi = pyro.param("phi", torch.zeros(num_categories, device=device))
        with poutine.mask(mask=False):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide


def categorical_exact_grad(phi, R=30):
    """:math:`\\nabla_\\phi E[f(z)] = p \\odot (f - E_p f)` for the ARSM toy's reward."""
    p = torch.softmax(phi, -1)
    num_categories = phi.shape[-1]
    f = 0.5 + (torch.arange(num_categories, dtype=phi.dtype, device=phi.device) + 1) / (
        num_categories * R
    )
    return p * (f - (p * f).sum(-1, keepdim=True))


CATEGORICAL_ESTIMATORS = {
    "exact": None,
    "arsm": lambda: ARSM_ELBO(max_plate_nesting=0),
    "reinforce": lambda: Trace_ELBO(),
    "loo2": lambda: ReinforceLOO_ELBO(num_particles=2, max_plate_nesting=0),
    "vargrad2": lambda: VarGrad_ELBO(num_particles=2, max_plate_nesting=0),
}


def train_categorical(estimator, num_steps=5000, seed=0, num_categories=30, R=30, lr=1.0, device=None,
                      checkpoints=()):
    """Gradient ascent on the ARSM toy; returns the probability of the best category after
    ``num_steps`` steps (and at each step in ``checkpoints``).

    :param str estimator: a key of :data:`CATEGORICAL_ESTIMATORS` (``"exact"`` uses the exact
        gradient, the others ``SVI`` with plain SGD).
    """
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    history = {}
    if estimator == "exact":
        phi = torch.zeros(num_categories, device=device)
        for step in range(1, num_steps + 1):
            phi = phi + lr * categorical_exact_grad(phi, R)
            if step in checkpoints:
                history[step] = torch.softmax(phi, -1)[-1].item()
        return torch.softmax(phi, -1)[-1].item(), history
    model, guide = categorical_toy(num_categories, R, device)
    svi = SVI(model, guide, SGD({"lr": lr}), loss=CATEGORICAL_ESTIMATORS[estimator]())
    for step in range(1, num_steps + 1):
        svi.step()
        if step in checkpoints:
            history[step] = torch.softmax(pyro.param("phi").detach(), -1)[-1].item()
    return torch.softmax(pyro.param("phi").detach(), -1)[-1].item(), history


BERNOULLI_ESTIMATORS = {
    "reinforce (Trace_ELBO)": lambda: Trace_ELBO(),
    "loo(2)": lambda: ReinforceLOO_ELBO(num_particles=2, max_plate_nesting=0),
    "vargrad(2)": lambda: VarGrad_ELBO(num_particles=2, max_plate_nesting=0),
    "arm": lambda: ARSM_ELBO(max_plate_nesting=0),
    "disarm": lambda: ARSM_ELBO(bernoulli="disarm", max_plate_nesting=0),
}


def bernoulli_gradients(make_elbo, num_samples, target=0.499, device=None):
    """``num_samples`` gradient estimates of :math:`E[(b - t)^2]` at :math:`\\theta = 0`."""
    pyro.clear_param_store()
    model, guide = bernoulli_toy(target, device)
    guide()
    theta = pyro.param("theta").unconstrained()
    elbo = make_elbo()
    grads = torch.empty(num_samples, device=theta.device, dtype=theta.dtype)
    for i in range(num_samples):
        theta.grad = None
        elbo.loss_and_grads(model, guide)
        grads[i] = theta.grad
    return grads


def bernoulli_expected_loss(theta, target=0.499):
    """:math:`E[(b - t)^2] = p (1 - t)^2 + (1 - p) t^2` with :math:`p = \\sigma(\\theta)`."""
    p = torch.sigmoid(torch.as_tensor(theta))
    return p * (1 - target) ** 2 + (1 - p) * target**2


#: the RELAX paper's Fig. 1 comparison (Adam, lr 0.01); RELAX's surrogate is 1-10(tanh)-1 on
#: the relaxed value sigma(z / lambda)
RELAX_TOY_ESTIMATORS = {
    "reinforce": lambda: Trace_ELBO(),
    "rebar": lambda: REBAR_ELBO(max_plate_nesting=0),
    "relax": lambda: RELAX_ELBO(max_plate_nesting=0, hidden_dims=(10,), activation=torch.nn.Tanh),
    "loo2": lambda: ReinforceLOO_ELBO(num_particles=2, max_plate_nesting=0),
    "arm": lambda: ARSM_ELBO(max_plate_nesting=0),
    "disarm": lambda: ARSM_ELBO(bernoulli="disarm", max_plate_nesting=0),
}


def train_bernoulli_toy(estimator, num_steps=10000, seed=0, lr=0.01, target=0.499,
                        checkpoints=(), variance_draws=500, device=None):
    """Minimises :math:`E[(b - t)^2]` with Adam through ``SVI`` (the RELAX paper's Fig. 1).

    :param str estimator: a key of :data:`RELAX_TOY_ESTIMATORS`.
    :param checkpoints: steps at which the gradient variance is estimated from
        ``variance_draws`` draws at the current parameters (without stepping).
    :returns: ``(p, variances)``: :math:`p(b = 1)` after every step (a tensor of
        ``num_steps + 1`` values, the first before training), and a dict step -> variance of
        the gradient with respect to :math:`\\theta`.
    """
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    model, guide = bernoulli_toy(target, device)
    elbo = RELAX_TOY_ESTIMATORS[estimator]()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=elbo)
    guide()
    probs = torch.empty(num_steps + 1)
    probs[0] = 0.5
    variances = {}

    def variance():
        store = pyro.get_param_store()
        draws = torch.empty(variance_draws)
        for i in range(variance_draws):
            for q in store.values():
                q.unconstrained().grad = None
            elbo.loss_and_grads(model, guide)
            draws[i] = store["theta"].unconstrained().grad
        for q in store.values():
            q.unconstrained().grad = None
        return draws.var().item()

    for step in range(1, num_steps + 1):
        if step - 1 in checkpoints:
            variances[step - 1] = variance()
        svi.step()
        probs[step] = torch.sigmoid(pyro.param("theta").detach()).item()
    if num_steps in checkpoints:
        variances[num_steps] = variance()
    return probs, variances


def relax_toy(args):
    """Runs :func:`train_bernoulli_toy` for each estimator and seed; prints the table and
    writes the figure."""
    checkpoints = list(range(0, args.relax_steps + 1, args.variance_every))
    results = {}
    for name in args.relax_estimators:
        runs = []
        start = time.perf_counter()
        for seed in args.seeds:
            runs.append(train_bernoulli_toy(
                name, args.relax_steps, seed, args.relax_lr, args.target, checkpoints,
                args.variance_draws))
        results[name] = runs
        seconds = (time.perf_counter() - start) / len(args.seeds)
        print("  {:<10} {:.1f} s per seed".format(name, seconds), flush=True)

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])

    at = min(c for c in checkpoints if c >= min(1000, args.relax_steps))
    print("\nRELAX toy (Fig. 1 of Grathwohl et al. 2018): minimise E[(b - {})^2], Adam lr {}, {} "
          "steps, {} seeds; median [min, max] over seeds".format(
              args.target, args.relax_lr, args.relax_steps, len(args.seeds)))
    print("| estimator | log10 Var[grad] at step 0 | at step {} | p(b=1) at step {} | "
          "first step with p(b=1) < 0.1 |".format(at, args.relax_steps))
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        v0 = [math.log10(v[0]) if v[0] > 0 else float("-inf") for _, v in runs]
        va = [math.log10(v[at]) if v[at] > 0 else float("-inf") for _, v in runs]
        pf = [p[-1].item() for p, _ in runs]
        first = [next((i for i, q in enumerate(p.tolist()) if q < 0.1), None) for p, _ in runs]
        reached = [f for f in first if f is not None]
        first_text = "{} of {} seeds; median {}".format(
            len(reached), len(first), med(reached) if reached else "-")
        print("| {} | {:.2f} [{:.2f}, {:.2f}] | {:.2f} [{:.2f}, {:.2f}] | {:.3f} [{:.3f}, {:.3f}] | {} |".format(
            name, med(v0), min(v0), max(v0), med(va), min(va), max(va), med(pf), min(pf), max(pf),
            first_text))
    if args.out:
        _plot_relax_toy(results, checkpoints, args)
    return results


def _plot_relax_toy(results, checkpoints, args):
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    fig, (ax_loss, ax_var) = plt.subplots(1, 2, figsize=(11, 4))
    steps = torch.arange(args.relax_steps + 1)
    for name, runs in results.items():
        loss = torch.stack([bernoulli_expected_loss(torch.logit(p), args.target) for p, _ in runs])
        line, = ax_loss.plot(steps, loss.median(0).values, label=name)
        ax_loss.fill_between(steps, loss.min(0).values, loss.max(0).values,
                             color=line.get_color(), alpha=0.2)
        # a variance of exactly 0 (DisARM at p = 0.5; any estimator once p(b=1) is so small
        # that every draw is b = 0) is drawn at the floor 1e-16
        logvar = torch.tensor([[math.log10(max(v[c], 1e-16)) for c in checkpoints] for _, v in runs])
        ax_var.plot(checkpoints, logvar.median(0).values, color=line.get_color(), label=name)
        ax_var.fill_between(checkpoints, logvar.min(0).values, logvar.max(0).values,
                            color=line.get_color(), alpha=0.2)
    ax_loss.set(xlabel="step", ylabel="E[(b - t)^2]", title="loss (median, min-max over seeds)")
    ax_var.set(xlabel="step", ylabel="log10 Var[d loss / d theta] (0 drawn at -16)",
               title="gradient variance")
    ax_loss.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "relax_toy.png")
    fig.savefig(path, dpi=120)
    with open(os.path.join(args.out, "relax_toy.json"), "w") as f:
        json.dump({name: [{"p": p.tolist(), "variance": {str(k): x for k, x in v.items()}}
                          for p, v in runs] for name, runs in results.items()}, f)
    print("wrote", path, "and relax_toy.json")


def main(args):
    problems = args.problems or ["bernoulli", "categorical"]
    unknown = sorted(set(problems) - {"bernoulli", "relax", "categorical"})
    if unknown:
        raise SystemExit("error: unknown problem(s) {}: choose from bernoulli, relax, "
                         "categorical".format(", ".join(unknown)))
    args.problems = problems
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device)
    print("threads={} device={}".format(torch.get_num_threads(), device))
    if "bernoulli" in args.problems:
        pyro.set_rng_seed(args.seeds[0])
        exact = bernoulli_exact_grad(0.0, args.target).item()
        print("\nBernoulli toy: d/dtheta E[(b - {})^2] at p = 0.5, exact {:.3e}, {} samples".format(
            args.target, exact, args.num_samples))
        print("{:<24} {:>12} {:>12} {:>10}".format("estimator", "mean", "variance", "ms/call"))
        for name, make in BERNOULLI_ESTIMATORS.items():
            start = time.perf_counter()
            g = bernoulli_gradients(make, args.num_samples, args.target, device)
            ms = 1e3 * (time.perf_counter() - start) / args.num_samples
            print("{:<24} {:>12.3e} {:>12.3e} {:>10.2f}".format(name, g.mean().item(), g.var().item(), ms))
    if "relax" in args.problems:
        relax_toy(args)
    results = {}
    if "categorical" in args.problems:
        print("\nARSM toy: C = R = {}, SGD step {}, {} steps; probability of the best category".format(
            args.num_categories, args.learning_rate, args.num_steps))
        print("{:<12} {}".format("estimator", " ".join("seed {:>3}".format(s) for s in args.seeds)))
        for name in args.estimators:
            probs = []
            for seed in args.seeds:
                p, _ = train_categorical(name, args.num_steps, seed, args.num_categories,
                                         args.num_categories, args.learning_rate, device)
                probs.append(p)
            results[name] = probs
            print("{:<12} {}".format(name, " ".join("{:>8.3f}".format(p) for p in probs)))
    return results


def make_parser():
    parser = cli.make_parser(
        "toys",
        "Three toy problems, run through Pyro's SVI and ELBO API. Bernoulli toy (as in the "
        "DisARM paper): mean and variance of each estimator's gradient of "
        "E[(b - t)^2], b ~ Bernoulli(sigmoid(theta)), at theta = 0, for REINFORCE (Trace_ELBO), "
        "ReinforceLOO_ELBO, VarGrad_ELBO, ARM and DisARM. RELAX toy (Grathwohl et al. 2018, "
        "Fig. 1): Adam on the same objective with REINFORCE, REBAR, RELAX, LOO, ARM and "
        "DisARM; loss and gradient-variance curves over seeds. ARSM toy (Yin, Yue & Zhou 2019): SGD ascent on "
        "E[0.5 + (z + 1) / (C R)], z ~ Categorical(softmax(phi)), C = R = --num-categories; "
        "prints the probability of the best category per estimator and seed.",
    )
    parser.add_argument("problems", nargs="*", metavar="PROBLEM",
                        help="which toys to run: bernoulli, relax, categorical (default: "
                        "bernoulli categorical; the RELAX toy trains for minutes: ask for it)")
    parser.add_argument("--relax-steps", type=int, default=10000,
                        help="Adam steps (RELAX toy)")
    parser.add_argument("--relax-lr", type=float, default=0.01,
                        help="Adam learning rate (RELAX toy)")
    parser.add_argument("--relax-estimators", nargs="+", default=list(RELAX_TOY_ESTIMATORS),
                        choices=list(RELAX_TOY_ESTIMATORS), help="estimators (RELAX toy)")
    parser.add_argument("--variance-every", type=int, default=1000,
                        help="steps between gradient-variance estimates (RELAX toy)")
    parser.add_argument("--variance-draws", type=int, default=500,
                        help="gradient draws per variance estimate (RELAX toy)")
    parser.add_argument("--out", default=None,
                        help="folder for the RELAX toy's figure relax_toy.png (none if omitted)")
    parser.add_argument("--num-samples", type=int, default=20000,
                        help="gradient samples per estimator (Bernoulli toy)")
    parser.add_argument("--target", type=float, default=0.499,
                        help="the target t of E[(b - t)^2] (Bernoulli toy)")
    parser.add_argument("--num-steps", type=int, default=5000,
                        help="SGD steps (ARSM toy)")
    parser.add_argument("--learning-rate", type=float, default=1.0,
                        help="SGD step size (ARSM toy)")
    parser.add_argument("--num-categories", type=int, default=30,
                        help="categories C, also the reward scale R (ARSM toy)")
    parser.add_argument("--estimators", nargs="+", default=["exact", "arsm", "reinforce"],
                        choices=sorted(CATEGORICAL_ESTIMATORS),
                        help="gradient estimators (ARSM toy); exact is exact gradient ascent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="random seeds: one ARSM-toy run per seed; the Bernoulli toy "
                        "uses the first")
    cli.add_common_arguments(parser, seed=False)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
