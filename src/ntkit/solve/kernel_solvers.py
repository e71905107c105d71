"""Solvers of ``(K + diag_reg I) alpha = y`` on a kernel operator, and the choice among them.

* :func:`resolve_solver`: the one place where ``solver="auto"`` is resolved (``"cholesky"`` when
  the dense N x N float64 matrix fits ``memory_budget``, ``"cg"`` up to ``N = 50k``, ``"nystrom"``
  beyond), for :class:`~ntkit.solve.KernelSystem`, :mod:`ntkit.predict` and :mod:`ntkit.sklearn`;
* :func:`dense_cho_factor` / :func:`exact_solve`: the exact dense solve (``8 N^2`` bytes, O(N^3)),
  factored in place, retried with a jitter for a near-singular kernel;
* :func:`cg_kernel_solve`: preconditioned conjugate gradients on the operator (``K`` never stored),
  optionally with float64 iterative refinement of float32-tile products.

The Nystrom solver is :func:`ntkit.solve.nystrom_krr`; :class:`~ntkit.solve.KernelSystem` runs
whichever is chosen.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch

from ntkit._validation import check_choice, check_int, parse_memory_budget, renamed_keyword
from ntkit.solve.cg import NotConvergedWarning, conjugate_gradient
from ntkit.solve.linalg import cho_solve, warn_jitter
from ntkit.solve.operator import KernelOperator

Tensor = torch.Tensor

#: Names accepted by ``solver=``.
SOLVERS = ("auto", "cholesky", "cg", "nystrom", "features")
#: Budget of ``"auto"`` for the dense N x N float64 matrix (4 GiB: N <= 23,170).
DEFAULT_MEMORY_BUDGET = 4 * 1024**3
#: The former name of :data:`DEFAULT_MEMORY_BUDGET`.
DEFAULT_MEMORY_BYTES = DEFAULT_MEMORY_BUDGET


def resolve_solver(
    solver: str,
    n: int,
    *,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    cg_max_n: int = 50_000,
    memory_bytes: int | None = None,
) -> str:
    """The solver that runs for ``solver`` and ``n`` training points (``"auto"`` resolved).

    ``"auto"``: ``"cholesky"`` if the dense N x N float64 matrix fits (``8 n^2 <= memory_budget``),
    else ``"cg"`` if ``n <= cg_max_n``, else ``"nystrom"``. Other names are returned unchanged.

    Parameters
    ----------
    solver : {"auto", "cholesky", "cg", "nystrom", "features"}
        ``"features"`` (random features, :mod:`ntkit.random_features`) is never chosen by ``"auto"``.
    n : int
        Training points (``>= 1``).
    memory_budget : int or str
        Budget for the dense matrix, in bytes or as a string such as ``"512M"`` / ``"2GiB"``
        (:func:`ntkit._validation.parse_memory_budget`; default 4 GiB, i.e. ``n <= 23,170``).
    cg_max_n : int
        Largest ``n`` for which ``"auto"`` picks ``"cg"`` over ``"nystrom"``.
    memory_bytes : int, optional
        Deprecated alias of ``memory_budget`` (a ``DeprecationWarning``).

    Returns
    -------
    str
        One of ``"cholesky"``, ``"cg"``, ``"nystrom"``.

    Raises
    ------
    ValueError
        An unknown ``solver``, ``n < 1``, an unreadable ``memory_budget``.

    Examples
    --------
    >>> resolve_solver("auto", 10_000), resolve_solver("auto", 30_000), resolve_solver("auto", 10**6)
    ('cholesky', 'cg', 'nystrom')
    >>> resolve_solver("cg", 10)
    'cg'
    >>> resolve_solver("auto", 10_000, memory_budget="512M")
    'cg'
    """
    memory_budget = renamed_keyword(memory_budget, memory_bytes, new="memory_budget", old="memory_bytes",
                                    default=DEFAULT_MEMORY_BUDGET)
    budget = parse_memory_budget(memory_budget, "memory_budget")
    solver = check_choice(solver, "solver", SOLVERS)
    if solver != "auto":
        return solver
    n = check_int(n, "n", minimum=1)
    cg_max_n = check_int(cg_max_n, "cg_max_n", minimum=0)
    if 8 * n * n <= budget:
        return "cholesky"
    return "cg" if n <= cg_max_n else "nystrom"


def dense_cho_factor(
    k: Tensor | Callable[[], Tensor], diag_reg: float, *, max_tries: int = 8, warn: bool = True
) -> tuple[Tensor, float]:
    """Lower Cholesky factor ``L`` of ``k + (diag_reg + jitter) I`` computed in place, for :func:`cho_solve`.

    ``k`` of shape (N, N) -- or a function that computes it -- is overwritten (converted to
    float64 first if needed): peak memory is one N x N float64 matrix. The factorisation runs on
    the column-major view ``k.mT`` (equal to ``k``, which is symmetric), so LAPACK writes ``L``
    into the same storage without the copy a row-major input costs. When the plain factorisation
    fails (a near-singular kernel: duplicated inputs without a ridge), the matrix is computed again
    and factored with a jitter ``10 eps mean(diag K) * 10^i`` (``i < max_tries``; a
    :class:`ntkit.solve.linalg.JitterWarning` says which), as :func:`ntkit.solve.linalg.robust_cholesky`
    does for a stored matrix. A plain matrix cannot be recomputed, so it gets no retry.

    This is PyTorch's LAPACK, not SciPy's: ``scipy.linalg.cho_factor`` crashes the process
    (segmentation fault in the threaded OpenBLAS ``potrf`` bundled with SciPy) from N of about
    17,000 once PyTorch is loaded in the same process.

    Returns ``(L, jitter)``: ``L`` of shape (N, N), lower triangular, sharing ``k``'s storage where
    ``k`` was a float64 tensor. Raises ``ValueError`` if no jitter helped (increase ``diag_reg``;
    the kernel may not be positive semi-definite).
    """
    make = k if callable(k) else None
    first = k() if callable(k) else k
    tries = max_tries if make is not None else 0
    jitter, scale = 0.0, 0.0
    mat = first
    info = torch.empty((), dtype=torch.int32, device=mat.device)
    for attempt in range(tries + 1):
        mat = mat.to(torch.float64)
        if attempt == 0:
            scale = float(mat.diagonal().abs().mean()) or 1.0
        mat.diagonal().add_(diag_reg + jitter)
        chol = mat.mT  # column-major view of the symmetric matrix: factored in place
        torch.linalg.cholesky_ex(chol, out=(chol, info))
        if int(info) != 0:
            if attempt == tries:
                break
            jitter = 10 * torch.finfo(torch.float64).eps * scale * 10**attempt
            assert make is not None
            mat = make()
            continue
        if jitter and warn:
            warn_jitter(jitter, scale, stacklevel=2)
        return chol, jitter
    tried = f"; jitter up to {jitter:.3g} did not help" if tries else ""
    raise ValueError(
        f"diag_reg: expected a ridge making K + diag_reg I positive definite, got {diag_reg} (increase it){tried}"
    )


def exact_solve(op: KernelOperator, y: Tensor, *, diag_reg: float) -> Tensor:
    """``(K + diag_reg I)^{-1} y`` by a dense Cholesky factorisation computed in place (float64).

    Peak memory is one N x N float64 matrix; a near-singular kernel is retried with a jitter
    (:func:`dense_cho_factor`). Raises ``ValueError`` if ``K + diag_reg I`` cannot be factored.

    Parameters
    ----------
    op : KernelOperator
        The symmetric training kernel ``K``.
    y : Tensor of shape (N,) or (N, k)
    diag_reg : float
        Ridge ``>= 0``.

    Returns
    -------
    Tensor of the shape of ``y``

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import KernelOperator, exact_solve
    >>> x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> op = KernelOperator(x, depth=2)
    >>> y = torch.ones(50, 1, dtype=torch.float64)
    >>> alpha = exact_solve(op, y, diag_reg=0.1)
    >>> bool(torch.allclose(op @ alpha + 0.1 * alpha, y))
    True
    """
    factor, _ = dense_cho_factor(op.dense, diag_reg)
    return cho_solve(factor, y.to(torch.float64))


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

    Parameters
    ----------
    op : KernelOperator
        The symmetric training kernel (float32 tiles for mixed precision).
    y : Tensor of shape (N,) or (N, k)
    diag_reg : float
        Ridge ``> 0``.
    precond : callable, optional
        ``v -> P^{-1} v`` (e.g. :func:`pivoted_cholesky_preconditioner`).
    tol : float
        Relative residual to reach.
    max_iter : int
        CG iterations (per refinement step).
    reference_op : KernelOperator, optional
        The same kernel with float64 tiles: turns on iterative refinement.
    inner_tol, max_refine : float, int
        Tolerance of each inner CG and the most refinement steps.
    progress : bool

    Returns
    -------
    Tensor of the shape of ``y``

    Warns
    -----
    NotConvergedWarning
        ``tol`` was not reached (the best iterate is returned).

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import KernelOperator, cg_kernel_solve, exact_solve
    >>> x = torch.randn(60, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> op, y = KernelOperator(x, depth=2), torch.ones(60, 1, dtype=torch.float64)
    >>> bool(torch.allclose(cg_kernel_solve(op, y, diag_reg=0.1, tol=1e-12), exact_solve(op, y, diag_reg=0.1)))
    True
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
