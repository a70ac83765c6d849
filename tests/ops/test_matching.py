import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from pyro_relax.ops import MASK_VALUE, matching
from tests.common import is_permutation


def test_brute_force_optimum():
    x = torch.randn(5, 5)
    best = max(
        itertools.permutations(range(5)),
        key=lambda s: sum(x[i, s[i]] for i in range(5)),
    )
    p = matching(x)
    assert is_permutation(p)
    assert torch.equal(p.argmax(-1), torch.tensor(best))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_shape_dtype_and_scipy(dtype):
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    p = matching(x)
    assert p.shape == x.shape and p.dtype == dtype and p.device == x.device
    assert is_permutation(p)
    for i in range(2):
        for j in range(3):
            _, cols = linear_sum_assignment(x[i, j].numpy(), maximize=True)
            assert torch.equal(p[i, j].argmax(-1), torch.from_numpy(cols))


def test_no_grad_and_invariance_to_offsets():
    x = torch.randn(6, 6, requires_grad=True)
    p = matching(x)
    assert not p.requires_grad
    shifted = x.detach() + torch.randn(6, 1) + torch.randn(1, 6)
    assert torch.equal(matching(shifted), p)


def test_empty_batch():
    assert matching(torch.zeros(0, 4, 4)).shape == (0, 4, 4)


@pytest.mark.parametrize("fill", [MASK_VALUE, float("-inf")])
def test_masking(fill):
    x = torch.randn(5, 5)
    mask = torch.eye(5, dtype=torch.bool)  # forbid the identity's entries
    p = matching(x.masked_fill(mask, fill))
    assert is_permutation(p)
    assert p[mask].sum() == 0
    # an infeasible mask (a fully masked row) still returns a permutation
    x[2, :] = fill
    assert is_permutation(matching(x))


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(3, 4), "square"),
        (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), "NaN"),
        (torch.tensor([[0.0, float("inf")], [0.0, 0.0]]), r"\+inf"),
    ],
)
def test_errors(x, match):
    with pytest.raises(ValueError, match=match):
        matching(x)
