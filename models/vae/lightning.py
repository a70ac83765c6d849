"""Training the VAE models with PyTorch Lightning (``--trainer lightning``), on one process or
data-parallel over several (``--devices N --strategy ddp``), as Pyro's
``examples/svi_lightning.py`` does it:

- model and guide are :class:`~pyro.nn.PyroModule` s (:class:`Program`), and
  ``elbo(model, guide)`` is the module Lightning trains: its ``parameters()`` are the
  networks', the learned prior's and the estimator's own (RELAX's control variates, created
  beforehand by ``elbo.setup`` on an example batch), so DDP averages all their gradients;
- the plate of the images is scaled to the training set (``pyro.plate("data", N,
  subsample=...)``), so every process's loss estimates the whole data set's and DDP's average
  is the global batch's; ``--batch-size`` is the global batch, split over the processes, and
  the gradient is taken of the loss times ``batch_size / N`` (the global batch's summed
  -ELBO, what the SVI path differentiates), so the learning rates mean the same;
- a ``DistributedSampler`` gives each process its share of every pass's permutation of the
  training set (:class:`StepBatches`: step ``k``'s batch is a function of ``--seed``, ``k`` and
  the rank alone), and each process seeds its own random stream (binarization and the
  estimator's noise) from ``--seed`` and its rank;
- every ``--save-every`` steps a checkpoint (``last.ckpt`` in ``--out``: the module, RELAX's
  control variates included, the optimizers, the step and every process's random state) is
  written, so ``--resume`` continues exactly where an uninterrupted run would be;
- Lightning's CSV logger writes the curve (``train_elbo`` per step, ``valid_elbo`` through
  the estimator's loss without gradients, per image) to ``--out``.
"""

import collections
import functools
import json
import os
import tempfile
import time
import warnings

import pyro
import torch
from pyro.nn import PyroModule

from models.data import binarize
from models.vae.estimators import model_evaluations

__all__ = ["Program", "StepBatches", "fit"]


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:  # pragma: no cover - the lightning extra
        raise SystemExit("error: --trainer lightning needs PyTorch Lightning: "
                         "pip install -e \".[lightning]\"") from None
    return pl


class Program(PyroModule):
    """A VAE's ``model`` or ``guide`` as a module (its networks as submodules), so that
    ``elbo(model, guide)`` sees their parameters.

    :param vae: the :class:`~models.vae.base.DiscreteVAE`.
    :param str which: ``"model"`` or ``"guide"``.
    """

    def __init__(self, vae, which):
        super().__init__()
        self.vae = vae
        self.which = which

    def forward(self, x, size=None):
        return getattr(self.vae, self.which)(x, size)


class StepBatches:
    """The training batches of one process, one per step: the process's share (a
    ``DistributedSampler``'s, ``drop_last``) of a fresh permutation of the training set per pass
    over it, in batches of ``batch_size``. Iteration starts at the step ``position()`` returns
    (the trainer's step), so a run resumed from a checkpoint draws the batches an
    uninterrupted run draws.

    :param torch.Tensor images: the training images.
    :param int batch_size: images per process and step.
    :param int seed: the permutations' seed.
    :param int num_steps: the last step.
    :param position: ``position() -> int``, the number of steps already trained.
    """

    def __init__(self, images, batch_size, seed, num_steps, position):
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.num_steps, self.position = num_steps, position

    def __len__(self):
        return self.num_steps

    def _share(self, rank, world):
        return len(self.images) // world // self.batch_size  # batches per pass

    def __iter__(self):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        world = torch.distributed.get_world_size() if distributed else 1
        per_pass = self._share(rank, world)
        sampler = torch.utils.data.DistributedSampler(
            range(len(self.images)), num_replicas=world, rank=rank, shuffle=True,
            seed=self.seed, drop_last=True)
        step, order = self.position(), None
        while step < self.num_steps:
            epoch, b = divmod(step, per_pass)
            if order is None or b == 0:
                sampler.set_epoch(epoch)
                order = torch.tensor(list(sampler))
            yield (self.images[order[b * self.batch_size:(b + 1) * self.batch_size]],)
            step += 1


