"""The evaluation protocol of ``ntkit bench images`` on precomputed kernel matrices.

Arora et al. (2019), "On exact computation with an infinitely wide neural net" (kernel regression
with the CNTK), and Arora et al. (2020), "Harnessing the power of infinitely wide deep nets on
small-data tasks", ICLR (SVC with the NTK, few-shot CIFAR-10), on one kernel ``K`` (NNGP or NTK)
given as two blocks: ``K(pool, pool)`` over the training pool and ``K(test, pool)``.

* The kernel is divided by ``mean(diag K(pool, pool))``, so the ridge and ``C`` grids mean the same
  for every architecture (an SVC on ``s K`` with ``C`` is the SVC on ``K`` with ``s C``).
* Kernel regression: centred one-hot targets ``Y = onehot - 1 / n_classes`` (the -0.1 / 0.9 targets of
  Arora et al. 2019 for 10 classes), predictions ``K(test, train) (K(train, train) + reg I)^-1 Y``,
  the class of the largest output. ``reg`` from :data:`REG_GRID` (relative to the mean diagonal).
* SVC: ``sklearn.svm.SVC(kernel="precomputed", C=C)`` (one-vs-one), ``C`` from
  :data:`ntkit.experiments.uci.C_GRID`.
* Selection: ``reg`` and ``C`` maximise the accuracy on a stratified validation split of the
  training pool, fitted on the rest (first maximum of the ascending grid); the selected value is
  then refitted on the whole pool and scored on the test set.
* Few-shot: ``m`` images per class drawn from the pool (``m = 1, 2, 4, ...``), ``draws`` draws per
  size with fixed seeds (the same images for every kernel), scored on the whole test set with the
  ``reg`` and ``C`` selected above (a validation split of one image per class does not exist);
  mean and sample standard deviation (``ddof=1``) over the draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg

from ntkit.experiments.images_data import few_shot_draw
from ntkit.experiments.inplace_cholesky import cholesky_inplace
from ntkit.experiments.uci import C_GRID, svc_fit

#: Ridge grid, relative to the mean diagonal of the training kernel.
REG_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def centred_targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot rows minus ``1 / n_classes``: shape (N, n_classes), each row summing to 0."""
    out = np.full((len(y), n_classes), -1.0 / n_classes)
    out[np.arange(len(y)), y] += 1.0
    return out


def _accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == y))


def ridge_predict(k_train: np.ndarray, targets: np.ndarray, k_eval: np.ndarray, reg: float) -> np.ndarray:
    """``k_eval (k_train + reg I)^-1 targets``: shape (N_eval, n_classes).

    Cholesky first (:func:`~ntkit.experiments.inplace_cholesky.cholesky_inplace`); a kernel too
    ill-conditioned for it (tiny ``reg``) is solved through its eigendecomposition with the eigenvalues
    clipped at 0 (a PSD kernel's rounding).
    """
    a = np.ascontiguousarray(k_train + reg * np.eye(len(k_train)))
    try:  # in place on torch's LAPACK: SciPy's threaded OpenBLAS dpotrf crashes from N ~ 16,000 in float64
        alpha = scipy.linalg.cho_solve((cholesky_inplace(a).T, False), targets, check_finite=False)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(k_train)
        alpha = v @ ((v.T @ targets) / (np.clip(w, 0.0, None) + reg)[:, None])
    return k_eval @ alpha


def ridge_path(k_train: np.ndarray, targets: np.ndarray, k_eval: np.ndarray, regs: Sequence[float]) -> list[np.ndarray]:
    """Predictions of :func:`ridge_predict` for every ``reg`` of ``regs`` from one eigendecomposition."""
    w, v = np.linalg.eigh(k_train)
    w = np.clip(w, 0.0, None)
    proj, kv = v.T @ targets, k_eval @ v
    return [kv @ (proj / (w + r)[:, None]) for r in regs]


def select_ridge(
    k: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, n_classes: int, regs: Sequence[float] = REG_GRID
) -> tuple[float, list[float]]:
    """The ``reg`` of ``regs`` with the best validation accuracy (first maximum) and the whole grid."""
    preds = ridge_path(k[np.ix_(fit, fit)], centred_targets(y[fit], n_classes), k[np.ix_(val, fit)], regs)
    grid = [_accuracy(p, y[val]) for p in preds]
    return float(regs[int(np.argmax(grid))]), grid


def select_c(
    k: np.ndarray, y: np.ndarray, fit: np.ndarray, val: np.ndarray, cs: Sequence[float] = C_GRID
) -> tuple[float, list[float]]:
    """The ``C`` of ``cs`` (ascending) with the best validation accuracy (first maximum) and the whole grid.

    Once a fit has no dual variable at its bound, larger ``C`` give the same solution and are not
    refitted (as in :func:`ntkit.experiments.uci.evaluate_dataset`).
    """
    grid: list[float] = []
    k_fit, k_val = k[np.ix_(fit, fit)], k[np.ix_(val, fit)]
    result = None
    for c in cs:
        if result is None or result.at_bound or result.capped:
            result = svc_fit(k_fit, y[fit], k_val, y[val], c=float(c))
        grid.append(result.accuracy)
    return float(cs[int(np.argmax(grid))]), grid


