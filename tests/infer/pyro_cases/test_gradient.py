# Copyright (c) 2017-2019 Uber Technologies, Inc.
# SPDX-License-Identifier: Apache-2.0
#
# The exact-gradient cases of Pyro's tests/infer/test_gradient.py
# (https://github.com/pyro-ppl/pyro, commit ff6ae1c9572591791aae8842bcd702fcf0b46fd6), copied
# under the Apache-2.0 license, with each pyro-relax ELBO in place of Trace_ELBO and Pyro's own
# tolerances. Changes: the ``Elbo`` parameter (Pyro's other ELBOs and the JIT variants dropped),
# ``local_samples`` dropped (an enumeration feature), assert_equal from
# ``tests/infer/pyro_cases/common.py``; documented refusals are checked to be refusals.
"""Pyro's exact-gradient cases of ``test_gradient.py`` with every pyro-relax ELBO."""

import logging

import numpy as np
import pytest
import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.distributions.testing import fakes
from pyro.infer import SVI
from pyro.optim import Adam

from .common import ELBOS, assert_equal, make

logger = logging.getLogger(__name__)


def _differentiable(name):
    return name + ":differentiable_loss"


@pytest.mark.parametrize(
    "reparameterized,has_rsample",
    [(True, None), (True, False), (True, True), (False, None)],
    ids=["reparam", "reparam-False", "reparam-True", "nonreparam"],
)
@pytest.mark.parametrize("Elbo", ELBOS)
def test_particle_gradient(Elbo, reparameterized, has_rsample):
    pyro.clear_param_store()
    data = torch.tensor([-0.5, 2.0])
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model():
        with pyro.plate("data", len(data)) as ind:
            x = data[ind]
            z = pyro.sample("z", Normal(0, 1))
            pyro.sample("x", Normal(z, 1), obs=x)

    def guide():
        scale = pyro.param("scale", lambda: torch.tensor([1.0]))
        with pyro.plate("data", len(data)):
            loc = pyro.param("loc", lambda: torch.zeros(len(data)), event_dim=0)
            z_dist = Normal(loc, scale)
            if has_rsample is not None:
                z_dist.has_rsample_(has_rsample)
            pyro.sample("z", z_dist)

    elbo = make(Elbo, max_plate_nesting=1, num_particles=1, strict_enumeration_warning=False)

    # Elbo gradient estimator
    pyro.set_rng_seed(0)
    elbo.loss_and_grads(model, guide)
    params = dict(pyro.get_param_store().named_parameters())
    actual_grads = {name: param.grad.detach().cpu() for name, param in params.items()}

    # capture sample values and log_probs
    pyro.set_rng_seed(0)
    guide_tr = poutine.trace(guide).get_trace()
    model_tr = poutine.trace(poutine.replay(model, guide_tr)).get_trace()
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    x = data
    z = guide_tr.nodes["z"]["value"].data
    loc = pyro.param("loc").data
    scale = pyro.param("scale").data

    # expected grads: the pathwise gradient estimator (the nonreparameterized variants are
    # refused by every ELBO here that takes one particle, see common.REFUSALS)
    assert reparameterized and has_rsample is not False
    expected_grads = {
        "scale": -(-z * (z - loc) + (x - z) * (z - loc) + 1).sum(0, keepdim=True) / scale,
        "loc": -(-z + (x - z)),
    }
    assert_equal(actual_grads["scale"], expected_grads["scale"], prec=1e-4)
    assert_equal(actual_grads["loc"], expected_grads["loc"], prec=1e-4)