def _module_class():
    if "VAETrainingModule" in globals():
        return globals()["VAETrainingModule"]
    pl = _lightning()

    class VAETrainingModule(pl.LightningModule):
        """The LightningModule of a VAE model and an estimator (see the module docstring).

        :param vae: the model.
        :param elbo: the estimator (from :func:`~models.vae.estimators.make_elbo`).
        :param data: :class:`~models.data.BinarizedSplits`.
        :param args: the parsed options.
        """

        def __init__(self, vae, elbo, data, args):
            super().__init__()
            self.vae, self.args, self.train_size = vae, args, len(data.train)
            self.valid_size = len(data.valid)
            model, guide = Program(vae, "model"), Program(vae, "guide")
            example = binarize(data.train[: max(2, args.batch_size // args.devices)])
            elbo.setup(model, guide, example, self.train_size)  # RELAX's control variates
            self.loss_fn = elbo(model, guide)
            self.automatic_optimization = False  # Adam, and SGD for a learned prior
            self.resumed = False
            self.seconds, self.timed_steps = 0.0, 0
            self.evaluations = 0.0  # model evaluations in training steps (this process's)
            state = self.loss_fn.elbo.trainable_state()
            self.initial_state = None if state is None else {
                k: v.detach().clone() for k, v in state.state_dict().items()}
            self.window = collections.deque(maxlen=1000)  # this process's train ELBO estimates
            #: after training: the steps, the mean of the last (up to 1000) steps' train ELBO
            #: estimates over every process, ms and model evaluations per step, whether every
            #: parameter is the same on every process, the estimator state's largest change
            self.summary = None
            self.summary_file = None  # where the first process writes it, if set

        def estimator_state_change(self):
            """The largest change of the estimator's own state since set-up (None: none)."""
            state = self.loss_fn.elbo.trainable_state()
            if state is None:
                return None
            return max(float((v.detach().cpu() - self.initial_state[k].cpu()).abs().max())
                       for k, v in state.state_dict().items())

        def on_train_end(self):
            flat = torch.cat([p.detach().reshape(-1) for p in self.loss_fn.parameters()])
            mean = torch.tensor(sum(self.window) / max(1, len(self.window)), device=flat.device)
            identical = True
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(mean)
                mean = mean / torch.distributed.get_world_size()
                everyone = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(everyone, flat)
                identical = all(torch.equal(everyone[0], f) for f in everyone)
            steps = self.global_step
            self.summary = dict(
                steps=steps, train_elbo=float(mean), train_elbo_steps=len(self.window),
                ms_per_step=1e3 * self.seconds / max(1, self.timed_steps),
                model_evaluations_per_step=self.evaluations / max(1, steps),
                identical_across_processes=identical,
                estimator_state_change=self.estimator_state_change())
            if self.summary_file is not None and self.global_rank == 0:
                with open(self.summary_file, "w") as f:  # for the main process of ddp_spawn
                    json.dump(self.summary, f)

        def configure_optimizers(self):
            args = self.args
            sgd = [p for n, p in self.loss_fn.named_parameters() if "learned_prior" in n]
            own = [p for n, p in self.loss_fn.named_parameters() if n.startswith("estimator_state")]
            rest = [p for n, p in self.loss_fn.named_parameters()
                    if "learned_prior" not in n and not n.startswith("estimator_state")]
            cv_lr = args.learning_rate if args.cv_learning_rate is None else args.cv_learning_rate
            groups = [{"params": rest, "lr": args.learning_rate}]
            if own:
                groups.append({"params": own, "lr": cv_lr})
            optimizers = [torch.optim.Adam(groups)]
            prior_lr = getattr(args, "prior_learning_rate", None)
            if sgd and prior_lr:
                optimizers.append(torch.optim.SGD(sgd, lr=prior_lr))
            else:
                optimizers[0].add_param_group({"params": sgd, "lr": args.learning_rate})
            return optimizers

        def on_fit_start(self):
            pyro.clear_param_store()  # the modules hold the parameters, not a stale store
            if not self.resumed:
                pyro.set_rng_seed(self.args.seed + 1000 * self.global_rank)

        def training_step(self, batch, batch_idx):
            start = time.perf_counter()
            (images,) = batch
            x = binarize(images)
            self.vae.st_gap = 0.0
            counted = getattr(self.loss_fn.elbo, "num_model_evaluations", None)
            loss = self.loss_fn(x, self.train_size)  # the -ELBO of the whole training set
            self.evaluations += model_evaluations(self.loss_fn.elbo, 1) if counted is None else (
                self.loss_fn.elbo.num_model_evaluations - counted)
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            for optimizer in optimizers:
                optimizer.zero_grad()
            # the gradient of the global batch's summed -ELBO, as in the SVI path (DDP averages
            # the processes' estimates of it): the same learning rates apply
            self.manual_backward(loss * self.args.batch_size / self.train_size)
            optimizers[0].step()  # counts the step (Lightning's global_step)
            for optimizer in optimizers[1:]:
                optimizer.optimizer.step()  # the prior's SGD: not counted again
            if batch_idx or self.current_epoch:  # the first step warms up
                self.seconds += time.perf_counter() - start
                self.timed_steps += 1
            gap = float(self.vae.st_gap) / self.vae.num_particles
            value = (-loss.detach() + gap) / self.train_size
            self.window.append(float(value))
            self.log("train_elbo", value, prog_bar=True, sync_dist=True, on_step=True,
                     on_epoch=False)
            return loss.detach()

        def validation_step(self, batch, batch_idx):
            (images,) = batch
            generator = torch.Generator(device=images.device).manual_seed(1000 + batch_idx)
            devices = [images.device.index or 0] if images.is_cuda else []
            with torch.random.fork_rng(devices=devices):  # the training stream is not drawn from
                # without gradients the loss is the -ELBO estimate alone (no surrogate)
                loss = self.loss_fn(binarize(images, generator), self.valid_size)
            self.log("valid_elbo", -loss / self.valid_size, sync_dist=True)

        def on_save_checkpoint(self, checkpoint):
            states = [_rng_state()]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                states = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(states, _rng_state())
            checkpoint["rng_states"] = states
            checkpoint["timing"] = (self.seconds, self.timed_steps, self.evaluations)
            if hasattr(self.loss_fn.elbo, "state_dict"):
                checkpoint["estimator"] = self.loss_fn.elbo.state_dict()

        def on_load_checkpoint(self, checkpoint):
            states = checkpoint["rng_states"]
            rank = torch.distributed.get_rank() if (
                torch.distributed.is_available() and torch.distributed.is_initialized()) else 0
            _set_rng_state(states[rank] if rank < len(states) else states[0])
            self.seconds, self.timed_steps, self.evaluations = checkpoint["timing"]
            if "estimator" in checkpoint:
                self.loss_fn.elbo.load_state_dict(checkpoint["estimator"])
            self.resumed = True

    # a module-level name, so that ``ddp_spawn`` can pickle the module to its workers
    VAETrainingModule.__qualname__ = "VAETrainingModule"
    globals()["VAETrainingModule"] = VAETrainingModule
    return VAETrainingModule


def _rng_state():
    """Every random state a process draws from, as plain lists and numbers (what
    ``all_gather_object`` and a weights-only ``torch.load`` take)."""
    state = pyro.util.get_rng_state()
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = {"torch": state["torch"].tolist(), "random": state["random"],
           "numpy": (name, keys.tolist(), pos, has_gauss, cached)}
    if "cuda" in state:
        out["cuda"] = state["cuda"].tolist()
    return out


def _set_rng_state(state):
    import numpy as np

    name, keys, pos, has_gauss, cached = state["numpy"]
    restored = {"torch": torch.tensor(state["torch"], dtype=torch.uint8),
                "random": tuple(x if not isinstance(x, list) else tuple(x) for x in state["random"]),
                "numpy": (name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)}
    if "cuda" in state:
        restored["cuda"] = torch.tensor(state["cuda"], dtype=torch.uint8)
    pyro.util.set_rng_state(restored)


def __getattr__(name):  # VAETrainingModule needs Lightning, imported on first use
    if name == "VAETrainingModule":
        return _module_class()
    raise AttributeError(name)


def fit(vae, elbo, data, args):
    """Trains with Lightning up to ``args.num_steps`` steps (resuming from ``--out`` with
    ``--resume``); returns ``(module, trainer, summary)`` (``summary``: the module's, see
    ``VAETrainingModule.summary``; on the first process, also under ``ddp_spawn``, whose
    workers train copies of the module)."""
    pl = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    module = _module_class()(vae, elbo, data, args)
    per_process = max(1, args.batch_size // args.devices)
    train = StepBatches(data.train.cpu(), per_process, args.seed, args.num_steps,
                        position=functools.partial(getattr, module, "global_step"))  # picklable (ddp_spawn)
    valid = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.valid.cpu()),
                                        batch_size=max(per_process, 100))
    out = args.out or os.path.join("runs", "lightning")
    every = min(args.save_every or args.num_steps, args.num_steps)
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
        max_steps=args.num_steps, max_epochs=-1, val_check_interval=every,
        limit_val_batches=max(1, min(10, (args.eval_size or len(data.valid)) // per_process)),
        num_sanity_val_steps=1, log_every_n_steps=args.log_every,
        logger=CSVLogger(out, name="", version=""), default_root_dir=out,
        callbacks=[ModelCheckpoint(dirpath=out, save_last=True, save_top_k=0,
                                   every_n_train_steps=every)],
        enable_progress_bar=not args.no_progress, enable_model_summary=False,
        use_distributed_sampler=False,
    )
    ckpt = os.path.join(out, "last.ckpt") if args.resume else None
    if ckpt is not None and not os.path.isfile(ckpt):
        raise SystemExit(f"error: --resume: no Lightning checkpoint in {os.path.abspath(out)}")
    pl.seed_everything(args.seed, verbose=False)  # the DistributedSampler's shuffle too
    with warnings.catch_warnings():
        # the checkpoint of step k holds the state after step k's update, which is what a
        # resumed run must continue from (Lightning warns about it under manual optimization)
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        with tempfile.TemporaryDirectory() as tmp:
            module.summary_file = os.path.join(tmp, "summary.json")
            trainer.fit(module, train, valid, ckpt_path=ckpt)
            module.summary_file = None
            summary = module.summary
            if summary is None and trainer.global_rank == 0:  # ddp_spawn: from the workers
                with open(os.path.join(tmp, "summary.json")) as f:
                    summary = json.load(f)
    return module, trainer, summary
