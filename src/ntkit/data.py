"""Built-in inputs and loading of user data (.npy / .csv) with clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor


def circle_inputs(n: int = 64, *, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``n`` points on the unit circle at angles ``gamma`` evenly spaced in ``[-pi, pi)``.

    Returns ``(x, gamma)`` with ``x`` of shape (n, 2) = ``(cos gamma, sin gamma)``; the first point
    that the converge experiment uses as ``x0`` is ``gamma = 0``, i.e. ``(1, 0)``, placed at index
    ``n // 2``. This is the input set of Jacot et al. (2018), Fig. 1.

    Parameters
    ----------
    n : int
        Number of points (``>= 2``).
    dtype : torch.dtype

    Returns
    -------
    x : Tensor of shape (n, 2)
    gamma : Tensor of shape (n,)

    Raises
    ------
    ValueError
        ``n < 2``.

    Examples
    --------
    >>> from ntkit.data import circle_inputs
    >>> x, gamma = circle_inputs(8)
    >>> x.shape, x[4].tolist()  # x0 = (1, 0) at index n // 2
    (torch.Size([8, 2]), [1.0, 0.0])
    """
    if n < 2:
        raise ValueError(f"n: expected at least 2 points, got {n}")
    gamma = torch.linspace(-math.pi, math.pi, n + 1, dtype=torch.float64)[:-1]
    x = torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)
    return x.to(dtype), gamma.to(dtype)


def load_array(path: str | Path) -> np.ndarray:
    """Load a 2-D float array from ``.npy`` or ``.csv`` (comma-separated, optional header row).

    Raises ``ValueError`` naming the file (and for CSV the line) of any non-numeric or non-finite
    entry, and ``FileNotFoundError`` for a missing file.

    Parameters
    ----------
    path : str or Path
        A ``.npy`` file holding a 2-D numeric array, or a ``.csv`` file of numbers (one row per input).

    Returns
    -------
    ndarray of shape (N, d), float64

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Another suffix, a non-numeric or non-finite entry (the message names the file and, for CSV,
        the line), a ragged CSV, an array that is not 2-D, a file without rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from ntkit.data import load_array
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = path.write_text("a,b\\n1,2\\n3,4\\n")
    >>> load_array(path).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data: expected an existing .npy or .csv file, got {str(p)!r} (not found)")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{p}: expected a numeric array, got dtype {arr.dtype}")
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"{p}: expected a 2-D array (rows = inputs), got shape {arr.shape}")
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{p}: expected finite values, got {arr[tuple(bad[0])]} at row {bad[0][0]}")
        return arr
    if suffix == ".csv":
        rows: list[list[float]] = []
        with p.open() as fh:
            for lineno, line in enumerate(fh, start=1):
                text = line.strip()
                if not text:
                    continue
                fields = [f.strip() for f in text.split(",")]
                try:
                    values = [float(f) for f in fields]
                except ValueError:
                    if lineno == 1 and not rows:  # header
                        continue
                    bad_field = next(f for f in fields if not _is_float(f))
                    raise ValueError(f"{p}, line {lineno}: expected numbers, got {bad_field!r}") from None
                if not all(math.isfinite(v) for v in values):
                    raise ValueError(f"{p}, line {lineno}: expected finite numbers, got {text!r}")
                if rows and len(values) != len(rows[0]):
                    raise ValueError(
                        f"{p}, line {lineno}: expected {len(rows[0])} columns, got {len(values)}"
                    )
                rows.append(values)
        if not rows:
            raise ValueError(f"{p}: expected at least one row of numbers, got none")
        return np.asarray(rows, dtype=np.float64)
    raise ValueError(f"data: expected a .npy or .csv file, got {str(p)!r}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = [
    "circle_inputs",
    "load_array",
]
