"""Programs as users write them: empty ones, factor-only guides, TraceGraph baselines, random
mini-batches with particles in sequence, a semi-supervised VAE (M2) and an AIR-like
sequential guide."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_relax.infer import make_elbo

from .exact import param_leaves

ELBOS = {
    "rloo": lambda: make_elbo("rloo", num_particles=2),
    "rloo-vectorized": lambda: make_elbo("rloo", num_particles=3, vectorize_particles=True),
    "vargrad": lambda: make_elbo("vargrad", num_particles=2),
    "arm": lambda: make_elbo("arm"),
    "disarm": lambda: make_elbo("disarm", num_particles=2),
}


# ------------------------------------------------------------------ programs with no latents
def _empty():
    pass


def _factor_guide(has_rsample):
    def guide():
        pyro.factor("f", torch.tensor(0.5), has_rsample=has_rsample)

    return guide


def _observed_only():
    pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))


@pytest.mark.parametrize("name", sorted(ELBOS))
@pytest.mark.parametrize(
    "model,guide",
    [
        (_empty, _empty),
        (_observed_only, _empty),
        (_empty, _factor_guide(False)),
        (_empty, _factor_guide(True)),
    ],
    ids=["empty", "observed-only", "factor-guide", "factor-guide-rsample"],
)
def test_programs_without_latents_return_what_trace_elbo_returns(name, model, guide):
    expected = make_elbo("trace").loss(model, guide)
    elbo = ELBOS[name]()
    assert elbo.loss(model, guide) == pytest.approx(expected, abs=1e-12)
    assert elbo.loss_and_grads(model, guide) == pytest.approx(expected, abs=1e-12)
    assert float(elbo.differentiable_loss(model, guide)) == pytest.approx(expected, abs=1e-12)
    SVI(model, guide, Adam({"lr": 0.1}), elbo).step()


@pytest.mark.parametrize("name", sorted(ELBOS))
def test_factor_in_guide_enters_the_learning_signal(name):
    """A guide factor that depends on a discrete sample is part of -log q: the exact gradient
    of E_q[log p - log q - factor] is matched (checked against the enumeration oracle)."""
    from .exact import check_unbiased

    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        theta = pyro.param("theta", torch.tensor(0.3))
        z = pyro.sample("z", dist.Bernoulli(logits=theta))
        pyro.factor("f", 2.0 * z, has_rsample=False)

    ok, report = check_unbiased(ELBOS[name](), model, guide, 400)
    assert ok, report


# ------------------------------------------------------------------ TraceGraph baselines
@pytest.mark.parametrize("name", sorted(ELBOS))
def test_tracegraph_baseline_option_is_refused_with_a_warning(name):
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        theta = pyro.param("theta", torch.tensor(0.0))
        pyro.sample(
            "z",
            dist.Bernoulli(logits=theta),
            infer={"baseline": {"use_decaying_avg_baseline": True}},
        )

    elbo = ELBOS[name]()
    with pytest.warns(UserWarning, match=r"ignores infer=\{'baseline'.*'z'"):
        elbo.loss_and_grads(model, guide)


# ------------------------------------------------------------------ mini-batches
def _minibatch_program(num_data=100, subsample_size=10):
    """Per-datapoint Bernoulli latents in a randomly subsampled plate, with a per-datapoint
    constant likelihood term (large and different for each datapoint)."""
    offsets = 50.0 * torch.randn(num_data)

    def model():
        with pyro.plate("data", num_data, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.factor("const", offsets[idx])
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.ones(len(idx)))

    def guide():
        logits = pyro.param("logits", torch.zeros(num_data))
        with pyro.plate("data", num_data, subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Bernoulli(logits=logits[idx]))

    return model, guide


def _summed_grad_variance(elbo, model, guide, num_calls=300):
    draws = []
    for _ in range(num_calls):
        for p in param_leaves().values():
            p.grad = None
        elbo.loss_and_grads(model, guide)
        draws.append(pyro.param("logits").grad.detach().clone())
    return torch.stack(draws).var(0).sum().item()


def test_sequential_particles_share_the_minibatch():
    model, guide = _minibatch_program()
    indices = []

    class Record(pyro.poutine.messenger.Messenger):
        def _pyro_post_sample(self, msg):
            if msg["name"] == "data":
                indices.append(msg["value"].clone())

    elbo = make_elbo("rloo", num_particles=3)
    with Record():
        elbo.loss_and_grads(model, guide)
    assert len(indices) == 6  # guide and model, for each of 3 particles
    for i in indices[1:]:
        assert torch.equal(i, indices[0])


def test_minibatch_baseline_variance_sequential_matches_vectorized():
    model, guide = _minibatch_program()
    pyro.set_rng_seed(1)
    sequential = _summed_grad_variance(make_elbo("rloo", num_particles=2), model, guide)
    vectorized = _summed_grad_variance(
        make_elbo("rloo", num_particles=2, vectorize_particles=True, max_plate_nesting=1),
        model,
        guide,
    )
    no_baseline = _summed_grad_variance(make_elbo("trace", num_particles=2), model, guide)
    assert sequential < 2.0 * vectorized, (sequential, vectorized)
    # the comparison has power: without a working per-datapoint baseline the variance is
    # orders of magnitude larger
    assert no_baseline > 100.0 * vectorized, (no_baseline, vectorized)


@pytest.mark.parametrize("name", sorted(ELBOS))
def test_sequential_plate_with_random_subsample(name):
    """``for i in pyro.plate("data", 4, subsample_size=2)``: site names depend on the drawn
    indices, so particles must share them."""

    def model():
        for i in pyro.plate("data", 4, subsample_size=2):
            z = pyro.sample("z_{}".format(i), dist.Bernoulli(0.5))
            pyro.sample("x_{}".format(i), dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    def guide():
        logits = pyro.param("logits", torch.zeros(4))
        for i in pyro.plate("data", 4, subsample_size=2):
            pyro.sample("z_{}".format(i), dist.Bernoulli(logits=logits[i]))

    svi = SVI(model, guide, Adam({"lr": 0.01}), ELBOS[name]())
    for _ in range(5):
        assert torch.isfinite(torch.tensor(svi.step()))


# ------------------------------------------------------------------ dynamic structure
@pytest.mark.parametrize("name", ["rloo", "vargrad"])
def test_guide_whose_sites_differ_between_particles(name):
    """A geometric number of sites: the particles hold different sets of sites. The
    leave-one-out baseline uses the particles that have the site; checked exactly."""
    from .exact import check_unbiased

    def model():
        z0 = pyro.sample("z0", dist.Bernoulli(0.5))
        if z0.item() > 0.5:
            pyro.sample("z1", dist.Bernoulli(0.5))

    def guide():
        theta = pyro.param("theta", torch.tensor([0.4, -0.7]))
        z0 = pyro.sample("z0", dist.Bernoulli(logits=theta[0]))
        if z0.item() > 0.5:
            pyro.sample("z1", dist.Bernoulli(logits=theta[1]))

    def exact_loss(model, guide):
        # E_q[log p - log q] written out: z1 exists only when z0 = 1
        theta = pyro.param("theta")
        q0, q1 = torch.sigmoid(theta[0]), torch.sigmoid(theta[1])

        def kl(q):  # KL(Bernoulli(q) || Bernoulli(0.5))
            return q * torch.log(2 * q) + (1 - q) * torch.log(2 * (1 - q))

        return kl(q0) + q0 * kl(q1)

    ok, report = check_unbiased(ELBOS[name](), model, guide, 600, loss_fn=exact_loss)
    assert ok, report


# ------------------------------------------------------------------ Pyro's example shapes
def _digits(num=64):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:num] / 16.0 > 0.5, dtype=torch.get_default_dtype())
    y = torch.tensor(digits.target[:num])
    return x, y


def _cat(tensors):
    """Concatenates along the last dim, broadcasting the batch dims (particles, alternatives)."""
    batch = torch.broadcast_shapes(*[t.shape[:-1] for t in tensors])
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], -1)


def _ss_vae(num_classes=10, z_dim=4, hidden=32, pixels=64):
    """The semi-supervised VAE M2 (Kingma et al. 2014, Pyro's ss_vae_M2 example): a
    Categorical label y in the guide for unlabelled data, q(z | x, y) depends on it."""
    encoder_y = torch.nn.Sequential(
        torch.nn.Linear(pixels, hidden), torch.nn.Softplus(), torch.nn.Linear(hidden, num_classes)
    )
    encoder_z = torch.nn.Sequential(
        torch.nn.Linear(pixels + num_classes, hidden), torch.nn.Softplus(), torch.nn.Linear(hidden, 2 * z_dim)
    )
    decoder = torch.nn.Sequential(
        torch.nn.Linear(z_dim + num_classes, hidden), torch.nn.Softplus(), torch.nn.Linear(hidden, pixels)
    )

    def model(xs, ys=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample(
                "z", dist.Normal(xs.new_zeros(z_dim), xs.new_ones(z_dim)).to_event(1)
            )
            y = pyro.sample("y", dist.OneHotCategorical(logits=xs.new_zeros(num_classes)), obs=ys)
            zy = _cat([z, y])
            pyro.sample("x", dist.Bernoulli(logits=decoder(zy)).to_event(1), obs=xs)

    def guide(xs, ys=None):
        pyro.module("encoder_y", encoder_y)
        pyro.module("encoder_z", encoder_z)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=encoder_y(xs)))
            xy = _cat([xs, ys])
            loc, log_scale = encoder_z(xy).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def classifier_loss(xs, ys):
        return torch.nn.functional.cross_entropy(encoder_y(xs), ys.argmax(-1))

    return model, guide, classifier_loss, encoder_y


SS_ELBOS = dict(
    ELBOS,
    **{"arsm-one-at-a-time": lambda: make_elbo("arsm", vectorize_alternatives=False)},
)


@pytest.mark.parametrize("name", sorted(SS_ELBOS))
def test_semi_supervised_vae_m2_trains(name):
    x, y = _digits(48)
    y_onehot = torch.nn.functional.one_hot(y, 10).to(x.dtype)
    labelled, unlabelled = slice(0, 16), slice(16, 48)
    model, guide, classifier_loss, encoder_y = _ss_vae()
    elbo = SS_ELBOS[name]()
    svi = SVI(model, guide, Adam({"lr": 0.01}), elbo)
    before = encoder_y[0].weight.detach().clone()
    losses = []
    for _ in range(40):
        loss = svi.step(x[unlabelled])
        loss += svi.step(x[labelled], y_onehot[labelled])
        losses.append(loss)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, encoder_y[0].weight.detach())
    assert sum(losses[-10:]) < sum(losses[:10]), losses


def _air_like(num_steps=3, dim=6, what_dim=2):
    """An AIR-like sequential guide: at each step z_pres_t ~ Bernoulli(z_pres_{t-1} * p_t) with
    p_t depending on the earlier steps, and z_what_t ~ Normal masked by z_pres_t; the model
    adds what each present object draws (Eslami et al. 2016, Pyro's AIR example, in small)."""
    decoder = torch.nn.Linear(what_dim, dim)
    rnn = torch.nn.GRUCell(dim + what_dim + 1, 16)
    pres_head = torch.nn.Linear(16, 1)
    what_head = torch.nn.Linear(16, 2 * what_dim)

    def model(xs):
        pyro.module("decoder", decoder)
        n = xs.shape[0]
        with pyro.plate("data", n):
            z_pres = xs.new_ones(n)
            canvas = xs.new_zeros(n, dim)
            for t in range(num_steps):
                z_pres = pyro.sample(
                    "z_pres_{}".format(t), dist.Bernoulli(0.5 * z_pres)
                )
                with poutine.mask(mask=z_pres.bool()):
                    z_what = pyro.sample(
                        "z_what_{}".format(t),
                        dist.Normal(xs.new_zeros(what_dim), 1.0).to_event(1),
                    )
                canvas = canvas + z_pres.unsqueeze(-1) * decoder(z_what)
            pyro.sample("x", dist.Normal(canvas, 0.5).to_event(1), obs=xs)

    def guide(xs):
        pyro.module("rnn", rnn)
        pyro.module("pres_head", pres_head)
        pyro.module("what_head", what_head)
        n = xs.shape[0]
        with pyro.plate("data", n):
            z_pres = xs.new_ones(n)
            z_what = xs.new_zeros(n, what_dim)
            h = xs.new_zeros(n, 16)
            for t in range(num_steps):
                inputs = _cat([xs, z_what, z_pres.unsqueeze(-1)])
                batch = inputs.shape[:-1]
                h = rnn(inputs.reshape(-1, inputs.shape[-1]), h.expand(batch + (16,)).reshape(-1, 16))
                h = h.reshape(batch + (16,))
                p = torch.sigmoid(pres_head(h)).squeeze(-1)
                z_pres = pyro.sample("z_pres_{}".format(t), dist.Bernoulli(z_pres * p))
                loc, log_scale = what_head(h).chunk(2, -1)
                with poutine.mask(mask=z_pres.bool()):
                    z_what = pyro.sample(
                        "z_what_{}".format(t), dist.Normal(loc, log_scale.exp()).to_event(1)
                    )

    return model, guide, rnn


AIR_ELBOS = dict(
    ELBOS,
    **{"disarm-one-at-a-time": lambda: make_elbo("disarm", vectorize_alternatives=False)},
)


@pytest.mark.parametrize("name", sorted(AIR_ELBOS))
def test_air_like_sequential_guide_trains(name):
    x, _ = _digits(16)
    xs = x[:, :6] * 2.0
    model, guide, rnn = _air_like()
    svi = SVI(model, guide, Adam({"lr": 0.02}), AIR_ELBOS[name]())
    before = rnn.weight_ih.detach().clone()
    losses = [svi.step(xs) for _ in range(60)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, rnn.weight_ih.detach())
    assert sum(losses[-10:]) < sum(losses[:10]), losses
