"""The protocol of Arora et al. (2020) on one UCI data set: kernels, SVM grid, selection, test folds.

For ``dep = 0..max_dep`` hidden layers and ``fix = 0..dep`` frozen first layers, the kernels
``K[dep][fix]`` (ReLU, no bias, ``S_0 = X X^T``; :func:`ntkit.layerwise.iter_arora_kernels`) of all
``n`` samples are computed in one pass; for each, ``SVC(kernel="precomputed", C)`` over
:data:`C_GRID` is fit on the train half and scored on the validation half of ``conxuntos.dat``
(train block ``K[tr, tr]`` of shape (n_tr, n_tr), validation block ``K[va, tr]`` of shape
(n_va, n_tr)). The first maximum of the validation accuracy over ``dep -> fix -> C`` (ascending,
strict ``>``) is selected and scored as the mean test accuracy over the 4 train/test folds of
``conxuntos_kfold.dat``.

Split from :mod:`ntkit.experiments.uci` (which runs the benchmark over the data sets and
re-exports these names).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ntkit.experiments.uci_data import UCIDataset
from ntkit.layerwise import iter_arora_kernels

#: ``C`` grid of Arora et al.
C_GRID: tuple[float, ...] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4)
RESULT_VERSION = 1

#: Iteration cap of each libsvm solve (see :func:`svc_fit`); ``-1`` is scikit-learn's "no limit".
DEFAULT_MAX_ITER = 1_000_000


@dataclass(frozen=True)
class SVCFit:
    """Outcome of one SVM fit: test accuracy, whether any dual variable sits at the bound ``C``,
    and whether libsvm stopped at its iteration cap instead of its tolerance.

    Attributes
    ----------
    accuracy : float
        In [0, 1].
    at_bound : bool
    capped : bool

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.uci import svc_fit
    >>> x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    >>> k = x @ x.T
    >>> fit = svc_fit(k, np.array([0, 0, 1, 1]), k, np.array([0, 0, 1, 1]), c=1.0)
    >>> fit.accuracy, fit.capped
    (1.0, False)
    """

    accuracy: float
    at_bound: bool
    capped: bool


def svc_fit(
    k_train_train: np.ndarray,
    y_train: np.ndarray,
    k_test_train: np.ndarray,
    y_test: np.ndarray,
    *,
    c: float,
    max_iter: int = DEFAULT_MAX_ITER,
) -> SVCFit:
    """Fit ``SVC(kernel="precomputed", C=c)`` (Arora et al.'s ``svm``) and score it on the test block.

    ``max_iter`` caps libsvm's SMO iterations (their runs had no cap: on the rank-``d`` linear kernel
    with ``C >= 100`` libsvm can need 10^8 iterations and minutes per fit). Capped fits are flagged.

    Parameters
    ----------
    k_train_train : ndarray of shape (n, n)
    y_train : ndarray of shape (n,)
    k_test_train : ndarray of shape (m, n)
    y_test : ndarray of shape (m,)
    c : float
        The SVM's ``C``.
    max_iter : int
        libsvm's iteration cap (``-1``: none).

    Returns
    -------
    SVCFit

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.uci import svc_fit
    >>> x = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.1]])
    >>> k = x @ x.T
    >>> svc_fit(k[:2, :2], np.array([0, 1]), k[2:, :2], np.array([0, 1]), c=10.0).accuracy
    1.0
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import SVC

    clf = SVC(kernel="precomputed", C=c, cache_size=1000, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(k_train_train, y_train)
    capped = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    at_bound = bool(np.any(np.abs(clf.dual_coef_) >= c * (1 - 1e-9)))
    return SVCFit(float(np.mean(clf.predict(k_test_train) == y_test)), at_bound, capped)


def svc_accuracy(
    k_train_train: np.ndarray,
    y_train: np.ndarray,
    k_test_train: np.ndarray,
    y_test: np.ndarray,
    *,
    c: float,
    max_iter: int = DEFAULT_MAX_ITER,
) -> float:
    """Accuracy of ``SVC(kernel="precomputed", C=c)`` trained on ``k_train_train``."""
    return svc_fit(k_train_train, y_train, k_test_train, y_test, c=c, max_iter=max_iter).accuracy


def evaluate_dataset(
    ds: UCIDataset,
    *,
    max_dep: int = 4,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = DEFAULT_MAX_ITER,
    on_fit: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol of Arora et al. on one data set; returns a JSON-ready record.

    The record holds the selected ``dep``, ``fix``, ``C``, its validation accuracy, the 4 fold test
    accuracies and their mean ``test_acc`` (in [0, 1]), the whole validation grid ``val_grid``
    (``[dep][fix][iC]``) and timings. ``on_fit(note)`` is called after every SVC fit.

    Exact shortcut: once a fit has no dual variable at its bound ``C``, the same solution is optimal
    for every larger ``C`` (the box constraint is inactive), so its accuracy is reused instead of
    refitting. Fits stopped by ``max_iter`` are counted in ``capped_fits`` (and ``capped_selected``
    says whether the selected configuration was one).

    Parameters
    ----------
    ds : UCIDataset
    max_dep : int
        Deepest network (``dep = 0..max_dep``).
    c_grid : sequence of float
        The SVM's ``C`` values.
    max_iter : int
        libsvm's iteration cap per fit.
    on_fit : callable, optional

    Returns
    -------
    dict

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import write_uci_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> _ = write_uci_dataset(root / "toy", x, (x[:, 0] + x[:, 1] > 0).astype(int))
    >>> from ntkit.experiments.uci import evaluate_dataset, load_uci_dataset
    >>> rec = evaluate_dataset(load_uci_dataset(root / "toy"), max_dep=1, c_grid=(1.0, 10.0))
    >>> sorted(k for k in rec if k in ("dep", "fix", "C", "test_acc")), 0.5 < rec["test_acc"] <= 1.0
    (['C', 'dep', 'fix', 'test_acc'], True)
    """
    start = time.perf_counter()
    kernel_s = 0.0
    tr, va = ds.hp_train, ds.hp_val
    y_tr, y_va = ds.y[tr], ds.y[va]
    best_acc, best = -1.0, (0, 0, float(c_grid[0]))
    best_kernel: np.ndarray | None = None
    grid: list[list[list[float]]] = []
    capped: list[list[list[bool]]] = []
    n_fits = 0
    t0 = time.perf_counter()
    for dep, fix, kern in iter_arora_kernels(ds.x, max_dep=max_dep):
        kernel_s += time.perf_counter() - t0
        k = kern.numpy()
        k_tr, k_va = k[np.ix_(tr, tr)], k[np.ix_(va, tr)]
        if fix == 0:
            grid.append([])
            capped.append([])
        row: list[float] = []
        row_capped: list[bool] = []
        fit: SVCFit | None = None
        for c in c_grid:
            if fit is None or fit.at_bound or fit.capped:
                fit = svc_fit(k_tr, y_tr, k_va, y_va, c=float(c), max_iter=max_iter)
                n_fits += 1
            acc = fit.accuracy
            row.append(acc)
            row_capped.append(fit.capped)
            if acc > best_acc:
                if best[:2] != (dep, fix) or best_kernel is None:
                    best_kernel = k.copy()
                best_acc, best = acc, (dep, fix, float(c))
            if on_fit is not None:
                on_fit(f"{ds.name} dep={dep} fix={fix} C={c:g}")
        grid[-1].append(row)
        capped[-1].append(row_capped)
        t0 = time.perf_counter()
    assert best_kernel is not None
    fold_accs: list[float] = []
    fold_capped = 0
    for f_tr, f_te in ds.folds:
        fold = svc_fit(
            best_kernel[np.ix_(f_tr, f_tr)],
            ds.y[f_tr],
            best_kernel[np.ix_(f_te, f_tr)],
            ds.y[f_te],
            c=best[2],
            max_iter=max_iter,
        )
        fold_accs.append(fold.accuracy)
        fold_capped += int(fold.capped)
        if on_fit is not None:
            on_fit(f"{ds.name} test fold {len(fold_accs)}/4")
    return {
        "version": RESULT_VERSION,
        "dataset": ds.name,
        "n": ds.n,
        "d": int(ds.x.shape[1]),
        "classes": ds.n_classes,
        "dep": best[0],
        "fix": best[1],
        "C": best[2],
        "val_acc": best_acc,
        "fold_accs": fold_accs,
        "test_acc": float(np.mean(fold_accs)),
        "val_grid": grid,
        "max_iter": max_iter,
        "svc_fits": n_fits + len(ds.folds),
        "capped_fits": sum(int(v) for rows in capped for r in rows for v in r) + fold_capped,
        "capped_selected": bool(capped[best[0]][best[1]][list(c_grid).index(best[2])]) or fold_capped > 0,
        "kernel_seconds": kernel_s,
        "seconds": time.perf_counter() - start,
    }


__all__ = ["C_GRID", "DEFAULT_MAX_ITER", "RESULT_VERSION", "SVCFit", "evaluate_dataset", "svc_accuracy", "svc_fit"]
