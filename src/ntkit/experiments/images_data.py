"""Image data of ``ntkit bench images``: loading, preprocessing, stratified splits, few-shot draws.

Two data sets, both read from disk (nothing is downloaded):

* ``digits``: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``, bundled with
  scikit-learn): 1,797 images of 8x8 pixels, values 0..16, 10 classes (174..183 per class).
* ``mnist``: the 5,000-image MNIST subset of ``mnist_5k.csv.gz`` (500 per class; 28x28, values
  0..255; 785 comma-separated integers per row, the label last), shipped in the shared data folder
  (``../shared/data/mnist5k`` beside the checkout). Optionally reduced to 14x14 by 2x2 average
  pooling (the default of the benchmark: a pooled kernel costs ``pixels^2`` per pair of images).

Preprocessing (:func:`standardise`) follows Arora et al. (2019)'s CNTK code: pixels scaled to [0, 1],
then the mean and standard deviation of *all pixels of the training pool* (per channel; one channel
here) are subtracted / divided out of every image (``"global"``). ``"image"`` instead standardises
each image on its own (zero mean, unit variance per image; the per-image normalisation of Shankar
et al. 2020, without their ZCA whitening). Images are channels-first float64 tensors ``(N, 1, H, W)``.

Splits are stratified (:func:`stratified_order`): every class is shuffled with a fixed seed and the
classes are interleaved round-robin, so any prefix of the order is balanced to within one image per
class. The test set is the first ``n_test`` images of that order and the training pool the next
``n_train``; the validation split of hyperparameter selection is the first ``val_fraction`` of the
training pool in its own stratified order.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntkit._validation import check_choice, check_int

Tensor = torch.Tensor

#: The shared data folder beside the checkout (``../shared/data``); MNIST lives in ``mnist5k/`` there.
DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
MNIST_FILE = "mnist_5k.csv.gz"
PREPROCESSING = ("global", "image")


class ImageFormatError(ValueError):
    """An image data file is malformed; the message names the file and the row."""


@dataclass(frozen=True)
class ImageData:
    """A labelled image data set before preprocessing.

    Attributes
    ----------
    name : str
        ``"digits"`` or ``"mnist"``.
    x : Tensor of shape (N, 1, H, W), float64
        Pixel values scaled to [0, 1].
    y : ndarray of shape (N,), int64
        Labels ``0..n_classes - 1``.
    source : str
        Where the images came from and how they were resized.
    """

    name: str
    x: Tensor
    y: np.ndarray
    source: str

    @property
    def n_classes(self) -> int:
        """Number of classes (``max label + 1``)."""
        return int(self.y.max()) + 1

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.x.shape[2]), int(self.x.shape[3])


def load_digits_images() -> ImageData:
    """scikit-learn's 1,797 handwritten digits as ``(1797, 1, 8, 8)`` float64 in [0, 1] (values / 16).

    Raises
    ------
    ImportError
        scikit-learn is missing (``pip install 'ntkit[sklearn]'``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is in the test extra
        raise ImportError("the digits need scikit-learn: pip install 'ntkit[sklearn]'") from err
    bunch = load_digits()
    x = torch.as_tensor(np.asarray(bunch.images, dtype=np.float64) / 16.0).unsqueeze(1)
    return ImageData("digits", x, np.asarray(bunch.target, dtype=np.int64), "sklearn.datasets.load_digits, 8x8")


def find_mnist(data: str | os.PathLike[str] | None) -> Path | None:
    """The MNIST file under ``data`` (the shared data folder, its ``mnist5k`` folder or the file itself).

    ``None`` looks in :data:`DEFAULT_DATA`; returns None when no file is found there. An explicit
    ``data`` that holds no MNIST file raises ``FileNotFoundError`` naming the places tried.
    """
    base = DEFAULT_DATA if data is None else Path(data)
    tried = [base, base / MNIST_FILE, base / "mnist5k" / MNIST_FILE]
    for path in tried:
        if path.is_file():
            return path
    if data is None:
        return None
    raise FileNotFoundError(f"--data: expected {MNIST_FILE} at one of {', '.join(map(str, tried))}, got none")


def load_mnist5k(path: str | os.PathLike[str], *, size: int = 28) -> ImageData:
    """The 5,000 MNIST images of ``mnist_5k.csv.gz`` as ``(5000, 1, size, size)`` float64 in [0, 1].

    Parameters
    ----------
    path : path
        The gzip-compressed CSV (no header; 784 pixel values 0..255 row-major, then the label 0..9).
    size : {28, 14}
        28 keeps the images; 14 averages 2x2 blocks of pixels.

    Raises
    ------
    ImageFormatError
        A row without 785 integer fields, pixels outside 0..255, labels outside 0..9.
    """
    size = check_int(size, "size", minimum=1)
    if size not in (14, 28):
        raise ValueError(f"mnist size: expected 28 (full) or 14 (2x2 average pooling), got {size}")
    path = Path(path)
    try:
        with gzip.open(path, "rt") as fh:
            rows = fh.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ImageFormatError(f"{path}: expected a gzip-compressed CSV file, got an unreadable file ({err})") from None
    data = np.empty((len(rows), 785), dtype=np.int64)
    for i, line in enumerate(rows, start=1):
        fields = line.split(",")
        if len(fields) != 785:
            raise ImageFormatError(f"{path}, row {i}: expected 785 comma-separated values, got {len(fields)}")
        try:
            data[i - 1] = [int(v) for v in fields]
        except ValueError:
            raise ImageFormatError(f"{path}, row {i}: expected integers, got {line[:60]!r}...") from None
    if len(rows) == 0:
        raise ImageFormatError(f"{path}: expected 5000 rows of 785 values, got an empty file")
    pixels, labels = data[:, :784], data[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ImageFormatError(f"{path}: expected pixel values 0..255, got {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() > 9:
        raise ImageFormatError(f"{path}: expected labels 0..9 in the last column, got {labels.min()}..{labels.max()}")
    x = torch.as_tensor(pixels.astype(np.float64) / 255.0).reshape(-1, 1, 28, 28)
    source = f"{path.name}, 28x28"
    if size == 14:
        x = F.avg_pool2d(x, 2)
        source = f"{path.name}, 28x28 reduced to 14x14 by 2x2 average pooling"
    return ImageData("mnist", x, labels, source)


def stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """Indices of ``y``: each class shuffled (seeded), classes interleaved round-robin.

    Any prefix of the result holds every class to within one image (until a class runs out).
    """
    rng = np.random.default_rng(seed)
    classes = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    longest = max(len(c) for c in classes)
    order = [c[i] for i in range(longest) for c in classes if i < len(c)]
    return np.asarray(order, dtype=np.int64)


def split_indices(y: np.ndarray, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_pool, test)`` indices: the test set first, then the training pool.

    Raises
    ------
    ValueError
        ``n_train + n_test`` exceeds the number of images.
    """
    n_train = check_int(n_train, "n_train", minimum=2)
    n_test = check_int(n_test, "n_test", minimum=1)
    if n_train + n_test > len(y):
        raise ValueError(f"n_train + n_test: expected at most the {len(y)} images, got {n_train} + {n_test}")
    order = stratified_order(y, seed)
    return np.sort(order[n_test:n_test + n_train]), np.sort(order[:n_test])


def validation_split(y_pool: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(fit, validation)`` positions within the training pool (``fraction`` for validation)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {fraction}")
    n_val = round(fraction * len(y_pool))
    if n_val < 1 or n_val >= len(y_pool):
        raise ValueError(f"val_fraction: {fraction} of {len(y_pool)} training images leaves an empty split")
    order = stratified_order(y_pool, seed + 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def standardise(x: Tensor, pool: np.ndarray, mode: str = "global") -> Tensor:
    """Preprocess images as in the papers (module notes).

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W)
    pool : ndarray of int
        Training-pool indices: ``"global"`` takes the per-channel mean and standard deviation of
        their pixels (as Arora et al. 2019's code does on the CIFAR-10 training set).
    mode : {"global", "image"}
        ``"image"``: each image to zero mean and unit variance on its own (a constant image stays 0).

    Returns
    -------
    Tensor of shape (N, C, H, W), float64
    """
    check_choice(mode, "preprocess", PREPROCESSING)
    if mode == "global":
        ref = x[torch.as_tensor(pool)]
        mean = ref.mean(dim=(0, 2, 3), keepdim=True)
        std = ref.std(dim=(0, 2, 3), keepdim=True)
        return (x - mean) / std
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    std = centred.std(dim=(1, 2, 3), keepdim=True)
    return centred / torch.where(std > 0, std, torch.ones_like(std))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``(N, C, H, W)`` images (split evenly, the odd pixel at the end) to ``H, W`` divisible by ``multiple``.

    After :func:`standardise` a zero is the mean pixel (``"global"``) or the image's mean (``"image"``).
    """
    h, w = x.shape[2], x.shape[3]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def few_shot_draw(y_pool: np.ndarray, per_class: int, seed: tuple[int, ...]) -> np.ndarray:
    """Positions in the training pool of ``per_class`` images of every class, drawn without replacement.

    The seed (e.g. ``(base_seed, per_class, draw)``) fixes the draw: every kernel sees the same images.

    Raises
    ------
    ValueError
        A class has fewer than ``per_class`` images in the pool.
    """
    rng = np.random.default_rng(list(seed))
    picks = []
    for c in np.unique(y_pool):
        members = np.flatnonzero(y_pool == c)
        if len(members) < per_class:
            raise ValueError(f"few-shot size {per_class}: class {c} has only {len(members)} training images")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picks))


def max_per_class(y: np.ndarray) -> int:
    """The smallest class count of ``y`` (the largest few-shot size it allows)."""
    return int(np.bincount(y).min()) if len(y) else 0


__all__ = [
    "DEFAULT_DATA",
    "MNIST_FILE",
    "PREPROCESSING",
    "ImageData",
    "ImageFormatError",
    "few_shot_draw",
    "find_mnist",
    "load_digits_images",
    "load_mnist5k",
    "max_per_class",
    "pad_to_multiple",
    "split_indices",
    "standardise",
    "stratified_order",
    "validation_split",
]
