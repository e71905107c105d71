"""The UCI data sets of Fernández-Delgado et al. (JMLR 2014) in the format of Arora et al. (2020).

A data set folder ``<d>/`` holds ``<d>.txt`` (metadata ``key= value``: features ``n_entradas``,
classes ``n_clases``, rows ``n_patrons1``), ``<d>_R.dat`` (a header line, then per row an id, the
standardised features and the class label), ``conxuntos.dat`` (the train / validation rows of the
hyper-parameter selection) and ``conxuntos_kfold.dat`` (4 train / test pairs). Malformed files raise
:class:`UCIFormatError` naming the file, the line and, for features, the column.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Default location: ``../shared/data/uci`` next to the checkout, or ``$NTKIT_UCI_DATA``.
DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "uci"


class UCIFormatError(ValueError):
    """A UCI data file is malformed; the message names the file and the line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import write_uci_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> _ = write_uci_dataset(root / "toy", x, (x[:, 0] + x[:, 1] > 0).astype(int))
    >>> from ntkit.experiments.uci import UCIFormatError, load_uci_dataset
    >>> _ = (root / "toy" / "conxuntos.dat").write_text("0 1\\n2 x\\n")
    >>> try:
    ...     load_uci_dataset(root / "toy")
    ... except UCIFormatError as err:
    ...     print(str(err).split(": ", 1)[1])
    expected integer row indices, got 'x'
    """


@dataclass(frozen=True)
class UCIDataset:
    """One data set in the Fernández-Delgado et al. format.

    Attributes
    ----------
    name : str
    x : ndarray of shape (n, d), float64
        Standardised features.
    y : ndarray of shape (n,), int64
        Class labels in ``0..n_classes-1``.
    n_classes : int
        From the metadata (some classes may have no sample).
    hp_train, hp_val : ndarray of int64
        Hyper-parameter selection halves (line 1 and 2 of ``conxuntos.dat``).
    folds : list of (train, test) ndarray pairs
        The 4 pairs of ``conxuntos_kfold.dat``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import write_uci_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> _ = write_uci_dataset(root / "toy", x, (x[:, 0] + x[:, 1] > 0).astype(int))
    >>> from ntkit.experiments.uci import load_uci_dataset
    >>> ds = load_uci_dataset(root / "toy")
    >>> ds.n, ds.hp_train.shape[0] + ds.hp_val.shape[0], [len(te) for _, te in ds.folds]
    (40, 40, [10, 10, 10, 10])
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    hp_train: np.ndarray
    hp_val: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.x.shape[0])


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected this file of the UCI data set, got a missing file")
    try:
        return path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise UCIFormatError(f"{path}: expected a text file, got undecodable bytes ({err})") from None


def _read_meta(path: Path) -> dict[str, str]:
    meta: dict[str, str] = {}
    for i, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        if "=" not in line:
            raise UCIFormatError(f"{path}, line {i}: expected 'key= value', got {line.strip()[:60]!r}")
        key, value = line.split("=", 1)
        meta[key.strip()] = value.strip()
    return meta


def _meta_int(meta: dict[str, str], key: str, path: Path) -> int:
    if key not in meta:
        raise UCIFormatError(f"{path}: expected a line '{key}= <integer>', got none")
    try:
        return int(meta[key])
    except ValueError:
        raise UCIFormatError(f"{path}: expected an integer for '{key}', got {meta[key]!r}") from None


