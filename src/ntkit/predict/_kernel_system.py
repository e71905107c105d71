"""The predictors of :mod:`ntkit.predict` on :class:`ntkit.solve.KernelSystem`: the one place their kernel
systems are solved -- densely (``solver="cholesky"``, :func:`~ntkit.predict.gp_inference`) or iteratively
(``"cg"`` / ``"nystrom"`` / ``"features"``; the training kernel possibly a
:class:`ntkit.solve.KernelOperator` that is never stored). :func:`~ntkit.predict.gradient_descent_mse`
keeps its own eigendecomposition for the dense case (finite-time dynamics are not a solve).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ntkit._validation import as_tensor, check_dtype, describe
from ntkit.predict._common import Layout, cross_kernel, train_inputs
from ntkit.solve.kernel_solvers import resolve_solver
from ntkit.solve.operator import KernelOperator
from ntkit.solve.system import KernelSystem

Tensor = torch.Tensor


class SolverOptions(NamedTuple):
    """The solver arguments of :func:`ntkit.predict.gp_inference` / :func:`ntkit.predict.gradient_descent_mse`."""

    solver: str
    tol: float
    n_centres: int | None
    generator: torch.Generator | None
    memory_budget: int | str
    n_features: int | None = None


def build_system(
    k_train_train: Any,
    y_train: Any,
    dtype: torch.dtype,
    diag_reg: float,
    opts: SolverOptions,
    name: str,
    *,
    dense: bool = False,
) -> tuple[KernelSystem, Layout, Tensor] | None:
    """A :class:`KernelSystem` for the solver of ``opts`` (``"auto"`` resolved).

    For a stored kernel whose solver resolves to ``"cholesky"`` the system is built only with
    ``dense=True``; else None is returned (the caller's eigendecomposition runs). Returns
    ``(system, layout, like)`` with the system built on the kernel as a matrix ((N, N), or
    (N k, N k) for block kernels) and ``y`` as a matrix; ``like`` carries the dtype for test inputs.
    """
    if isinstance(k_train_train, KernelOperator):
        n = k_train_train.shape[0]
        y = as_tensor(y_train, "y_train", dtype=k_train_train.dtype, ndim=None)
        if y.ndim not in (1, 2) or y.shape[0] != n:
            raise ValueError(f"y_train: expected shape ({n},) or ({n}, k) like {name}, got {describe(y)}")
        vector = y.ndim == 1
        y2 = y[:, None] if vector else y
        layout = Layout(n=n, k=int(y2.shape[1]), block=False, vector=vector)
        kernel: Any = k_train_train
    else:
        check_dtype(dtype)
        kt = as_tensor(k_train_train, name, dtype=dtype, ndim=None)
        n = int(kt.shape[0]) * (int(kt.shape[2]) if kt.ndim == 4 else 1)
        if not dense and resolve_solver(opts.solver, max(n, 1), memory_budget=opts.memory_budget) == "cholesky":
            return None
        kernel, y2, layout = train_inputs(kt, y_train, dtype, name)
    system = KernelSystem(
        kernel, layout.y_to_matrix(y2), diag_reg=diag_reg, solver=opts.solver, tol=opts.tol,
        n_centres=opts.n_centres, generator=opts.generator, memory_budget=opts.memory_budget,
        n_features=opts.n_features,
    )  # fmt: skip
    return system, layout, y2


def system_test_outputs(
    system: KernelSystem, alpha: Tensor, layout: Layout, like: Tensor, k_test_train: Any, x_test: Any
) -> tuple[Tensor, int]:
    """``K(x*, basis) alpha`` as a matrix (M, k) / (M k, 1) and M, from ``k_test_train`` or ``x_test``."""
    if k_test_train is not None and x_test is not None:
        raise ValueError("k_test_train, x_test: expected one of them, got both")
    if k_test_train is not None:
        kt, m = cross_kernel(k_test_train, layout, like)
        return system.predict(alpha, k_test_train=kt), m
    out = system.predict(alpha, x_test=x_test)
    return out, int(out.shape[0])
