import pytest
import torch

from pyro_relax.ops import MASK_VALUE, log_sinkhorn, matching


def _marginal_errors(log_p):
    p = log_p.exp()
    return (p.sum(-1) - 1).abs().max().item(), (p.sum(-2) - 1).abs().max().item()


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 4)])
def test_doubly_stochastic(batch_shape):
    log_alpha = torch.randn(batch_shape + (6, 6))
    log_p = log_sinkhorn(log_alpha, num_iters=200)
    assert log_p.shape == log_alpha.shape
    row_err, col_err = _marginal_errors(log_p)
    assert row_err < 1e-4 and col_err < 1e-4


def test_batching_matches_loop():
    log_alpha = torch.randn(2, 3, 5, 5)
    batched = log_sinkhorn(log_alpha, num_iters=7)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(batched[i, j], log_sinkhorn(log_alpha[i, j], 7))


def test_only_row_column_offsets():
    # log_sinkhorn(x) - x must be r_i + c_j: its double differences vanish
    x = torch.randn(5, 5)
    d = log_sinkhorn(x, num_iters=5) - x
    dd = d - d[:, :1] - d[:1, :] + d[:1, :1]
    assert dd.abs().max() < 1e-10


def test_tol_early_stop():
    x = torch.randn(4, 8, 8)
    early = log_sinkhorn(x, num_iters=10000, tol=1e-6)
    row_err, col_err = _marginal_errors(early)
    assert row_err <= 1e-6 and col_err < 1e-10
    # it really stopped early: a single extra round still changes the result
    full = log_sinkhorn(x, num_iters=10000)
    assert (early - full).abs().max() > 1e-10


def test_low_temperature_tends_to_matching():
    x = torch.randn(3, 7, 7)
    hard = matching(x)
    errors = [
        (log_sinkhorn(x / tau, num_iters=2000).exp() - hard).abs().max()
        for tau in (1.0, 0.1, 0.01)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


def test_float32_large_low_temperature_finite():
    x = torch.randn(2, 200, 200, dtype=torch.float32)
    log_p = log_sinkhorn(x / 0.01, num_iters=20)
    assert log_p.dtype == torch.float32
    assert torch.isfinite(log_p).all()
    assert torch.isfinite(log_p.exp()).all()


def test_gradients_flow():
    x = torch.randn(2, 5, 5, requires_grad=True)
    target = torch.rand(2, 5, 5)
    (log_sinkhorn(x, 10).exp() * target).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("fill", [MASK_VALUE, float("-inf")])
def test_masking_no_nan(fill):
    x = torch.randn(6, 6, requires_grad=True)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, :] = True  # a fully masked row
    mask[1:, 2] = True  # a column with a single allowed entry
    mask[3, :5] = True  # a heavily masked row
    masked = x.masked_fill(mask, fill)
    log_p = log_sinkhorn(masked, num_iters=50)
    assert not torch.isnan(log_p).any()
    p = log_p.exp()
    # the only allowed entry of column 2 takes all its mass
    assert p[0, 2] > 1 - 1e-6
    log_p.exp().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[mask], torch.zeros_like(x.grad[mask]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(log_alpha=torch.zeros(3, 4)), "log_alpha"),
        (dict(log_alpha=torch.zeros(3)), "log_alpha"),
        (dict(log_alpha=torch.tensor([[0.0, float("nan")], [0.0, 0.0]])), "log_alpha"),
        (dict(log_alpha=torch.zeros(3, 3), num_iters=0), "num_iters"),
        (dict(log_alpha=torch.zeros(3, 3), tol=-1.0), "tol"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_sinkhorn(**kwargs)


def test_chunked_batch_matches_reference():
    # 70 matrices of 150 x 150 exceed one CPU chunk: the result and its gradient must
    # equal the plain logsumexp iteration's
    x = torch.randn(2, 35, 150, 150, requires_grad=True)
    ref = x
    for _ in range(5):
        ref = ref - torch.logsumexp(ref, -1, keepdim=True)
        ref = ref - torch.logsumexp(ref, -2, keepdim=True)
    out = log_sinkhorn(x, num_iters=5)
    assert torch.allclose(out, ref, atol=1e-12)
    w = torch.rand_like(x)
    (g_out,) = torch.autograd.grad((out.exp() * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref.exp() * w).sum(), x)
    assert torch.allclose(g_out, g_ref, atol=1e-12)
