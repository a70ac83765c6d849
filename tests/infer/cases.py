"""Small models and guides with discrete latents, each small enough to enumerate exactly."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.distributions import constraints


def vector_bernoulli():
    x = torch.tensor([0.5, 1.0, -1.0])

    def model():
        loc = pyro.param("loc", torch.tensor([1.0, -2.0, 0.5]))
        b = pyro.sample("b", dist.Bernoulli(0.3 * torch.ones(3)).to_event(1))
        pyro.sample("x", dist.Normal(b * loc, 1.0).to_event(1), obs=x)

    def guide():
        logits = pyro.param("logits", torch.tensor([0.3, -0.5, 1.0]))
        pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))

    return model, guide, ()


def plate_bernoulli():
    """Per-datapoint Bernoulli latents in a data plate with a decoder parameter."""
    data = torch.tensor([[1.0, 0.5], [-0.5, 0.2], [2.0, 1.5]])

    def model(data):
        w = pyro.param("w", torch.tensor([0.7, -0.3]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * w, 1.0).to_event(1), obs=data)

    def guide(data):
        enc = pyro.param("enc", torch.tensor([0.2, -0.4, 0.9]))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Bernoulli(logits=enc))

    return model, guide, (data,)


def categorical():
    def model():
        mu = pyro.param("mu", torch.linspace(-1.0, 1.5, 5))
        z = pyro.sample("z", dist.Categorical(torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])))
        pyro.sample("x", dist.Normal(mu[z], 1.0), obs=torch.tensor(0.8))

    def guide():
        phi = pyro.param("phi", torch.tensor([0.1, -0.3, 0.4, 0.0, -0.8]))
        pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide, ()


def one_hot_categorical():
    def model():
        mu = pyro.param("mu", torch.linspace(-1.0, 1.5, 5))
        z = pyro.sample("z", dist.OneHotCategorical(torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])))
        pyro.sample("x", dist.Normal((z * mu).sum(-1), 1.0), obs=torch.tensor(0.8))

    def guide():
        phi = pyro.param("phi", torch.tensor([0.1, -0.3, 0.4, 0.0, -0.8]))
        pyro.sample("z", dist.OneHotCategorical(logits=phi))

    return model, guide, ()


def two_sites():
    """A Bernoulli vector and a Categorical in the same guide."""

    def model():
        mu = pyro.param("mu", torch.tensor([0.0, 1.0, -1.0]))
        b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(b.sum(-1) + mu[c], 1.0), obs=torch.tensor(1.3))

    def guide():
        logits = pyro.param("logits", torch.tensor([0.4, -0.6]))
        phi = pyro.param("phi", torch.tensor([0.2, -0.1, 0.5]))
        pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))
        pyro.sample("c", dist.Categorical(logits=phi))

    return model, guide, ()


def two_sites_one_hot():
    """A Bernoulli vector and a OneHotCategorical in the same guide (both relaxable)."""

    def model():
        mu = pyro.param("mu", torch.tensor([0.0, 1.0, -1.0]))
        b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
        c = pyro.sample("c", dist.OneHotCategorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(b.sum(-1) + (c * mu).sum(-1), 1.0), obs=torch.tensor(1.3))

    def guide():
        logits = pyro.param("logits", torch.tensor([0.4, -0.6]))
        phi = pyro.param("phi", torch.tensor([0.2, -0.1, 0.5]))
        pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))
        pyro.sample("c", dist.OneHotCategorical(logits=phi))

    return model, guide, ()


def mixed():
    """A reparameterized Normal and a Bernoulli in the same guide."""

    def model():
        shift = pyro.param("shift", torch.tensor(0.3))
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c + 2.0 * b + shift, 1.0), obs=torch.tensor(1.5))

    def guide():
        m = pyro.param("m", torch.tensor(0.2))
        s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
        theta = pyro.param("theta", torch.tensor(-0.3))
        pyro.sample("c", dist.Normal(m, s))
        pyro.sample("b", dist.Bernoulli(logits=theta))

    return model, guide, ()


def continuous_only():
    """A guide with no discrete site (VarGrad uses its score form, the others the pathwise one)."""

    def model():
        loc = pyro.param("prior_loc", torch.tensor(0.4))
        c = pyro.sample("c", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(c, 0.7), obs=torch.tensor(1.1))

    def guide():
        m = pyro.param("m", torch.tensor(-0.2))
        s = pyro.param("s", torch.tensor(0.6), constraint=constraints.positive)
        pyro.sample("c", dist.Normal(m, s))

    return model, guide, ()


def subsampled():
    """A mini-batch plate: 2 of 4 datapoints, so every local term is scaled by 2."""
    data = torch.tensor([0.5, -1.0, 2.0, 1.0])
    idx = torch.tensor([0, 2])

    def model(data, idx):
        w = pyro.param("w", torch.tensor(1.2))
        with pyro.plate("data", len(data), subsample=idx) as i:
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z * w, 1.0), obs=data[i])

    def guide(data, idx):
        enc = pyro.param("enc", torch.tensor([0.1, -0.2, 0.3, 0.5]))
        with pyro.plate("data", len(data), subsample=idx) as i:
            pyro.sample("z", dist.Bernoulli(logits=enc[i]))

    return model, guide, (data, idx)


def nested_plates():
    """Latents in a 2 x 2 grid of nested plates, plus a global one, under poutine.scale."""
    data = torch.tensor([[0.3, -0.2], [1.1, 0.4]])

    @poutine.scale(scale=1.5)
    def model(data):
        w = pyro.param("w", torch.tensor(0.8))
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 2, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(z * w + g, 1.0), obs=data)

    @poutine.scale(scale=1.5)
    def guide(data):
        enc = pyro.param("enc", torch.tensor([[0.2, -0.1], [0.5, -0.7]]))
        theta = pyro.param("theta", torch.tensor(0.1))
        pyro.sample("g", dist.Bernoulli(logits=theta))
        with pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 2, dim=-1):
            pyro.sample("z", dist.Bernoulli(logits=enc))

    return model, guide, (data,)


def sequential_plate():
    """Latents in a sequential ``for i in pyro.plate(...)`` loop."""
    data = torch.tensor([0.4, 1.2])

    def model(data):
        w = pyro.param("w", torch.tensor(0.9))
        for i in pyro.plate("seq", len(data)):
            z = pyro.sample("z_{}".format(i), dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x_{}".format(i), dist.Normal(z * w, 1.0), obs=data[i])

    def guide(data):
        phi = pyro.param("phi", torch.tensor([[0.1, 0.2, -0.3], [0.0, -0.5, 0.4]]))
        for i in pyro.plate("seq", len(data)):
            pyro.sample("z_{}".format(i), dist.Categorical(logits=phi[i]))

    return model, guide, (data,)


def poisson():
    def model():
        rate = pyro.param("rate", torch.tensor(1.5), constraint=constraints.positive)
        n = pyro.sample("n", dist.Poisson(rate))
        pyro.sample("x", dist.Normal(n.sqrt(), 1.0), obs=torch.tensor(1.0))

    def guide():
        lam = pyro.param("lam", torch.tensor(2.0), constraint=constraints.positive)
        pyro.sample("n", dist.Poisson(lam))

    return model, guide, ()


def categorical_then_bernoulli():
    """SS-VAE shape: a Bernoulli vector whose logits depend on a sampled Categorical."""

    def model():
        mu = pyro.param("mu", torch.tensor([-1.0, 0.5, 1.5]))
        y = pyro.sample("y", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
        b = pyro.sample("b", dist.Bernoulli(0.4 * torch.ones(2)).to_event(1))
        pyro.sample("x", dist.Normal(mu[y] + b.sum(-1), 1.0), obs=torch.tensor(0.7))

    def guide():
        phi = pyro.param("phi", torch.tensor([0.3, -0.2, 0.1]))
        w = pyro.param("w", torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.7, 0.9]]))
        y = pyro.sample("y", dist.Categorical(logits=phi))
        pyro.sample("b", dist.Bernoulli(logits=w[y]).to_event(1))

    return model, guide, ()


def two_layer_bernoulli():
    """A sigmoid belief net guide: the second layer's logits depend on the first layer."""

    def model():
        v = pyro.param("v", torch.tensor([0.8, -0.6]))
        b1 = pyro.sample("b1", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
        b2 = pyro.sample("b2", dist.Bernoulli(0.3 + 0.4 * b1).to_event(1))
        pyro.sample("x", dist.Normal((b1 * v).sum(-1) + 2.0 * b2.sum(-1), 1.0), obs=torch.tensor(1.2))

    def guide():
        a = pyro.param("a", torch.tensor([0.2, -0.3]))
        W = pyro.param("W", torch.tensor([[3.0, -2.5], [2.0, 2.8]]))
        c = pyro.param("c", torch.tensor([-1.5, 0.5]))
        b1 = pyro.sample("b1", dist.Bernoulli(logits=a).to_event(1))
        pyro.sample("b2", dist.Bernoulli(logits=b1 @ W + c).to_event(1))

    return model, guide, ()


def normal_given_categorical():
    """A reparameterized Normal whose location depends on a sampled Categorical."""

    def model():
        shift = pyro.param("shift", torch.tensor(0.2))
        y = pyro.sample("y", dist.Categorical(torch.tensor([0.3, 0.3, 0.4])))
        c = pyro.sample("c", dist.Normal(y.to(shift.dtype) - 1.0, 1.0))
        pyro.sample("x", dist.Normal(c + shift, 0.8), obs=torch.tensor(0.9))

    def guide():
        phi = pyro.param("phi", torch.tensor([0.1, 0.4, -0.3]))
        m = pyro.param("m", torch.tensor([-0.8, 0.1, 1.2]))
        s = pyro.param("s", torch.tensor(0.7), constraint=constraints.positive)
        y = pyro.sample("y", dist.Categorical(logits=phi))
        pyro.sample("c", dist.Normal(m[y], s))

    return model, guide, ()


def python_branch():
    """The guide branches in Python on a sample: invisible to provenance tracking, and
    ``.item()`` does not broadcast over a batch of alternatives."""

    def model():
        z1 = pyro.sample("z1", dist.Bernoulli(0.5))
        z2 = pyro.sample("z2", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(3.0 * z1 - 2.0 * z2, 1.0), obs=torch.tensor(1.0))

    def guide():
        theta = pyro.param("theta", torch.tensor([0.3, -0.2]))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=theta[0]))
        b = 4.0 if z1.item() > 0.5 else -4.0
        pyro.sample("z2", dist.Bernoulli(logits=theta[1] + b))

    return model, guide, ()


