# Copyright (c) 2017-2019 Uber Technologies, Inc.
# SPDX-License-Identifier: Apache-2.0
#
# The Monte Carlo exact-gradient cases of Pyro's tests/infer/test_enum.py
# (https://github.com/pyro-ppl/pyro, commit ff6ae1c9572591791aae8842bcd702fcf0b46fd6), copied
# under the Apache-2.0 license: the cases whose guide is not enumerated (``enumerate=None``),
# with each pyro-relax ELBO in place of TraceEnum_ELBO / Trace_ELBO and Pyro's own tolerances.
# Changes: the ``Elbo`` parameter, the enumeration parameters dropped; each case's body runs as
# ``run(num_particles)`` and ``common.check_mc`` splits Pyro's particles into independent runs
# to test at Pyro's tolerance with a standard error (Pyro's tolerances are calibrated to its
# seed); two expected values that Pyro estimated by Monte Carlo are computed exactly
# (``pyro_relax.testing.exact_loss``); documented refusals are checked to be refusals.
"""Pyro's Monte Carlo exact-gradient cases of ``test_enum.py`` with every pyro-relax ELBO."""

import logging

import pytest
import torch
from torch.autograd import grad
from torch.distributions import constraints, kl_divergence

import pyro
import pyro.distributions as dist
from pyro.distributions.testing.rejection_gamma import ShapeAugmentedGamma
from pyro.infer.importance import vectorized_importance_weights
from pyro.ops.indexing import Vindex

from pyro_relax.testing import exact_loss

from .common import ELBOS, make_small as make, mc_failures

logger = logging.getLogger(__name__)