@pytest.mark.parametrize("scale", [1.0, 2.0], ids=["unscaled", "scaled"])
@pytest.mark.parametrize(
    "reparameterized,has_rsample",
    [(True, None), (True, False), (True, True), (False, None)],
    ids=["reparam", "reparam-False", "reparam-True", "nonreparam"],
)
@pytest.mark.parametrize("subsample", [False, True], ids=["full", "subsample"])
@pytest.mark.parametrize("Elbo", ELBOS + [_differentiable("rloo"), _differentiable("relax")])
def test_subsample_gradient(Elbo, reparameterized, has_rsample, subsample, scale):
    pyro.clear_param_store()
    data = torch.tensor([-0.5, 2.0])
    subsample_size = 1 if subsample else len(data)
    precision = 0.06 * scale
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model(subsample):
        with pyro.plate("data", len(data), subsample_size, subsample) as ind:
            x = data[ind]
            z = pyro.sample("z", Normal(0, 1))
            pyro.sample("x", Normal(z, 1), obs=x)

    def guide(subsample):
        scale = pyro.param("scale", lambda: torch.tensor([1.0]))
        with pyro.plate("data", len(data), subsample_size, subsample):
            loc = pyro.param("loc", lambda: torch.zeros(len(data)), event_dim=0)
            z_dist = Normal(loc, scale)
            if has_rsample is not None:
                z_dist.has_rsample_(has_rsample)
            pyro.sample("z", z_dist)

    if scale != 1.0:
        model = poutine.scale(model, scale=scale)
        guide = poutine.scale(guide, scale=scale)

    num_particles = 50000
    optim = Adam({"lr": 0.1})
    name, _, method = Elbo.partition(":")
    elbo = make(name, max_plate_nesting=1, num_particles=num_particles, vectorize_particles=True,
                strict_enumeration_warning=False)
    if method:  # Pyro's DiffTrace_ELBO: SVI on the ELBO's differentiable_loss
        elbo = elbo.differentiable_loss

    inference = SVI(model, guide, optim, loss=elbo)
    if subsample_size == 1:
        inference.loss_and_grads(model, guide, subsample=torch.tensor([0], dtype=torch.long))
        inference.loss_and_grads(model, guide, subsample=torch.tensor([1], dtype=torch.long))
    else:
        inference.loss_and_grads(model, guide, subsample=torch.tensor([0, 1], dtype=torch.long))
    params = dict(pyro.get_param_store().named_parameters())
    normalizer = 2 if subsample else 1
    actual_grads = {
        name: param.grad.detach().cpu().numpy() / normalizer for name, param in params.items()
    }

    expected_grads = {"loc": scale * np.array([0.5, -2.0]), "scale": scale * np.array([2.0])}
    for name in sorted(params):
        assert_equal(actual_grads[name], expected_grads[name], prec=precision)


