"""Training throughput: images per second of a training step on the nonlinear Bernoulli VAE
(784-200-200-200, 200 latents, Fashion-MNIST, uniform prior: the ``rodeo`` protocol), for
``Trace_ELBO(2)``, ``ReinforceLOO_ELBO(2)``, DisARM and RELAX, across batch sizes, on one process
and data-parallel on two (DDP over gloo on CPU, one thread each).

A step is what ``--trainer lightning`` does per step, without Lightning's bookkeeping: a
dynamically binarized batch, ``loss = elbo(model, guide)(x, N)`` with the plate scaled to the
training set, ``backward`` (DDP's all-reduce included) and an Adam step. The time per step is the
median over ``--steps`` steps after ``--warmup`` (with two processes, the slower one's median).

Columns: one process at each of ``--one-process-threads``; two processes each taking a batch of
the given size (weak scaling: twice the images per step) and two processes splitting it (strong
scaling: the same global batch, half each); the ratios are images/s over one process's at
``--threads`` threads (on this 2-core machine the ideal is 2) and over the best one-process
figure. ``--lean`` adds the step with Pyro's argument validation off
(``pyro.enable_validation(False)``) and, for RLOO, the same estimator written by hand in plain
torch (no Pyro): the floor a leaner step could reach, so what is left is Pyro's and the
estimator's Python overhead.

Usage::

    python -m benchmarks.throughput --threads 1 --lean
    python -m benchmarks.throughput --batch-sizes 50 1000 --estimators rloo relax
    python -m benchmarks.throughput --device cuda --processes 1 --one-process-threads 1
"""

import contextlib
import os
import platform
import socket
import statistics
import tempfile
import time

import pyro
import torch
import torch.multiprocessing as mp

from models import bernoulli_vae, cli
from models.data import binarize
from models.vae.estimators import make_elbo
from models.vae.experiment import load_data
from models.vae.lightning import Program

ESTIMATORS = ["trace", "rloo", "disarm", "relax"]
#: particles per estimator (the rest take their default: one pair for DisARM, one for RELAX)
PARTICLES = {"trace": 2, "rloo": 2}


def _vae_args(args, device):
    vae_args = bernoulli_vae.make_parser().parse_args(
        ["--protocol", "rodeo", "--data-dir", args.data_dir])
    vae_args = bernoulli_vae.apply_protocol(vae_args)
    vae_args.device = device
    return vae_args


def _build(vae_args, data, estimator, batch):
    """The VAE, and the ELBO's module on ``Program`` s (RELAX's control variates set up on an
    example batch), on ``data``'s device."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = bernoulli_vae.build(vae_args, data).to(data.train.device)
    particles = PARTICLES.get(estimator)
    vae.configure(estimator, particles or 1, None)
    model, guide = Program(vae, "model"), Program(vae, "guide")
    elbo = make_elbo(estimator, particles)
    if hasattr(elbo, "setup"):
        elbo.setup(model, guide, binarize(data.train[:batch]), len(data.train))
    return vae, elbo(model, guide)


class HandRLOO(torch.nn.Module):
    """RLOO with two particles on the same VAE, written by hand in plain torch (no Pyro): the
    same networks, sampling, log densities and surrogate, so its time is the floor of the
    step's."""

    def __init__(self, vae, num_particles=2):
        super().__init__()
        self.vae, self.num_particles = vae, num_particles

    def forward(self, x, size):
        vae, S = self.vae, self.num_particles
        q = torch.distributions.Bernoulli(logits=vae.encoder(x - vae.train_mean))
        z = q.sample((S,))
        log_q = q.log_prob(z).sum(-1)
        prior = torch.distributions.Bernoulli(logits=torch.zeros_like(z))
        log_p = prior.log_prob(z).sum(-1) + torch.distributions.Bernoulli(
            logits=vae.decoder(2 * z - 1)).log_prob(x).sum(-1)
        f = log_p - log_q
        baseline = (f.sum(0, keepdim=True) - f) / (S - 1)
        surrogate = f + (f - baseline).detach() * log_q
        return -surrogate.mean(0).sum() * (size / x.shape[0])


def _time_steps(module, train, batch, steps, warmup, distributed, together=False):
    """Median seconds per step; ``distributed``: through DDP; ``together``: every process
    starts each step at a barrier (no gradient exchange: the processes only share the
    machine)."""
    if distributed:
        module = torch.nn.parallel.DistributedDataParallel(module)
    optim = torch.optim.Adam(module.parameters(), lr=3e-4)
    N, cuda = len(train), train.device.type == "cuda"
    times = []
    for step in range(warmup + steps):
        x = binarize(train[torch.randint(N, (batch,), device=train.device)])
        if cuda:
            torch.cuda.synchronize()
        if together:
            torch.distributed.barrier()
        start = time.perf_counter()
        optim.zero_grad()
        module(x, N).backward()
        optim.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_step(args, vae_args, data, estimator, batch, distributed=False, together=False,
              validate=True, by_hand=False):
    """Seconds per training step (median over ``args.steps``)."""
    with pyro.validation_enabled(validate):
        vae, module = _build(vae_args, data, estimator, batch)
        if by_hand:
            module = HandRLOO(vae, PARTICLES["rloo"])
        return _time_steps(module, data.train, batch, args.steps, args.warmup, distributed,
                           together)


