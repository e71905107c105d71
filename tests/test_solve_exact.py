"""Conjugate gradients and the Cholesky solvers against independent references, fast.

* :func:`ntkit.solve.conjugate_gradient` iterate by iterate against a textbook preconditioned CG
  (Hestenes & Stiefel 1952) written here in numpy, and its solutions against ``numpy.linalg.solve``;
  CG on a matrix with ``k`` distinct eigenvalues converges in exactly ``k`` steps.
* :func:`robust_cholesky`, :func:`cho_solve`, :func:`dense_cho_factor`, :func:`exact_solve`:
  ``L L^T`` against the (regularised) matrix, solutions against ``numpy.linalg.solve``, and the jitter
  is the smallest of the documented ladder (a power of ten times ``eps * mean|diag|``) that factors.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

from ntkit.solve import (
    JitterWarning,
    NotConvergedWarning,
    NotPSDError,
    cho_solve,
    conjugate_gradient,
    exact_solve,
    robust_cholesky,
)
from ntkit.solve.kernel_solvers import dense_cho_factor

F64 = torch.float64


def _spd(n: int, seed: int, cond: float = 50.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.geomspace(1.0, cond, n)) @ q.T


def _textbook_cg(a: np.ndarray, b: np.ndarray, steps: int, m_inv: np.ndarray | None = None) -> list[np.ndarray]:
    """Iterates ``x_1..x_steps`` of preconditioned CG for one right-hand side, from ``x_0 = 0``."""
    x = np.zeros_like(b)
    r = b.copy()
    z = r if m_inv is None else m_inv @ r
    p = z.copy()
    out = []
    for _ in range(steps):
        ap = a @ p
        alpha = (r @ z) / (p @ ap)
        x = x + alpha * p
        r_new = r - alpha * ap
        z_new = r_new if m_inv is None else m_inv @ r_new
        beta = (r_new @ z_new) / (r @ z)
        p = z_new + beta * p
        r, z = r_new, z_new
        out.append(x)
    return out


@pytest.mark.parametrize("precond", [False, True])
def test_cg_iterates_match_textbook(precond: bool) -> None:
    a = _spd(12, 0, cond=1e3)
    rng = np.random.default_rng(1)
    b = rng.standard_normal((12, 3))
    diag = np.diag(a).copy()
    m_inv = np.diag(1 / diag) if precond else None
    at = torch.from_numpy(a)
    seen: list[np.ndarray] = []

    def cb(i: int, x: torch.Tensor, worst: float) -> None:
        assert i == len(seen) + 1 and x.shape == (12, 3)
        res = np.linalg.norm(b - a @ x.numpy(), axis=0) / np.linalg.norm(b, axis=0)
        assert abs(worst - float(res.max())) <= 1e-3 * float(res.max()) + 1e-12  # recursive vs true residual
        seen.append(x.numpy().copy())

    pre = (lambda r: r / torch.from_numpy(diag)[:, None]) if precond else None
    res = conjugate_gradient(lambda v: at @ v, torch.from_numpy(b), precond=pre, tol=1e-11, max_iter=200, callback=cb)
    assert res.converged and res.n_iter == len(seen) == len(res.history)
    want = [np.stack(cols, axis=1) for cols in zip(*(_textbook_cg(a, b[:, j], 6, m_inv) for j in range(3)),
                                                   strict=True)]
    for k in range(6):
        np.testing.assert_allclose(seen[k], want[k], rtol=1e-9, atol=1e-12)
    exact = np.linalg.solve(a, b)
    np.testing.assert_allclose(res.x.numpy(), exact, rtol=1e-8, atol=1e-10)
    true_rel = np.linalg.norm(b - a @ res.x.numpy(), axis=0) / np.linalg.norm(b, axis=0)
    np.testing.assert_allclose(res.rel_residual.numpy(), true_rel, rtol=0.1, atol=1e-14)  # recursive residual
    assert float(res.rel_residual.max()) <= 1e-11 and res.history[-1] == float(res.rel_residual.max())
    assert all(h > 1e-11 for h in res.history[:-1])  # stops at the first iteration below tol


def test_cg_distinct_eigenvalues_and_vector_rhs() -> None:
    """Three distinct eigenvalues: exactly three iterations; a vector ``b`` gives a vector ``x``; ``A @ v`` operands."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    a = (q * np.array([1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 9.0, 9.0, 9.0])) @ q.T
    b = rng.standard_normal(9)
    calls: list[tuple[int, ...]] = []

    def cb(i: int, x: torch.Tensor, worst: float) -> None:
        calls.append(tuple(x.shape))

    res = conjugate_gradient(torch.from_numpy(a), torch.from_numpy(b), tol=1e-10, callback=cb)
    assert res.converged and res.n_iter == 3 and calls == [(9,)] * 3
    assert res.x.shape == (9,) and res.rel_residual.shape == (1,)
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(a, b), rtol=1e-9, atol=1e-12)


