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


ALL = {
    "vector_bernoulli": vector_bernoulli,
    "plate_bernoulli": plate_bernoulli,
    "categorical": categorical,
    "one_hot_categorical": one_hot_categorical,
    "two_sites": two_sites,
    "mixed": mixed,
    "continuous_only": continuous_only,
    "subsampled": subsampled,
    "nested_plates": nested_plates,
    "sequential_plate": sequential_plate,
    "poisson": poisson,
}
