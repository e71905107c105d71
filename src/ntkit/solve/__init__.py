"""Stable linear algebra and kernel-regression solvers."""

from ntkit.layerwise import fc_kernel_diag
from ntkit.solve.cg import CGResult, NotConvergedWarning, conjugate_gradient
from ntkit.solve.distributed import DaskKernelOperator  # imports dask only when one is created
from ntkit.solve.kernel_solvers import cg_kernel_solve, exact_solve, resolve_solver
from ntkit.solve.linalg import JitterWarning, NotPSDError, cho_solve, robust_cholesky
from ntkit.solve.nystrom import NystromModel, nystrom_krr
from ntkit.solve.operator import FCTiles, FusedTiles, KernelOperator, ModelTiles
from ntkit.solve.precond import (
    LowRankPreconditioner,
    nystrom_preconditioner,
    pivoted_cholesky,
    pivoted_cholesky_preconditioner,
)
from ntkit.solve.regression import kernel_regression
from ntkit.solve.system import KernelSystem, MatrixTiles

__all__ = ["JitterWarning", "NotPSDError", "cho_solve", "robust_cholesky"]
__all__ += [
    "CGResult",
    "DaskKernelOperator",
    "FCTiles",
    "FusedTiles",
    "KernelOperator",
    "KernelSystem",
    "LowRankPreconditioner",
    "MatrixTiles",
    "ModelTiles",
    "NotConvergedWarning",
    "NystromModel",
    "cg_kernel_solve",
    "conjugate_gradient",
    "exact_solve",
    "fc_kernel_diag",
    "kernel_regression",
    "nystrom_krr",
    "nystrom_preconditioner",
    "pivoted_cholesky",
    "pivoted_cholesky_preconditioner",
    "resolve_solver",
]