def test_cg_warm_start_and_zero_column() -> None:
    a = _spd(8, 3)
    at = torch.from_numpy(a)
    b = np.random.default_rng(4).standard_normal((8, 2))
    b[:, 1] = 0.0
    exact = np.linalg.solve(a, b)
    res = conjugate_gradient(at, torch.from_numpy(b), tol=1e-10)
    assert res.converged
    assert not res.x[:, 1].any() and float(res.rel_residual[1]) == 0.0
    np.testing.assert_allclose(res.x.numpy(), exact, rtol=1e-8, atol=1e-12)
    # a warm start at the solution: no iteration, the start returned
    x0 = torch.from_numpy(exact)
    warm = conjugate_gradient(at, torch.from_numpy(b), x0=x0, tol=1e-8)
    assert warm.converged and warm.n_iter == 0 and warm.history == [] and torch.equal(warm.x, x0)
    # a warm start near it: fewer iterations than from zero, same answer
    near = conjugate_gradient(at, torch.from_numpy(b), x0=x0 + 1e-4, tol=1e-10)
    assert near.converged and 0 < near.n_iter <= res.n_iter and near.history[0] < 1e-2
    np.testing.assert_allclose(near.x.numpy(), exact, rtol=1e-8, atol=1e-12)
    vec = conjugate_gradient(at, torch.from_numpy(b[:, 0]), x0=x0[:, 0] + 1e-4, tol=1e-10)
    np.testing.assert_allclose(vec.x.numpy(), exact[:, 0], rtol=1e-8, atol=1e-12)


def test_cg_not_converged_returns_best_iterate() -> None:
    a = _spd(30, 5, cond=1e3)
    at = torch.from_numpy(a)
    b = np.random.default_rng(6).standard_normal((30, 2))
    for max_iter in (1, 4, 7):
        with pytest.warns(NotConvergedWarning, match="did not reach"):
            res = conjugate_gradient(at, torch.from_numpy(b), tol=1e-12, max_iter=max_iter)
        assert not res.converged and res.n_iter == max_iter and len(res.history) == max_iter
        iterates = [np.zeros_like(b)] + [np.stack(c, axis=1) for c in zip(
            *(_textbook_cg(a, b[:, j], max_iter) for j in range(2)), strict=True)]
        worst = [float((np.linalg.norm(b - a @ x, axis=0) / np.linalg.norm(b, axis=0)).max()) for x in iterates]
        np.testing.assert_allclose(res.history, worst[1:], rtol=1e-6)
        k = int(np.argmin(worst))
        assert math.isclose(float(res.rel_residual.max()), worst[k], rel_tol=1e-6)
        np.testing.assert_allclose(res.x.numpy(), iterates[k], rtol=1e-9, atol=1e-12)


def test_cg_stops_on_non_finite_operator() -> None:
    """An operator that returns NaN stops the iteration; the best finite iterate comes back with a warning."""
    a = _spd(10, 7, cond=1e4)
    b = np.random.default_rng(8).standard_normal(10)
    at = torch.from_numpy(a)
    count = [0]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        out = at @ v
        return out * float("nan") if count[0] == 3 else out

    with pytest.warns(NotConvergedWarning):
        res = conjugate_gradient(matvec, torch.from_numpy(b), tol=1e-12, max_iter=50)
    assert not res.converged and res.n_iter == 3 and count[0] == 3 and math.isnan(res.history[-1])
    assert torch.isfinite(res.x).all()
    iterates = [np.zeros_like(b), *_textbook_cg(a, b, 2)]
    best = int(np.argmin([1.0, *res.history[:2]]))
    np.testing.assert_allclose(res.x.numpy(), iterates[best], rtol=1e-9, atol=1e-12)


