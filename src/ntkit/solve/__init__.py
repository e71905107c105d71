"""Stable linear algebra and kernel-regression solvers."""

from ntkit.layerwise import fc_kernel_diag
from ntkit.solve.cg import CGResult, NotConvergedWarning, conjugate_gradient
from ntkit.solve.linalg import JitterWarning, NotPSDError, cho_solve, robust_cholesky
from ntkit.solve.nystrom import NystromModel, nystrom_krr
from ntkit.solve.operator import FCTiles, FusedTiles, KernelOperator
from ntkit.solve.precond import (
    LowRankPreconditioner,
    nystrom_preconditioner,
    pivoted_cholesky,
    pivoted_cholesky_preconditioner,
)
from ntkit.solve.regression import cg_kernel_solve, choose_solver, exact_solve, kernel_regression
from ntkit.solve.system import KernelSystem, MatrixTiles, resolve_solver

__all__ = ["JitterWarning", "NotPSDError", "cho_solve", "robust_cholesky"]
__all__ += [
    "CGResult",
    "FCTiles",
    "FusedTiles",
    "KernelOperator",
    "KernelSystem",
    "LowRankPreconditioner",
    "MatrixTiles",
    "NotConvergedWarning",
    "NystromModel",
    "cg_kernel_solve",
    "choose_solver",
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


def __getattr__(name: str) -> object:
    # the Dask operator is imported lazily (optional extra)
    if name == "DaskKernelOperator":
        from ntkit.solve.distributed import DaskKernelOperator

        return DaskKernelOperator
    raise AttributeError(f"module 'ntkit.solve' has no attribute {name!r}")
