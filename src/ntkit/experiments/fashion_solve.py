"""Kernel ridge regression on stored kernel blocks for ``ntkit bench fashion``: the sweep and the final solve.

Every kernel is first divided by the mean of its training diagonal, ``s = mean(diag K(train, train))``,
so the ridge grid means the same for every architecture and depth (as in
:mod:`ntkit.experiments.images_eval`). Targets ``Y`` are the centred one-hot rows (N, 10).

* Sweep (:func:`ridge_sweep`): on a subset of at most ~10k training images, one float64 Cholesky
  factorisation of ``K / s + reg I`` per ridge of the grid (in place, :mod:`ntkit.experiments.inplace_cholesky`,
  as the final solve's; ``n^3 / 3`` flops each: measured about 7 times cheaper than the one symmetric
  eigendecomposition that would serve every ridge at once); a ridge too small for the factorisation scores None.
* Final solve (:func:`solve_stored`), ``alpha = (K / s + reg I)^{-1} Y`` on the whole pool:

  - ``"float64"``: a dense Cholesky factorisation in float64 (``8 N^2`` bytes: 29 GB at N = 60,000);
  - ``"float32"``: the factor in float32 (``4 N^2`` bytes, about 3x faster) and classical iterative
    refinement (Wilkinson 1963; Carson & Higham 2018) with float64 residuals
    ``r = Y - (K / s + reg I) alpha`` streamed from the stored float64 kernel in row blocks,
    ``alpha += L^-T L^-1 r``, until ``||r|| / ||Y|| <= tol`` -- the float64 answer at float32 cost
    where the system is not too ill-conditioned for float32 (``kappa u_32 < 1``). Where refinement
    crawls (a step that leaves more than a tenth of the residual: ``kappa u_32`` near 1, e.g. the tiny
    ridges deep NNGPs choose), the iteration goes on as conjugate gradients in float64 preconditioned by the same
    float32 factor (the Krylov form of refinement, Carson & Higham 2018, with CG for a symmetric
    positive definite system): each step one streamed product with the stored kernel and one pair of
    float32 triangular solves, converging where refinement crawls. The residual history is returned
    so that the precision effect is visible;
  - ``"float32-plain"``: the float32 factor without refinement (the precision effect Lee et al. 2020
    describe, for comparison);
  - ``"auto"``: float64 when ``8 N^2`` bytes fit ``memory_budget``, else float32.

Predictions ``K(test, pool) alpha / s`` stream the stored block in row chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg

from ntkit._validation import check_choice, parse_memory_budget
from ntkit.experiments.images_eval import REG_GRID
from ntkit.experiments.inplace_cholesky import cholesky_inplace

PRECISIONS = ("auto", "float64", "float32", "float32-plain")
_CHUNK = 2048
#: A refinement step that leaves more than this fraction of the residual hands over to preconditioned CG
#: (a well-conditioned system loses a factor ~100 per step; one at 0.4 would need 20 steps to 1e-10).
_CRAWL = 0.1


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose largest score is at the label."""
    return float(np.mean(np.argmax(scores, axis=1) == y))


def diag_scale(k: np.ndarray) -> float:
    """Mean of the diagonal of a square (possibly memory-mapped) kernel block.

    Raises
    ------
    ValueError
        A diagonal mean that is not a positive finite number.
    """
    scale = float(np.mean(np.diagonal(k)))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"kernel: expected a positive mean diagonal, got {scale}")
    return scale


def ridge_sweep(k_fit: np.ndarray, t_fit: np.ndarray, k_val: np.ndarray, y_val: np.ndarray,
                regs: Sequence[float] = REG_GRID) -> list[float | None]:
    """Validation accuracy of every ridge of ``regs`` (relative to the mean diagonal of ``k_fit``).

    Parameters
    ----------
    k_fit : ndarray of shape (n, n)
    t_fit : ndarray of shape (n, k)
        Centred one-hot targets.
    k_val : ndarray of shape (v, n)
    y_val : ndarray of shape (v,), int

    Returns
    -------
    list of float or None, one validation accuracy per ridge (None: the factorisation failed)
    """
    scale = diag_scale(k_fit)
    k = np.asarray(k_fit, dtype=np.float64) / scale
    k_v = np.asarray(k_val, dtype=np.float64) / scale
    out: list[float | None] = []
    for reg in regs:
        a = k.copy()
        a[np.diag_indices_from(a)] += reg
        try:  # in place (module inplace_cholesky: SciPy's threaded float64 dpotrf crashes from N ~ 16,000)
            cholesky_inplace(a)
        except np.linalg.LinAlgError:
            out.append(None)
            continue
        out.append(accuracy(k_v @ scipy.linalg.cho_solve((a.T, False), t_fit, check_finite=False), y_val))
    return out


