"""Robust dense Cholesky factorisation for kernel matrices (a leaf module: torch only).

Kernel matrices are symmetric positive semi-definite in exact arithmetic but often numerically
singular (duplicated or near-duplicated inputs). :func:`robust_cholesky` factors ``K + jitter I``,
retrying with a growing jitter and warning with :class:`JitterWarning` when it had to add one, and
raises :class:`NotPSDError` for a matrix that is clearly indefinite (never returns NaN).

The public home of these names is :mod:`ntkit.solve` (:mod:`ntkit.solve.linalg` re-exports them).
They live here, below both subpackages that factor with them, because :mod:`ntkit.solve` (whose
``"features"`` solver fits :func:`ntkit.random_features.feature_ridge`) imports
:mod:`ntkit.random_features`, and the ridge regression of :mod:`ntkit.random_features` factors its
``m x m`` normal equations with :func:`robust_cholesky`: importing them from :mod:`ntkit.solve`
would close a package cycle.
"""

from __future__ import annotations

import warnings

import torch

Tensor = torch.Tensor


class JitterWarning(UserWarning):
    """A Cholesky factorisation needed diagonal jitter to succeed (the kernel is near-singular).

    Examples
    --------
    >>> import warnings, torch
    >>> from ntkit.solve import JitterWarning, robust_cholesky
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _, jitter = robust_cholesky(torch.ones(2, 2, dtype=torch.float64))  # singular
    >>> jitter > 0 and any(issubclass(w.category, JitterWarning) for w in caught)
    True
    """


class NotPSDError(ValueError):
    """The kernel matrix is not positive semi-definite (beyond rounding).

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import NotPSDError, robust_cholesky
    >>> try:
    ...     robust_cholesky(-torch.eye(2, dtype=torch.float64), warn=False)
    ... except NotPSDError as err:
    ...     print("indefinite")
    indefinite
    """


def warn_jitter(jitter: float, scale: float, *, stacklevel: int = 2) -> None:
    """Warn (:class:`JitterWarning`) that ``jitter`` was added to a diagonal of mean ``scale``.

    ``stacklevel`` as the caller would pass it to :func:`warnings.warn`.
    """
    warnings.warn(
        f"kernel matrix is near-singular: added jitter {jitter:.3g} to its diagonal "
        f"(relative {jitter / scale:.3g}); consider a ridge diag_reg > 0",
        JitterWarning,
        stacklevel=stacklevel + 1,
    )


def robust_cholesky(
    k: Tensor,
    *,
    diag_reg: float = 0.0,
    max_tries: int = 8,
    initial_jitter: float | None = None,
    warn: bool = True,
) -> tuple[Tensor, float]:
    """Lower Cholesky factor of ``k + (diag_reg + jitter) I`` with the smallest jitter that works.

    Parameters
    ----------
    k : Tensor of shape (N, N)
        Symmetric (only the lower triangle is read).
    diag_reg : float
        Ridge added unconditionally (no warning).
    max_tries : int
        Jitter tries after the plain attempt: ``jitter = initial_jitter * 10^i``.
    initial_jitter : float, optional
        Defaults to ``10 eps(dtype) mean(diag(k))`` (times 10 per retry).

    Returns
    -------
    (L, jitter) : Tensor of shape (N, N), float
        ``L @ L.T == k + (diag_reg + jitter) I``.

    Raises
    ------
    ValueError
        ``k`` is not square or has non-finite entries.
    NotPSDError
        No jitter up to ``initial_jitter * 10^(max_tries-1)`` made the factorisation succeed.

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import robust_cholesky
    >>> k = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    >>> chol, jitter = robust_cholesky(k)
    >>> bool(torch.allclose(chol @ chol.T, k)), jitter
    (True, 0.0)
    """
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k: expected a square matrix, got shape {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise ValueError("k: expected finite kernel entries, got NaN/inf")
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    base = k + diag_reg * eye if diag_reg else k
    chol, info = torch.linalg.cholesky_ex(base)
    if int(info) == 0:
        return chol, 0.0
    scale = float(torch.diagonal(k).abs().mean()) or 1.0
    jitter = initial_jitter if initial_jitter is not None else torch.finfo(k.dtype).eps * scale * 10
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(base + jitter * eye)
        if int(info) == 0:
            if warn:
                warn_jitter(jitter, scale, stacklevel=2)
            return chol, jitter
        jitter *= 10
    min_eig = float(torch.linalg.eigvalsh(base)[0])
    raise NotPSDError(
        f"k: expected a positive semi-definite kernel matrix, got smallest eigenvalue {min_eig:.3g} "
        f"(mean diagonal {scale:.3g}); jitter up to {jitter / 10:.3g} did not help"
    )


def cho_solve(chol: Tensor, b: Tensor) -> Tensor:
    """Solve ``(L L^T) x = b`` for ``b`` of shape (N,) or (N, m).

    Parameters
    ----------
    chol : Tensor of shape (N, N)
        Lower Cholesky factor ``L`` (from :func:`robust_cholesky`).
    b : Tensor of shape (N,) or (N, m)

    Returns
    -------
    Tensor of the shape of ``b``

    Examples
    --------
    >>> import torch
    >>> from ntkit.solve import cho_solve, robust_cholesky
    >>> k = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    >>> x = cho_solve(robust_cholesky(k)[0], torch.tensor([6.0, 5.0], dtype=torch.float64))
    >>> x.round(decimals=12).tolist()
    [1.0, 1.0]
    """
    vec = b.ndim == 1
    rhs = b[:, None] if vec else b
    # two triangular solves rather than torch.cholesky_solve, which copies the N x N factor
    half = torch.linalg.solve_triangular(chol, rhs, upper=False)
    out = torch.linalg.solve_triangular(chol.mT, half, upper=True)
    return out[:, 0] if vec else out
