"""Low-rank-plus-shift preconditioners for kernel systems ``(K + s I) x = y``.

Both preconditioners approximate ``K ~ L L^T`` with ``L`` of shape (N, r) and apply
``P^{-1}`` for ``P = L L^T + s I`` by the Woodbury identity

    P^{-1} v = (v - L (s I_r + L^T L)^{-1} L^T v) / s,

an O(N r) operation after an O(N r^2) set-up.

* :func:`pivoted_cholesky_preconditioner`: ``L`` from the partial pivoted Cholesky factorisation of
  ``K`` (greedy on the largest remaining diagonal; Harbrecht, Peters & Schneider 2012), as in
  GPyTorch's BBMM (Gardner et al. 2018). Needs ``r`` kernel rows and the diagonal.
* :func:`nystrom_preconditioner`: ``L = K_{n,S} chol(K_{S,S})^{-T}`` for ``r`` uniformly sampled
  columns ``S`` (Williams & Seeger 2001; Frangella, Tropp & Udell 2023).
"""

from __future__ import annotations

from typing import Any

import torch

from ntkit._validation import check_float, check_int
from ntkit.solve.operator import KernelOperator

Tensor = torch.Tensor


class LowRankPreconditioner:
    """``P^{-1} v`` for ``P = L L^T + shift I`` by the Woodbury identity.

    Parameters
    ----------
    factor : Tensor of shape (N, r)
    shift : float
        ``> 0`` (the ridge of the system being preconditioned).

    Raises
    ------
    TypeError, ValueError
        ``shift`` is not a number > 0.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import LowRankPreconditioner
    >>> factor = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> precond = LowRankPreconditioner(factor, 0.5)
    >>> p = factor @ factor.T + 0.5 * torch.eye(2, dtype=torch.float64)
    >>> v = torch.tensor([1.0, -1.0], dtype=torch.float64)
    >>> bool(torch.allclose(p @ precond(v), v))
    True
    """

    def __init__(self, factor: Tensor, shift: float) -> None:
        shift = check_float(shift, "shift", minimum=0.0, strict=True)
        self.factor = factor
        self.shift = shift
        r = factor.shape[1]
        inner = factor.T @ factor + shift * torch.eye(r, dtype=factor.dtype, device=factor.device)
        self._chol = torch.linalg.cholesky(inner)

    @property
    def rank(self) -> int:
        """``r``."""
        return int(self.factor.shape[1])

    def __call__(self, v: Tensor) -> Tensor:
        """``P^{-1} v`` for ``v`` of shape (N,) or (N, m)."""
        vec = v.ndim == 1
        vv = v[:, None] if vec else v
        w = torch.cholesky_solve(self.factor.T @ vv, self._chol)
        out = (vv - self.factor @ w) / self.shift
        return out[:, 0] if vec else out


def _check_rank(rank: Any, n: int) -> int:
    rank = check_int(rank, "rank", minimum=1)
    if rank > n:
        raise ValueError(f"rank: expected a preconditioner rank <= N = {n} (the number of points), got {rank}")
    return rank


def pivoted_cholesky(op: KernelOperator, rank: int, *, rel_tol: float = 0.0) -> tuple[Tensor, Tensor]:
    """Partial pivoted Cholesky factor ``L`` of shape (N, r) with ``K ~ L L^T``.

    At step ``k`` the pivot is the row with the largest remaining diagonal ``d_i = K_ii - sum_j L_ij^2``;
    the kernel row of that pivot is computed (``N`` entries) and
    ``L[:, k] = (K[:, p] - L[:, :k] L[p, :k]^T) / sqrt(d_p)``. The trace error ``sum(d)`` decreases
    monotonically; the factorisation stops early when ``max(d) <= rel_tol * max(diag K)``.

    Parameters
    ----------
    op : KernelOperator (symmetric)
    rank : int
        ``1 <= rank <= N``.

    Returns
    -------
    (L, pivots) : Tensor of shape (N, r), Tensor of shape (r,)
        ``r <= rank`` (fewer when the early stop triggers).

    Raises
    ------
    ValueError
        A non-symmetric operator, ``rank`` outside ``1..N``, ``rel_tol < 0``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import KernelOperator, pivoted_cholesky
    >>> x = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> op = KernelOperator(x, depth=1)
    >>> factor, pivots = pivoted_cholesky(op, 40)
    >>> factor.shape[0], bool(torch.allclose(factor @ factor.T, op @ torch.eye(40, dtype=torch.float64)))
    (40, True)
    """
    if not op.symmetric:
        raise ValueError("op: expected a symmetric kernel operator (x2 omitted)")
    n = op.shape[0]
    rank = _check_rank(rank, n)
    rel_tol = check_float(rel_tol, "rel_tol", minimum=0.0)
    d = op.diag().clone()
    d_max0 = float(d.max())
    factor = torch.zeros(n, rank, dtype=op.dtype, device=op.x1.device)
    pivots: list[int] = []
    for k in range(rank):
        p = int(torch.argmax(d))
        dp = float(d[p])
        if dp <= rel_tol * d_max0 or dp <= 0:
            break
        row = op.block(rows=torch.tensor([p]))[0]
        col = (row - factor[:, :k] @ factor[p, :k]) / dp**0.5
        col[pivots] = 0.0  # exact zeros on earlier pivots (rounding)
        factor[:, k] = col
        d = (d - col * col).clamp_(min=0.0)
        d[p] = 0.0
        pivots.append(p)
    r = len(pivots)
    return factor[:, :r].contiguous(), torch.tensor(pivots, dtype=torch.long)


