"""
Fashion-MNIST loader for the idx(.gz) files (no download).

Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", arXiv:1708.07747) ships as four idx files. On
Debian/Ubuntu they are installed under ``/usr/share/datasets/fashion-mnist`` by the
package ``dataset-fashion-mnist``.
"""

import gzip
import os

import numpy as np

__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_PATHS", "load_fashion_mnist", "missing_files", "read_idx"]

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