def few_shot_sizes(max_size: int, limit: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``min(max_size, limit)``."""
    out, m = [], 1
    while m <= min(max_size, limit):
        out.append(m)
        m *= 2
    return out


def evaluate_kernel(
    k_pool: np.ndarray,
    k_test: np.ndarray,
    y_pool: np.ndarray,
    y_test: np.ndarray,
    *,
    fit: np.ndarray,
    val: np.ndarray,
    sizes: Sequence[int],
    draws: int,
    seed: int,
    svc: bool = True,
    svc_few_shot: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole protocol (module notes) on one kernel.

    Parameters
    ----------
    k_pool : ndarray of shape (N_pool, N_pool)
        Kernel of the training pool.
    k_test : ndarray of shape (N_test, N_pool)
    y_pool : ndarray of shape (N_pool,), int
    y_test : ndarray of shape (N_test,), int
    fit, val : ndarray of int
        Positions in the pool of the validation split's fitting and validation parts.
    sizes : sequence of int
        Few-shot images per class.
    draws : int
        Few-shot draws per size (seeds ``(seed, size, draw)``, shared by all kernels).
    svc, svc_few_shot : bool
        Run the SVC (selection and full pool), and the SVC on the few-shot draws.
    on_step : callable, optional
        Called with a note after every fit.

    Returns
    -------
    dict
        ``reg``, ``reg_val_grid``, ``reg_acc`` (test accuracy of kernel regression on the pool),
        ``C``, ``svc_val_grid``, ``svc_acc`` (None when ``svc`` is off), ``few_shot`` with ``sizes``
        and per size the ``reg_mean``, ``reg_std``, ``reg_accs`` (and ``svc_*``), ``eval_seconds``.
    """
    start = time.perf_counter()
    note = on_step if on_step is not None else (lambda _: None)
    n_classes = int(max(y_pool.max(), y_test.max())) + 1
    scale = float(np.mean(np.diag(k_pool)))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"kernel: expected a positive mean diagonal, got {scale}")
    k_pool, k_test = k_pool / scale, k_test / scale
    reg, reg_grid = select_ridge(k_pool, y_pool, fit, val, n_classes)
    reg_acc = _accuracy(ridge_predict(k_pool, centred_targets(y_pool, n_classes), k_test, reg), y_test)
    note("kernel regression")
    rec: dict[str, Any] = {"reg": reg, "reg_grid": list(REG_GRID), "reg_val_grid": reg_grid, "reg_acc": reg_acc,
                           "C": None, "c_grid": list(C_GRID), "svc_val_grid": None, "svc_acc": None}
    if svc:
        c, c_grid = select_c(k_pool, y_pool, fit, val)
        rec.update(C=c, svc_val_grid=c_grid,
                   svc_acc=svc_fit(k_pool, y_pool, k_test, y_test, c=c).accuracy)
        note("SVC")
    few: dict[str, Any] = {"sizes": list(sizes), "draws": draws, "reg_accs": [], "svc_accs": []}
    for m in sizes:
        reg_accs, svc_accs = [], []
        for d in range(draws):
            idx = few_shot_draw(y_pool, m, (seed, m, d))
            k_tr, k_ev, y_tr = k_pool[np.ix_(idx, idx)], k_test[:, idx], y_pool[idx]
            reg_accs.append(_accuracy(ridge_predict(k_tr, centred_targets(y_tr, n_classes), k_ev, reg), y_test))
            if svc and svc_few_shot:
                svc_accs.append(svc_fit(k_tr, y_tr, k_ev, y_test, c=float(rec["C"])).accuracy)
            note(f"few-shot {m}/class draw {d + 1}/{draws}")
        few["reg_accs"].append(reg_accs)
        few["svc_accs"].append(svc_accs)
    for kind in ("reg", "svc"):
        accs = few[f"{kind}_accs"]
        few[f"{kind}_mean"] = [float(np.mean(a)) if a else None for a in accs]
        few[f"{kind}_std"] = [float(np.std(a, ddof=1)) if len(a) > 1 else (0.0 if a else None) for a in accs]
    rec["few_shot"] = few
    rec["eval_seconds"] = time.perf_counter() - start
    return rec


__all__ = [
    "REG_GRID",
    "centred_targets",
    "evaluate_kernel",
    "few_shot_sizes",
    "ridge_path",
    "ridge_predict",
    "select_c",
    "select_ridge",
]
