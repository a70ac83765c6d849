import pytest
import torch

from models.matching import (
    all_permutations,
    assignment_scores,
    bhattacharyya_distance,
    exact_posterior,
    main,
    make_problems,
    parse_args,
    permutation_histogram,
)


def test_histogram_ranks_are_lexicographic():
    perms = all_permutations(4)
    mats = torch.eye(4)[perms]  # (24, 4, 4), row i -> column perms[k, i]
    hist = permutation_histogram(mats[:, None], 4)  # 24 samples of one problem
    assert torch.allclose(hist, torch.full((1, 24), 1 / 24))
    hist = permutation_histogram(mats[7].expand(3, 2, 4, 4), 4)
    assert hist[:, 7].eq(1).all() and hist.sum().item() == 2


def test_bhattacharyya_distance():
    p = torch.tensor([0.5, 0.5, 0.0])
    assert bhattacharyya_distance(p, p).abs().item() < 1e-6
    assert abs(bhattacharyya_distance(p, torch.tensor([0.0, 0.0, 1.0])).item() - 1) < 1e-12


def test_exact_posterior_small_noise_finds_truth():
    g = torch.Generator().manual_seed(0)
    mus, ys, sigma, true_perm = make_problems(5, 5, (0.01,), generator=g)
    perms = all_permutations(5)
    post = exact_posterior(mus, ys, sigma, perms)
    assert torch.allclose(post.sum(-1), torch.ones(5))
    assert (perms[post.argmax(-1)] == true_perm).all()


def test_assignment_scores_match_mean_likelihood_on_permutations():
    # on permutation matrices the linear ("assignment") likelihood is the exact one
    g = torch.Generator().manual_seed(1)
    mus, ys, sigma, _ = make_problems(3, 4, (0.3,), generator=g)
    perms = all_permutations(4)
    x = torch.eye(4)[perms]  # (24, 4, 4)
    lin = (x[:, None] * assignment_scores(mus, ys, sigma)).sum((-1, -2))  # (24, 3)
    sq = -0.5 * (ys - x[:, None] @ mus).pow(2).sum((-1, -2)) / sigma**2
    assert torch.allclose(lin, sq)
    # fractional X: the linear form does not reward interpolating between centres
    half = 0.5 * (x[0] + x[1])
    assert ((half * assignment_scores(mus, ys, sigma)).sum((-1, -2)) <= lin[:2].max(0).values).all()


@pytest.mark.parametrize("likelihood,init", [(None, None), ("mean", "uniform")])
def test_matching_smoke(capsys, likelihood, init):
    args = parse_args(
        "--num-trials 2 --num-steps 3 --num-samples 20 --num-particles 2 --n 4 "
        "--sigmas 0.05 0.5".split()
        + (["--likelihood", likelihood, "--init", init] if likelihood else [])
    )
    out = main(args)
    printed = capsys.readouterr().out
    assert "stick-breaking" in printed and "rounding" in printed
    table = out["table"]
    assert set(table) >= {"stick-breaking", "rounding", "gumbel-sinkhorn", "mallows (best)"}
    for row in table.values():
        assert len(row) == 2 and all(0 <= v <= 1 for v in row)
    post = out["posterior"]
    assert post.shape == (4, 24)
    assert torch.allclose(post.sum(-1), torch.ones(4))
    mode = out["perms"][post.argmax(-1)]
    small = out["sigma"] == 0.05
    assert (mode[small] == out["true_perm"][small]).all()