@pytest.mark.parametrize("scale", [1, 10])
@pytest.mark.parametrize("method", ["loss", "differentiable_loss", "loss_and_grads"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_bern(Elbo, method, scale):
    pyro.clear_param_store()
    prec = 0.22
    q = pyro.param("q", torch.tensor(0.5, requires_grad=True))
    kl = kl_divergence(dist.Bernoulli(q), dist.Bernoulli(0.25))

    def run(num_particles):
        @pyro.poutine.scale(scale=scale)
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("z", dist.Bernoulli(0.25).expand_by([num_particles]))

        @pyro.poutine.scale(scale=scale)
        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("z", dist.Bernoulli(q).expand_by([num_particles]))

        elbo = make(Elbo, strict_enumeration_warning=False)
        q.grad = None
        if method == "loss":
            return elbo.loss(model, guide) / num_particles
        if method == "differentiable_loss":
            loss = elbo.differentiable_loss(model, guide)
            return grad(loss, [q])[0] / num_particles
        elbo.loss_and_grads(model, guide)
        return q.grad / num_particles

    expected = kl.item() * scale if method == "loss" else grad(kl, [q])[0] * scale
    failures = mc_failures(run, 10000, expected, prec)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("method", ["loss", "differentiable_loss", "loss_and_grads"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_normal(Elbo, method):
    pyro.clear_param_store()
    prec = 0.01
    q = pyro.param("q", torch.tensor(1.0, requires_grad=True))
    kl = kl_divergence(dist.Normal(q, 1.0), dist.Normal(0.0, 1.0))

    def run(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("z", dist.Normal(0.0, 1.0).expand_by([num_particles]))

        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("z", dist.Normal(q, 1.0).expand_by([num_particles]))

        elbo = make(Elbo, strict_enumeration_warning=False)
        q.grad = None
        if method == "loss":
            return elbo.loss(model, guide) / num_particles
        if method == "differentiable_loss":
            loss = elbo.differentiable_loss(model, guide)
            return grad(loss, [q])[0] / num_particles
        elbo.loss_and_grads(model, guide)
        return q.grad / num_particles

    expected = kl.item() if method == "loss" else grad(kl, [q])[0]
    failures = mc_failures(run, 10000, expected, prec)
    assert not failures, "\n".join(failures)


def _vectorized_run(Elbo, method, model, guide, q):
    """One estimate of (loss, d loss / dq) with ``num_particles`` vectorized particles."""

    def run(num_particles):
        elbo = make(Elbo, num_particles=num_particles, vectorize_particles=True,
                    strict_enumeration_warning=False)
        q.grad = None
        if method == "differentiable_loss":
            loss = elbo.differentiable_loss(model, guide)
            return loss.item(), grad(loss, [q])[0]
        return elbo.loss_and_grads(model, guide), q.grad

    return run


@pytest.mark.parametrize("method", ["differentiable_loss", "loss_and_grads"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_bern_bern(Elbo, method):
    pyro.clear_param_store()
    num_particles = 2 * 300 * 300
    prec = 0.2

    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))

    def model():
        pyro.sample("x1", dist.Bernoulli(0.2))
        pyro.sample("x2", dist.Bernoulli(0.4))

    def guide():
        q = pyro.param("q")
        pyro.sample("x1", dist.Bernoulli(q))
        pyro.sample("x2", dist.Bernoulli(q))

    kl = sum(kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p)) for p in [0.2, 0.4])
    expected_loss = kl.item()
    expected_grad = grad(kl, [q])[0]
    failures = mc_failures(_vectorized_run(Elbo, method, model, guide, q), num_particles,
                           (expected_loss, expected_grad), prec)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("method", ["differentiable_loss", "loss_and_grads"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_berns(Elbo, method):
    pyro.clear_param_store()
    num_particles = 10000
    prec = 0.1
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))

    def model():
        pyro.sample("x1", dist.Bernoulli(0.1))
        pyro.sample("x2", dist.Bernoulli(0.2))
        pyro.sample("x3", dist.Bernoulli(0.3))

    def guide():
        q = pyro.param("q")
        pyro.sample("x1", dist.Bernoulli(q))
        pyro.sample("x2", dist.Bernoulli(q))
        pyro.sample("x3", dist.Bernoulli(q))

    kl = sum(kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p)) for p in [0.1, 0.2, 0.3])
    expected_loss = kl.item()
    expected_grad = grad(kl, [q])[0]
    failures = mc_failures(_vectorized_run(Elbo, method, model, guide, q), num_particles,
                           (expected_loss, expected_grad), prec)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("method", ["differentiable_loss", "loss_and_grads"])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_normals(Elbo, method):
    pyro.clear_param_store()
    num_particles = 100 * 10**3
    prec = 0.1
    q = pyro.param("q", torch.tensor(0.0, requires_grad=True))

    def model():
        pyro.sample("x1", dist.Normal(0.25, 1.0))
        pyro.sample("x2", dist.Normal(0.5, 1.0))
        pyro.sample("x3", dist.Normal(1.0, 1.0))

    def guide():
        q = pyro.param("q")
        pyro.sample("x1", dist.Normal(q, 1.0))
        pyro.sample("x2", dist.Normal(q, 1.0))
        pyro.sample("x3", dist.Normal(q, 1.0))

    kl = sum(kl_divergence(dist.Normal(q, 1.0), dist.Normal(p, 1.0)) for p in [0.25, 0.5, 1.0])
    expected_loss = kl.item()
    expected_grad = grad(kl, [q])[0]
    failures = mc_failures(_vectorized_run(Elbo, method, model, guide, q), num_particles,
                           (expected_loss, expected_grad), prec)
    assert not failures, "\n".join(failures)


def _plate_run(Elbo, program, q):
    """One estimate of (loss, d loss / dq) per plate cell of a model with a "particles" plate
    of ``num_particles`` cells."""

    def run(num_particles):
        model, guide = program(num_particles)
        elbo = make(Elbo, strict_enumeration_warning=False)
        q.grad = None
        loss = elbo.loss_and_grads(model, guide) / num_particles
        return loss, pyro.param("q").grad / num_particles

    return run


P = 0.2693204236205713  # for which kl(Bernoulli(q), Bernoulli(p)) = 0.5


@pytest.mark.parametrize("plate_dim", [1, 2])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_plate(Elbo, plate_dim):
    pyro.clear_param_store()
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))
    p = P

    def program(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("y", dist.Bernoulli(p).expand_by([num_particles]))
                with pyro.plate("plate", plate_dim):
                    pyro.sample("z", dist.Bernoulli(p).expand_by([plate_dim, num_particles]))

        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("y", dist.Bernoulli(q).expand_by([num_particles]))
                with pyro.plate("plate", plate_dim):
                    pyro.sample("z", dist.Bernoulli(q).expand_by([plate_dim, num_particles]))

        return model, guide

    kl = (1 + plate_dim) * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p))
    failures = mc_failures(_plate_run(Elbo, program, q), 10000, (kl.item(), grad(kl, [q])[0]), 0.1)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("plate_dim", [1, 2])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_iplate(Elbo, plate_dim):
    pyro.clear_param_store()
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))
    p = P

    def program(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(p).expand_by([num_particles]))
                for i in pyro.plate("plate", plate_dim):
                    pyro.sample("y_{}".format(i), dist.Bernoulli(p).expand_by([num_particles]))

        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(q).expand_by([num_particles]))
                for i in pyro.plate("plate", plate_dim):
                    pyro.sample("y_{}".format(i), dist.Bernoulli(q).expand_by([num_particles]))

        return model, guide

    kl = (1 + plate_dim) * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p))
    failures = mc_failures(_plate_run(Elbo, program, q), 20000, (kl.item(), grad(kl, [q])[0]), 0.1)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("inner_dim", [2])