def _scaled_copy(k: np.ndarray, scale: float, reg: float, dtype: type[np.floating[Any]]) -> np.ndarray:
    """``k / scale + reg I`` as a new C-ordered array of ``dtype``, read in row chunks.

    The division is in float64 whatever ``k`` is stored in (a float32 block divided by a Python float stays
    float32 under NumPy 2, which made the "float64" factor of a float32 kernel that of a float32-rounded
    ``k / scale``, off by ~1e-5 relative residual from the system the residuals check).
    """
    n = k.shape[0]
    a = np.empty((n, n), dtype=dtype)
    for r0 in range(0, n, _CHUNK):
        a[r0:r0 + _CHUNK] = np.asarray(k[r0:r0 + _CHUNK], dtype=np.float64) / scale
    a[np.diag_indices(n)] += reg
    return a


def _system_times(k: np.ndarray, scale: float, reg: float, v: np.ndarray) -> np.ndarray:
    """``(k / scale + reg I) v`` in float64, streaming ``k`` by rows."""
    out = np.empty_like(v, dtype=np.float64)
    for r0 in range(0, k.shape[0], _CHUNK):
        rows = slice(r0, r0 + _CHUNK)
        out[rows] = (np.asarray(k[rows], dtype=np.float64) @ v) / scale + reg * v[rows]
    return out


