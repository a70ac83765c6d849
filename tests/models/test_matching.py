import torch

from models.matching import (
    all_permutations,
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


def test_matching_smoke(capsys):
    args = parse_args(
        "--num-trials 2 --num-steps 3 --num-samples 20 --num-particles 2 --n 4 "
        "--sigmas 0.05 0.5".split()
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
