"""The papers' toy problems, driven through Pyro's ``SVI`` and the ELBO API.

- **Bernoulli toy**, as compared in the DisARM paper (Dong, Mnih & Tucker 2020; the problem
  is from Tucker et al. 2017 and Grathwohl et al. 2018, Fig. 1): minimise
  :math:`E_{b \\sim \\mathrm{Bern}(\\sigma(\\theta))}[(b - t)^2]` with :math:`t = 0.499`; the exact
  gradient at :math:`p = 0.5` is :math:`0.25 (1 - 2t)`.
- **ARSM toy** (Yin, Yue & Zhou 2019, Sec. 5.1): maximise
  :math:`E_{z \\sim \\mathrm{Cat}(\\mathrm{softmax}(\\phi))}[0.5 + (z + 1) / (C R)]` with
  :math:`C = R = 30`, :math:`\\phi = 0`, plain gradient ascent with step 1.

Both objectives are expectations under the guide, not ELBOs. They are written as Pyro programs
whose ELBO *is* that expectation: the latent site is wrapped in ``poutine.mask(mask=False)`` in
model and guide, so its log-densities drop out of ``log p - log q`` (while its score function
stays, as Pyro never masks score functions), and the objective enters through ``pyro.factor``.

Examples::

    python -m models.toys                       # both toys, default settings
    python -m models.toys bernoulli --num-samples 20000
    python -m models.toys categorical --num-steps 5000 --seeds 0 1 2
"""

import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import SGD

from models import cli
from pyro_relax.infer import ARSM_ELBO, ReinforceLOO_ELBO, VarGrad_ELBO

__all__ = [
    "bernoulli_toy",
    "bernoulli_exact_grad",
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


def main(args):
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device)
    print("threads={} device={}".format(torch.get_num_threads(), device))
    if args.problem in ("bernoulli", "all"):
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
    results = {}
    if args.problem in ("categorical", "all"):
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
        "Two toy problems, run through Pyro's SVI and ELBO API. Bernoulli toy (as in the "
        "DisARM paper): mean and variance of each estimator's gradient of "
        "E[(b - t)^2], b ~ Bernoulli(sigmoid(theta)), at theta = 0, for REINFORCE (Trace_ELBO), ReinforceLOO_ELBO, "
        "VarGrad_ELBO, ARM and DisARM. ARSM toy (Yin, Yue & Zhou 2019): SGD ascent on "
        "E[0.5 + (z + 1) / (C R)], z ~ Categorical(softmax(phi)), C = R = --num-categories; "
        "prints the probability of the best category per estimator and seed.",
    )
    parser.add_argument("problem", nargs="?", default="all",
                        choices=["all", "bernoulli", "categorical"],
                        help="which toy to run")
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