def numpy_round_trip():
    """The guide sends a sample through NumPy and back: no provenance survives."""
    import numpy as np

    def model():
        z1 = pyro.sample("z1", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
        z2 = pyro.sample("z2", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z1.sum(-1) - 2.0 * z2, 1.0), obs=torch.tensor(0.5))

    def guide():
        theta = pyro.param("theta", torch.tensor([0.3, -0.2, 0.1]))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=theta[:2]).to_event(1))
        k = torch.as_tensor(np.asarray(z1.detach().numpy()).sum(-1), dtype=theta.dtype)
        pyro.sample("z2", dist.Bernoulli(logits=theta[2] + 3.0 * k - 3.0))

    return model, guide, ()


def model_python_branch():
    """The model indexes with ``.item()`` on a sample: it does not broadcast."""

    def model():
        locs = pyro.param("locs", torch.tensor([-1.0, 0.5, 2.0]))
        z = pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.3, 0.4])))
        pyro.sample("x", dist.Normal(locs[z.item()], 1.0), obs=torch.tensor(0.6))

    def guide():
        phi = pyro.param("phi", torch.tensor([0.2, -0.4, 0.3]))
        pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide, ()


def plate_dependent():
    """Per-datapoint two-layer latents in a data plate (q(z2_n | z1_n)) with a global one."""
    data = torch.tensor([0.5, -1.0, 1.5])

    def model(data):
        w = pyro.param("w", torch.tensor(0.9))
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with pyro.plate("data", len(data)):
            z1 = pyro.sample("z1", dist.Bernoulli(0.4))
            z2 = pyro.sample("z2", dist.Bernoulli(0.3 + 0.3 * z1))
            pyro.sample("x", dist.Normal(w * z1 + z2 - g, 1.0), obs=data)

    def guide(data):
        t = pyro.param("t", torch.tensor(0.2))
        enc = pyro.param("enc", torch.tensor([0.3, -0.5, 0.8]))
        u = pyro.param("u", torch.tensor([1.2, -0.4]))
        g = pyro.sample("g", dist.Bernoulli(logits=t))
        with pyro.plate("data", len(data)):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=enc + 0.5 * g))
            pyro.sample("z2", dist.Bernoulli(logits=u[0] * z1 + u[1]))

    return model, guide, (data,)