def test_cg_rejects_bad_input() -> None:
    a = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="b"):
        conjugate_gradient(a, torch.ones(3, 1, 1, dtype=F64))
    with pytest.raises(ValueError, match="x0"):
        conjugate_gradient(a, torch.ones(3, dtype=F64), x0=torch.ones(3, 1, dtype=F64))
    with pytest.raises(ValueError, match="tol"):
        conjugate_gradient(a, torch.ones(3, dtype=F64), tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(a, torch.ones(3, dtype=F64), max_iter=0)


def test_cg_progress_reports(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTKIT_PROGRESS", "1")  # show the bar although stderr is not a terminal
    a = torch.from_numpy(_spd(6, 9))
    res = conjugate_gradient(a, torch.ones(6, dtype=F64), progress=True, desc="cgtest")
    assert res.converged
    err = capsys.readouterr().err
    assert "cgtest" in err and "rel. residual" in err
    conjugate_gradient(a, torch.ones(6, dtype=F64), desc="quiet")
    assert capsys.readouterr().err == ""
    res = conjugate_gradient(a, torch.ones(6, dtype=F64), progress=True)
    err = capsys.readouterr().err
    # the default label, and one step of the bar per iteration out of max_iter (default 1000)
    assert re.search(rf"(^|\r)cg: .* {res.n_iter}/1000 .*rel\. residual", err), err


def test_cg_default_iteration_limit() -> None:
    """Without ``max_iter`` CG stops after 1000 iterations (a cheap diagonal operator that needs more)."""
    d = torch.from_numpy(np.geomspace(1.0, 1e10, 3000))
    with pytest.warns(NotConvergedWarning, match="max_iter=1000"):
        res = conjugate_gradient(lambda v: d[:, None] * v, torch.ones(3000, dtype=F64), tol=1e-15)
    assert res.n_iter == 1000 and len(res.history) == 1000 and not res.converged


# ---------------------------------------------------------------------------------------------- Cholesky


def _ladder_power(jitter: float, unit: float) -> int:
    """``i`` with ``jitter == unit * 10^i`` (asserting it is one)."""
    i = round(math.log10(jitter / unit))
    assert math.isclose(jitter, unit * 10.0**i, rel_tol=1e-9), (jitter, unit)
    return i


def _factors(m: torch.Tensor) -> bool:
    return int(torch.linalg.cholesky_ex(m)[1]) == 0


def _singular(n: int = 6) -> torch.Tensor:
    """A kernel matrix with duplicated rows (rank <= 4), shifted by ``-1e-12`` of its mean diagonal.

    Exactly singular, whether its Cholesky factorisation fails is up to rounding, which differs between
    BLAS builds and CPUs (it factored on one machine); the shift, ~1000x the float64 rounding of the
    pivots, makes it fail everywhere in float64 and vanishes in float32.
    """
    x = torch.from_numpy(np.random.default_rng(10).standard_normal((n, 3)))
    x[1] = x[0]
    x[4] = x[2]
    k = x @ x.T + 2.0
    return k - 1e-12 * float(torch.diagonal(k).mean()) * torch.eye(n, dtype=k.dtype)


def test_robust_cholesky_positive_definite() -> None:
    k = torch.from_numpy(_spd(7, 11))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chol, jitter = robust_cholesky(k)
        chol_r, jitter_r = robust_cholesky(k, diag_reg=0.25)
    assert jitter == 0.0 and jitter_r == 0.0
    assert torch.equal(chol, torch.tril(chol)) and torch.equal(chol_r, torch.tril(chol_r))
    np.testing.assert_allclose((chol @ chol.T).numpy(), k.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose((chol_r @ chol_r.T).numpy(), k.numpy() + 0.25 * np.eye(7), rtol=1e-13, atol=1e-13)
    b = np.random.default_rng(12).standard_normal((7, 2))
    np.testing.assert_allclose(cho_solve(chol, torch.from_numpy(b)).numpy(), np.linalg.solve(k.numpy(), b),
                               rtol=1e-11, atol=1e-13)
    xv = cho_solve(chol_r, torch.from_numpy(b[:, 0]))
    assert xv.shape == (7,)
    np.testing.assert_allclose(xv.numpy(), np.linalg.solve(k.numpy() + 0.25 * np.eye(7), b[:, 0]), rtol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_robust_cholesky_smallest_jitter(dtype: torch.dtype) -> None:
    k = _singular().to(dtype)
    assert not _factors(k)
    with pytest.warns(JitterWarning, match="near-singular") as rec:
        chol, jitter = robust_cholesky(k)
    assert rec[0].filename == __file__  # the warning points at the caller
    scale = float(torch.diagonal(k).abs().mean())
    i = _ladder_power(jitter, torch.finfo(dtype).eps * scale)
    assert 0 <= i <= 8
    eye = torch.eye(6, dtype=dtype)
    assert i == 1 or not _factors(k + jitter / 10 * eye)  # nothing smaller on the ladder works
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(chol @ chol.T, k + jitter * eye, rtol=tol, atol=tol * scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, quiet = robust_cholesky(k, warn=False)
    assert quiet == jitter


def test_robust_cholesky_options_and_errors() -> None:
    k = _singular()
    eye = torch.eye(6, dtype=F64)
    with pytest.warns(JitterWarning):
        chol, jitter = robust_cholesky(k, initial_jitter=1e-3)
    assert jitter == 1e-3
    assert torch.allclose(chol @ chol.T, k + 1e-3 * eye, rtol=1e-13, atol=1e-12)
    with pytest.warns(JitterWarning):
        chol, jitter = robust_cholesky(k, initial_jitter=1e-30, max_tries=40)
    i = _ladder_power(jitter, 1e-30)
    assert i >= 1 and not _factors(k + jitter / 10 * eye)
    with pytest.raises(NotPSDError, match="positive semi-definite"):
        robust_cholesky(k, max_tries=0)
    with pytest.raises(NotPSDError, match="smallest eigenvalue -2 "):
        robust_cholesky(torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=F64)), warn=False)
    with pytest.raises(ValueError, match="square"):
        robust_cholesky(torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        robust_cholesky(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=F64))
    # an all-zero matrix: the jitter ladder starts from eps (mean diagonal 0 counts as 1)
    with pytest.warns(JitterWarning):
        chol, jitter = robust_cholesky(torch.zeros(3, 3, dtype=F64))
    _ladder_power(jitter, torch.finfo(F64).eps)
    assert torch.allclose(chol @ chol.T, jitter * torch.eye(3, dtype=F64), rtol=1e-14, atol=0)


def test_dense_cho_factor_in_place() -> None:
    a = _spd(9, 13)
    k = torch.from_numpy(a.copy())
    ptr = k.data_ptr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chol, jitter = dense_cho_factor(k, 0.5)
    assert jitter == 0.0 and chol.data_ptr() == ptr and chol.dtype == F64
    lower = torch.tril(chol)
    np.testing.assert_allclose((lower @ lower.T).numpy(), a + 0.5 * np.eye(9), rtol=1e-13, atol=1e-13)
    b = np.random.default_rng(14).standard_normal((9, 2))
    np.testing.assert_allclose(cho_solve(chol, torch.from_numpy(b)).numpy(), np.linalg.solve(a + 0.5 * np.eye(9), b),
                               rtol=1e-11, atol=1e-13)
    # float32 input: factored in float64
    chol32, _ = dense_cho_factor(torch.from_numpy(a).float(), 0.0)
    assert chol32.dtype == F64
    low32 = torch.tril(chol32)
    np.testing.assert_allclose((low32 @ low32.T).numpy(), a.astype(np.float32).astype(np.float64), rtol=1e-12,
                               atol=1e-12)


def test_dense_cho_factor_retries_with_the_smallest_jitter() -> None:
    base = _singular()
    calls = [0]

    def make() -> torch.Tensor:
        calls[0] += 1
        return base.clone()

    with pytest.warns(JitterWarning) as rec:
        chol, jitter = dense_cho_factor(make, 0.0)
    assert rec[0].filename == __file__
    scale = float(torch.diagonal(base).abs().mean())
    i = _ladder_power(jitter, torch.finfo(F64).eps * scale)
    assert calls[0] == i + 1  # the first matrix, then one recomputation per jitter tried (from 10 eps scale)
    eye = torch.eye(6, dtype=F64)
    assert i == 1 or not _factors(base + jitter / 10 * eye)
    lower = torch.tril(chol)
    assert torch.allclose(lower @ lower.T, base + jitter * eye, rtol=1e-12, atol=1e-12 * scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, quiet = dense_cho_factor(make, 0.0, warn=False)
    assert quiet == jitter
    # a ridge on top of the jitter
    with pytest.warns(JitterWarning):
        chol, jitter_r = dense_cho_factor(make, 1e-300)
    assert jitter_r == jitter
    with pytest.raises(ValueError, match="diag_reg"):
        dense_cho_factor(make, 0.0, max_tries=0)
    with pytest.raises(ValueError, match=r"diag_reg.*\(increase it\)$"):
        dense_cho_factor(base.clone(), 0.0)  # a plain matrix cannot be recomputed: no retry
    # an all-zero kernel: the ladder starts from 10 eps (mean diagonal 0 counts as 1)
    with pytest.warns(JitterWarning):
        zero_chol, zero_jitter = dense_cho_factor(lambda: torch.zeros(3, 3, dtype=F64), 0.0)
    assert _ladder_power(zero_jitter, torch.finfo(F64).eps) >= 1
    assert torch.allclose(torch.tril(zero_chol) @ torch.tril(zero_chol).T, zero_jitter * torch.eye(3, dtype=F64),
                          rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="did not help"):
        dense_cho_factor(lambda: -torch.eye(3, dtype=F64), 0.0)


class _StoredKernel:
    """The one thing :func:`exact_solve` reads from a :class:`KernelOperator`: ``dense()``, a fresh N x N matrix."""

    def __init__(self, k: np.ndarray) -> None:
        self.k = k

    def dense(self) -> torch.Tensor:
        return torch.from_numpy(self.k.copy())


def test_exact_solve() -> None:
    k = _spd(20, 15, cond=1e4)
    y = np.random.default_rng(16).standard_normal((20, 2))
    got = exact_solve(_StoredKernel(k), torch.from_numpy(y).float(), diag_reg=0.1)  # type: ignore[arg-type]
    assert got.dtype == F64
    np.testing.assert_allclose(got.numpy(), np.linalg.solve(k + 0.1 * np.eye(20), y.astype(np.float32)), rtol=1e-10,
                               atol=1e-12)


def test_cg_zero_column_with_warm_start_uses_the_absolute_residual() -> None:
    """A zero right-hand side has no relative residual: its column's residual is the absolute ``||A x||``."""
    a = _spd(6, 17)
    at = torch.from_numpy(a)
    b = np.zeros((6, 2))
    b[:, 0] = 1.0
    x0 = np.full((6, 2), 0.3)
    res = conjugate_gradient(at, torch.from_numpy(b), x0=torch.from_numpy(x0), tol=1e-9)
    assert res.converged
    with pytest.warns(NotConvergedWarning):
        start = conjugate_gradient(at, torch.from_numpy(b), x0=torch.from_numpy(x0), tol=1e-9, max_iter=1)
    # not converged: the column-1 entry is ||A x|| of the returned iterate, not halved or scaled
    ax = np.linalg.norm(a @ start.x.numpy()[:, 1])
    assert math.isclose(float(start.rel_residual[1]), ax, rel_tol=1e-6)
    assert float(res.rel_residual[1]) <= 1e-9
    np.testing.assert_allclose(res.x.numpy()[:, 1], 0.0, atol=1e-8)


def test_cg_tolerance_is_inclusive() -> None:
    """A relative residual equal to ``tol`` counts as converged: at the start, after an iteration, per column."""
    a = torch.eye(2, dtype=F64)
    b = torch.tensor([1.0, 0.0], dtype=F64)
    res = conjugate_gradient(a, b, x0=torch.tensor([0.5, 0.0], dtype=F64), tol=0.5)
    assert res.converged and res.n_iter == 0 and float(res.rel_residual[0]) == 0.5
    # after one iteration: tol set to exactly the residual the first iteration reaches
    d = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=F64))
    rhs = torch.ones(3, dtype=F64)
    with pytest.warns(NotConvergedWarning):
        once = conjugate_gradient(d, rhs, tol=1e-300, max_iter=1)
    res = conjugate_gradient(d, rhs, tol=once.history[0])
    assert res.converged and res.n_iter == 1 and torch.equal(res.x, once.x)
    # a column starting exactly at tol is left alone while another column iterates
    dd = torch.diag(torch.tensor([1.0, 2.0], dtype=F64))
    bb = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=F64)
    x0 = torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=F64)
    res = conjugate_gradient(dd, bb, x0=x0, tol=0.5)
    assert res.converged and res.n_iter >= 1 and torch.equal(res.x[:, 0], x0[:, 0])