def _worker(rank, world, port, args, jobs, out):
    torch.set_num_threads(args.threads)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            vae_args = _vae_args(args, torch.device("cpu"))
            data = load_data(vae_args)
        results = {}
        for estimator, batch, mode in jobs:
            pyro.set_rng_seed(1 + rank)
            seconds = time_step(args, vae_args, data, estimator, batch,
                                distributed=mode == "ddp", together=mode == "together")
            times = [None] * world
            torch.distributed.all_gather_object(times, seconds)
            results[estimator, batch, mode] = max(times)
        if rank == 0:
            torch.save(results, out)
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(args, jobs):
    """``{(estimator, batch per process, mode): seconds per step}`` on two processes: ``mode``
    ``"ddp"`` (DDP over gloo) or ``"together"`` (no communication, see :func:`_time_steps`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds.pt")
        mp.spawn(_worker, args=(2, _free_port(), args, jobs, out), nprocs=2, join=True)
        return torch.load(out)


def _row(cells):
    return "| " + " | ".join(cells) + " |"


def measure(args, vae_args, data, jobs, threads, two):
    """One repeat of every measurement: ``{key: seconds per step}``."""
    seconds = {}
    if two:
        per_process = sorted({(e, b) for e, b in jobs} | {(e, b // 2) for e, b in jobs})
        modes = ["ddp", "together"]
        seconds.update(two_processes(args, [(e, b, m) for e, b in per_process for m in modes]))
    for estimator, batch in jobs:
        for t in threads:
            torch.set_num_threads(t)
            pyro.set_rng_seed(1)
            seconds[estimator, batch, t] = time_step(args, vae_args, data, estimator, batch)
        torch.set_num_threads(args.threads)
        if args.lean:
            pyro.set_rng_seed(1)
            seconds[estimator, batch, "lean"] = time_step(args, vae_args, data, estimator, batch,
                                                          validate=False)
            if estimator == "rloo":
                pyro.set_rng_seed(1)
                seconds[estimator, batch, "hand"] = time_step(args, vae_args, data, estimator,
                                                              batch, by_hand=True)
    return seconds


def main(args):
    device = torch.device(args.device)
    threads = [args.threads] + [t for t in args.one_process_threads if t != args.threads]
    if device.type != "cpu":
        threads = [args.threads]
    two = 2 in args.processes and device.type == "cpu"
    print(f"# throughput of a training step, nonlinear Bernoulli VAE (rodeo protocol) | "
          f"{os.cpu_count()} cores, device={device}, two processes: {args.threads} thread(s) "
          f"each | python {platform.python_version()} torch {torch.__version__} pyro "
          f"{pyro.__version__} | median over {args.repeats} repeats of the median of "
          f"{args.steps} steps after {args.warmup}", flush=True)
    vae_args = _vae_args(args, device)
    data = load_data(vae_args)
    jobs = [(e, b) for e in args.estimators for b in args.batch_sizes]
    runs = [measure(args, vae_args, data, jobs, threads, two) for _ in range(args.repeats)]
    seconds = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    header = [f"1 process, {t} thread{'s' * (t > 1)}: ms/step | images/s" for t in threads]
    if two:
        header += ["2 processes, no communication: images/s | ratio",
                   "2 processes DDP, the batch each: ms/step | images/s | ratio | over best",
                   "2 processes DDP, half each: ms/step | images/s | ratio | over best"]
    if args.lean:
        header += ["validation off: ms/step | speed-up",
                   "RLOO by hand in torch: ms/step | speed-up"]
    print(_row(["estimator", "batch"] + header))
    print(_row(["---"] * (2 + sum(h.count("|") + 1 for h in header))))
    for estimator, batch in jobs:
        cells = [estimator, str(batch)]
        for t in threads:
            s = seconds[estimator, batch, t]
            cells += [f"{1e3 * s:.1f}", f"{batch / s:.0f}"]
        base = batch / seconds[estimator, batch, args.threads]
        best = max(batch / seconds[estimator, batch, t] for t in threads)
        if two:
            rate = 2 * batch / seconds[estimator, batch, "together"]
            cells += [f"{rate:.0f}", f"{rate / base:.2f}"]
            for per_process in (batch, batch // 2):
                s = seconds[estimator, per_process, "ddp"]
                rate = 2 * per_process / s
                cells += [f"{1e3 * s:.1f}", f"{rate:.0f}", f"{rate / base:.2f}",
                          f"{rate / best:.2f}"]
        if args.lean:
            one = seconds[estimator, batch, args.threads]
            for key in ("lean", "hand"):
                s = seconds.get((estimator, batch, key))
                cells += ["-", "-"] if s is None else [f"{1e3 * s:.1f}", f"{one / s:.2f}"]
        print(_row(cells), flush=True)


def make_parser():
    parser = cli.make_parser(
        "benchmarks.throughput",
        "Images per second of a training step for Trace_ELBO, ReinforceLOO_ELBO, DisARM and "
        "RELAX on the nonlinear Bernoulli VAE, across batch sizes, on one process and on two "
        "DDP processes (gloo, CPU).")
    parser.add_argument("--estimators", nargs="+", default=ESTIMATORS, choices=ESTIMATORS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[50, 200, 1000, 5000])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], choices=[1, 2],
                        help="1 and/or 2 processes (2: DDP over gloo, CPU only)")
    parser.add_argument("--one-process-threads", nargs="+", type=int, default=[1, 2],
                        help="thread counts for the one-process columns (--threads is the "
                        "baseline of the ratios and each DDP process's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats of every measurement (the table shows their median)")
    parser.add_argument("--lean", action="store_true",
                        help="also time the step with Pyro's validation off, and RLOO by hand")
    cli.add_data_argument(parser)
    cli.add_common_arguments(parser, seed=False)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
