import gzip
import re
import statistics
import struct

import numpy as np
import pytest
import torch

from models.data import load_fashion_mnist, read_idx
from models.jigsaw import COLUMNS, main, make_parser, scramble, to_pieces, unscramble
from tests.common import summary_rows


def _write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def _write_dataset(directory, num_train, num_test, seed=0):
    """Tiny synthetic 'Fashion-MNIST': a smooth template plus noise, so that each piece
    can be placed from its content alone."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    template = 255 * (0.6 * xx / 27 + 0.4 * yy / 27)
    for split, stem, num in [("train", "train", num_train), ("test", "t10k", num_test)]:
        noise = rng.uniform(-20, 20, size=(num, 28, 28))
        images = np.clip(template + noise, 0, 255).astype(np.uint8)
        labels = rng.integers(0, 10, size=num).astype(np.uint8)
        _write_idx(directory / f"{stem}-images-idx3-ubyte.gz", images)
        # uncompressed labels: both forms are read
        _write_idx(directory / f"{stem}-labels-idx1-ubyte", labels, compress=False)


def test_read_idx_roundtrip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(str(tmp_path / "a.gz")), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(str(tmp_path / "bad"))


def test_load_fashion_mnist_from_path(tmp_path):
    _write_dataset(tmp_path, 7, 3)
    images, labels = load_fashion_mnist(str(tmp_path), "train")
    assert images.shape == (7, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (7,)
    assert load_fashion_mnist(str(tmp_path), "test")[0].shape == (3, 28, 28)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(str(tmp_path), "valid")


def test_load_fashion_mnist_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr("models.data.DEFAULT_PATHS", ())
    message = "apt-get install -y dataset-fashion-mnist"
    with pytest.raises(FileNotFoundError, match=message):
        load_fashion_mnist(str(tmp_path))


@pytest.mark.parametrize("k", [2, 3])
def test_pieces_scramble_unscramble(k):
    images = torch.rand(4, 28, 28)
    pieces = to_pieces(images, k)
    p = 28 // k
    assert pieces.shape == (4, k * k, p, p)
    assert torch.equal(pieces[:, k + 1], images[:, p : 2 * p, p : 2 * p])
    scrambled, perm = scramble(pieces)
    assert torch.equal(unscramble(perm, scrambled), pieces)


def test_seeds_option():
    parser = make_parser()
    assert parser.parse_args([]).seeds == [0, 1, 2]
    assert parser.parse_args(["--seeds", "2", "9"]).seeds == [2, 9]
    assert "seed" not in vars(parser.parse_args([]))


def test_jigsaw_smoke_two_seeds(tmp_path, capsys):
    _write_dataset(tmp_path, 256, 64)
    args = make_parser().parse_args(
        ["--data-dir", str(tmp_path), "--grid", "2", "--num-steps", "60"]
        + ["--batch-size", "16", "--threads", "1", "--seeds", "0", "1"]
    )
    result = main(args)
    out = capsys.readouterr().out
    assert result["seeds"] == [0, 1] and len(result["runs"]) == 2
    for (row,) in result["runs"]:
        # random placement gets 1/4 of the pieces right and solves 1/24 of the puzzles
        assert row["grid"] == 2
        assert row["prop_correct"] > 0.6
        assert row["prop_correct_content"] >= row["prop_correct"]
        assert 0 <= row["prop_solved"] <= 1

    # the aggregate: mean and sample standard deviation of the per-seed values
    keys = [key for key, _, _ in COLUMNS]
    assert set(keys) == {"prop_correct", "prop_correct_content", "prop_solved", "seconds"}
    (mean,), (sd,) = result["mean"], result["sd"]
    assert mean["grid"] == sd["grid"] == 2
    for key in keys:
        values = [rows[0][key] for rows in result["runs"]]
        assert mean[key] == pytest.approx(statistics.mean(values))
        assert sd[key] == pytest.approx(statistics.stdev(values))
    assert result["seconds"] >= sum(rows[0]["seconds"] for rows in result["runs"])

    # printed: the folder read (once), each seed's table, then the Markdown summary
    assert out.count(f"# data: Fashion-MNIST from {tmp_path}\n") == 1  # the folder it read
    assert "# seed 0\n" in out and "# seed 1\n" in out
    assert out.index("# seed 1\n") < out.index("# summary: mean ± sd over 2 seeds (0, 1)")
    assert out.count("prop solved") == 3
    header, rows = summary_rows(out)
    assert header == "| grid | prop correct | (by content) | prop solved | train s |"
    assert list(rows) == ["2x2"]
    for key, (m, s, decimals) in zip(keys, rows["2x2"]):
        values = [r[0][key] for r in result["runs"]]
        assert abs(m - statistics.mean(values)) <= 0.5 * 10**-decimals + 1e-12
        assert abs(s - statistics.stdev(values)) <= 0.5 * 10**-decimals + 1e-12
    assert re.search(r"^# total wall time: \d+\.\d s$", out, re.M)


def test_jigsaw_single_seed_prints_zero_spread(tmp_path, capsys):
    _write_dataset(tmp_path, 32, 8)
    args = make_parser().parse_args(
        ["--data-dir", str(tmp_path), "--grid", "2", "--num-steps", "2"]
        + ["--batch-size", "4", "--seeds", "5"]
    )
    result = main(args)
    out = capsys.readouterr().out
    ((row,),) = result["runs"]
    assert result["mean"] == [row]
    assert all(result["sd"][0][key] == 0 for key, _, _ in COLUMNS)
    assert "# seed 5\n" in out
    line = next(line for line in out.splitlines() if line.startswith("| 2x2 |"))
    assert all(cell.strip().endswith(" ± 0") for cell in line.split("|")[2:-1])