def test_cg_best_iterate_keeps_the_first_of_equal_residuals() -> None:
    """The returned iterate is the first with the smallest largest-column residual (a stagnating column ties)."""
    a = torch.diag(torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=F64))  # singular: e_2 is never reached
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=F64)
    with pytest.warns(NotConvergedWarning):
        res = conjugate_gradient(a, b, tol=1e-12, max_iter=3)
    assert res.history == [1.0, 1.0, 1.0]  # column 0 stagnates at its start, column 1 converges
    assert torch.equal(res.x, torch.zeros(4, 2, dtype=F64))


def _slightly_indefinite(scale_eig: float) -> tuple[torch.Tensor, float]:
    """A matrix of mean diagonal ~1 with smallest eigenvalue ``-scale_eig * mean diag``."""
    q, _ = np.linalg.qr(np.random.default_rng(18).standard_normal((5, 5)))
    eig = np.array([-scale_eig, 0.5, 1.0, 1.5, 2.0])
    k = (q * eig) @ q.T
    return torch.from_numpy(k), float(np.abs(np.diag(k)).mean())


def test_default_jitter_ladder_has_eight_rungs() -> None:
    """The default ladder tries ``10 eps s * 10^i`` for ``i < 8``: a matrix needing ``i = 8`` is refused by default."""
    eps = torch.finfo(F64).eps
    _, s = _slightly_indefinite(0.0)  # mean diagonal ~1, hardly changed by the tiny eigenvalue below
    k, s = _slightly_indefinite(5 * eps * s * 1e8)  # smallest eigenvalue between rungs 7 and 8 of the ladder
    with pytest.raises(NotPSDError):
        robust_cholesky(k, warn=False)
    _, jitter = robust_cholesky(k, warn=False, max_tries=9)
    assert math.isclose(jitter, 10 * eps * s * 1e8, rel_tol=1e-9)
    with pytest.raises(ValueError, match="did not help"):
        dense_cho_factor(k.clone, 0.0, warn=False)
    _, jitter_d = dense_cho_factor(k.clone, 0.0, warn=False, max_tries=9)
    assert math.isclose(jitter_d, 10 * eps * s * 1e8, rel_tol=1e-9)