ALL = {
    "vector_bernoulli": vector_bernoulli,
    "plate_bernoulli": plate_bernoulli,
    "categorical": categorical,
    "one_hot_categorical": one_hot_categorical,
    "two_sites": two_sites,
    "two_sites_one_hot": two_sites_one_hot,
    "mixed": mixed,
    "continuous_only": continuous_only,
    "subsampled": subsampled,
    "nested_plates": nested_plates,
    "sequential_plate": sequential_plate,
    "poisson": poisson,
    "categorical_then_bernoulli": categorical_then_bernoulli,
    "two_layer_bernoulli": two_layer_bernoulli,
    "normal_given_categorical": normal_given_categorical,
    "python_branch": python_branch,
    "numpy_round_trip": numpy_round_trip,
    "plate_dependent": plate_dependent,
    "model_python_branch": model_python_branch,
}

#: guides where a site's distribution depends on a sampled discrete value
DEPENDENT = (
    "categorical_then_bernoulli",
    "two_layer_bernoulli",
    "normal_given_categorical",
    "python_branch",
    "numpy_round_trip",
    "plate_dependent",
)
#: programs that do not broadcast over a batch dimension (Python on a sample's value)
NOT_BROADCASTING = ("python_branch", "model_python_branch")


def plate_categorical():
    """Per-datapoint Categorical latents in a data plate (separable: each cell's signal is its
    own, so an estimator may pack different alternatives of different cells into one row)."""
    data = torch.tensor([0.3, -1.2, 2.0])

    def model(data):
        locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5, 0.5]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.1, 0.3, 0.4, 0.2])))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        phi = pyro.param(
            "phi",
            torch.tensor([[0.3, -0.2, 0.1, 0.0], [0.0, 0.5, -0.4, 0.2], [1.0, 0.2, 0.0, -0.6]]),
        )
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide, (data,)