def _residual(k: np.ndarray, scale: float, reg: float, alpha: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``Y - (k / scale + reg I) alpha`` in float64, streaming ``k`` by rows."""
    return targets - _system_times(k, scale, reg, alpha)


def _preconditioned_cg(k: np.ndarray, scale: float, reg: float, alpha: np.ndarray, r: np.ndarray,
                       targets: np.ndarray, precondition: Callable[[np.ndarray], np.ndarray], tol: float,
                       max_steps: int) -> tuple[np.ndarray, list[float], int]:
    """Conjugate gradients on ``(k / scale + reg I) alpha = Y`` (``Y = targets``, shape (N, k)) from ``alpha``
    (``r``: its residual), one recurrence per target column, preconditioned by ``precondition`` (the float32
    factor's solve).

    The preconditioner is applied in float32, so it is symmetric only to float32 rounding; the flexible
    (Polak-Ribiere) ``beta = z_new . (r_new - r) / (z . r)`` keeps the recurrence robust to that. Stops when
    the recursive relative residual ``||r|| / ||Y||`` reaches ``tol`` or after ``max_steps``; returns
    ``(alpha, residuals, steps)``, the residuals the recursive ones (the caller checks the true one: the
    recursion drifts from it by rounding, most after a large start).
    """
    norm = float(np.linalg.norm(targets))
    z = precondition(r)
    p = z.copy()
    rz = np.sum(r * z, axis=0)
    residuals: list[float] = []
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 -- the count is returned
        q = _system_times(k, scale, reg, p)
        pq = np.sum(p * q, axis=0)
        a = np.divide(rz, pq, out=np.zeros_like(rz), where=pq > 0)
        alpha = alpha + a * p
        r_new = r - a * q
        residuals.append(float(np.linalg.norm(r_new)) / norm)
        if residuals[-1] <= tol:
            break
        z_new = precondition(r_new)
        b = np.divide(np.sum(z_new * (r_new - r), axis=0), rz, out=np.zeros_like(rz), where=rz > 0)
        p = z_new + np.maximum(b, 0.0) * p
        r, rz = r_new, np.sum(r_new * z_new, axis=0)
    return alpha, residuals, steps


def _krylov_finish(k: np.ndarray, scale: float, reg: float, alpha: np.ndarray, r: np.ndarray,
                   targets: np.ndarray, precondition: Callable[[np.ndarray], np.ndarray], tol: float,
                   max_steps: int, residuals: list[float]) -> tuple[np.ndarray, int]:
    """Preconditioned CG from ``alpha`` (residual ``r``) until the *true* relative residual reaches ``tol``:
    a run whose recursive residual reached ``tol`` restarts from the true one (at most twice, and only
    while that still halves). Appends each step's recursive residual and each run's true one to
    ``residuals``; returns ``(alpha, CG steps)``."""
    norm = float(np.linalg.norm(targets))
    steps, previous = 0, float(np.linalg.norm(r)) / norm
    for _ in range(3):
        alpha, more, run = _preconditioned_cg(k, scale, reg, alpha, r, targets, precondition, tol, max_steps - steps)
        steps += run
        r = _residual(k, scale, reg, alpha, targets)
        true = float(np.linalg.norm(r)) / norm
        residuals += [*more, true]
        if true <= tol or steps >= max_steps or true > 0.5 * previous:
            break
        previous = true
    return alpha, steps


def solve_stored(k: np.ndarray, targets: np.ndarray, reg: float, *, precision: str = "auto",
                 memory_budget: int | str = "16G", tol: float = 1e-10, max_refine: int = 10,
                 max_cg: int = 50, keep_first: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """``alpha`` of shape (N, k) with ``(k / s + reg I) alpha = targets`` (module notes).

    Parameters
    ----------
    k : ndarray of shape (N, N), float64
        The training kernel, e.g. a memory map of the stored block.
    targets : ndarray of shape (N, k), float64
    reg : float
        Ridge relative to ``s``, the mean diagonal.
    precision : {"auto", "float64", "float32", "float32-plain"}
    memory_budget : int or str
        Decides ``"auto"`` (the float64 factor needs ``8 N^2`` bytes).
    tol, max_refine : float, int
        Relative residual at which refinement stops, and the most refinement steps.
    max_cg : int
        The most preconditioned CG steps once refinement crawls (module notes).
    keep_first : bool
        Also return the solution before refinement (``info["alpha_first"]``: for float32, the
        unrefined float32 answer, at no extra cost).

    Returns
    -------
    alpha : ndarray of shape (N, k), float64
        Coefficients of the scaled kernel: predictions are ``K(x, pool) alpha / s``.
    info : dict
        ``precision`` (resolved), ``scale``, ``factor_seconds``, ``refine_seconds``, ``residuals``
        (relative residual after the first solve and each refinement step; where refinement crawled, then
        each CG step's recursive residual and each CG run's true one, the last that of the answer),
        ``cg_steps`` (0 where refinement sufficed).

    Raises
    ------
    ValueError
        A bad ``precision``; ``k / s + reg I`` not positive definite in the factor's precision.
    """
    check_choice(precision, "precision", PRECISIONS)
    n = k.shape[0]
    if k.shape != (n, n) or targets.shape[0] != n:
        raise ValueError(f"solve: expected a square kernel and {n} target rows, got {k.shape} and {targets.shape}")
    if precision == "auto":
        precision = "float64" if 8 * n * n <= parse_memory_budget(memory_budget) else "float32"
    scale = diag_scale(k)
    start = time.perf_counter()
    dtype = np.float64 if precision == "float64" else np.float32
    a = _scaled_copy(k, scale, reg, dtype)
    try:  # in place; a.T is then F-ordered with the factor L^T in its upper triangle (module inplace_cholesky)
        factor = cholesky_inplace(a).T
    except np.linalg.LinAlgError:
        raise ValueError(f"ridge {reg:g}: expected K / s + ridge I positive definite in {np.dtype(dtype).name}, "
                         "got a failed Cholesky factorisation (raise the ridge or use --precision float64)") from None
    del a
    factor_seconds = time.perf_counter() - start

    def apply(rhs: np.ndarray) -> np.ndarray:
        return scipy.linalg.cho_solve((factor, False), rhs.astype(dtype), check_finite=False).astype(np.float64)

    start = time.perf_counter()
    norm = float(np.linalg.norm(targets))
    alpha = apply(targets)
    first = alpha.copy() if keep_first else None
    residuals: list[float] = []
    cg_steps = 0
    if precision != "float32-plain":
        for step in range(max_refine + 1):
            r = _residual(k, scale, reg, alpha, targets)
            residuals.append(float(np.linalg.norm(r)) / norm)
            if residuals[-1] <= tol or precision == "float64" or step == max_refine:
                break
            if len(residuals) > 1 and residuals[-1] > _CRAWL * residuals[-2]:
                # refinement crawls or diverges (the float32 factor is too inaccurate for this system)
                alpha, cg_steps = _krylov_finish(k, scale, reg, alpha, r, targets, apply, tol, max_cg, residuals)
                break
            alpha += apply(r)
    info = {"precision": precision, "scale": scale, "factor_seconds": factor_seconds,
            "refine_seconds": time.perf_counter() - start, "residuals": residuals, "cg_steps": cg_steps}
    if first is not None:
        info["alpha_first"] = first
    return alpha, info


def predict_stored(k_eval: np.ndarray, alpha: np.ndarray, scale: float) -> np.ndarray:
    """``k_eval alpha / scale`` of shape (T, k), streaming ``k_eval`` (T, N) by rows."""
    out = np.empty((k_eval.shape[0], alpha.shape[1]))
    for r0 in range(0, k_eval.shape[0], _CHUNK):
        out[r0:r0 + _CHUNK] = np.asarray(k_eval[r0:r0 + _CHUNK], dtype=np.float64) @ alpha / scale
    return out


def choose(sweeps: list[dict[str, Any]], which: str) -> tuple[str, float, float]:
    """``(kernel token, ridge, validation accuracy)`` of the best sweep cell of ``which``.

    The first maximum in sweep order: the shallowest depth, then the activation listed first, then the smallest
    ``w_var``, then the smallest ``b_std``, then the smallest ridge.
    """
    acc, token, reg = -1.0, "", 0.0
    for rec in sweeps:
        for r, a in zip(rec["regs"], rec["val_acc"][which], strict=True):
            if a is not None and a > acc:
                acc, token, reg = a, rec["kernel"], r
    return token, reg, acc


__all__ = ["PRECISIONS", "REG_GRID", "accuracy", "choose", "diag_scale", "predict_stored", "ridge_sweep",
           "solve_stored"]