@pytest.mark.parametrize("outer_dim", [2])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_plate_plate(Elbo, outer_dim, inner_dim):
    pyro.clear_param_store()
    num_particles = 100000
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))
    p = P

    def model():
        d = dist.Bernoulli(p)
        context1 = pyro.plate("outer", outer_dim, dim=-1)
        context2 = pyro.plate("inner", inner_dim, dim=-2)
        pyro.sample("w", d)
        with context1:
            pyro.sample("x", d)
        with context2:
            pyro.sample("y", d)
        with context1, context2:
            pyro.sample("z", d)

    def guide():
        d = dist.Bernoulli(pyro.param("q"))
        context1 = pyro.plate("outer", outer_dim, dim=-1)
        context2 = pyro.plate("inner", inner_dim, dim=-2)
        pyro.sample("w", d)
        with context1:
            pyro.sample("x", d)
        with context2:
            pyro.sample("y", d)
        with context1, context2:
            pyro.sample("z", d)

    kl_node = kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p))
    kl = (1 + outer_dim + inner_dim + outer_dim * inner_dim) * kl_node
    failures = mc_failures(_vectorized_run(Elbo, "loss_and_grads", model, guide, q), num_particles,
                           (kl.item(), grad(kl, [q])[0]), 0.1)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("inner_dim", [2])
@pytest.mark.parametrize("outer_dim", [3])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_plate_iplate(Elbo, outer_dim, inner_dim):
    pyro.clear_param_store()
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))
    p = P

    def program(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(p).expand_by([num_particles]))
                with pyro.plate("outer", outer_dim):
                    pyro.sample("y", dist.Bernoulli(p).expand_by([outer_dim, num_particles]))
                    for i in pyro.plate("inner", inner_dim):
                        pyro.sample("z_{}".format(i),
                                    dist.Bernoulli(p).expand_by([outer_dim, num_particles]))

        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(q).expand_by([num_particles]))
                with pyro.plate("outer", outer_dim):
                    pyro.sample("y", dist.Bernoulli(q).expand_by([outer_dim, num_particles]))
                    for i in pyro.plate("inner", inner_dim):
                        pyro.sample("z_{}".format(i),
                                    dist.Bernoulli(q).expand_by([outer_dim, num_particles]))

        return model, guide

    kl = (1 + outer_dim * (1 + inner_dim)) * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p))
    failures = mc_failures(_plate_run(Elbo, program, q), 100000, (kl.item(), grad(kl, [q])[0]), 0.1)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("inner_dim", [2])
