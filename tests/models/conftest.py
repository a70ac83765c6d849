"""Fixtures shared by the tutorial models' tests."""

import numpy as np
import pytest

from models.data import write_idx


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """An idx folder with the 1797 digits (grey levels 0..16 scaled to 0..255, each pixel
    repeated 3 x 3: 24 x 24 images): 1500 training images (1200 train + 300 validation with
    --train-size 1200), 297 test images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(np.clip(digits.images * 16, 0, 255), np.ones((3, 3))).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    folder = tmp_path_factory.mktemp("digits")
    write_idx(str(folder / "train-images-idx3-ubyte.gz"), images[:1500])
    write_idx(str(folder / "train-labels-idx1-ubyte.gz"), labels[:1500])
    write_idx(str(folder / "t10k-images-idx3-ubyte"), images[1500:])
    write_idx(str(folder / "t10k-labels-idx1-ubyte"), labels[1500:])
    return str(folder)
