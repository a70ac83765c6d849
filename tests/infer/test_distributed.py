"""Every ELBO under ``torch.nn.parallel.DistributedDataParallel`` with two gloo processes on
CPU, as a user scales out (``elbo.setup`` on example arguments, the module ``elbo(model,
guide)``, an optimizer over its ``parameters()``, a plate scaled to the whole data set):

- after a few steps every parameter, RELAX's control variates included, is the same on both
  processes; a control variate left out of the DDP module (in the optimizer by hand, as with
  Pyro's own ``ELBOModule``) drifts apart, and the check catches it;
- with the estimator's noise fixed per datapoint, the gradient the two processes agree on (each
  on half of the batch) equals the gradient of one process on the whole batch;
- training resumed from a checkpoint taken mid-run (module and optimizer state, RNG) ends where
  the uninterrupted run ends.
"""

import os
import socket
import tempfile

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
import torch.nn.functional as F
from pyro.infer.elbo import ELBOModule
from torch.nn.parallel import DistributedDataParallel

from pyro_relax.infer import (
    ARMS_ELBO, ARSM_ELBO, ESTIMATORS, RELAX_ELBO, SignalGradientELBO, make_elbo,
)
from pyro_relax.infer.util import discrete_site_info

N, D, K, C = 8, 6, 3, 3  # datapoints, pixels, Bernoulli latents, categories
STEPS = 4
#: every ELBO of the package that applies to Bernoulli and categorical sites
ELBOS = ["rloo", "vargrad", "vimco", "arms", "double-cv", "rodeo", "arm", "disarm", "ar", "ars", "arsm", "ars+", "arsm+", "disarm-iw",
         "disarm-sb", "disarm-tree", "rebar", "relax", "relax-neural"]
#: ARS and ARS+ draw one reference category for all datapoints of a site: a second process
#: draws its own, so the two halves are not the whole batch's estimate under the same noise
SHARED_DRAW = ("ars", "ars+")


def _cat(*tensors):
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.prior_logits = torch.nn.Parameter(torch.zeros(K))
        self.decoder = torch.nn.Linear(K + C, D)

    def forward(self, x, idx, size):
        with pyro.plate("data", size, subsample=idx):
            b = pyro.sample("b", dist.Bernoulli(logits=self.prior_logits).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(C)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(_cat(b, y))).to_event(1), obs=x)


class Guide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(D, K + C)

    def forward(self, x, idx, size):
        h = self.encoder(x)
        with pyro.plate("data", size, subsample=idx):
            pyro.sample("b", dist.Bernoulli(logits=h[..., :K]).to_event(1))
            pyro.sample("y", dist.OneHotCategorical(logits=h[..., K:]))


def _data():
    g = torch.Generator().manual_seed(7)
    return (torch.rand(N, D, generator=g) < 0.5).to(torch.get_default_dtype())


def _noise():
    """Uniforms per (particle, datapoint): the estimators' noise, the same whatever process
    and batch a datapoint lands in."""
    g = torch.Generator().manual_seed(11)
    return {(site, part): torch.rand(2, N, width, generator=g)
            for site, width in (("b", K), ("y", C)) for part in range(2)}


def fixed_noise(name, **options):
    """The registry's estimator ``name`` drawing its noise from :func:`_noise` at the
    datapoints in ``elbo.indices`` (a test-side subclass)."""
    base = type(make_elbo(name, **options))
    table = _noise()

    class Fixed(base):
        indices = None

        def _uniform(self, site, fn, part=0, width=None):
            u = table[site, part][:, self.indices]  # (particles, datapoints, width)
            if len(fn.batch_shape) < 2:  # no particle dimension
                u = u[0]
            return u if width is None else u[..., :width]

        def sample_site(self, site, fn):
            info = discrete_site_info(site, fn)
            kind, logits = info.kind, info.logits.detach()
            if isinstance(self, ARSM_ELBO):
                strategy = self.bernoulli if kind == "bernoulli" else self.categorical
                if kind == "bernoulli" or not hasattr(strategy, "tree_kind"):  # ARM, Dirichlet
                    noise = self._uniform(site, fn)
                    if kind != "bernoulli":  # Dirichlet(1): normalized exponentials
                        e = -noise.log()
                        noise = e / e.sum(-1, keepdim=True)
                else:  # the coupled estimators: one uniform per binary decision
                    noise = self._uniform(site, fn, width=C - 1)
                return self.redraw_site(site, fn, noise), noise
            if isinstance(self, RELAX_ELBO):
                u, v = self._uniform(site, fn, 0), self._uniform(site, fn, 1)
                return self.coupling.sample(kind, logits, u), (u, v)
            u = self._uniform(site, fn)  # REINFORCE-LOO, VarGrad: inverse CDF / Gumbel max
            if isinstance(self, ARMS_ELBO) and kind == "bernoulli":  # the Dirichlet copula
                p = torch.sigmoid(logits)
                e = -u.log()
                v = (1 - e / e.sum(0, keepdim=True)).pow(self.num_particles - 1)
                return (torch.where(p < 0.5, v, 1 - v) < p).to(logits.dtype), None
            if kind == "bernoulli":
                b = (u < torch.sigmoid(logits)).to(logits.dtype)
                if isinstance(self, SignalGradientELBO):  # the signal's gradient at b
                    b.requires_grad_()
                return b, None
            z = (logits - (-u.log()).log()).argmax(-1)
            return F.one_hot(z, C).to(logits.dtype), None

    return Fixed(**options)


def _options(name):
    options = dict(max_plate_nesting=1)
    if ESTIMATORS[name].num_particles is not None:
        options.update(num_particles=2, vectorize_particles=True)
    if name in ("relax", "relax-neural"):
        options["hidden_dims"] = (4,)
    return options