@pytest.mark.parametrize("outer_dim", [2])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_iplate_plate(Elbo, outer_dim, inner_dim):
    pyro.clear_param_store()
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))
    p = P

    def program(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(p).expand_by([num_particles]))
                inner_plate = pyro.plate("inner", inner_dim)
                for i in pyro.plate("outer", outer_dim):
                    pyro.sample("y_{}".format(i), dist.Bernoulli(p).expand_by([num_particles]))
                    with inner_plate:
                        pyro.sample("z_{}".format(i),
                                    dist.Bernoulli(p).expand_by([inner_dim, num_particles]))

        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(q).expand_by([num_particles]))
                inner_plate = pyro.plate("inner", inner_dim)
                for i in pyro.plate("outer", outer_dim):
                    pyro.sample("y_{}".format(i), dist.Bernoulli(q).expand_by([num_particles]))
                    with inner_plate:
                        pyro.sample("z_{}".format(i),
                                    dist.Bernoulli(q).expand_by([inner_dim, num_particles]))

        return model, guide

    kl = (1 + outer_dim * (1 + inner_dim)) * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p))
    failures = mc_failures(_plate_run(Elbo, program, q), 50000, (kl.item(), grad(kl, [q])[0]), 0.1)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("inner_dim", [2])
@pytest.mark.parametrize("outer_dim", [2])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_iplate_iplate(Elbo, outer_dim, inner_dim):
    pyro.clear_param_store()
    q = pyro.param("q", torch.tensor(0.75, requires_grad=True))
    p = P

    def program(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(p).expand_by([num_particles]))
                inner_iplate = pyro.plate("inner", outer_dim)
                for i in pyro.plate("outer", inner_dim):
                    pyro.sample("y_{}".format(i), dist.Bernoulli(p).expand_by([num_particles]))
                    for j in inner_iplate:
                        pyro.sample("z_{}_{}".format(i, j),
                                    dist.Bernoulli(p).expand_by([num_particles]))

        def guide():
            q = pyro.param("q")
            with pyro.plate("particles", num_particles):
                pyro.sample("x", dist.Bernoulli(q).expand_by([num_particles]))
                inner_iplate = pyro.plate("inner", inner_dim)
                for i in pyro.plate("outer", outer_dim):
                    pyro.sample("y_{}".format(i), dist.Bernoulli(q).expand_by([num_particles]))
                    for j in inner_iplate:
                        pyro.sample("z_{}_{}".format(i, j),
                                    dist.Bernoulli(q).expand_by([num_particles]))

        return model, guide

    kl = (1 + outer_dim * (1 + inner_dim)) * kl_divergence(dist.Bernoulli(q), dist.Bernoulli(p))
    failures = mc_failures(_plate_run(Elbo, program, q), 150000, (kl.item(), grad(kl, [q])[0]), (0.1, 0.2))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("pi1", [0.33, 0.43])
