"""Nystrom kernel ridge regression solved by preconditioned CG, in the manner of Falkon.

With ``M`` centres ``c_1..c_M`` (a uniform subset of the training points), the Nystrom estimator
``f(x) = sum_j alpha_j K(x, c_j)`` minimising ``||K_nm alpha - y||^2 + diag_reg alpha^T K_mm alpha``
solves the M x M system (Rudi, Carratino & Rosasco 2017, "FALKON"; Meanti et al. 2020)

    H alpha = K_nm^T y,    H = K_nm^T K_nm + diag_reg K_mm.

With ``M = N`` centres it is exactly kernel ridge regression ``(K + diag_reg I)^{-1} y``. Falkon's
preconditioner, with ``lambda = diag_reg / N``, ``T = chol(K_mm)`` (upper, ``T^T T = K_mm``) and
``A = chol(T T^T / M + lambda I)`` (upper), is

    B = T^{-1} A^{-1} / sqrt(N),    B B^T ~ ((N/M) K_mm^2 + diag_reg K_mm)^{-1},

and CG runs on ``B^T H B beta = B^T K_nm^T y``, ``alpha = B beta``; it needs O(log(1/eps)) iterations
independent of the conditioning of ``K``. Each iteration is one pass over ``K_nm`` (computed tile
by tile, ``tile_rows x M`` at a time, each tile serving ``K_nm^T (K_nm v)``): ``N M`` kernel entries
and O(M^2) memory besides the data. ``K_nm`` is kept between iterations only when it fits
``cache_bytes``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_choice, check_dtype, check_float, check_int, renamed_keyword
from ntkit.solve.cg import CGResult, conjugate_gradient
from ntkit.solve.operator import KernelOperator, TileFn

Tensor = torch.Tensor


@dataclass
class NystromModel:
    """A fitted Nystrom kernel regressor ``f(x) = K(x, centres) alpha``.

    Attributes
    ----------
    centres : Tensor of shape (M, n0)
    alpha : Tensor of shape (M,) or (M, k)
    cg : CGResult
        Diagnostics of the solve (iterations, residual).

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import nystrom_krr
    >>> x = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> fit = nystrom_krr(x, x[:, :1], n_centres=50, diag_reg=1e-3, depth=2, generator=torch.Generator().manual_seed(0))
    >>> fit.centres.shape, fit.alpha.shape, fit.predict(x[:5]).shape
    (torch.Size([50, 3]), torch.Size([50, 1]), torch.Size([5, 1]))
    """

    centres: Tensor
    alpha: Tensor
    cg: CGResult
    operator_kwargs: dict[str, Any] = field(repr=False)

    def predict(self, x: Any, *, progress: bool = False) -> Tensor:
        """``K(x, centres) alpha``: shape (N_test,) or (N_test, k)."""
        op = KernelOperator(x, self.centres, progress=progress, **self.operator_kwargs)
        return op @ self.alpha


def _normal_pass(
    op: KernelOperator,
    v: Tensor,
    *,
    rows_per_tile: int,
    cache: list[Tensor] | None,
    extra: Tensor | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``K_nm^T (K_nm v)`` (and ``K_nm^T extra``) in one pass over row tiles of ``K_nm``."""
    n, m = op.shape
    out = torch.zeros(m, v.shape[1], dtype=op.dtype, device=v.device)
    out_extra = None if extra is None else torch.zeros(m, extra.shape[1], dtype=op.dtype, device=v.device)
    vt = v.to(op.tile_dtype)
    starts = list(range(0, n, rows_per_tile))
    bar = Progress(len(starts), "K_nm pass", enabled=progress, interval=2.0)
    for i, r0 in enumerate(starts):
        r1 = min(r0 + rows_per_tile, n)
        if cache is not None and i < len(cache):
            t = cache[i]
        else:
            t = op._tile(r0, r1, 0, m)
            if cache is not None:
                cache.append(t)
        u = t @ vt
        out += (t.T @ u).to(op.dtype)
        if out_extra is not None and extra is not None:
            out_extra += (t.T @ extra[r0:r1].to(op.tile_dtype)).to(op.dtype)
        bar.update()
    if progress:
        bar.close()
    return out, out_extra