def pivoted_cholesky_preconditioner(op: KernelOperator, rank: int, *, diag_reg: float) -> LowRankPreconditioner:
    """Preconditioner ``P = L L^T + diag_reg I`` from a rank-``rank`` pivoted Cholesky of ``K``.

    Parameters
    ----------
    op : KernelOperator (symmetric), the ``K`` of the system ``(K + diag_reg I) x = y``.
    rank : int
        ``1 <= rank <= N``.
    diag_reg : float
        ``> 0``.

    Raises
    ------
    ValueError
        As :func:`pivoted_cholesky`, and ``diag_reg <= 0``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import KernelOperator, pivoted_cholesky_preconditioner
    >>> x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> pre = pivoted_cholesky_preconditioner(KernelOperator(x, depth=2), 10, diag_reg=1e-2)
    >>> pre(torch.ones(40, dtype=torch.float64)).shape
    torch.Size([40])
    """
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0, strict=True)
    factor, _ = pivoted_cholesky(op, rank)
    return LowRankPreconditioner(factor, diag_reg)


def nystrom_preconditioner(
    op: KernelOperator, rank: int, *, diag_reg: float, generator: torch.Generator | None = None
) -> LowRankPreconditioner:
    """Preconditioner ``P = K_{n,S} K_{S,S}^{-1} K_{S,n} + diag_reg I`` for ``rank`` random columns ``S``.

    Parameters
    ----------
    op : KernelOperator (symmetric)
    rank : int
        ``1 <= rank <= N`` (number of sampled columns).
    diag_reg : float
        ``> 0``.
    generator : torch.Generator, optional
        Sampling of the columns (seed it for reproducibility).

    Returns
    -------
    LowRankPreconditioner

    Raises
    ------
    ValueError
        A non-symmetric operator, ``rank`` outside ``1..N``, ``diag_reg <= 0``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import KernelOperator, conjugate_gradient, nystrom_preconditioner
    >>> x = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> op = KernelOperator(x, depth=2)
    >>> precond = nystrom_preconditioner(op, 50, diag_reg=1e-3, generator=torch.Generator().manual_seed(0))
    >>> y = torch.ones(200, dtype=torch.float64)
    >>> res = conjugate_gradient(lambda v: op @ v + 1e-3 * v, y, precond=precond, tol=1e-8)
    >>> res.converged
    True
    """
    if not op.symmetric:
        raise ValueError("op: expected a symmetric kernel operator (x2 omitted)")
    n = op.shape[0]
    rank = _check_rank(rank, n)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0, strict=True)
    idx = torch.randperm(n, generator=generator)[:rank].sort().values
    k_ns = op.block(cols=idx)
    k_ss = k_ns[idx]
    k_ss = 0.5 * (k_ss + k_ss.T)
    jitter = torch.finfo(k_ss.dtype).eps * float(torch.diagonal(k_ss).mean()) * rank
    eye = torch.eye(rank, dtype=k_ss.dtype, device=k_ss.device)
    chol, info = torch.linalg.cholesky_ex(k_ss + jitter * eye)
    while int(info) != 0:
        jitter *= 10
        chol, info = torch.linalg.cholesky_ex(k_ss + jitter * eye)
    factor = torch.linalg.solve_triangular(chol, k_ns.T, upper=False).T
    return LowRankPreconditioner(factor, diag_reg)
