"""Dense symmetric eigendecomposition of kernel matrices, with PSD checks.

The closed-form training dynamics (:mod:`ntkit.predict`) are functions of a kernel matrix
``K = V diag(lambda) V^T``: ``f(K)`` is ``V diag(f(lambda)) V^T``. :func:`psd_eigh` computes the
decomposition once in float64, clips rounding-level negative eigenvalues to zero, raises
:class:`~ntkit.solve.linalg.NotPSDError` for a clearly indefinite matrix, and records the threshold
below which an eigenvalue is numerically zero (``rank_tol``), so that callers can detect a singular
kernel instead of dividing by rounding noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntkit.solve.linalg import NotPSDError

Tensor = torch.Tensor


class SingularKernelWarning(UserWarning):
    """A kernel matrix is numerically singular and was inverted on its range only (pseudo-inverse).

    Examples
    --------
    >>> import warnings, torch
    >>> from ntkit.predict import SingularKernelWarning, gradient_descent_mse
    >>> k = torch.ones(2, 2, dtype=torch.float64)  # rank 1
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = gradient_descent_mse(k, torch.tensor([[1.0], [-1.0]]))(None)
    >>> any(issubclass(w.category, SingularKernelWarning) for w in caught)
    True
    """


@dataclass(frozen=True)
class EigenDecomposition:
    """``K + diag_reg I = evecs @ diag(evals) @ evecs.T`` with ``evals >= 0`` ascending.

    ``rank_tol`` is ``n * eps * max(evals)`` (times 10): eigenvalues at or below it are rounding
    noise; ``n_singular`` counts them.
    """

    evals: Tensor
    evecs: Tensor
    rank_tol: float
    diag_reg: float

    @property
    def n_singular(self) -> int:
        return int((self.evals <= self.rank_tol).sum())

    @property
    def lambda_max(self) -> float:
        return float(self.evals[-1]) if self.evals.numel() else 0.0

    def apply(self, values: Tensor, rhs: Tensor) -> Tensor:
        """``V diag(values) V^T rhs`` for ``rhs`` of shape (n, m)."""
        return self.evecs @ (values[:, None] * (self.evecs.T @ rhs))


def psd_eigh(k: Tensor, *, diag_reg: float = 0.0, name: str = "k_train_train") -> EigenDecomposition:
    """Eigendecomposition of the symmetric PSD matrix ``k + diag_reg I``.

    Parameters
    ----------
    k : Tensor of shape (n, n)
        Symmetric up to rounding (it is symmetrised as ``(k + k^T) / 2``).
    diag_reg : float
        Ridge added to the diagonal (``>= 0``).
    name : str
        Used in error messages.

    Raises
    ------
    ValueError
        ``k`` is not square, not finite, or clearly asymmetric.
    NotPSDError
        An eigenvalue is negative beyond rounding (``< -rank_tol``, relative ``n eps`` to the
        largest magnitude).
    """
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name}: expected a square matrix, got shape {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise ValueError(f"{name}: expected finite kernel entries, got NaN/inf")
    n = k.shape[0]
    scale = float(k.abs().max()) if n else 0.0
    asym = float((k - k.T).abs().max()) if n else 0.0
    eps = torch.finfo(k.dtype).eps
    if asym > 1e3 * eps * max(scale, 1e-300) * max(n, 1) and asym > 1e-6 * scale:
        raise ValueError(f"{name}: expected a symmetric kernel matrix, got max |K - K^T| = {asym:.3g}")
    sym = 0.5 * (k + k.T)
    if diag_reg:
        sym = sym + diag_reg * torch.eye(n, dtype=k.dtype, device=k.device)
    evals, evecs = torch.linalg.eigh(sym)
    top = float(evals.abs().max()) if n else 0.0
    rank_tol = 10.0 * max(n, 1) * eps * top
    if n and float(evals[0]) < -rank_tol:
        raise NotPSDError(
            f"{name}: expected a positive semi-definite kernel matrix, got smallest eigenvalue "
            f"{float(evals[0]):.3g} (largest {top:.3g})"
        )
    return EigenDecomposition(evals=evals.clamp_min(0.0), evecs=evecs, rank_tol=rank_tol, diag_reg=float(diag_reg))