@pytest.mark.parametrize("pi2", [0.55, 0.27])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_non_mean_field_bern_bern_elbo_gradient(Elbo, pi1, pi2):
    pyro.clear_param_store()

    def run(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                y = pyro.sample("y", dist.Bernoulli(0.33).expand_by([num_particles]))
                pyro.sample("z", dist.Bernoulli(0.55 * y + 0.10))

        def guide():
            q1 = pyro.param("q1", torch.tensor(pi1, requires_grad=True))
            q2 = pyro.param("q2", torch.tensor(pi2, requires_grad=True))
            with pyro.plate("particles", num_particles):
                y = pyro.sample("y", dist.Bernoulli(q1).expand_by([num_particles]))
                pyro.sample("z", dist.Bernoulli(q2 * y + 0.10))

        for name in ("q1", "q2"):
            if name in pyro.get_param_store():
                pyro.param(name).unconstrained().grad = None
        elbo = make(Elbo, strict_enumeration_warning=False)
        elbo.loss_and_grads(model, guide)
        return pyro.param("q1").grad / num_particles, pyro.param("q2").grad / num_particles

    logger.info("Computing analytic gradients")
    q1 = torch.tensor(pi1, requires_grad=True)
    q2 = torch.tensor(pi2, requires_grad=True)
    elbo = kl_divergence(dist.Bernoulli(q1), dist.Bernoulli(0.33))
    elbo = elbo + q1 * kl_divergence(dist.Bernoulli(q2 + 0.10), dist.Bernoulli(0.65))
    elbo = elbo + (1.0 - q1) * kl_divergence(dist.Bernoulli(0.10), dist.Bernoulli(0.10))
    expected_grad_q1, expected_grad_q2 = grad(elbo, [q1, q2])

    failures = mc_failures(run, 20000, (expected_grad_q1, expected_grad_q2), 0.03)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("pi1", [0.33, 0.44])
@pytest.mark.parametrize("pi2", [0.55, 0.39])
@pytest.mark.parametrize("pi3", [0.22, 0.29])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_non_mean_field_bern_normal_elbo_gradient(Elbo, pi1, pi2, pi3):
    pyro.clear_param_store()
    include_z = True

    def run(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                q3 = pyro.param("q3", torch.tensor(pi3, requires_grad=True))
                y = pyro.sample("y", dist.Bernoulli(q3).expand_by([num_particles]))
                if include_z:
                    pyro.sample("z", dist.Normal(0.55 * y + q3, 1.0))

        def guide():
            q1 = pyro.param("q1", torch.tensor(pi1, requires_grad=True))
            q2 = pyro.param("q2", torch.tensor(pi2, requires_grad=True))
            with pyro.plate("particles", num_particles):
                y = pyro.sample("y", dist.Bernoulli(q1).expand_by([num_particles]))
                if include_z:
                    pyro.sample("z", dist.Normal(q2 * y + 0.10, 1.0))

        for name in ("q1", "q2", "q3"):
            if name in pyro.get_param_store():
                pyro.param(name).unconstrained().grad = None
        elbo = make(Elbo, strict_enumeration_warning=False)
        elbo.loss_and_grads(model, guide)
        return tuple(pyro.param(name).grad / num_particles for name in ("q1", "q2", "q3"))

    logger.info("Computing analytic gradients")
    q1 = torch.tensor(pi1, requires_grad=True)
    q2 = torch.tensor(pi2, requires_grad=True)
    q3 = torch.tensor(pi3, requires_grad=True)
    elbo = kl_divergence(dist.Bernoulli(q1), dist.Bernoulli(q3))
    elbo = elbo + q1 * kl_divergence(dist.Normal(q2 + 0.10, 1.0), dist.Normal(q3 + 0.55, 1.0))
    elbo = elbo + (1.0 - q1) * kl_divergence(dist.Normal(0.10, 1.0), dist.Normal(q3, 1.0))
    expected = grad(elbo, [q1, q2, q3])

    failures = mc_failures(run, 10000, expected, 0.04)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("pi1", [0.33, 0.41])
@pytest.mark.parametrize("pi2", [0.44, 0.17])
@pytest.mark.parametrize("pi3", [0.22, 0.29])
@pytest.mark.parametrize("Elbo", ELBOS)
def test_non_mean_field_normal_bern_elbo_gradient(Elbo, pi1, pi2, pi3):
    # Pyro compares its enumerated estimates with its Monte Carlo one; here the ELBO's Monte
    # Carlo estimate is compared with the exact gradient per plate cell (the cells are iid:
    # enumeration of y and quadrature over z for one cell).
    def model(num_particles):
        with pyro.plate("particles", num_particles):
            q3 = pyro.param("q3", torch.tensor(pi3, requires_grad=True))
            q4 = pyro.param("q4", torch.tensor(0.5 * (pi1 + pi2), requires_grad=True))
            z = pyro.sample("z", dist.Normal(q3, 1.0).expand_by([num_particles]))
            zz = torch.exp(z) / (1.0 + torch.exp(z))
            pyro.sample("y", dist.Bernoulli(q4 * zz))

    def guide(num_particles):
        q1 = pyro.param("q1", torch.tensor(pi1, requires_grad=True))
        q2 = pyro.param("q2", torch.tensor(pi2, requires_grad=True))
        with pyro.plate("particles", num_particles):
            z = pyro.sample("z", dist.Normal(q2, 1.0).expand_by([num_particles]))
            zz = torch.exp(z) / (1.0 + torch.exp(z))
            pyro.sample("y", dist.Bernoulli(q1 * zz))

    qs = ["q1", "q2", "q3", "q4"]
    pyro.clear_param_store()
    loss = exact_loss(model, guide, 1, quadrature_nodes=60)
    expected = grad(loss, [pyro.param(q).unconstrained() for q in qs])

    def run(num_particles):
        for q in qs:
            pyro.param(q).unconstrained().grad = None
        elbo = make(Elbo, strict_enumeration_warning=False)
        elbo.loss_and_grads(model, guide, num_particles)
        return tuple(pyro.param(q).grad / num_particles for q in qs)

    failures = mc_failures(run, 30000, expected, 0.03)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("Elbo", ELBOS)
def test_elbo_rsvi(Elbo):
    pyro.clear_param_store()
    prec = 0.022
    q = pyro.param("q", torch.tensor(0.5, requires_grad=True))
    a = pyro.param("a", torch.tensor(1.5, requires_grad=True))
    kl1 = kl_divergence(dist.Bernoulli(q), dist.Bernoulli(0.25))
    kl2 = kl_divergence(dist.Gamma(a, 1.0), dist.Gamma(0.5, 1.0))

    def run(num_particles):
        def model():
            with pyro.plate("particles", num_particles):
                pyro.sample("z", dist.Bernoulli(0.25).expand_by([num_particles]))
                pyro.sample("y", dist.Gamma(0.50, 1.0).expand_by([num_particles]))

        def guide():
            q = pyro.param("q")
            a = pyro.param("a")
            with pyro.plate("particles", num_particles):
                pyro.sample("z", dist.Bernoulli(q).expand_by([num_particles]))
                pyro.sample("y", ShapeAugmentedGamma(a, torch.tensor(1.0)).expand_by([num_particles]))

        q.grad, a.grad = None, None
        elbo = make(Elbo, strict_enumeration_warning=False)
        elbo.loss_and_grads(model, guide)
        return q.grad / num_particles, a.grad / num_particles

    failures = mc_failures(run, 40000, (grad(kl1, [q])[0], grad(kl2, [a])[0]), prec)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("num_samples", [10000, 100000])
@pytest.mark.parametrize("Elbo", ELBOS + ["arsm", "disarm-tree"])
def test_vectorized_importance(Elbo, num_samples):
    # Pyro compares Trace_ELBO's loss with the mean of vectorized_importance_weights (both
    # estimates); here each is compared with the exact ELBO (enumeration).
    pyro.param("model_probs_a", torch.tensor([0.45, 0.55]), constraint=constraints.simplex)
    pyro.param("model_probs_b", torch.tensor([0.6, 0.4]), constraint=constraints.simplex)
    pyro.param(
        "model_probs_c",
        torch.tensor([[[0.4, 0.5, 0.1], [0.3, 0.5, 0.2]], [[0.3, 0.4, 0.3], [0.4, 0.4, 0.2]]]),
        constraint=constraints.simplex,
    )
    pyro.param("guide_probs_a", torch.tensor([0.33, 0.67]), constraint=constraints.simplex)
    pyro.param("guide_probs_b", torch.tensor([0.8, 0.2]), constraint=constraints.simplex)

    data = torch.tensor([[0, 1], [0, 2]])

    def model():
        probs_a = pyro.param("model_probs_a")
        probs_b = pyro.param("model_probs_b")
        probs_c = pyro.param("model_probs_c")
        a = pyro.sample("a", dist.Categorical(probs_a))
        with pyro.plate("outer", 2):
            b = pyro.sample("b", dist.Categorical(probs_b))
            with pyro.plate("inner", 2):
                pyro.sample("c", dist.Categorical(Vindex(probs_c)[a, b]), obs=data)

    def guide():
        probs_a = pyro.param("guide_probs_a")
        pyro.sample("a", dist.Categorical(probs_a))
        probs_b = pyro.param("guide_probs_b")
        with pyro.plate("outer", 2):
            pyro.sample("b", dist.Categorical(probs_b))

    with torch.no_grad():
        exact = -float(exact_loss(model, guide))

    def weights(n):
        w, _, _ = vectorized_importance_weights(model, guide, max_plate_nesting=4, num_samples=n)
        return w.sum().item() / n

    def elbo(n):
        return -make(Elbo, vectorize_particles=True, num_particles=n).loss(model, guide)

    failures = mc_failures(weights, num_samples, exact, 0.02)
    assert not failures, "\n".join(failures)
    failures = mc_failures(elbo, num_samples, exact, 0.02)
    assert not failures, "\n".join(failures)