def plate_categorical_global():
    """As :func:`plate_categorical`, plus an observation outside the plate that reads every
    cell's value (not separable: a cell's signal depends on the other cells)."""
    data = torch.tensor([0.3, -1.2, 2.0])

    def model(data):
        locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.5]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)
        total = locs[z].sum(-1, keepdim=True)  # keepdim: broadcasts over a batch at dim -2
        pyro.sample("total", dist.Normal(total, 0.5), obs=torch.tensor([2.0]))

    def guide(data):
        phi = pyro.param("phi", torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4], [1.0, 0.2, 0.0]]))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(logits=phi))

    return model, guide, (data,)


def vector_categorical():
    """Three OneHotCategorical variables in one site (``.to_event(1)``): several variables per
    plate cell, whose alternatives change together."""

    def model():
        mu = pyro.param("mu", torch.tensor([-1.0, 0.5, 2.0]))
        z = pyro.sample("z", dist.OneHotCategorical(torch.ones(3, 3) / 3).to_event(1))
        pyro.sample("x", dist.Normal((z * mu).sum((-2, -1)), 1.0), obs=torch.tensor(1.5))

    def guide():
        phi = pyro.param(
            "phi", torch.tensor([[0.5, -0.3, 0.1], [0.0, 0.8, -0.5], [-1.0, 0.3, 0.4]])
        )
        pyro.sample("z", dist.OneHotCategorical(logits=phi).to_event(1))

    return model, guide, ()


#: categorical cases used by the tests of the categorical estimators only (not in :data:`ALL`,
#: so that the estimators tested on every case do not run them)
CATEGORICAL = {
    "plate_categorical": plate_categorical,
    "plate_categorical_global": plate_categorical_global,
    "vector_categorical": vector_categorical,
}
