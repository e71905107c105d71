"""Stable linear algebra and kernel-regression solvers."""

from ntkit.solve.linalg import JitterWarning, NotPSDError, cho_solve, robust_cholesky

__all__ = ["JitterWarning", "NotPSDError", "cho_solve", "robust_cholesky"]
