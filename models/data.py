"""
Fashion-MNIST loader for the idx(.gz) files (no download).

Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv:1708.07747) ships as four idx files. On
Debian/Ubuntu they are installed under ``/usr/share/datasets/fashion-mnist`` by the
package ``dataset-fashion-mnist``.

For the binary latent-variable models, :func:`load_binarized_fashion_mnist` gives the DisARM
reference code's splits (the first 50,000 training images train, the other 10,000 validate,
the test split tests) as intensities in ``[0, 1]`` with the training mean, and
:func:`binarize` draws a fresh binarization (``pixel ~ Bernoulli(intensity)``) for every batch.
:func:`write_idx` writes small synthetic idx folders for tests.
"""

import gzip
import os
from typing import NamedTuple, Optional

import numpy as np
import torch

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_PATHS",
    "TRAIN_SIZE",
    "BinarizedSplits",
    "binarize",
    "load_binarized_fashion_mnist",
    "load_fashion_mnist",
    "missing_files",
    "read_idx",
    "write_idx",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs the idx files.
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
#: Folders :func:`load_fashion_mnist` searches after the one it is given.
DEFAULT_PATHS = (DEFAULT_DATA_DIR,)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
#: the DisARM reference code's split: the first 50,000 training images train, the rest validate
TRAIN_SIZE = 50000


def read_idx(filename):
    """
    Read one idx file (optionally gzip-compressed, by its ``.gz`` suffix).

    :param str filename: path of the file.
    :returns: the array stored in the file, in its stored shape.
    :rtype: numpy.ndarray
    :raises ValueError: if the header is not a valid idx header or the size mismatches.
    """
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{filename} is not an idx file (bad magic number)")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{filename}: header says shape {shape}, but the payload has "
            f"{len(data) - offset} bytes"
        )
    return np.frombuffer(data, dtype, count, offset=offset).reshape(shape)


