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
  :math:`C = R = 30`, :math:`\\phi = 0`, plain gradient ascent with step 1. The ``family``
  problem runs it (and a small C) for AR, ARS, ARSM, ARS+, ARSM+, DisARM-IW, DisARM-SB,
  DisARM-Tree, REINFORCE and RLOO at equal evaluations: gradient variance at
  :math:`\\phi = 0`, model evaluations per step and :math:`p(\\text{best})` along training.

Both objectives are expectations under the guide, not ELBOs. They are written as Pyro programs
whose ELBO *is* that expectation: the latent site is wrapped in ``poutine.mask(mask=False)`` in
model and guide, so its log-densities drop out of ``log p - log q`` (while its score function
stays, as Pyro never masks score functions), and the objective enters through ``pyro.factor``.

Examples::

    python -m models.toys                       # the Bernoulli and ARSM toys
    python -m models.toys bernoulli --num-samples 20000
    python -m models.toys relax --seeds 0 1 2 3 4 --out results/toys
    python -m models.toys categorical --num-steps 5000 --seeds 0 1 2
    python -m models.toys family --out results/toys   # the ARM family and DisARM, C = 30, 5
"""

import collections
import json
import math
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI
from pyro.optim import SGD

from models import cli
from pyro_relax.infer import make_elbo

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
    "ar": lambda: make_elbo("ar", max_plate_nesting=0),
    "ars": lambda: make_elbo("ars", max_plate_nesting=0),
    "arsm": lambda: make_elbo("arsm", max_plate_nesting=0),
    "ars+": lambda: make_elbo("ars+", max_plate_nesting=0),
    "arsm+": lambda: make_elbo("arsm+", max_plate_nesting=0),
    "disarm-iw": lambda: make_elbo("disarm-iw", max_plate_nesting=0),
    "disarm-sb": lambda: make_elbo("disarm-sb", max_plate_nesting=0),
    "disarm-tree": lambda: make_elbo("disarm-tree", max_plate_nesting=0),
    "reinforce": lambda: make_elbo("trace"),
    "loo2": lambda: make_elbo("rloo", num_particles=2, max_plate_nesting=0),
    "vargrad2": lambda: make_elbo("vargrad", num_particles=2, max_plate_nesting=0),
}


def train_categorical(estimator, num_steps=5000, seed=0, num_categories=30, R=30, lr=1.0, device=None,
                      checkpoints=()):
    """Gradient ascent on the ARSM toy; returns the probability of the best category after
    ``num_steps`` steps (and at each step in ``checkpoints``).

    :param estimator: a key of :data:`CATEGORICAL_ESTIMATORS` (``"exact"`` uses the exact
        gradient, the others ``SVI`` with plain SGD), or a callable returning the ELBO.
    """
    make_elbo = estimator if callable(estimator) else CATEGORICAL_ESTIMATORS[estimator]
    checkpoints = set(checkpoints)
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
    svi = SVI(model, guide, SGD({"lr": lr}), loss=make_elbo())
    for step in range(1, num_steps + 1):
        svi.step()
        if step in checkpoints:
            history[step] = torch.softmax(pyro.param("phi").detach(), -1)[-1].item()
    return torch.softmax(pyro.param("phi").detach(), -1)[-1].item(), history


BERNOULLI_ESTIMATORS = {
    "reinforce (Trace_ELBO)": lambda: make_elbo("trace"),
    "loo(2)": lambda: make_elbo("rloo", num_particles=2, max_plate_nesting=0),
    "vargrad(2)": lambda: make_elbo("vargrad", num_particles=2, max_plate_nesting=0),
    "arm": lambda: make_elbo("arm", max_plate_nesting=0),
    "disarm": lambda: make_elbo("disarm", max_plate_nesting=0),
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
    "reinforce": lambda: make_elbo("trace"),
    "rebar": lambda: make_elbo("rebar", max_plate_nesting=0),
    "relax": lambda: make_elbo("relax", max_plate_nesting=0, hidden_dims=(10,), activation=torch.nn.Tanh),
    "loo2": lambda: make_elbo("rloo", num_particles=2, max_plate_nesting=0),
    "arm": lambda: make_elbo("arm", max_plate_nesting=0),
    "disarm": lambda: make_elbo("disarm", max_plate_nesting=0),
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


# ------------------------------------------------------------------ the ARSM toy, whole family
#: the default estimators of the ``family`` problem (see :func:`family_spec`)
FAMILY_ESTIMATORS = (
    "exact", "ar", "ars", "arsm", "ars+", "arsm+", "disarm-iw", "disarm-sb", "disarm-tree",
    "disarm-tree:4", "reinforce", "rloo:auto",
)
_FAMILY_LABELS = {
    "ar": "AR", "ars": "ARS", "arsm": "ARSM", "ars+": "ARS+", "arsm+": "ARSM+",
    "disarm-iw": "DisARM-IW", "disarm-sb": "DisARM-SB", "disarm-tree": "DisARM-Tree",
}


def family_spec(spec):
    """An estimator of the ``family`` problem from its name: ``exact`` (exact gradient ascent),
    ``reinforce`` (``Trace_ELBO()``), ``ar``, ``ars``, ``arsm``, ``ars+``, ``arsm+``,
    ``disarm-iw``, ``disarm-sb``, ``disarm-tree`` (``ARSM_ELBO(categorical=...)``), a coupled
    one with ``m`` antithetic pairs (``disarm-tree:4``), ``rloo:S`` (``ReinforceLOO_ELBO`` with
    ``S >= 2`` particles, vectorized) or ``rloo:auto`` (one ``rloo:S`` per distinct rounded
    mean number of model evaluations of the other estimators, ``S >= 2``).

    :returns: a dict with ``spec``, ``label`` (for tables), ``code`` (how the ELBO is built)
        and ``make`` (a callable returning the ELBO; None for ``exact`` and ``rloo:auto``).
    :raises ValueError: for an unknown name or a bad count.
    """
    name, _, count = spec.partition(":")
    if spec == "exact":
        return dict(spec=spec, label="exact gradient ascent", code="—", make=None)
    if spec == "reinforce":
        return dict(spec=spec, label="REINFORCE", code="Trace_ELBO()",
                    make=lambda: make_elbo("trace"))
    if name == "rloo" and count == "auto":
        return dict(spec=spec, label="RLOO (S = evals)", code="ReinforceLOO_ELBO", make=None)
    if name == "rloo" and count.isdigit() and int(count) >= 2:
        S = int(count)
        return dict(spec=spec, label="RLOO (S={})".format(S),
                    code="ReinforceLOO_ELBO(num_particles={}, vectorize_particles=True)".format(S),
                    make=lambda: make_elbo("rloo", num_particles=S, vectorize_particles=True,
                                           max_plate_nesting=0))
    if name in _FAMILY_LABELS and (not count or (name.startswith("disarm") and count.isdigit()
                                                 and int(count) >= 1)):
        m = int(count) if count else 1
        label = _FAMILY_LABELS[name] + (" (m={})".format(m) if count else "")
        code = "ARSM_ELBO(categorical={!r}{})".format(name, ", num_pairs={}".format(m) if count else "")
        return dict(spec=spec, label=label, code=code,
                    make=lambda: make_elbo(name, num_pairs=m if count else None,
                                           max_plate_nesting=0))
    raise ValueError(
        "unknown family estimator {!r}: choose from exact, reinforce, {}, disarm-iw:M, "
        "disarm-sb:M, disarm-tree:M (M antithetic pairs), rloo:S (S >= 2) or rloo:auto".format(
            spec, ", ".join(_FAMILY_LABELS)))


def _family_spec_arg(spec):
    import argparse

    try:
        family_spec(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))
    return spec


def categorical_gradients(make_elbo, num_draws, num_categories=30, R=30, device=None):
    """``num_draws`` gradient estimates of :math:`E[f(z)]` (the ascent direction, minus the
    loss's gradient) at :math:`\\phi = 0` on the ARSM toy.

    :returns: ``(grads, evaluations, ms)``: a ``(num_draws, C)`` tensor, the mean model
        evaluations per draw (``elbo.num_model_evaluations``; ``num_particles`` for Pyro's
        ELBOs) and milliseconds per draw.
    """
    pyro.clear_param_store()
    model, guide = categorical_toy(num_categories, R, device)
    guide()
    phi = pyro.param("phi").unconstrained()
    elbo = make_elbo()
    grads = torch.empty(num_draws, num_categories, device=phi.device, dtype=phi.dtype)
    start = time.perf_counter()
    for i in range(num_draws):
        phi.grad = None
        elbo.loss_and_grads(model, guide)
        grads[i] = -phi.grad
    ms = 1e3 * (time.perf_counter() - start) / max(1, num_draws)
    count = getattr(elbo, "num_model_evaluations", None)
    evaluations = elbo.num_particles if count is None else count / max(1, num_draws)
    return grads, evaluations, ms


def _round_half_up(x):
    return int(math.floor(x + 0.5))


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _spread(xs, spec=".3f"):
    return "{:{s}} [{:{s}}, {:{s}}]".format(_median(xs), min(xs), max(xs), s=spec)


def family_toy(args):
    """The ARSM toy for the whole ARM family and the coupled estimators, for each
    ``--family-categories`` C (with R = C): the gradient variance at :math:`\\phi = 0`
    (``--family-draws`` draws; the per-logit variances summed over the C logits), the model
    evaluations per step, and the probability of the best category along ``--num-steps`` SGD
    steps (step ``--learning-rate``, through ``SVI``) for each seed; prints a Markdown table
    and, with ``--out``, writes ``categorical_family.png`` and ``categorical_family.json``.

    :returns: a dict with ``rows`` (C -> list of row dicts), ``table`` (the Markdown table)
        and ``seconds``.
    """
    start = time.perf_counter()
    steps, every = args.num_steps, max(1, args.record_every)
    checkpoints = sorted(set(range(every, steps + 1, every)) | ({steps} if steps else set()))
    device = torch.device(args.device)
    rows_by_C = {}
    notes = []
    for C in args.family_categories:
        exact = categorical_exact_grad(torch.zeros(C, device=device), C)
        rows = []

        def measure(spec):
            row = dict(family_spec(spec), C=C)
            if row["make"] is None:  # exact ascent
                row.update(evals=None, var_sum=0.0, bias_z=0.0, ms_draw=float("nan"))
                return row
            pyro.set_rng_seed(args.seeds[0])
            grads, evals, ms = categorical_gradients(row["make"], args.family_draws, C, C, device)
            var = grads.var(0) if len(grads) > 1 else torch.zeros(C)
            se = (var / len(grads)).sqrt()
            bias = (grads.mean(0) - exact).abs()
            z = torch.where(se > 0, bias / se.clamp(min=1e-300),
                            torch.where(bias > 1e-12, torch.full_like(bias, float("inf")),
                                        torch.zeros_like(bias)))
            row.update(evals=evals, var_sum=var.sum().item(), bias_z=z.max().item(), ms_draw=ms)
            return row

        for spec in args.family_estimators:
            if spec != "rloo:auto":
                rows.append(measure(spec))
        if "rloo:auto" in args.family_estimators:
            matches = collections.OrderedDict()
            for row in rows:
                if row["evals"] is not None and _round_half_up(row["evals"]) >= 2:
                    matches.setdefault(_round_half_up(row["evals"]), []).append(row["label"])
            position = sum(1 for s in args.family_estimators[: args.family_estimators.index(
                "rloo:auto")] if s != "rloo:auto")
            auto = [measure("rloo:{}".format(S)) for S in sorted(matches)
                    if "rloo:{}".format(S) not in args.family_estimators]
            rows[position:position] = auto
            notes.append("C = {}: rloo:auto has S = {}".format(C, "; ".join(
                "{} ({})".format(S, ", ".join(labels)) for S, labels in sorted(matches.items()))))
        for row in rows:
            runs, seconds = [], 0.0
            for seed in args.seeds:
                t0 = time.perf_counter()
                final, history = train_categorical(
                    row["make"] or "exact", steps, seed, C, C, args.learning_rate, device,
                    checkpoints)
                seconds += time.perf_counter() - t0
                runs.append([1.0 / C] + [history[c] for c in checkpoints])
            row["p"] = runs
            row["ms_step"] = 1e3 * seconds / max(1, steps * len(args.seeds))
            print("  C={} {:<22} variance {:.2e} ({} draws, {:.2f} ms/draw), {} evals; p(best) "
                  "after {} steps {}; {:.2f} ms/step".format(
                      C, row["label"], row["var_sum"], args.family_draws, row["ms_draw"],
                      "-" if row["evals"] is None else "{:.2f}".format(row["evals"]), steps,
                      _spread([r[-1] for r in runs]), row["ms_step"]), flush=True)
        rows_by_C[C] = rows

    mid = min((c for c in checkpoints if c >= steps // 5), default=None)
    head = ["C", "estimator", "ELBO", "evals/step", "Σ Var at φ = 0", "Σ Var × evals",
            "max \\|bias\\|/se"]
    if mid is not None and mid != steps:
        head.append("p(best) @{}".format(mid))
    head += ["p(best) @{}".format(steps), "ms/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for C, rows in rows_by_C.items():
        for row in rows:
            exact_row = row["evals"] is None
            cells = [
                str(C), row["label"], "`{}`".format(row["code"]) if not exact_row else "—",
                "—" if exact_row else "{:.2f}".format(row["evals"]),
                "0" if exact_row else "{:.2e}".format(row["var_sum"]),
                "—" if exact_row else "{:.2e}".format(row["var_sum"] * row["evals"]),
                "—" if exact_row else "{:.1f}".format(row["bias_z"]),
            ]
            if mid is not None and mid != steps:
                cells.append(_spread([r[checkpoints.index(mid) + 1] for r in row["p"]]))
            cells += [_spread([r[-1] for r in row["p"]]), "{:.2f}".format(row["ms_step"])]
            lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\nARSM toy, the whole family: maximise E[0.5 + (z + 1)/(C R)], R = C, phi = 0 at "
          "the start; Σ Var: the variance of each of the C coordinates of the gradient "
          "estimate at phi = 0 over {} draws, summed over the C logits (divide by C for the "
          "mean per logit); max |bias|/se: the largest |mean - exact| over the logits in "
          "standard errors; p(best): the probability of the best category after SGD (step {}) "
          "through SVI, median [min, max] over seeds {}; ms/step: training, one thread".format(
              args.family_draws, args.learning_rate, " ".join(map(str, args.seeds))))
    print(table)
    for note in notes:
        print("# " + note)
    for C, rows in rows_by_C.items():
        by = {row["spec"]: row for row in rows}
        if "arsm" in by and "arsm+" in by:
            a, b = by["arsm"]["var_sum"], by["arsm+"]["var_sum"]
            print("# C = {}: ARSM+ vs ARSM at phi = 0: Σ Var {:.3e} vs {:.3e}: ARSM+ is {:.2f}x "
                  "{} ({} evaluations each)".format(
                      C, b, a, a / b if b < a else b / a, "lower" if b < a else "higher",
                      "{:.2f}".format(by["arsm"]["evals"])))
    seconds = time.perf_counter() - start
    print("# family: {:.0f} s".format(seconds), flush=True)
    if args.out:
        _plot_family(rows_by_C, checkpoints, args)
    return {"rows": rows_by_C, "table": table, "seconds": seconds, "checkpoints": checkpoints}


def _plot_family(rows_by_C, checkpoints, args):
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    labels = []
    for rows in rows_by_C.values():
        labels += [r["label"] for r in rows if r["label"] not in labels]
    cmap = plt.get_cmap("tab20")
    color = {label: cmap(i % 20) for i, label in enumerate(labels)}
    color["exact gradient ascent"] = "black"
    fig, axes = plt.subplots(len(rows_by_C), 2, figsize=(14, 5 * len(rows_by_C)), squeeze=False)
    steps = [0] + list(checkpoints)
    for (C, rows), (ax_var, ax_p) in zip(rows_by_C.items(), axes):
        measured = [r for r in rows if r["evals"] is not None and r["var_sum"] > 0]
        y = list(range(len(measured)))[::-1]
        ax_var.barh(y, [r["var_sum"] for r in measured], color=[color[r["label"]] for r in measured],
                    log=True)
        ax_var.set_yticks(y)
        ax_var.set_yticklabels(["{} ({:.1f} evals)".format(r["label"], r["evals"]) for r in measured],
                               fontsize=8)
        for yy, r in zip(y, measured):
            ax_var.text(r["var_sum"], yy, " {:.1e}".format(r["var_sum"]), va="center", fontsize=7)
        ax_var.set(xlabel="Σ over the {} logits of Var[gradient estimate] at φ = 0 (log scale)".format(C),
                   title="C = R = {}: gradient variance, {} draws".format(C, args.family_draws))
        ax_var.set_xlim(right=ax_var.get_xlim()[1] * 30)
        for r in rows:
            p = torch.tensor(r["p"])
            # exact ascent dashed, the coupled estimators dash-dotted, REINFORCE / RLOO dotted
            style = ("--" if r["evals"] is None else "-." if r["spec"].startswith("disarm")
                     else ":" if r["spec"].startswith(("rloo", "reinforce")) else "-")
            line, = ax_p.plot(steps, p.median(0).values, style, color=color[r["label"]],
                              label=r["label"], lw=1.2)
            if len(p) > 1:
                ax_p.fill_between(steps, p.min(0).values, p.max(0).values,
                                  color=line.get_color(), alpha=0.15)
        ax_p.set(xlabel="SGD step (step size {})".format(args.learning_rate),
                 ylabel="p(best category)", ylim=(0, 1.02),
                 title="C = R = {}: median, min-max over {} seeds".format(C, len(args.seeds)))
        ax_p.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path = os.path.join(args.out, "categorical_family.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    with open(os.path.join(args.out, "categorical_family.json"), "w") as f:
        json.dump({"steps": steps, "seeds": list(args.seeds), "draws": args.family_draws,
                   "rows": {str(C): [{k: v for k, v in r.items() if k != "make"} for r in rows]
                            for C, rows in rows_by_C.items()}}, f)
    print("wrote", path, "and categorical_family.json")


def main(args):
    problems = args.problems or ["bernoulli", "categorical"]
    unknown = sorted(set(problems) - {"bernoulli", "relax", "categorical", "family"})
    if unknown:
        raise SystemExit("error: unknown problem(s) {}: choose from bernoulli, relax, "
                         "categorical, family".format(", ".join(unknown)))
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
    if "family" in args.problems:
        results["family"] = family_toy(args)
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
        "prints the probability of the best category per estimator and seed. ARSM toy, whole "
        "family (problem 'family'): for each --family-categories C (R = C), the gradient "
        "variance at phi = 0 and the model evaluations per step of AR, ARS, ARSM, ARS+, ARSM+, "
        "DisARM-IW/SB/Tree, REINFORCE and RLOO at equal evaluations, and the probability of the "
        "best category along --num-steps SGD steps over --seeds; a Markdown table and, with "
        "--out, categorical_family.png.",
    )
    parser.add_argument("problems", nargs="*", metavar="PROBLEM",
                        help="which toys to run: bernoulli, relax, categorical, family (default: "
                        "bernoulli categorical; the RELAX toy and the family train for minutes: "
                        "ask for them)")
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
                        help="folder for the figures relax_toy.png (RELAX toy) and "
                        "categorical_family.png (family), with their data as JSON (none if "
                        "omitted)")
    parser.add_argument("--num-samples", type=int, default=20000,
                        help="gradient samples per estimator (Bernoulli toy)")
    parser.add_argument("--target", type=float, default=0.499,
                        help="the target t of E[(b - t)^2] (Bernoulli toy)")
    parser.add_argument("--num-steps", type=int, default=5000,
                        help="SGD steps (ARSM toy and family)")
    parser.add_argument("--learning-rate", type=float, default=1.0,
                        help="SGD step size (ARSM toy)")
    parser.add_argument("--num-categories", type=int, default=30,
                        help="categories C, also the reward scale R (ARSM toy)")
    parser.add_argument("--estimators", nargs="+", default=["exact", "arsm", "reinforce"],
                        choices=sorted(CATEGORICAL_ESTIMATORS),
                        help="gradient estimators (ARSM toy); exact is exact gradient ascent")
    parser.add_argument("--family-categories", type=int, nargs="+", default=[30, 5],
                        help="the categories C of the family problem, one table block and "
                        "figure row each; R = C")
    parser.add_argument("--family-estimators", nargs="+", type=_family_spec_arg,
                        default=list(FAMILY_ESTIMATORS), metavar="NAME",
                        help="estimators of the family problem: exact, reinforce "
                        "(Trace_ELBO()), ar, ars, arsm, ars+, arsm+, disarm-iw, disarm-sb, "
                        "disarm-tree (ARSM_ELBO(categorical=NAME)), disarm-*:M (M antithetic "
                        "pairs), rloo:S (ReinforceLOO_ELBO with S particles) or rloo:auto (one "
                        "rloo:S per distinct rounded mean evaluations of the others, S >= 2)")
    parser.add_argument("--family-draws", type=int, default=2000,
                        help="gradient draws at phi = 0 per estimator (family)")
    parser.add_argument("--record-every", type=int, default=10,
                        help="steps between the recorded p(best) values (family)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="random seeds: one ARSM-toy (and family) run per seed; the "
                        "Bernoulli toy and the family's gradient draws use the first")
    cli.add_common_arguments(parser, seed=False)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
