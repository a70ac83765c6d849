"""Evaluation of the models: the single-sample ELBO and the importance-weighted bound on
dynamically binarized images with a fixed seed, the caller's random state untouched."""

import math

import pyro
import pyro.poutine as poutine
import torch

from models.data import binarize

__all__ = ["EVAL_SEEDS", "evaluate_bound", "forked_rng", "log_weights"]

#: fixed seeds of the evaluation's binarization and latent samples (the same for every run)
EVAL_SEEDS = {"valid": 1, "test": 2, "test_iw": 3}


@torch.no_grad()
def log_weights(vae, x, num_samples, *args):
    """``log p(x, z) - log q(z | x)`` for ``num_samples`` draws of the (discrete) guide per
    datapoint, as a ``(num_samples, len(x))`` tensor (the draws batched in a plate at dim -2)."""
    with pyro.plate("samples", num_samples, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, *args)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
            x, *args
        )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_w = torch.zeros(num_samples, len(x), dtype=x.dtype, device=x.device)
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            log_w = log_w + site["log_prob"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            log_w = log_w - site["log_prob"]
    return log_w


def forked_rng(device):
    """Torch's random state (and the device's, on CUDA), restored on exit."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def evaluate_bound(vae, images, num_samples=1, seed=0, rows=10000):
    """The ``num_samples``-sample importance-weighted bound (``num_samples=1``: the ELBO)
    per datapoint, averaged over ``images`` binarized with a fixed ``seed``; the random state
    of the caller is left untouched.

    :param int rows: ``num_samples x images`` evaluated at once (memory).
    """
    if len(images) == 0:
        return float("nan")
    previous = vae.estimator, vae.num_particles, vae.temperature, vae.st_prior
    vae.configure("eval")
    chunk = max(1, rows // num_samples)
    total = 0.0
    try:
        with forked_rng(images.device):
            torch.manual_seed(seed)
            generator = torch.Generator(device=images.device).manual_seed(seed)
            for start in range(0, len(images), chunk):
                x = binarize(images[start : start + chunk], generator)
                log_w = log_weights(vae, x, num_samples)
                total += (torch.logsumexp(log_w, 0) - math.log(num_samples)).sum().item()
    finally:
        vae.configure(*previous)
    return total / len(images)
