"""Robust dense linear algebra for kernel matrices: :func:`robust_cholesky`, :func:`cho_solve`.

Kernel matrices are symmetric positive semi-definite in exact arithmetic but often numerically
singular (duplicated or near-duplicated inputs). :func:`robust_cholesky` factors ``K + jitter I``,
retrying with a growing jitter and warning with :class:`JitterWarning` when it had to add one, and
raises :class:`NotPSDError` for a matrix that is clearly indefinite (never returns NaN).

These are the names of :mod:`ntkit.solve`; they are implemented in the leaf module
:mod:`ntkit._linalg`, which :mod:`ntkit.random_features` uses too (so that it does not import
:mod:`ntkit.solve`, which uses it). Every solve of a kernel system runs in
:class:`ntkit.solve.KernelSystem`.
"""

from ntkit._linalg import JitterWarning, NotPSDError, cho_solve, robust_cholesky, warn_jitter

__all__ = ["JitterWarning", "NotPSDError", "cho_solve", "robust_cholesky", "warn_jitter"]