def test_cg_leaves_converged_columns_alone() -> None:
    """A column that has converged is not touched while the other columns keep iterating."""
    rng = np.random.default_rng(19)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    a = (q * np.geomspace(1.0, 100.0, 10)) @ q.T
    b = np.stack([q[:, 3] * 2.0, rng.standard_normal(10)], axis=1)  # column 0: an eigenvector (one step)
    first: list[torch.Tensor] = []

    def cb(i: int, x: torch.Tensor, worst: float) -> None:
        if i == 1:
            first.append(x.clone())

    res = conjugate_gradient(torch.from_numpy(a), torch.from_numpy(b), tol=1e-10, callback=cb)
    assert res.converged and res.n_iter > 2
    assert torch.equal(res.x[:, 0], first[0][:, 0])
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(a, b), rtol=1e-8, atol=1e-12)


def test_cg_zero_curvature_direction_makes_no_step() -> None:
    """``b`` outside the range of a singular ``A``: ``p . A p = 0``, no step (no NaN), a warning at the limit."""
    a = torch.diag(torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.warns(NotConvergedWarning):
        res = conjugate_gradient(a, torch.tensor([0.0, 1.0], dtype=F64), max_iter=5)
    assert res.n_iter == 5 and res.history == [1.0] * 5
    assert torch.equal(res.x, torch.zeros(2, dtype=F64))


def _warns_from_helper() -> None:
    from ntkit.solve.linalg import warn_jitter

    warn_jitter(1e-3, 2.0)  # the default stacklevel: the warning points at the caller of this helper


def test_warn_jitter_message_and_default_stacklevel() -> None:
    import inspect

    with pytest.warns(JitterWarning) as rec:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        _warns_from_helper()
    assert rec[0].filename == __file__ and rec[0].lineno == line
    text = str(rec[0].message)
    assert "added jitter 0.001 " in text and "relative 0.0005" in text


def test_cg_progress_bar_closed_on_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator that raises mid-solve: the bar is closed (final state and newline) before the error propagates."""
    monkeypatch.setenv("NTKIT_PROGRESS", "1")
    a = torch.from_numpy(_spd(6, 20))
    calls = [0]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("operator failed")
        return a @ v

    with pytest.raises(RuntimeError, match="operator failed") as info:
        conjugate_gradient(matvec, torch.ones(6, dtype=F64), progress=True, desc="failing")
    err = capsys.readouterr().err  # read while the traceback (and the solver's frame) is still alive
    assert "1/1000" in err and err.endswith("\n"), err
    del info
