"""Preconditioned CG and the kernel_regression front: agreement with the exact Cholesky solve, errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

import ntkit
from ntkit.solve import (
    KernelOperator,
    NotConvergedWarning,
    cg_kernel_solve,
    cho_solve,
    conjugate_gradient,
    kernel_regression,
    nystrom_preconditioner,
    pivoted_cholesky,
    pivoted_cholesky_preconditioner,
    resolve_solver,
    robust_cholesky,
)
from tests.conftest import rel_err

F64 = torch.float64
N, D, REG = 150, 8, 1e-2


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # these problems are tiny: intra-op threads only add synchronisation (badly so on a loaded machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, D, dtype=F64, generator=g)
    xt = torch.randn(40, D, dtype=F64, generator=g)
    y = torch.stack([x[:, 0].sin(), x[:, 1] * x[:, 2]], dim=1) + 0.1 * torch.randn(N, 2, dtype=F64, generator=g)
    k = ntkit.fc_kernel(x, depth=3, w_std=2**0.5).ntk
    assert k is not None
    return x, xt, y, k


def test_cg_matches_cholesky_block_rhs(problem: tuple[torch.Tensor, ...]) -> None:
    x, _, y, k = problem
    chol, _ = robust_cholesky(k, diag_reg=REG)
    exact = cho_solve(chol, y)
    op = KernelOperator(x, depth=3, w_std=2**0.5, tile_rows=64, tile_cols=100)
    pre = pivoted_cholesky_preconditioner(op, 60, diag_reg=REG)
    res = conjugate_gradient(lambda v: op @ v + REG * v, y, precond=pre, tol=1e-11, max_iter=3000)
    assert res.converged and res.x.shape == (N, 2)
    assert float(res.rel_residual.max()) <= 1e-11
    assert rel_err(res.x, exact) < 1e-8
    # vector right-hand side
    res1 = conjugate_gradient(lambda v: k @ v + REG * v, y[:, 0], tol=1e-11, max_iter=3000)
    assert res1.x.shape == (N,) and rel_err(res1.x, exact[:, 0]) < 1e-8


def test_preconditioners_reduce_iterations(problem: tuple[torch.Tensor, ...]) -> None:
    x, _, y, k = problem
    op = KernelOperator(x, depth=3, w_std=2**0.5)

    def mv(v: torch.Tensor) -> torch.Tensor:
        return k @ v + REG * v

    plain = conjugate_gradient(mv, y, tol=1e-8, max_iter=3000).n_iter
    piv = conjugate_gradient(mv, y, precond=pivoted_cholesky_preconditioner(op, 100, diag_reg=REG), tol=1e-8)
    nys_pre = nystrom_preconditioner(op, 100, diag_reg=REG, generator=torch.Generator().manual_seed(0))
    nys = conjugate_gradient(mv, y, precond=nys_pre, tol=1e-8)
    assert piv.converged and nys.converged
    assert piv.n_iter < plain / 2 and nys.n_iter < plain / 2, (plain, piv.n_iter, nys.n_iter)
    chol, _ = robust_cholesky(k, diag_reg=REG)
    assert rel_err(piv.x, cho_solve(chol, y)) < 1e-6


def test_pivoted_cholesky_full_rank_is_exact(problem: tuple[torch.Tensor, ...]) -> None:
    x, *_ = problem
    op = KernelOperator(x[:50], depth=2)
    factor, piv = pivoted_cholesky(op, 50)
    assert rel_err(factor @ factor.T, op.dense()) < 1e-10
    assert sorted(piv.tolist()) == list(range(50))
    low, _ = pivoted_cholesky(op, 10)
    resid = torch.diagonal(op.dense() - low @ low.T)
    assert float(resid.min()) > -1e-12  # residual diagonal stays PSD


def test_warm_start_and_callback(problem: tuple[torch.Tensor, ...]) -> None:
    _, _, y, k = problem

    def mv(v: torch.Tensor) -> torch.Tensor:
        return k @ v + REG * v

    seen: list[int] = []
    cold = conjugate_gradient(mv, y, tol=1e-6, max_iter=3000, callback=lambda i, xx, r: seen.append(i))
    assert seen == list(range(1, cold.n_iter + 1))
    done = conjugate_gradient(mv, y, x0=cold.x, tol=1e-6)
    assert done.n_iter == 0 and done.converged
    half = conjugate_gradient(mv, y, tol=1e-3, max_iter=3000)
    warm = conjugate_gradient(mv, y, x0=half.x, tol=1e-6, max_iter=3000)
    assert warm.converged and warm.n_iter < cold.n_iter


def test_not_converged_warns_and_returns_best(problem: tuple[torch.Tensor, ...]) -> None:
    _, _, y, k = problem
    with pytest.warns(NotConvergedWarning, match=r"best relative residual reached \d"):
        res = conjugate_gradient(lambda v: k @ v + REG * v, y, tol=1e-12, max_iter=3)
    assert not res.converged and res.n_iter == 3
    assert float(res.rel_residual.max()) == pytest.approx(min(res.history))
    true_rel = ((y - (k @ res.x + REG * res.x)).norm(dim=0) / y.norm(dim=0)).max()
    assert float(true_rel) == pytest.approx(min(res.history), rel=1e-6)


def test_cg_bad_input(problem: tuple[torch.Tensor, ...]) -> None:
    x, xt, y, k = problem
    bad = y.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        conjugate_gradient(lambda v: k @ v, bad)
    with pytest.raises(ValueError, match="shape of b"):
        conjugate_gradient(lambda v: k @ v, y, x0=y[:, 0])
    op = KernelOperator(x, depth=1)
    with pytest.raises(ValueError, match=r"rank <= N = 150"):
        pivoted_cholesky_preconditioner(op, 151, diag_reg=REG)
    with pytest.raises(ValueError, match=r"rank <= N = 150"):
        nystrom_preconditioner(op, 1000, diag_reg=REG)
    with pytest.raises(ValueError, match="diag_reg"):
        pivoted_cholesky_preconditioner(op, 5, diag_reg=0.0)
    with pytest.raises(ValueError, match="y_train: expected finite"):
        kernel_regression(x, bad, xt, diag_reg=REG, solver="cg")
    with pytest.raises(ValueError, match="solver"):
        kernel_regression(x, y, xt, diag_reg=REG, solver="lu")
    with pytest.raises(ValueError, match=r"rank <= N"):
        kernel_regression(x, y, xt, diag_reg=REG, solver="cg", precond_rank=151)
    with pytest.raises(ValueError, match="diag_reg"):
        kernel_regression(x, y, xt, diag_reg=0.0, solver="cg")


@pytest.mark.parametrize("tile_dtype", [None, torch.float32])
def test_kernel_regression_solvers_agree(problem: tuple[torch.Tensor, ...], tile_dtype: torch.dtype | None) -> None:
    x, xt, y, _ = problem
    kw = dict(depth=3, w_std=2**0.5, diag_reg=REG)
    exact = kernel_regression(x, y, xt, solver="cholesky", **kw)  # type: ignore[arg-type]
    cg = kernel_regression(x, y, xt, solver="cg", tol=1e-10, tile_dtype=tile_dtype, precond_rank=60, **kw)  # type: ignore[arg-type]
    # float32 tiles too, by mixed-precision refinement: measured 6.7e-11 (float64 tiles) / 7.6e-11 (float32
    # tiles) at tol=1e-10; plain float32 CG (40 iterations, no refinement) predicts to 8.4e-7 only
    assert rel_err(cg, exact) < 1e-9
    full = kernel_regression(x, y, xt, solver="nystrom", n_centres=N, tol=1e-12, **kw)  # type: ignore[arg-type]
    assert rel_err(full, exact) < 5e-12  # measured 5.0e-14; 5.0e-6 with float32 tiles
    auto = kernel_regression(x, y[:, 0], xt, solver="auto", **kw)  # type: ignore[arg-type]
    assert rel_err(auto, exact[:, 0]) < 1e-12


def test_refinement_reaches_float64_accuracy(problem: tuple[torch.Tensor, ...]) -> None:
    x, _, y, k = problem
    op32 = KernelOperator(x, depth=3, w_std=2**0.5, tile_dtype=torch.float32)
    op64 = KernelOperator(x, depth=3, w_std=2**0.5)
    chol, _ = robust_cholesky(k, diag_reg=REG)
    exact = cho_solve(chol, y)
    pre = pivoted_cholesky_preconditioner(op64, 60, diag_reg=REG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)  # plain float32 CG stalls at its precision
        only32 = cg_kernel_solve(op32, y, diag_reg=REG, tol=1e-10, max_iter=40, precond=pre)
    refined = cg_kernel_solve(op32, y, diag_reg=REG, tol=1e-10, reference_op=op64, precond=pre)
    assert rel_err(refined, exact) < 1e-8 < rel_err(only32, exact)


def test_auto_solver_by_size() -> None:
    assert resolve_solver("auto", 1_000) == "cholesky"
    assert resolve_solver("auto", 40_000) == "cg"
    assert resolve_solver("auto", 1_000_000) == "nystrom"
    assert resolve_solver("auto", 20_000, memory_budget=1024**3) == "cg"
