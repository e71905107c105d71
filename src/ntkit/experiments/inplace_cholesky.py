"""An in-place blocked Cholesky factorisation of a large NumPy matrix, on torch's LAPACK / BLAS.

``scipy.linalg.cholesky`` would factor a Fortran-ordered matrix in place, but the OpenBLAS that SciPy
wheels ship (0.3.31 here) crashes in its threaded ``dpotrf`` from about N = 16,000 in float64 (a
segmentation fault or ``munmap_chunk(): invalid pointer`` on 2 threads; one thread works; the float32
``spotrf`` ran to N = 24,000): the full-size Fashion-MNIST solves need N = 20,000-60,000. torch's
``cholesky`` (MKL) is robust but returns a copy, which a 14.4 GB float32 matrix of N = 60,000 cannot
afford. So the factor is computed in place, right-looking by blocks of ``b`` columns (Golub & Van Loan,
Algorithm 4.2.4), every product on a strided torch view of the same memory::

    for each block column k:   L_kk = chol(A_kk)                          (torch.linalg.cholesky_ex, b x b)
                               A_ik <- A_ik L_kk^-T           for i > k   (triangular solve, in row chunks)
                               A_ij <- A_ij - A_ik A_jk^T     for i >= j > k  (in-place GEMMs, lower blocks only)

``n^3 / 3`` flops as LAPACK's; extra memory: one ``b x b`` factor and one row chunk of the panel.
On return the lower triangle of ``a`` holds ``L`` (``A = L L^T``); the strict upper triangle is
overwritten within the diagonal blocks (unspecified). ``a.T`` is then an F-ordered array whose upper
triangle is ``L^T``: ``scipy.linalg.cho_solve((a.T, False), y)`` solves with it without a copy.
"""

from __future__ import annotations

import numpy as np
import torch

#: Columns per block (a b x b diagonal factor, GEMMs of (n, b) x (b, b) shapes).
BLOCK = 2048
#: Panel rows per triangular solve (bounds the temporary to ``PANEL_ROWS x b`` entries).
PANEL_ROWS = 8192


def cholesky_inplace(a: np.ndarray, *, block: int = BLOCK) -> np.ndarray:
    """Overwrite the lower triangle of the symmetric positive definite ``a`` with its Cholesky factor.

    Parameters
    ----------
    a : ndarray of shape (N, N), float32 or float64, C-contiguous and writeable
        The matrix (its lower triangle and diagonal are read; a symmetric matrix is expected).
    block : int
        Columns per block.

    Returns
    -------
    ndarray
        ``a`` itself (lower triangle ``L`` with ``A = L L^T``; the strict upper triangle unspecified).

    Raises
    ------
    ValueError
        ``a`` is not a square, C-contiguous, writeable float32 / float64 array.
    numpy.linalg.LinAlgError
        ``a`` is not positive definite in its precision (a diagonal block failed to factor).
    """
    if (a.ndim != 2 or a.shape[0] != a.shape[1] or a.dtype not in (np.float32, np.float64)
            or not a.flags.c_contiguous or not a.flags.writeable):
        raise ValueError(f"cholesky_inplace: expected a square, C-contiguous, writeable float32 / float64 array, got "
                         f"shape {a.shape}, dtype {a.dtype}, C-contiguous {a.flags.c_contiguous}")
    t = torch.from_numpy(a)  # the same memory
    n = t.shape[0]
    for k0 in range(0, n, block):
        k1 = min(n, k0 + block)
        diag = t[k0:k1, k0:k1]
        factor, info = torch.linalg.cholesky_ex(diag)
        if int(info) != 0:
            raise np.linalg.LinAlgError(f"cholesky_inplace: the matrix is not positive definite (leading minor "
                                        f"{k0 + int(info)} of {n})")
        diag.copy_(factor)
        for r0 in range(k1, n, PANEL_ROWS):  # A_ik <- A_ik L_kk^-T, i.e. X L_kk^T = A_ik
            rows = t[r0:min(n, r0 + PANEL_ROWS), k0:k1]
            rows.copy_(torch.linalg.solve_triangular(factor.mT, rows, upper=True, left=False))
        for j0 in range(k1, n, block):  # the trailing lower blocks, one block column at a time
            j1 = min(n, j0 + block)
            t[j0:, j0:j1].addmm_(t[j0:, k0:k1], t[j0:j1, k0:k1].mT, alpha=-1.0)
    return a


__all__ = ["BLOCK", "cholesky_inplace"]