def _gram_pass(
    op: KernelOperator,
    y: Tensor,
    *,
    rows_per_tile: int,
    checkpoint: str | Path | None,
    progress: bool,
) -> tuple[Tensor, Tensor]:
    """``(K_nm^T K_nm, K_nm^T y)`` accumulated in float64 in one pass (resumable from ``checkpoint``)."""
    n, m = op.shape
    gram = torch.zeros(m, m, dtype=torch.float64)
    kty = torch.zeros(m, y.shape[1], dtype=torch.float64)
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = torch.load(path, weights_only=True)
        if (
            state["gram"].shape == (m, m)
            and state["kty"].shape == kty.shape
            and int(state["n"]) == n
            and torch.equal(state["centres"], op.x2)
        ):
            gram, kty, start = state["gram"], state["kty"], int(state["row"])
    starts = list(range(start, n, rows_per_tile))
    bar = Progress(n, "K_nm^T K_nm", enabled=progress, interval=2.0)
    bar.update(start)
    last_save = time.perf_counter()
    for r0 in starts:
        r1 = min(r0 + rows_per_tile, n)
        t = op._tile(r0, r1, 0, m).to(torch.float64)
        gram.addmm_(t.T, t)
        kty.addmm_(t.T, y[r0:r1])
        bar.update(r1 - r0)
        if path is not None and (time.perf_counter() - last_save > 60 or r1 == n):
            tmp = path.with_suffix(".tmp")
            torch.save({"gram": gram, "kty": kty, "row": r1, "n": n, "centres": op.x2}, tmp)
            tmp.replace(path)
            last_save = time.perf_counter()
    if progress:
        bar.close()
    return 0.5 * (gram + gram.T), kty


