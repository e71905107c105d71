"""Fashion-MNIST for ``ntkit bench fashion``: the idx files, preprocessing and the papers' split.

Data: Xiao, Rasul, Vollgraf (2017), "Fashion-MNIST: a novel image dataset for benchmarking machine
learning algorithms" -- 60,000 training and 10,000 test images of 28x28 grey pixels (values 0..255),
10 classes, 6,000 / 1,000 per class. The four gzip-compressed idx files are read from disk, never
downloaded: by default from Debian's ``dataset-fashion-mnist`` package (:data:`DEBIAN_DIR`,
``apt-get install dataset-fashion-mnist``), or from any folder holding them (``--data-dir``).

idx format (LeCun et al.): a big-endian header -- two zero bytes, a type byte (``0x08``: unsigned
bytes), the number of dimensions ``d``, then ``d`` big-endian uint32 sizes -- followed by the
values in C order. Images are ``(N, 28, 28)`` (magic ``0x00000803``), labels ``(N,)`` (``0x00000801``).

Preprocessing (:func:`standardise_global`): pixels scaled to [0, 1], then the mean and standard
deviation of *all pixels of the fitting images* (one channel: per-channel statistics, as the CNN-GP /
NNGP papers and Arora et al.'s code standardise inputs) are subtracted / divided out of every image,
test images included. ``"image"`` (:func:`ntkit.experiments.images_data.standardise`) instead
standardises each image on its own.

Split (:func:`paper_split`, Novak et al. 2019; Lee et al. 2018): the 60,000 training images in a
stratified, seeded order (:func:`ntkit.experiments.images_data.stratified_order`); the first 10,000
are the validation split, the other 50,000 the training split. Hyper-parameters (depth, ridge) are
chosen by fitting on a prefix of the training split and scoring on the validation split; the final
fit uses training and validation together (all 60,000 at full size) and is scored on the 10,000
test images. Every prefix is class-balanced to within one image per class.

Targets (:func:`ntkit.experiments.images_eval.centred_targets`): one-hot rows with the mean
``1 / 10`` removed (the -0.1 / 0.9 targets of Lee et al. 2018).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntkit._validation import check_int
from ntkit.experiments.images_data import stratified_order

#: Where Debian's ``dataset-fashion-mnist`` package puts the idx files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The four files: split -> (images, labels).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
N_CLASSES = 10
N_VAL = 10_000
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` (Debian / Ubuntu) or pass --data-dir DIR"


class IdxFormatError(ValueError):
    """An idx file is malformed; the message names the file and what was expected."""


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """The unsigned-byte array of a (gzip-compressed when named ``.gz``) idx file.

    Parameters
    ----------
    path : path
    ndim : int
        Expected number of dimensions (3 for images, 1 for labels).

    Returns
    -------
    ndarray of uint8, shape given by the header

    Raises
    ------
    IdxFormatError
        Not gzip, a bad magic number, another dimension count, or a payload of the wrong size.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise IdxFormatError(f"{path}: expected a gzip-compressed idx file, got an unreadable file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise IdxFormatError(f"{path}: expected an idx file of unsigned bytes (magic 0x0000080{ndim}), "
                             f"got the bytes {raw[:4].hex() or 'of an empty file'}")
    if raw[3] != ndim:
        raise IdxFormatError(f"{path}: expected {ndim} dimension(s), got {raw[3]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: expected a {header}-byte header, got {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise IdxFormatError(f"{path}: expected {size} values for shape {shape}, got {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` (uint8 values) as a gzip-compressed idx file (the inverse of :func:`read_idx`)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    with gzip.open(path, "wb") as fh:
        fh.write(bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())


@dataclass(frozen=True)
class FashionData:
    """Fashion-MNIST as read from disk.

    Attributes
    ----------
    x_train : ndarray of shape (60000, 28, 28), uint8
    y_train : ndarray of shape (60000,), int64
    x_test : ndarray of shape (10000, 28, 28), uint8
    y_test : ndarray of shape (10000,), int64
    source : str
        The folder the files came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def find_fashion(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four idx files: ``data_dir``, else :data:`DEBIAN_DIR`.

    Raises
    ------
    FileNotFoundError
        A file is missing; the message names it and says how to install the package.
    """
    base = DEBIAN_DIR if data_dir is None else Path(data_dir)
    missing = [name for pair in FILES.values() for name in pair if not (base / name).is_file()]
    if missing:
        where = "Debian's dataset-fashion-mnist package" if data_dir is None else "--data-dir"
        raise FileNotFoundError(f"Fashion-MNIST: expected the idx files {', '.join(missing)} in {base} ({where}), "
                                f"got none there; {INSTALL_HINT}")
    return base


def load_fashion(data_dir: str | os.PathLike[str] | None = None) -> FashionData:
    """Read the four idx files (see :func:`find_fashion` for where).

    Raises
    ------
    FileNotFoundError
        The files are absent (with the install hint).
    IdxFormatError
        A malformed file, images that are not 28x28, image and label counts that differ, labels
        outside 0..9.
    """
    base = find_fashion(data_dir)
    parts = []
    for split, (img_name, lab_name) in FILES.items():
        x = read_idx(base / img_name, 3)
        y = read_idx(base / lab_name, 1).astype(np.int64)
        if x.shape[1:] != (28, 28):
            raise IdxFormatError(f"{base / img_name}: expected 28x28 images, got {x.shape[1]}x{x.shape[2]}")
        if len(x) != len(y):
            raise IdxFormatError(f"{split}: expected as many labels as images, got {len(y)} labels and {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
            raise IdxFormatError(f"{base / lab_name}: expected labels 0..{N_CLASSES - 1}, got {y.min()}..{y.max()}")
        parts += [x, y]
    return FashionData(parts[0], parts[1], parts[2], parts[3], str(base))


@dataclass(frozen=True)
class Split:
    """Positions into the training file (``train``, ``val``) and the test file (``test``), in stratified order.

    ``pool`` is the final fit's training set: ``train`` then ``val`` (all 60,000 at full size).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def pool(self) -> np.ndarray:
        """The final fit's training images (training split, then validation split)."""
        return np.concatenate([self.train, self.val])


def paper_split(y_train: np.ndarray, y_test: np.ndarray, *, n_train: int | None = None, n_val: int | None = None,
                n_test: int | None = None, seed: int = 0) -> Split:
    """The 50k / 10k / 10k split (module notes), each part optionally cut to a class-balanced prefix.

    Parameters
    ----------
    y_train, y_test : ndarray of int
        Labels of the training and test files.
    n_train, n_val, n_test : int, optional
        Prefix lengths (default: all of the part; the validation split is :data:`N_VAL` images, or a
        sixth of a smaller training file).
    seed : int
        Seed of the stratified order of the training file (the test file keeps a seeded stratified
        order too, so that any prefix is balanced).

    Raises
    ------
    ValueError
        A prefix longer than its part.
    """
    order = stratified_order(y_train, seed)
    val_size = min(N_VAL, len(order) // 6)
    val_all, train_all = order[:val_size], order[val_size:]
    test_all = stratified_order(y_test, seed + 1)
    parts = []
    for name, part, n in (("n_train", train_all, n_train), ("n_val", val_all, n_val), ("n_test", test_all, n_test)):
        if n is None:
            parts.append(part)
            continue
        n = check_int(n, name, minimum=1)
        if n > len(part):
            raise ValueError(f"{name}: expected at most the {len(part)} images of that split, got {n}")
        parts.append(part[:n])
    return Split(*parts)


def standardise_global(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` with the mean and standard deviation of all pixels of ``x[reference]``.

    Parameters
    ----------
    x : ndarray of shape (N, 28, 28), uint8
    reference : ndarray of int
        The images whose statistics are used (the fitting images: never the test images).

    Returns
    -------
    ndarray of shape (N, 28, 28), float64
    """
    ref = x[reference].astype(np.float64) / 255.0
    mean, std = float(ref.mean()), float(ref.std())
    if not std > 0:
        raise ValueError(f"images: expected pixels that vary over the fitting images, got a constant {mean:.3g}")
    return (x.astype(np.float64) / 255.0 - mean) / std


__all__ = [
    "CLASS_NAMES",
    "DEBIAN_DIR",
    "FILES",
    "INSTALL_HINT",
    "N_CLASSES",
    "N_VAL",
    "FashionData",
    "IdxFormatError",
    "Split",
    "find_fashion",
    "load_fashion",
    "paper_split",
    "read_idx",
    "standardise_global",
    "write_idx",
]
