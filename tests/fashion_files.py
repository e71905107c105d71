"""Fashion-MNIST-format files the tests write themselves (tiny synthetic images in the real idx format), and
the command line of ``ntkit bench fashion`` on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntkit.experiments.fashion_data import FILES, write_idx


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images whose class (0..9) sets the position of a bright square, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, 28, 28))
    for i, c in enumerate(y):
        r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
        x[i, r:r + 6, col:col + 6] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)


def bench_args(data: Path, out: Path, *options: str) -> list[str]:
    """``ntkit bench fashion`` on the idx files in ``data`` into ``out``, quiet and without a figure."""
    return ["bench", "fashion", "--data-dir", str(data), "--out", str(out), "--quiet", "--no-plot", *options]


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 100) -> Path:
    """Training and test idx files of ``n_train`` and ``n_test`` synthetic images in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for (img, lab), n, seed in zip(FILES.values(), (n_train, n_test), (0, 1), strict=True):
        x, y = _synthetic(n, seed)
        write_idx(folder / img, x)
        write_idx(folder / lab, y)
    return folder