def nystrom_krr(
    x_train: Any,
    y_train: Any,
    *,
    n_centres: int,
    diag_reg: float,
    model: nn.Module | None = None,
    tile_fn: TileFn | None = None,
    depth: int | None = None,
    activation: Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    which: str = "ntk",
    centres: Any | None = None,
    generator: torch.Generator | None = None,
    tile_dtype: torch.dtype | None = None,
    tol: float = 1e-7,
    max_iter: int = 100,
    alpha0: Any | None = None,
    cache_bytes: int = 2 * 1024**3,
    tile_entries: int = 2 * 1024**2,
    method: str = "falkon",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    callback: Callable[[int, Tensor, float], None] | None = None,
    beta: float | None = None,
) -> NystromModel:
    """Fit Nystrom kernel ridge regression with ``n_centres`` centres by Falkon-preconditioned CG.

    Parameters
    ----------
    x_train : array-like of shape (N, n0)
    y_train : array-like of shape (N,) or (N, k)
        Finite targets.
    n_centres : int
        ``M``, ``1 <= M <= N``; centres are a uniform random subset of ``x_train`` (``generator``)
        unless ``centres`` is given.
    diag_reg : float
        Ridge ``> 0`` in ``H = K_nm^T K_nm + diag_reg K_mm`` (the same scale as the exact solve
        ``(K + diag_reg I) alpha = y``, which it reproduces for ``M = N``).
    model, tile_fn, depth, activation, b_std, w_std, which
        The kernel, as in :class:`~ntkit.solve.KernelOperator` (``b_std``: the bias scale).
    centres : array-like of shape (M, n0), optional
        Explicit centres (then ``n_centres`` must equal ``M``).
    tile_dtype : torch.dtype, optional
        Dtype of the ``K_nm`` tiles (``torch.float32`` for speed); ``K_mm``, the preconditioner and
        all accumulation stay in float64.
    tol, max_iter
        CG stopping rule on the preconditioned relative residual.
    alpha0 : array-like of shape (M,) or (M, k), optional
        Warm start (e.g. the ``alpha`` handed to ``callback`` by an interrupted run).
    cache_bytes : int
        Keep ``K_nm`` in memory between iterations when it takes at most this many bytes.
    tile_entries : int
        Kernel entries per tile (``tile_rows = tile_entries // M``).
    method : {"falkon", "gram"}
        ``"falkon"``: every CG iteration is one pass over the ``K_nm`` tiles (``N M`` kernel entries;
        cached when it fits ``cache_bytes``). ``"gram"``: one pass accumulates
        ``K_nm^T K_nm`` and ``K_nm^T y`` in float64 (``N M`` kernel entries and ``2 N M^2`` flops,
        O(M^2) memory) and CG then runs on M x M products. ``"gram"`` is faster when a kernel entry
        costs more than about ``2 M / iterations`` flops (deep NTKs with a few thousand centres).
    checkpoint : str or Path, optional
        ``"gram"`` only: file where the accumulation is saved every minute; a rerun with the same
        data and centres resumes from it.
    progress : bool
    callback : callable ``(iteration, alpha, max_rel_residual)``, optional
        Called after each CG iteration with the current coefficients (to checkpoint and resume).
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).

    Returns
    -------
    NystromModel

    Raises
    ------
    ValueError
        ``n_centres`` outside ``1..N``, ``diag_reg <= 0``, targets with another number of rows, an
        unknown ``method``, ``centres`` / ``alpha0`` of the wrong shape, both ``model`` and
        ``tile_fn``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 5, dtype=torch.float64, generator=g)
    >>> y = x[:, 0].sin()
    >>> model = nystrom_krr(x, y, n_centres=50, diag_reg=1e-3, depth=2, generator=g)
    >>> model.predict(x[:3]).shape
    torch.Size([3])
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    x = as_tensor(x_train, "x_train", dtype=torch.float64, ndim=None)
    n = x.shape[0]
    y = as_tensor(y_train, "y_train", dtype=torch.float64, ndim=None)
    if y.ndim > 2 or y.shape[0] != n:
        raise ValueError(f"y_train: expected shape ({n},) or ({n}, k), got {tuple(y.shape)}")
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0, strict=True)
    m = check_int(n_centres, "n_centres", minimum=1)
    if m > n:
        raise ValueError(f"n_centres: expected at most N = {n} centres, got {m}")
    if centres is None:
        idx = torch.randperm(n, generator=generator)[:m].sort().values
        c = x[idx]
    else:
        c = as_tensor(centres, "centres", dtype=torch.float64, ndim=None)
        if c.shape != (m, *x.shape[1:]):
            raise ValueError(f"centres: expected shape {(m, *x.shape[1:])}, got {tuple(c.shape)}")
    tdt = check_dtype(tile_dtype) if tile_dtype is not None else torch.float64
    kwargs: dict[str, Any] = dict(
        model=model, tile_fn=tile_fn, depth=depth, activation=activation, b_std=b_std, w_std=w_std, which=which,
        tile_dtype=tdt,
    )
    op_nm = KernelOperator(x, c, **kwargs)
    kwargs.update(tile_fn=op_nm.tile_fn, model=None)  # share one tile function (and its configuration)
    k_mm = KernelOperator(c, **{**kwargs, "tile_dtype": torch.float64}).dense()
    k_mm = 0.5 * (k_mm + k_mm.T)
    lam = diag_reg / n
    eye = torch.eye(m, dtype=torch.float64)
    jitter = torch.finfo(torch.float64).eps * m * float(torch.diagonal(k_mm).mean())
    lower, info = torch.linalg.cholesky_ex(k_mm + jitter * eye)
    while int(info) != 0:
        jitter *= 10
        lower, info = torch.linalg.cholesky_ex(k_mm + jitter * eye)
    t_up = lower.T  # T^T T = K_mm
    a_up = torch.linalg.cholesky(t_up @ t_up.T / m + lam * eye).T
    sqrt_n = math.sqrt(n)

    def b_apply(v: Tensor) -> Tensor:  # B v = T^{-1} A^{-1} v / sqrt(N)
        w = torch.linalg.solve_triangular(a_up, v, upper=True)
        return torch.linalg.solve_triangular(t_up, w, upper=True) / sqrt_n

    def bt_apply(v: Tensor) -> Tensor:  # B^T v = A^{-T} T^{-T} v / sqrt(N)
        w = torch.linalg.solve_triangular(t_up.T, v, upper=False)
        return torch.linalg.solve_triangular(a_up.T, w, upper=False) / sqrt_n

    vec = y.ndim == 1
    yy = y[:, None] if vec else y
    rows_per_tile = max(1, check_int(tile_entries, "tile_entries", minimum=1) // m)
    itemsize = torch.finfo(tdt).bits // 8
    method = check_choice(method, "method", ("falkon", "gram"))
    gram: Tensor | None = None
    cache: list[Tensor] | None = None
    if method == "gram":
        gram, kty = _gram_pass(op_nm, yy, rows_per_tile=rows_per_tile, checkpoint=checkpoint, progress=progress)
    else:
        if n * m * itemsize <= check_int(cache_bytes, "cache_bytes"):
            cache = []
        zero = torch.zeros(m, yy.shape[1], dtype=torch.float64)
        _, kty_ = _normal_pass(op_nm, zero, rows_per_tile=rows_per_tile, cache=cache, extra=yy, progress=progress)
        assert kty_ is not None
        kty = kty_
    rhs = bt_apply(kty)

    def matvec(beta_: Tensor) -> Tensor:
        v = b_apply(beta_)
        if gram is not None:
            h = gram @ v
        else:
            h, _ = _normal_pass(op_nm, v, rows_per_tile=rows_per_tile, cache=cache, progress=progress)
        w = torch.linalg.solve_triangular(a_up, beta_, upper=True)
        return bt_apply(h) + lam * torch.linalg.solve_triangular(a_up.T, w, upper=False)

    beta0 = None
    if alpha0 is not None:
        a0 = as_tensor(alpha0, "alpha0", dtype=torch.float64, ndim=None)
        if a0.shape != (m, *yy.shape[1:]) and a0.shape != (m,):
            raise ValueError(f"alpha0: expected shape ({m},) or ({m}, {yy.shape[1]}), got {tuple(a0.shape)}")
        a0 = a0.reshape(m, -1)
        beta0 = sqrt_n * (a_up @ (t_up @ a0))
    cb = None
    if callback is not None:
        user_cb = callback

        def cb(it: int, beta_: Tensor, res: float) -> None:
            alpha_ = b_apply(beta_ if beta_.ndim == 2 else beta_[:, None])
            user_cb(it, alpha_[:, 0] if vec else alpha_, res)

    res = conjugate_gradient(
        matvec, rhs, x0=beta0, tol=tol, max_iter=max_iter, progress=progress, callback=cb, desc="falkon cg"
    )
    alpha = b_apply(res.x)
    kwargs["tile_dtype"] = tdt
    return NystromModel(centres=c, alpha=alpha[:, 0] if vec else alpha, cg=res, operator_kwargs=kwargs)
