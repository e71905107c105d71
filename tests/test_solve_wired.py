"""Solvers wired through: KernelSystem, ntkit.predict and ntkit.sklearn with solver = cholesky / cg / nystrom."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import ntkit
from ntkit.predict import gp_inference, gradient_descent_mse
from ntkit.solve import FusedTiles, KernelOperator, KernelSystem, resolve_solver

from .conftest import TOL, rel_err

F64 = torch.float64
N, N_TEST, D = 120, 15, 4
REG = 1e-2
KW = dict(depth=3, w_std=2**0.5, b_std=0.1)


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, D, generator=g, dtype=F64)
    xt = torch.randn(N_TEST, D, generator=g, dtype=F64)
    y = torch.stack([torch.sin(x @ torch.ones(D, dtype=F64)), x[:, 0] * x[:, 1]], dim=1)
    k = ntkit.fc_kernel(x, **KW).ntk  # type: ignore[arg-type]
    kt = ntkit.fc_kernel(xt, x, **KW).ntk  # type: ignore[arg-type]
    return x, xt, y, k, kt


def _op(x: torch.Tensor) -> KernelOperator:
    return KernelOperator(x, tile_fn=FusedTiles(**KW), tile_rows=50, tile_cols=70)  # type: ignore[arg-type]


def test_fused_tiles_match_fc_kernel_with_duplicates_and_collisions(problem: tuple[torch.Tensor, ...]) -> None:
    x = problem[0].clone()
    x[5] = x[90]  # a duplicated row: exact kernel value through the row hashes
    k = ntkit.fc_kernel(x, **KW).ntk  # type: ignore[arg-type]
    op = _op(x)
    assert rel_err(op.dense(), k) < TOL[F64]["closed_form"]
    assert rel_err(op.diag(), k.diagonal()) < TOL[F64]["closed_form"]
    v = torch.randn(N, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert rel_err(op @ v, k @ v) < TOL[F64]["closed_form"]
    op32 = KernelOperator(x, tile_fn=FusedTiles(**KW), tile_dtype=torch.float32)  # type: ignore[arg-type]
    assert rel_err(op32 @ v, k @ v) < 1e-5
    # forced hash collisions between different rows fall back to exact row ids
    tiles = FusedTiles(**KW)  # type: ignore[arg-type]
    sa, sb = tiles.row_stats(x[:10]), tiles.row_stats(x[10:30])
    collide_a = (*sa[:3], torch.zeros(10, dtype=torch.int64))
    collide_b = (*sb[:3], torch.zeros(20, dtype=torch.int64))
    assert rel_err(tiles.tile(x[:10], x[10:30], collide_a, collide_b), k[:10, 10:30]) < 1e-12
    nngp = FusedTiles(depth=2, activation="erf", which="nngp")(x, x[:7])
    assert rel_err(nngp, ntkit.fc_kernel(x, x[:7], depth=2, activation="erf").nngp) < TOL[F64]["closed_form"]


@pytest.mark.parametrize("given", ["matrix", "operator"])
def test_kernel_system_solvers_agree(problem: tuple[torch.Tensor, ...], given: str) -> None:
    x, xt, y, k, kt = problem
    kernel = k if given == "matrix" else _op(x)
    exact = KernelSystem(kernel, y, diag_reg=REG, solver="cholesky")
    cg = KernelSystem(kernel, y, diag_reg=REG, solver="cg", tol=1e-12, precond_rank=30)
    full = KernelSystem(kernel, y, diag_reg=REG, solver="nystrom", n_centres=N, tol=1e-12)
    assert (exact.solver, cg.solver, full.solver) == ("cholesky", "cg", "nystrom")
    ref = kt @ torch.linalg.solve(k + REG * torch.eye(N, dtype=F64), y)
    for system in (exact, cg, full):
        assert rel_err(system.predict(k_test_train=kt), ref) < 1e-8
        if given == "operator":
            assert rel_err(system.predict(x_test=xt), ref) < 1e-8
        # a second right-hand side reuses the factor / preconditioner / centres
        assert rel_err(system.predict(system.solve(y[:, 0]), k_test_train=kt), ref[:, 0]) < 1e-8
    assert rel_err(cg.predict_train(), exact.predict_train()) < 1e-8
    assert rel_err(full.predict_train(), exact.predict_train()) < 1e-8
    # few centres: (K_nm^T K_nm + diag_reg K_mm) alpha = K_nm^T y, predictions from the centres' columns
    gen = torch.Generator().manual_seed(1)
    part = KernelSystem(kernel, y, diag_reg=REG, solver="nystrom", n_centres=40, generator=gen, tol=1e-12)
    idx = part.centre_idx
    assert part.alpha.shape == (40, 2) and idx is not None and idx.shape == (40,)
    k_nm = k[:, idx]
    alpha = torch.linalg.solve(k_nm.T @ k_nm + REG * k[idx][:, idx], k_nm.T @ y)
    assert rel_err(part.predict(k_test_train=kt), kt[:, idx] @ alpha) < 1e-6
    assert rel_err(part.predict_train(), k_nm @ alpha) < 1e-6


def test_auto_resolution(problem: tuple[torch.Tensor, ...]) -> None:
    _, _, y, k, _ = problem
    assert resolve_solver("auto", 23_170) == "cholesky"  # 8 N^2 <= 4 GiB
    assert resolve_solver("auto", 23_171) == "cg"
    assert resolve_solver("auto", 50_000) == "cg"
    assert resolve_solver("auto", 50_001) == "nystrom"
    assert resolve_solver("auto", 1_000, memory_budget=8 * 999**2) == "cg"
    assert resolve_solver("cg", 10) == "cg"
    assert KernelSystem(k, y, diag_reg=REG).solver == "cholesky"
    assert KernelSystem(k, y, diag_reg=REG, memory_budget=1024).solver == "cg"
    assert KernelSystem(k, y, diag_reg=REG, memory_budget="1K", cg_max_n=N - 1).solver == "nystrom"


def test_gp_inference_mean_by_every_solver(problem: tuple[torch.Tensor, ...]) -> None:
    x, xt, y, k, kt = problem
    exact = gp_inference(k, y, diag_reg=REG, solver="cholesky")
    mean = exact(kt).mean
    for solver in ("cg", "nystrom"):
        post = gp_inference(k, y, diag_reg=REG, solver=solver, tol=1e-12, n_centres=N)
        assert rel_err(post(kt).mean, mean) < 1e-8
        assert rel_err(post().mean, exact().mean) < 1e-8
        via_op = gp_inference(_op(x), y[:, 0], diag_reg=REG, solver=solver, tol=1e-12, n_centres=N)
        assert via_op(x_test=xt).mean.shape == (N_TEST,)
        assert rel_err(via_op(x_test=xt).mean, mean[:, 0]) < 1e-8
    # "auto" within the memory budget is the dense path (covariance available) ...
    assert gp_inference(k, y, diag_reg=REG)(kt, kt @ kt.T).cov is not None
    # ... and beyond it an iterative solver: mean only
    small = gp_inference(k, y, diag_reg=REG, memory_budget=1024, tol=1e-12)
    assert rel_err(small(kt).mean, mean) < 1e-8
    with pytest.raises(ValueError, match="posterior mean only"):
        small(kt, kt @ kt.T)


def test_gradient_descent_t_inf_by_every_solver(problem: tuple[torch.Tensor, ...]) -> None:
    x, xt, y, k, kt = problem
    g = torch.Generator().manual_seed(3)
    f0, ft0 = 0.1 * torch.randn(N, 2, generator=g, dtype=F64), 0.1 * torch.randn(N_TEST, 2, generator=g, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = gradient_descent_mse(k, y, diag_reg=REG, solver="cholesky")
        for solver in ("cg", "nystrom"):
            fn = gradient_descent_mse(k, y, diag_reg=REG, solver=solver, tol=1e-12, n_centres=N)
            for args in ((None, None, None, kt), (math.inf, f0, ft0, kt)):
                got, want = fn(*args), ref(*args)
                assert want.test is not None and got.test is not None
                assert rel_err(got.train, want.train) < 1e-8
                assert rel_err(got.test, want.test) < 1e-8
            op_fn = gradient_descent_mse(_op(x), y, diag_reg=REG, solver=solver, tol=1e-12, n_centres=N)
            got = op_fn(None, f0, ft0, x_test=xt)
            want = ref(None, f0, ft0, kt)
            assert got.test is not None and want.test is not None
            assert rel_err(got.test, want.test) < 1e-8
            with pytest.raises(ValueError, match="end of training only"):
                fn(10.0)


def test_sklearn_estimators_by_every_solver(problem: tuple[torch.Tensor, ...]) -> None:
    from ntkit.sklearn import NTKClassifier, NTKRegressor

    x, xt, y, _, _ = problem
    xn, xtn, yn = x.numpy(), xt.numpy(), y[:, 0].numpy()
    params = dict(depth=3, b_std=0.1, w_std=2**0.5, diag_reg=1e-3)
    exact = NTKRegressor(**params, solver="cholesky").fit(xn, yn)  # type: ignore[arg-type]
    auto = NTKRegressor(**params).fit(xn, yn)  # type: ignore[arg-type]
    assert (exact.solver_, auto.solver_) == ("cholesky", "cholesky")
    cg = NTKRegressor(**params, solver="cg", tol=1e-12).fit(xn, yn)  # type: ignore[arg-type]
    full = NTKRegressor(**params, solver="nystrom", tol=1e-12, random_state=0).fit(xn, yn)  # type: ignore[arg-type]
    assert (cg.solver_, full.solver_) == ("cg", "nystrom")
    for est in (auto, cg, full):
        assert rel_err(torch.from_numpy(est.predict(xtn)), torch.from_numpy(exact.predict(xtn))) < 1e-8
    few = NTKRegressor(**params, solver="nystrom", n_centres=30, random_state=0).fit(xn, yn)  # type: ignore[arg-type]
    again = NTKRegressor(**params, solver="nystrom", n_centres=30, random_state=0).fit(xn, yn)  # type: ignore[arg-type]
    assert few.centres_.shape == (30, D) and few.dual_coef_.shape == (30,)
    np.testing.assert_array_equal(few.predict(xtn), again.predict(xtn))  # same random_state, same centres
    labels = np.where(yn > 0.2, "a", np.where(yn < -0.2, "b", "c"))
    clf = NTKClassifier(depth=2, solver="cholesky").fit(xn, labels)
    for solver in ("cg", "nystrom"):
        other = NTKClassifier(depth=2, solver=solver, tol=1e-12).fit(xn, labels)
        assert other.solver_ == solver
        np.testing.assert_allclose(other.decision_function(xtn), clf.decision_function(xtn), rtol=1e-6, atol=1e-8)


def test_sklearn_conformance_of_an_iterative_solver() -> None:
    from sklearn.exceptions import SkipTestWarning
    from sklearn.utils.estimator_checks import check_estimator

    from ntkit.sklearn import NTKClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        results = check_estimator(NTKClassifier(solver="nystrom", random_state=0), on_fail=None)
    assert [(r["check_name"], repr(r["exception"])[:200]) for r in results if r["status"] == "failed"] == []


def test_bad_input(problem: tuple[torch.Tensor, ...]) -> None:
    from ntkit.sklearn import NTKRegressor

    x, xt, y, k, _ = problem
    bad = y.clone()
    bad[4, 0] = float("nan")
    with pytest.raises(ValueError, match="solver: expected one of"):
        KernelSystem(k, y, diag_reg=REG, solver="lu")
    with pytest.raises(ValueError, match="solver: expected one of"):
        gp_inference(k, y, diag_reg=REG, solver="lu")
    with pytest.raises(ValueError, match="solver: expected one of"):
        NTKRegressor(solver="lu").fit(x.numpy(), y[:, 0].numpy())
    with pytest.raises(ValueError, match="end of training only"):
        gradient_descent_mse(k, y, diag_reg=REG, solver="cg")(5)
    with pytest.raises(ValueError, match=rf"n_centres: expected at most N = {N}"):
        KernelSystem(k, y, diag_reg=REG, solver="nystrom", n_centres=N + 1)
    with pytest.raises(ValueError, match=rf"n_centres: expected at most N = {N}"):
        gp_inference(_op(x), y, diag_reg=REG, solver="nystrom", n_centres=N + 1)
    with pytest.raises(ValueError, match="n_centres: expected at most N"):
        NTKRegressor(solver="nystrom", n_centres=N + 1).fit(x.numpy(), y[:, 0].numpy())
    for solver in ("cholesky", "cg", "nystrom"):
        with pytest.raises(ValueError, match="y_train: expected finite"):
            KernelSystem(_op(x), bad, diag_reg=REG, solver=solver)
        with pytest.raises(ValueError, match="finite"):
            gradient_descent_mse(k, bad, diag_reg=REG, solver=solver)
    with pytest.raises(ValueError, match=r"NaN|infinity"):
        NTKRegressor(solver="cg").fit(x.numpy(), bad[:, 0].numpy())
    with pytest.raises(ValueError, match="ridge > 0 for solver 'cg'"):
        gp_inference(k, y, solver="cg")
    with pytest.raises(ValueError, match="ridge > 0 for solver 'nystrom'"):
        NTKRegressor(solver="nystrom", diag_reg=0.0).fit(x.numpy(), y[:, 0].numpy())
    system = KernelSystem(k, y, diag_reg=REG, solver="cg")
    with pytest.raises(ValueError, match="pass k_test_train instead"):
        system.predict(x_test=xt)
    with pytest.raises(ValueError, match="exactly one"):
        system.predict()
    with pytest.raises(ValueError, match="x_test needs a KernelOperator"):
        gp_inference(k, y, diag_reg=REG, solver="cholesky")(x_test=xt)
    with pytest.raises(ValueError, match="symmetric KernelOperator"):
        KernelSystem(KernelOperator(x, xt), y, diag_reg=REG)
    with pytest.raises(ValueError, match=r"y_train: expected shape \(120,\)"):
        KernelSystem(k, y[:5], diag_reg=REG)


def test_operator_cholesky_retries_a_near_singular_kernel_with_jitter() -> None:
    """Duplicated inputs and no ridge: the in-place factorisation of the operator's matrix fails,
    is recomputed with a jitter (warned), and agrees with the stored-matrix path."""
    from ntkit.solve.linalg import JitterWarning

    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:10]])  # ten duplicated rows: K is singular
    y = torch.randn(40, generator=g, dtype=torch.float64)
    y = torch.cat([y, y[:10]])  # (consistent targets: an interpolant exists)
    calls = {"n": 0}
    tiles = FusedTiles(depth=2, which="nngp")

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return tiles(a, b)

    with pytest.warns(JitterWarning, match="near-singular"):
        system = KernelSystem(KernelOperator(x, tile_fn=counted), y, diag_reg=0.0, solver="cholesky")
    assert system.jitter > 0 and calls["n"] >= 2  # the matrix was computed again for the retry
    k = ntkit.fc_kernel(x, depth=2).nngp
    with pytest.warns(JitterWarning):
        stored = KernelSystem(k, y, diag_reg=0.0, solver="cholesky")
    # the same rung of the same ladder (10 eps mean(diag K) 10^i) on both paths: 4.42e-16 each, measured
    assert system.jitter == pytest.approx(stored.jitter, rel=1e-9, abs=0)
    fitted = k @ system.alpha
    assert rel_err(fitted, y) < 1e-6  # interpolation up to the jitter
    xt = torch.randn(7, 3, generator=g, dtype=torch.float64)  # (alpha is not unique; predictions are)
    kt = ntkit.fc_kernel(xt, x, depth=2).nngp
    assert rel_err(kt @ system.alpha, kt @ stored.alpha) < 1e-4

    def negative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -torch.ones(a.shape[0], b.shape[0], dtype=a.dtype)

    with pytest.raises(ValueError, match=r"increase it.*jitter up to"):
        KernelSystem(KernelOperator(x[:3], tile_fn=negative), y[:3], diag_reg=0.0, solver="cholesky")


def test_dense_cho_factor_is_in_place_and_exact() -> None:
    """The factor overwrites the float64 matrix (no second N x N copy), equals torch's Cholesky of
    K + reg I, and the triangular solves give (K + reg I)^-1 y."""
    from ntkit.solve.kernel_solvers import dense_cho_factor
    from ntkit.solve.linalg import cho_solve

    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, 5, generator=g, dtype=F64)
    k = ntkit.fc_kernel(x, depth=2).ntk
    mat = k.clone()
    chol, jitter = dense_cho_factor(mat, 0.5)
    assert jitter == 0.0 and chol.data_ptr() == mat.data_ptr()
    a = k + 0.5 * torch.eye(300, dtype=F64)
    ref = torch.linalg.cholesky(a)
    assert rel_err(chol, ref) < 1e-13 and torch.equal(torch.triu(chol, 1), torch.zeros_like(chol))
    y = torch.randn(300, 3, generator=g, dtype=F64)
    sol = cho_solve(chol, y)
    assert rel_err(a @ sol, y) < 1e-12
    assert rel_err(cho_solve(chol, y[:, 0]), sol[:, 0]) < 1e-13  # (BLAS blocking may differ by a column)
    f32 = k.to(torch.float32)  # a float32 matrix is converted (a copy), factored in float64
    chol32, _ = dense_cho_factor(f32, 0.5)
    ref32 = torch.linalg.cholesky(f32.double() + 0.5 * torch.eye(300, dtype=F64))
    assert chol32.dtype == F64 and rel_err(chol32, ref32) < 1e-13