def _train(name, indices, steps, distributed, sync=True, state=None):
    """``steps`` Adam steps on the datapoints ``indices`` (a plate of ``N``): returns the
    module's state, the first step's gradients and a checkpoint."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    x = _data()[indices]
    model, guide = Model(), Guide()
    elbo = fixed_noise(name, **_options(name))
    elbo.indices = indices
    elbo.setup(model, guide, x, indices, N)
    module = elbo(model, guide) if sync else ELBOModule(model, guide, elbo)
    params = list(module.parameters())
    if not sync:  # by hand, as with Pyro's own ELBOModule: never all-reduced
        params += list(elbo.control_variates.parameters())
    optim = torch.optim.Adam(params, lr=0.05)
    if state is not None:
        module.load_state_dict(state["module"])
        optim.load_state_dict(state["optim"])
    wrapped = DistributedDataParallel(module) if distributed else module
    pyro.set_rng_seed(100 + (torch.distributed.get_rank() if distributed else 0))
    grads = None
    for step in range(steps):
        optim.zero_grad()
        wrapped(x, indices, N).backward()
        if grads is None:
            grads = {k: p.grad.detach().clone() for k, p in module.named_parameters()}
        optim.step()
    checkpoint = {"module": {k: v.clone() for k, v in module.state_dict().items()},
                  "optim": optim.state_dict()}
    everything = dict(module.state_dict())
    if not sync:
        everything.update({"cv." + k: v for k, v in elbo.control_variates.state_dict().items()})
    return {k: v.detach().clone() for k, v in everything.items()}, grads, checkpoint


def _worker(rank, world, port, out, elbos):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:{}".format(port),
                                         rank=rank, world_size=world)
    try:
        indices = torch.arange(rank, N, world)
        results = {}
        for name in elbos:
            state, grads, _ = _train(name, indices, STEPS, True)
            _, _, half = _train(name, indices, STEPS // 2, True)
            resumed, _, _ = _train(name, indices, STEPS - STEPS // 2, True, state=half)
            results[name] = dict(state=state, grads=grads, resumed=resumed)
        state, _, _ = _train("relax", indices, STEPS, True, sync=False)
        results["relax-unsynchronized"] = dict(state=state)
        torch.save(results, os.path.join(out, "rank{}.pt".format(rank)))
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes():
    """Both processes' results for every ELBO (one spawn for all)."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(2, _free_port(), out, ELBOS), nprocs=2, join=True)
        return [torch.load(os.path.join(out, "rank{}.pt".format(r)), weights_only=False)
                for r in range(2)]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ELBOS)
def test_every_parameter_is_the_same_on_both_processes(two_processes, name):
    rank0, rank1 = (r[name]["state"] for r in two_processes)
    assert _same(rank0, rank1)
    if name in ("rebar", "relax", "relax-neural"):  # the control variate is in it, and moved
        own = [k for k in rank0 if k.startswith("estimator_state.")]
        assert own
        torch.manual_seed(0)
        fresh = make_elbo(name, **_options(name))
        fresh.setup(Model(), Guide(), _data()[:4], torch.arange(4), N)
        initial = fresh.control_variates.state_dict()
        assert any(not torch.equal(rank0[k], initial[k.split(".", 1)[1]]) for k in own)


def test_power_a_control_variate_outside_the_ddp_module_drifts_apart(two_processes):
    rank0, rank1 = (r["relax-unsynchronized"]["state"] for r in two_processes)
    assert not _same(rank0, rank1)
    model_keys = [k for k in rank0 if not k.startswith("cv.")]
    assert all(torch.equal(rank0[k], rank1[k]) for k in model_keys)  # DDP still syncs those


@pytest.mark.parametrize("name", [n for n in ELBOS if n not in SHARED_DRAW])
def test_two_halves_give_the_whole_batch_gradient(two_processes, name):
    _, whole, _ = _train(name, torch.arange(N), 1, False)
    for rank in two_processes:
        got = rank[name]["grads"]
        assert got.keys() == whole.keys()
        for k in whole:
            assert torch.allclose(got[k], whole[k], atol=1e-10, rtol=1e-8), (k, got[k], whole[k])


@pytest.mark.parametrize("name", ELBOS)
def test_a_resumed_run_ends_where_the_uninterrupted_one_ends(two_processes, name):
    for rank in two_processes:
        assert _same(rank[name]["state"], rank[name]["resumed"])


def test_a_control_variate_created_after_the_first_step_under_ddp_is_an_error(tmp_path):
    """Without ``setup``, the control variate would appear after the optimizer and DDP."""
    torch.distributed.init_process_group("gloo", init_method="file://" + str(tmp_path / "pg"),
                                         rank=0, world_size=1)
    try:
        model, guide, x, idx = Model(), Guide(), _data(), torch.arange(N)

        def model_b_only(x, idx, size):
            with pyro.plate("data", size, subsample=idx):
                pyro.sample("b", dist.Bernoulli(logits=torch.zeros(K)).to_event(1))

        def guide_b_only(x, idx, size):
            with pyro.plate("data", size, subsample=idx):
                pyro.sample("b", dist.Bernoulli(logits=guide.encoder(x)[..., :K]).to_event(1))

        elbo = make_elbo("relax", max_plate_nesting=1, hidden_dims=(4,))
        elbo.loss_and_grads(model_b_only, guide_b_only, x, idx, N)  # step 1 creates 'b'
        with pytest.raises(ValueError, match=r"'y'.*setup\(model, guide"):
            elbo.loss_and_grads(model, guide, x, idx, N)  # 'y' would appear at step 2
    finally:
        torch.distributed.destroy_process_group()
