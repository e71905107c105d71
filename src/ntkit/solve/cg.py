"""Preconditioned conjugate gradients for symmetric positive-definite systems with block right-hand sides.

Solves ``A X = B`` for ``B`` of shape (N,) or (N, m), each column by its own CG recursion (Hestenes &
Stiefel 1952) run side by side so that one operator product serves all columns, as in GPyTorch's
batched CG (Gardner et al. 2018). With a preconditioner ``P ~ A`` (applied as ``z = P^{-1} r``):

    alpha_k = (r_k . z_k) / (p_k . A p_k)
    x_{k+1} = x_k + alpha_k p_k,       r_{k+1} = r_k - alpha_k A p_k
    z_{k+1} = P^{-1} r_{k+1},          p_{k+1} = z_{k+1} + (r_{k+1} . z_{k+1}) / (r_k . z_k) p_k

It stops when every column's relative residual ``||r|| / ||b||`` is below ``tol``; otherwise, after
``max_iter`` iterations it warns with :class:`NotConvergedWarning` (stating the residual reached) and
returns the best iterate seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_float, check_int

Tensor = torch.Tensor
MatVec = Callable[[Tensor], Tensor]


class NotConvergedWarning(UserWarning):
    """An iterative solver stopped at its iteration limit before reaching its tolerance.

    Examples
    --------
    >>> import warnings, torch
    >>> from ntkit.solve import NotConvergedWarning, conjugate_gradient
    >>> a = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     res = conjugate_gradient(lambda v: a @ v, torch.ones(50, dtype=torch.float64), max_iter=3)
    >>> res.converged, any(issubclass(w.category, NotConvergedWarning) for w in caught)
    (False, True)
    """


@dataclass(frozen=True)
class CGResult:
    """Result of :func:`conjugate_gradient`.

    Attributes
    ----------
    x : Tensor of shape (N,) or (N, m)
        The solution (the best iterate when not converged).
    n_iter : int
        Iterations run (operator products, besides the one for a warm start).
    rel_residual : Tensor of shape (m,)
        ``||b - A x|| / ||b||`` per column for the returned ``x`` (recursively updated residual).
    converged : bool
    history : list of float
        Largest relative residual over the columns after each iteration.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import conjugate_gradient
    >>> a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> res = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 1.0], dtype=torch.float64))
    >>> res.converged, res.n_iter, res.x.round(decimals=10).tolist()
    (True, 2, [0.2, 0.4])
    """

    x: Tensor
    n_iter: int
    rel_residual: Tensor
    converged: bool
    history: list[float]


def _col_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(0)


def conjugate_gradient(
    matvec: MatVec | Any,
    b: Any,
    *,
    precond: MatVec | None = None,
    x0: Any | None = None,
    tol: float = 1e-8,
    max_iter: int = 1000,
    progress: bool = False,
    callback: Callable[[int, Tensor, float], None] | None = None,
    desc: str = "cg",
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` by preconditioned conjugate gradients.

    Parameters
    ----------
    matvec : callable ``(N, m) -> (N, m)`` or an object supporting ``A @ X``
        The operator (e.g. a :class:`~ntkit.solve.KernelOperator` plus a ridge).
    b : array-like of shape (N,) or (N, m)
        Right-hand side(s); must be finite.
    precond : callable ``(N, m) -> (N, m)``, optional
        Applies ``P^{-1}`` (see :mod:`ntkit.solve.precond`); identity when omitted.
    x0 : array-like of the shape of ``b``, optional
        Warm start (e.g. the solution for a nearby ridge or a previous run).
    tol : float
        Relative residual ``||b - A x|| / ||b||`` required of every column.
    max_iter : int
        Iteration limit; on reaching it, :class:`NotConvergedWarning` and the best iterate.
    progress : bool
        Print the iteration and residual (stderr).
    callback : callable ``(iteration, x, max_rel_residual)``, optional
        Called after each iteration (e.g. to checkpoint ``x`` so that an interrupted solve resumes
        from it through ``x0``).

    Returns
    -------
    CGResult

    Raises
    ------
    ValueError
        Non-finite ``b`` / ``x0``, or shapes that do not match.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> res = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
    >>> [round(float(t), 6) for t in res.x], res.converged
    ([0.090909, 0.636364], True)
    """
    b_t = as_tensor(b, "b", ndim=None)
    if b_t.ndim > 2:
        raise ValueError(f"b: expected shape (N,) or (N, m), got {tuple(b_t.shape)}")
    tol = check_float(tol, "tol", minimum=0.0, strict=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    apply: MatVec = matvec if callable(matvec) else (lambda v: matvec @ v)
    vec = b_t.ndim == 1
    bb = b_t[:, None] if vec else b_t
    b_norm = bb.norm(dim=0)
    safe_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    if x0 is None:
        x = torch.zeros_like(bb)
        r = bb.clone()
    else:
        x0_t = as_tensor(x0, "x0", dtype=bb.dtype, device=bb.device, ndim=None)
        if x0_t.shape != b_t.shape:
            raise ValueError(f"x0: expected the shape of b {tuple(b_t.shape)}, got {tuple(x0_t.shape)}")
        x = (x0_t[:, None] if vec else x0_t).clone()
        r = bb - apply(x)
    rel = r.norm(dim=0) / safe_norm
    best_x, best_rel, best_max = x.clone(), rel.clone(), float(rel.max())
    history: list[float] = []
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = _col_dot(r, z)
    bar = Progress(max_iter, desc, enabled=progress, interval=1.0)
    n_iter = 0
    converged = best_max <= tol
    try:
        while not converged and n_iter < max_iter:
            ap = apply(p)
            pap = _col_dot(p, ap)
            ok = (pap > 0) & (rel > tol)
            alpha = torch.where(ok, rz / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
            x = x + alpha * p
            r = r - alpha * ap
            rel = r.norm(dim=0) / safe_norm
            n_iter += 1
            worst = float(rel.max())
            history.append(worst)
            if not torch.isfinite(rel).all():
                break
            if worst < best_max:
                best_x, best_rel, best_max = x.clone(), rel.clone(), worst
            if callback is not None:
                callback(n_iter, x[:, 0] if vec else x, worst)
            bar.update(1, note=f"rel. residual {worst:.2e}")
            if worst <= tol:
                converged = True
                break
            z = precond(r) if precond is not None else r
            rz_new = _col_dot(r, z)
            beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            p = z + beta * p
            rz = rz_new
    finally:
        if progress:
            bar.close()
    if not converged:
        warnings.warn(
            f"conjugate gradients did not reach the relative residual {tol:.1e} within {n_iter} iterations "
            f"(max_iter={max_iter}); best relative residual reached {best_max:.3e}, returning that iterate. "
            "Raise max_iter, use a stronger preconditioner (higher rank) or a larger diag_reg.",
            NotConvergedWarning,
            stacklevel=2,
        )
    out = best_x[:, 0] if vec else best_x
    return CGResult(x=out, n_iter=n_iter, rel_residual=best_rel, converged=converged, history=history)
