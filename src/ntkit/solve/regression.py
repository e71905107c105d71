"""Kernel ridge regression / GP posterior mean with NTK or NNGP kernels, by the solver that fits.

``mean(x_test) = K(x_test, x_train) (K(x_train, x_train) + diag_reg I)^{-1} y_train`` — the GP
posterior mean of the NNGP (Lee et al. 2018) and, with ``diag_reg -> 0``, the prediction of an
infinitely wide network trained by gradient descent on the MSE to ``t = infinity`` (Jacot et al.
2018; Lee et al. 2019).

Solvers:

* ``"cholesky"``: the exact dense solve (``8 N^2`` bytes, O(N^3) time), factored in place;
* ``"cg"``: preconditioned conjugate gradients on the kernel operator (``K`` never stored; O(N^2)
  kernel work per iteration; pivoted-Cholesky preconditioner);
* ``"nystrom"``: Falkon-style Nystrom KRR with ``n_centres`` centres (:func:`nystrom_krr`; O(N M)
  per iteration, an approximation that is exact for ``M = N``);
* ``"auto"``: ``"cholesky"`` when the dense matrix fits ``memory_bytes``, ``"cg"`` up to
  ``N = 50k``, ``"nystrom"`` beyond.

:func:`kernel_regression` is a front over :class:`ntkit.solve.system.KernelSystem`, which also
serves :mod:`ntkit.predict` and :mod:`ntkit.sklearn`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import torch

from ntkit._validation import as_tensor
from ntkit.solve.cg import NotConvergedWarning, conjugate_gradient
from ntkit.solve.operator import KernelOperator, TileFn

Tensor = torch.Tensor

SOLVERS = ("auto", "cholesky", "cg", "nystrom")


def choose_solver(n: int, *, memory_bytes: int = 4 * 1024**3, cg_max_n: int = 50_000) -> str:
    """The solver ``"auto"`` picks for ``n`` training points: dense if ``8 n^2 <= memory_bytes``."""
    if 8 * n * n <= memory_bytes:
        return "cholesky"
    return "cg" if n <= cg_max_n else "nystrom"


def dense_cho_factor(
    k: Tensor | Callable[[], Tensor], diag_reg: float, *, max_tries: int = 8, warn: bool = True
) -> tuple[tuple[np.ndarray, bool], float]:
    """Cholesky factor of ``k + (diag_reg + jitter) I`` computed in place (LAPACK), for ``scipy.linalg.cho_solve``.

    ``k`` of shape (N, N) -- or a function that computes it -- is overwritten (converted to
    float64 first if needed): peak memory is one N x N float64 matrix. When the plain factorisation
    fails (a near-singular kernel: duplicated inputs without a ridge), the matrix is computed again
    and factored with a jitter ``10 eps mean(diag K) * 10^i`` (``i < max_tries``; a
    :class:`ntkit.solve.linalg.JitterWarning` says which), as :func:`ntkit.solve.linalg.robust_cholesky`
    does for a stored matrix. A plain matrix cannot be recomputed, so it gets no retry.

    Returns ``((factor, lower), jitter)``. Raises ``ValueError`` if no jitter helped (increase
    ``diag_reg``; the kernel may not be positive semi-definite).
    """
    from ntkit.solve.linalg import warn_jitter

    make = k if callable(k) else None
    first = k() if callable(k) else k
    tries = max_tries if make is not None else 0
    jitter, scale = 0.0, 0.0
    mat = first
    for attempt in range(tries + 1):
        mat = mat.to(torch.float64)
        if attempt == 0:
            scale = float(mat.diagonal().abs().mean()) or 1.0
        mat.diagonal().add_(diag_reg + jitter)
        arr = mat.numpy().T  # Fortran-ordered view of the symmetric matrix: LAPACK factors it in place
        try:
            c, low = scipy.linalg.cho_factor(arr, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            if attempt == tries:
                break
            jitter = 10 * torch.finfo(torch.float64).eps * scale * 10**attempt
            assert make is not None
            mat = make()
            continue
        if jitter and warn:
            warn_jitter(jitter, scale, stacklevel=2)
        return (c, low), jitter
    tried = f"; jitter up to {jitter:.3g} did not help" if tries else ""
    raise ValueError(
        f"diag_reg: expected a ridge making K + diag_reg I positive definite, got {diag_reg} (increase it){tried}"
    )


def exact_solve(op: KernelOperator, y: Tensor, *, diag_reg: float) -> Tensor:
    """``(K + diag_reg I)^{-1} y`` by a dense Cholesky factorisation computed in place (float64).

    Peak memory is one N x N float64 matrix; a near-singular kernel is retried with a jitter
    (:func:`dense_cho_factor`). Raises ``ValueError`` if ``K + diag_reg I`` cannot be factored.
    """
    factor, _ = dense_cho_factor(op.dense, diag_reg)
    sol = scipy.linalg.cho_solve(factor, y.numpy(), check_finite=False)
    return torch.from_numpy(np.ascontiguousarray(sol))


def cg_kernel_solve(
    op: KernelOperator,
    y: Tensor,
    *,
    diag_reg: float,
    precond: Callable[[Tensor], Tensor] | None = None,
    tol: float = 1e-8,
    max_iter: int = 500,
    reference_op: KernelOperator | None = None,
    inner_tol: float = 1e-4,
    max_refine: int = 30,
    progress: bool = False,
) -> Tensor:
    """``(K + diag_reg I)^{-1} y`` by preconditioned CG, optionally with mixed-precision refinement.

    With ``reference_op`` (the same kernel with float64 tiles) and a low-precision ``op`` (float32
    tiles), the solve is classical iterative refinement (Wilkinson 1963; Carson & Higham 2018):
    ``r = y - (K_64 + diag_reg I) x`` in float64, ``d ~ (K_32 + diag_reg I)^{-1} r`` by CG to
    ``inner_tol``, ``x += d``, until ``||r|| / ||y|| <= tol``. Most kernel work is done in float32,
    yet the answer is the float64 one.
    """

    def matvec(v: Tensor) -> Tensor:
        return op @ v + diag_reg * v

    if reference_op is None:
        return conjugate_gradient(matvec, y, precond=precond, tol=tol, max_iter=max_iter, progress=progress).x
    x = torch.zeros_like(y)
    y_norm = float(y.norm()) or 1.0
    rel = 1.0
    for _ in range(max_refine):
        r = y - (reference_op @ x + diag_reg * x) if bool(x.any()) else y.clone()
        rel = float(r.norm()) / y_norm
        if progress:
            print(f"refinement: relative residual {rel:.3e}", file=sys.stderr)
        if rel <= tol:
            return x
        inner = max(inner_tol, 0.5 * tol / rel)
        x = x + conjugate_gradient(matvec, r, precond=precond, tol=inner, max_iter=max_iter, progress=progress).x
    warnings.warn(
        f"iterative refinement did not reach the relative residual {tol:.1e} in {max_refine} steps "
        f"(reached {rel:.3e}); returning the last iterate",
        NotConvergedWarning,
        stacklevel=2,
    )
    return x


def kernel_regression(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    *,
    diag_reg: float,
    solver: str = "auto",
    tile_fn: TileFn | None = None,
    depth: int = 1,
    activation: Any = "relu",
    beta: float = 0.0,
    w_std: float = 1.0,
    which: str = "ntk",
    tile_dtype: torch.dtype | None = None,
    tol: float = 1e-8,
    max_iter: int = 500,
    precond: str = "pivoted_cholesky",
    precond_rank: int | None = None,
    n_centres: int = 1000,
    generator: torch.Generator | None = None,
    memory_bytes: int = 4 * 1024**3,
    refine: bool = True,
    nystrom_method: str = "auto",
    progress: bool = False,
) -> Tensor:
    """Kernel regression predictions ``K(x_test, x) (K(x, x) + diag_reg I)^{-1} y`` by any solver.

    Parameters
    ----------
    x_train : array-like of shape (N, n0)
    y_train : array-like of shape (N,) or (N, k)
        Finite targets.
    x_test : array-like of shape (N_test, n0)
    diag_reg : float
        Absolute ridge (``>= 0``; ``> 0`` for ``"cg"`` and ``"nystrom"``), e.g. the noise variance.
    solver : {"auto", "cholesky", "cg", "nystrom"}
    tile_fn, depth, activation, beta, w_std, which
        The kernel (see :class:`~ntkit.solve.KernelOperator`; default the FC network's NTK).
    tile_dtype : torch.dtype, optional
        ``torch.float32`` evaluates tiles in single precision (accumulation stays float64).
    tol, max_iter
        CG stopping rule (relative residual); non-convergence warns and returns the best iterate.
    precond : {"pivoted_cholesky", "nystrom", "none"}
        Preconditioner of ``"cg"``, of rank ``precond_rank`` (``<= N``; default ``min(1000, N)``).
    n_centres : int
        ``M`` for ``"nystrom"`` (``<= N``).
    generator : torch.Generator, optional
        Random centres / columns.
    memory_bytes : int
        Budget for ``"auto"`` (dense solve only if ``8 N^2`` bytes fit).
    refine : bool
        ``"cg"`` with float32 tiles: mixed-precision iterative refinement against float64 products
        (:func:`cg_kernel_solve`), so that ``tol`` is met in float64.
    nystrom_method : {"auto", "falkon", "gram"}
        See :func:`~ntkit.solve.nystrom_krr`; ``"auto"``: ``"falkon"`` when ``K_nm`` fits 2 GiB, else ``"gram"``.

    Returns
    -------
    Tensor of shape (N_test,) or (N_test, k)
        The predictive mean (float64).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, xt = torch.randn(80, 4, generator=g), torch.randn(5, 4, generator=g)
    >>> y = x[:, 0]
    >>> a = kernel_regression(x, y, xt, diag_reg=1e-2, solver="cholesky", depth=2)
    >>> b = kernel_regression(x, y, xt, diag_reg=1e-2, solver="cg", depth=2)
    >>> bool(torch.allclose(a, b, rtol=1e-6, atol=1e-8))
    True
    """
    from ntkit.solve.system import KernelSystem  # the front shares the solver dispatch of KernelSystem

    x = as_tensor(x_train, "x_train", dtype=torch.float64)
    n = x.shape[0]
    y = as_tensor(y_train, "y_train", dtype=torch.float64, ndim=None)
    if y.ndim > 2 or y.shape[0] != n:
        raise ValueError(f"y_train: expected shape ({n},) or ({n}, k), got {tuple(y.shape)}")
    xt = as_tensor(x_test, "x_test", dtype=torch.float64)
    if xt.shape[1] != x.shape[1]:
        raise ValueError(f"x_test: expected {x.shape[1]} features like x_train, got {xt.shape[1]}")
    kw: dict[str, Any] = dict(tile_fn=tile_fn, depth=depth, activation=activation, beta=beta, w_std=w_std, which=which)
    op = KernelOperator(x, tile_dtype=tile_dtype, progress=progress, **kw)
    system = KernelSystem(
        op, y, diag_reg=diag_reg, solver=solver, tol=tol, max_iter=max_iter, n_centres=n_centres,
        generator=generator, memory_bytes=memory_bytes, precond=precond, precond_rank=precond_rank,
        refine=refine, nystrom_method=nystrom_method, progress=progress,
    )  # fmt: skip
    return system.predict(x_test=xt)