def _read_data(path: Path, n_features: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    lines = _read_lines(path)
    if not lines:
        raise UCIFormatError(f"{path}, line 1: expected a header line, got an empty file")
    header = lines[0].split()
    names = header[:n_features] if len(header) >= n_features else [f"f{j + 1}" for j in range(n_features)]
    rows: list[list[float]] = []
    labels: list[int] = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != n_features + 2:
            raise UCIFormatError(
                f"{path}, line {i}: expected {n_features + 2} tab-separated fields (row id, {n_features} "
                f"features, label), got {len(fields)}"
            )
        values: list[float] = []
        for j, text in enumerate(fields[1:-1]):
            try:
                v = float(text)
            except ValueError:
                raise UCIFormatError(
                    f"{path}, line {i}, column {j + 2} ({names[j]}): expected a number, got {text!r}"
                ) from None
            if not math.isfinite(v):
                raise UCIFormatError(
                    f"{path}, line {i}, column {j + 2} ({names[j]}): expected a finite number, got {text!r}"
                )
            values.append(v)
        text = fields[-1]
        try:
            label = int(text)
        except ValueError:
            raise UCIFormatError(
                f"{path}, line {i}, last column: expected an integer class label in 0..{n_classes - 1}, got {text!r}"
            ) from None
        if not 0 <= label < n_classes:
            raise UCIFormatError(
                f"{path}, line {i}, last column: expected a class label in 0..{n_classes - 1}, got {label}"
            )
        rows.append(values)
        labels.append(label)
    if not rows:
        raise UCIFormatError(f"{path}: expected data rows after the header, got none")
    return np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def _read_index_lines(path: Path, n_lines: int, n: int) -> list[np.ndarray]:
    lines = [line for line in _read_lines(path)]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_lines:
        raise UCIFormatError(f"{path}: expected {n_lines} lines of row indices, got {len(lines)}")
    out = []
    for i, line in enumerate(lines, start=1):
        try:
            idx = np.asarray([int(t) for t in line.split()], dtype=np.int64)
        except ValueError:
            bad = next(t for t in line.split() if not t.lstrip("-").isdigit())
            raise UCIFormatError(f"{path}, line {i}: expected integer row indices, got {bad!r}") from None
        if idx.size == 0:
            raise UCIFormatError(f"{path}, line {i}: expected row indices, got an empty line")
        if idx.min() < 0 or idx.max() >= n:
            bad_i = int(idx[(idx < 0) | (idx >= n)][0])
            raise UCIFormatError(f"{path}, line {i}: expected 0-based row indices in 0..{n - 1}, got {bad_i}")
        out.append(idx)
    return out


def load_uci_dataset(folder: str | os.PathLike[str]) -> UCIDataset:
    """Load one data set folder ``<d>/`` (``<d>.txt``, ``<d>_R.dat``, ``conxuntos.dat``, ``conxuntos_kfold.dat``).

    Raises
    ------
    FileNotFoundError
        A file is missing (the message names it).
    UCIFormatError (a ValueError)
        Non-numeric or non-finite features, non-integer or out-of-range labels, bad index files:
        the message names the file, the line and, for features, the column.

    Parameters
    ----------
    folder : path
        ``<data dir>/<name>``.

    Returns
    -------
    UCIDataset

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import write_uci_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> _ = write_uci_dataset(root / "toy", x, (x[:, 0] + x[:, 1] > 0).astype(int))
    >>> from ntkit.experiments.uci import load_uci_dataset
    >>> ds = load_uci_dataset(root / "toy")
    >>> ds.name, ds.x.shape, ds.y[:5].tolist()
    ('toy', (40, 3), [0, 0, 1, 0, 0])
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: expected a UCI data set folder, got no such directory")
    name = folder.name
    meta_path = folder / f"{name}.txt"
    meta = _read_meta(meta_path)
    d = _meta_int(meta, "n_entradas", meta_path)
    c = _meta_int(meta, "n_clases", meta_path)
    n_meta = _meta_int(meta, "n_patrons1", meta_path)
    data_path = folder / meta.get("fich1", f"{name}_R.dat")
    x, y = _read_data(data_path, d, c)
    if x.shape[0] != n_meta:
        raise UCIFormatError(
            f"{data_path}: expected {n_meta} data rows (n_patrons1 in {meta_path.name}), got {x.shape[0]}"
        )
    n = x.shape[0]
    hp_train, hp_val = _read_index_lines(folder / "conxuntos.dat", 2, n)
    kf = _read_index_lines(folder / "conxuntos_kfold.dat", 8, n)
    folds = [(kf[2 * r], kf[2 * r + 1]) for r in range(4)]
    train_sets = [("conxuntos.dat", 1, hp_train)] + [("conxuntos_kfold.dat", 2 * r + 1, kf[2 * r]) for r in range(4)]
    for fname, line, idx in train_sets:
        if len(np.unique(y[idx])) < 2:
            raise UCIFormatError(
                f"{folder / fname}, line {line}: expected training rows of at least 2 classes, "
                f"got only class {y[idx][0]}"
            )
    return UCIDataset(name=name, x=x, y=y, n_classes=c, hp_train=hp_train, hp_val=hp_val, folds=folds)


def list_uci_datasets(data_dir: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the data set folders in ``data_dir`` (those holding ``<name>.txt``).

    Parameters
    ----------
    data_dir : path

    Returns
    -------
    list of str

    Raises
    ------
    FileNotFoundError
        ``data_dir`` does not exist or holds no data set folder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import write_uci_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> _ = write_uci_dataset(root / "toy", x, (x[:, 0] + x[:, 1] > 0).astype(int))
    >>> from ntkit.experiments.uci import list_uci_datasets
    >>> _ = write_uci_dataset(root / "other", x, (x[:, 2] > 0).astype(int))
    >>> list_uci_datasets(root)
    ['other', 'toy']
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected the UCI data folder (see --data), got no such directory")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.txt").is_file())
    if not names:
        raise FileNotFoundError(f"{root}: expected data set folders '<name>/<name>.txt', got none")
    return names


def dataset_size(folder: Path) -> int:
    """Rows of the data set in ``folder`` from its metadata alone (``n_patrons1``)."""
    meta_path = folder / f"{folder.name}.txt"
    return _meta_int(_read_meta(meta_path), "n_patrons1", meta_path)


def write_uci_dataset(
    folder: str | os.PathLike[str], x: Any, y: Any, *, seed: int = 0
) -> Path:
    """Write a data set folder in the layout :func:`load_uci_dataset` reads: run the protocol on your data.

    The folder's name is the data set's name. The rows are split at random (``seed``) into the
    hyper-parameter selection halves of ``conxuntos.dat`` and the 4 train / test folds of
    ``conxuntos_kfold.dat`` (each row in one test fold).

    Parameters
    ----------
    folder : path
        The data set folder to create (its parent must exist; existing files are replaced).
    x : array-like of shape (n, d)
        Features (finite numbers); :func:`load_uci_dataset` standardises them when reading.
    y : array-like of shape (n,)
        Integer class labels ``0..n_classes-1``.
    seed : int
        Seed of the random splits.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ValueError
        ``x`` not 2-D or not finite, ``y`` not integer labels >= 0 of the same length, fewer than 8
        rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import load_uci_dataset, write_uci_dataset
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((40, 3))
    >>> folder = write_uci_dataset(pathlib.Path(tempfile.mkdtemp()) / "toy", x, (x[:, 0] > 0).astype(int))
    >>> ds = load_uci_dataset(folder)
    >>> ds.name, ds.x.shape, ds.n_classes, len(ds.folds)
    ('toy', (40, 3), 2, 4)
    """
    folder = Path(folder)
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y)
    if xa.ndim != 2 or not np.isfinite(xa).all():
        raise ValueError(f"x: expected a finite 2-D array (n, d), got shape {xa.shape}")
    n = xa.shape[0]
    if n < 8:
        raise ValueError(f"x: expected at least 8 rows, got {n}")
    if ya.shape != (n,) or not np.issubdtype(ya.dtype, np.integer) or (ya < 0).any():
        raise ValueError(f"y: expected {n} integer class labels >= 0, got shape {ya.shape}, dtype {ya.dtype}")
    name = folder.name
    d, c = xa.shape[1], int(ya.max()) + 1
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    halves = [np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])]
    parts = np.array_split(rng.permutation(n), 4)
    folds = [(np.sort(np.concatenate([p for j, p in enumerate(parts) if j != r])), np.sort(parts[r])) for r in range(4)]
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.txt").write_text(
        f"n_entradas= {d}\nn_clases= {c}\nn_arquivos= 1\nfich1= {name}_R.dat\nn_patrons1= {n}\n"
    )
    header = "\t" + "\t".join(f"f{j + 1}" for j in range(d)) + "\tclase\n"
    rows = "".join(f"{i + 1}\t" + "\t".join(repr(float(v)) for v in xa[i]) + f"\t{int(ya[i])}\n" for i in range(n))
    (folder / f"{name}_R.dat").write_text(header + rows)

    def line(idx: np.ndarray) -> str:
        return " ".join(str(int(i)) for i in idx) + "\n"

    (folder / "conxuntos.dat").write_text(line(halves[0]) + line(halves[1]))
    (folder / "conxuntos_kfold.dat").write_text("".join(line(tr) + line(te) for tr, te in folds))
    return folder