@pytest.mark.parametrize("reparameterized", [True, False], ids=["reparam", "nonreparam"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_plate(Elbo, reparameterized):
    pyro.clear_param_store()
    data = torch.tensor([-0.5, 2.0])
    num_particles = 200000
    precision = 0.06
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model():
        particles_plate = pyro.plate("particles", num_particles, dim=-2)
        data_plate = pyro.plate("data", len(data), dim=-1)

        pyro.sample("nuisance_a", Normal(0, 1))
        with particles_plate, data_plate:
            z = pyro.sample("z", Normal(0, 1))
        pyro.sample("nuisance_b", Normal(2, 3))
        with data_plate, particles_plate:
            pyro.sample("x", Normal(z, 1), obs=data)
        pyro.sample("nuisance_c", Normal(4, 5))

    def guide():
        loc = pyro.param("loc", torch.zeros(len(data)))
        scale = pyro.param("scale", torch.tensor([1.0]))

        pyro.sample("nuisance_c", Normal(4, 5))
        with pyro.plate("particles", num_particles, dim=-2):
            with pyro.plate("data", len(data), dim=-1):
                pyro.sample("z", Normal(loc, scale))
        pyro.sample("nuisance_b", Normal(2, 3))
        pyro.sample("nuisance_a", Normal(0, 1))

    optim = Adam({"lr": 0.1})
    elbo = make(Elbo, strict_enumeration_warning=False)
    inference = SVI(model, guide, optim, loss=elbo)
    inference.loss_and_grads(model, guide)
    params = dict(pyro.get_param_store().named_parameters())
    actual_grads = {
        name: param.grad.detach().cpu().numpy() / num_particles for name, param in params.items()
    }

    expected_grads = {"loc": np.array([0.5, -2.0]), "scale": np.array([2.0])}
    for name in sorted(params):
        assert_equal(actual_grads[name], expected_grads[name], prec=precision)


@pytest.mark.parametrize("reparameterized", [True, False], ids=["reparam", "nonreparam"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_plate_elbo_vectorized_particles(Elbo, reparameterized):
    pyro.clear_param_store()
    data = torch.tensor([-0.5, 2.0])
    num_particles = 200000
    precision = 0.06
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model():
        data_plate = pyro.plate("data", len(data))

        pyro.sample("nuisance_a", Normal(0, 1))
        with data_plate:
            z = pyro.sample("z", Normal(0, 1))
        pyro.sample("nuisance_b", Normal(2, 3))
        with data_plate:
            pyro.sample("x", Normal(z, 1), obs=data)
        pyro.sample("nuisance_c", Normal(4, 5))

    def guide():
        loc = pyro.param("loc", torch.zeros(len(data)))
        scale = pyro.param("scale", torch.tensor([1.0]))

        pyro.sample("nuisance_c", Normal(4, 5))
        with pyro.plate("data", len(data)):
            pyro.sample("z", Normal(loc, scale))
        pyro.sample("nuisance_b", Normal(2, 3))
        pyro.sample("nuisance_a", Normal(0, 1))

    optim = Adam({"lr": 0.1})
    loss = make(Elbo, num_particles=num_particles, vectorize_particles=True,
                strict_enumeration_warning=False)
    inference = SVI(model, guide, optim, loss=loss)
    inference.loss_and_grads(model, guide)
    params = dict(pyro.get_param_store().named_parameters())
    actual_grads = {name: param.grad.detach().cpu().numpy() for name, param in params.items()}

    expected_grads = {"loc": np.array([0.5, -2.0]), "scale": np.array([2.0])}
    for name in sorted(params):
        assert_equal(actual_grads[name], expected_grads[name], prec=precision)


@pytest.mark.parametrize("reparameterized", [True, False], ids=["reparam", "nonreparam"])
@pytest.mark.parametrize("subsample", [False, True], ids=["full", "subsample"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_subsample_gradient_sequential(Elbo, reparameterized, subsample):
    pyro.clear_param_store()
    data = torch.tensor([-0.5, 2.0])
    subsample_size = 1 if subsample else len(data)
    num_particles = 5000
    precision = 0.333
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model():
        with pyro.plate("data", len(data), subsample_size) as ind:
            x = data[ind]
            z = pyro.sample("z", Normal(0, 1).expand_by(x.shape))
            pyro.sample("x", Normal(z, 1), obs=x)

    def guide():
        loc = pyro.param("loc", lambda: torch.zeros(len(data), requires_grad=True))
        scale = pyro.param("scale", lambda: torch.tensor([1.0], requires_grad=True))
        with pyro.plate("data", len(data), subsample_size) as ind:
            pyro.sample("z", Normal(loc[ind], scale))

    optim = Adam({"lr": 0.1})
    elbo = make(Elbo, num_particles=10, strict_enumeration_warning=False)
    inference = SVI(model, guide, optim, elbo)
    iters = num_particles // 10
    for _ in range(iters):
        inference.loss_and_grads(model, guide)

    params = dict(pyro.get_param_store().named_parameters())
    actual_grads = {
        name: param.grad.detach().cpu().numpy() / iters for name, param in params.items()
    }

    expected_grads = {"loc": np.array([0.5, -2.0]), "scale": np.array([2.0])}
    for name in sorted(params):
        assert_equal(actual_grads[name], expected_grads[name], prec=precision)