def write_idx(filename, array):
    """
    Write an array as an idx file (gzip-compressed if ``filename`` ends with ``.gz``); the
    inverse of :func:`read_idx`, used to make small synthetic data folders for tests.

    :param str filename: path of the file.
    :param numpy.ndarray array: ``uint8``, ``int8``, ``>i2``, ``>i4``, ``>f4`` or ``>f8``.
    """
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder(">") if np.dtype(v).itemsize > 1 else np.dtype(v): k
             for k, v in _DTYPES.items()}
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in codes:
        raise ValueError(f"idx cannot store dtype {array.dtype}")
    header = bytes([0, 0, codes[dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=dtype).tobytes())


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def missing_files(directory, splits=("train", "test")):
    """
    The idx files of ``splits`` that ``directory`` lacks (in neither plain nor ``.gz`` form).

    :param str directory: a folder.
    :param tuple splits: ``"train"`` and/or ``"test"``.
    :returns: the missing files' names, without the ``.gz`` suffix; empty if none is missing.
    :rtype: list
    """
    return [stem for split in splits for stem in _FILES[split] if _find(directory, stem) is None]


def load_fashion_mnist(path=None, split="train"):
    """
    Load a split of Fashion-MNIST from its idx files, looking in ``path`` first and then
    in :data:`DEFAULT_PATHS`. Nothing is downloaded.

    :param str path: optional directory holding ``train-images-idx3-ubyte[.gz]``,
        ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
        ``t10k-labels-idx1-ubyte[.gz]``.
    :param str split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
    :returns: ``(images, labels)``: ``uint8`` arrays of shapes ``(n, 28, 28)`` and
        ``(n,)``.
    :rtype: tuple
    :raises FileNotFoundError: if no directory holds the split's files.
    :raises ValueError: for an unknown ``split``, or images and labels of different
        lengths.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_stem, label_stem = _FILES[split]
    searched = ([path] if path is not None else []) + list(DEFAULT_PATHS)
    for directory in searched:
        images, labels = _find(directory, image_stem), _find(directory, label_stem)
        if images is not None and labels is not None:
            images, labels = read_idx(images), read_idx(labels)
            if len(images) != len(labels):
                raise ValueError(
                    f"{directory}: {len(images)} images but {len(labels)} labels"
                )
            return images, labels
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files ({image_stem}[.gz], {label_stem}[.gz]) not found "
        f"in {searched}. Install them with "
        "`apt-get update && apt-get install -y dataset-fashion-mnist`, "
        "or pass path=<directory holding the idx files>."
    )


class BinarizedSplits(NamedTuple):
    """Fashion-MNIST for binary latent-variable models, as in the DisARM reference code: grey
    levels scaled to ``[0, 1]`` and flattened, to be binarized dynamically with :func:`binarize`.

    :ivar torch.Tensor train: ``(n_train, pixels)`` intensities in ``[0, 1]``.
    :ivar torch.Tensor valid: ``(n_valid, pixels)``, the training images after ``train``.
    :ivar torch.Tensor test: ``(n_test, pixels)``, the test split.
    :ivar torch.Tensor train_labels: ``(n_train,)`` class indices (``int64``).
    :ivar torch.Tensor valid_labels: ``(n_valid,)``.
    :ivar torch.Tensor test_labels: ``(n_test,)``.
    :ivar torch.Tensor train_mean: ``(pixels,)`` the mean intensity of ``train`` per pixel: the
        encoder sees ``x - train_mean`` and the decoder's output bias can start at
        ``logit(clip(train_mean, 0.001, 0.999))``.
    :ivar str folder: the folder the files were read from.
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    valid_labels: torch.Tensor
    test_labels: torch.Tensor
    train_mean: torch.Tensor
    folder: str

    @property
    def pixels(self):
        """The number of pixels of an image."""
        return self.train.shape[-1]

    def output_bias(self, low=0.001, high=0.999):
        """``logit(clip(train_mean, low, high))``: the decoder's initial output bias."""
        return torch.logit(self.train_mean.clamp(low, high))


def load_binarized_fashion_mnist(
    path=None,
    train_size=TRAIN_SIZE,
    device="cpu",
    dtype: Optional[torch.dtype] = None,
):
    """
    Fashion-MNIST with the DisARM reference code's splits and preprocessing: train = the first
    ``train_size`` (50,000) training images, validation = the other 10,000, test = the test
    split; intensities ``pixel / 255`` (flattened), binarized dynamically by :func:`binarize`.
    Any idx folder works (e.g. small synthetic images in tests): the number of pixels comes
    from the files.

    :param str path: the folder holding the idx files; only that folder is read (``None``:
        the first folder of :data:`DEFAULT_PATHS` that has them).
    :param int train_size: how many of the training images train; the rest validate.
    :param device: where the tensors live.
    :param torch.dtype dtype: their floating dtype (default: torch's default dtype).
    :returns: :class:`BinarizedSplits`.
    :raises FileNotFoundError: (one line) if the files are missing, saying how to install them.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    folder = None
    for directory in [path] if path is not None else list(DEFAULT_PATHS):
        if not missing_files(directory, ("train", "test")):
            folder = os.path.abspath(directory)
            break
    if folder is None:
        raise FileNotFoundError(
            "Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], ...) not found in "
            f"{path or DEFAULT_DATA_DIR}: install them with `apt-get update && apt-get install "
            f"-y dataset-fashion-mnist` (into {DEFAULT_DATA_DIR}) or pass the folder holding "
            "them; nothing is downloaded."
        )
    splits = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(folder, split)
        images = torch.as_tensor(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        splits[split] = (
            images.to(device=device, dtype=dtype),
            torch.as_tensor(labels.astype(np.int64)).to(device),
        )
    images, labels = splits["train"]
    if not 0 < train_size <= len(images):
        raise ValueError(f"train_size must be in [1, {len(images)}], got {train_size}")
    train, valid = images[:train_size], images[train_size:]
    return BinarizedSplits(
        train=train,
        valid=valid,
        test=splits["test"][0],
        train_labels=labels[:train_size],
        valid_labels=labels[train_size:],
        test_labels=splits["test"][1],
        train_mean=train.mean(0),
        folder=folder,
    )


def binarize(images, generator=None):
    """
    Dynamic binarization: each pixel ~ Bernoulli(intensity), drawn afresh at every call.

    :param torch.Tensor images: intensities in ``[0, 1]``.
    :param torch.Generator generator: optional generator (on the images' device), e.g. for
        a fixed binarization of an evaluation set.
    :returns: a tensor of 0s and 1s of the same shape and dtype.
    """
    return torch.bernoulli(images, generator=generator)
