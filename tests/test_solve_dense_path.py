"""One dense solve path: :func:`ntkit.predict.gp_inference`, :class:`ntkit.sklearn.NTKRegressor` and
:func:`ntkit.solve.kernel_regression` factor through :class:`ntkit.solve.KernelSystem` (``solver="cholesky"``),
whose factor is exposed (:attr:`~ntkit.solve.KernelSystem.factor`, :meth:`~ntkit.solve.KernelSystem.whiten`).

The references below are the code these functions ran before they were routed through the system
(:func:`robust_cholesky` + :func:`cho_solve` + one triangular solve): the results are bitwise equal.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
import ntkit._linalg
import ntkit.solve.linalg
import ntkit.solve.system
from ntkit.predict import gp_inference
from ntkit.solve import JitterWarning, KernelOperator, KernelSystem, cho_solve, kernel_regression, robust_cholesky

F64 = torch.float64
SRC = Path(ntkit.__file__).parent


def _problem(seed: int, n: int = 12, m: int = 5, duplicate: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    x = torch.cat([x, x[:duplicate]])
    xt = torch.randn(m, 3, generator=g, dtype=F64)
    y = torch.randn(x.shape[0], 2, generator=g, dtype=F64)
    kall = ntkit.fc_kernel(torch.cat([x, xt]), depth=2, b_std=0.1).nngp
    nn_ = x.shape[0]
    return kall[:nn_, :nn_], kall[nn_:, :nn_], kall[nn_:, nn_:], y


def _reference_gp(k: torch.Tensor, y: torch.Tensor, kt: torch.Tensor, ktt: torch.Tensor, reg: float) -> tuple:
    chol, jitter = robust_cholesky(k, diag_reg=reg)
    mean = kt @ cho_solve(chol, y)
    v = torch.linalg.solve_triangular(chol, kt.T, upper=False)
    cov = ktt - v.T @ v
    return mean, 0.5 * (cov + cov.T), ktt.diagonal() - (v * v).sum(0), jitter


@pytest.mark.parametrize("reg", [0.0, 1e-2])
@pytest.mark.parametrize("seed", [0, 1])
def test_gp_inference_equals_the_former_dense_code_bitwise(seed: int, reg: float) -> None:
    k, kt, ktt, y = _problem(seed)
    mean, cov, var, _ = _reference_gp(k, y, kt, ktt, reg)
    fn = gp_inference(k, y, diag_reg=reg, solver="cholesky")
    post = fn(kt, ktt)
    assert torch.equal(post.mean, mean) and post.cov is not None and torch.equal(post.cov, cov)
    diag = fn(kt, ktt.diagonal()).cov
    assert diag is not None and torch.equal(diag, var)
    assert torch.equal(gp_inference(k, y, diag_reg=reg)(kt).mean, mean)  # "auto" resolves to the same path


def test_gp_inference_jitter_is_the_systems() -> None:
    k, kt, ktt, y = _problem(2, duplicate=3)  # duplicated inputs: singular without a ridge
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mean, cov, _, jitter = _reference_gp(k, y, kt, ktt, 0.0)
        post = gp_inference(k, y)(kt, ktt)
        system = KernelSystem(k, y, diag_reg=0.0, solver="cholesky")
    jitters = [w for w in caught if issubclass(w.category, JitterWarning)]
    assert len(jitters) == 3 and len({str(w.message) for w in jitters}) == 1
    assert jitter > 0 and system.jitter == jitter
    assert torch.equal(post.mean, mean) and post.cov is not None and torch.equal(post.cov, cov)


def test_dense_solvers_run_in_kernel_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """gp_inference, NTKRegressor and kernel_regression factor through KernelSystem's Cholesky."""
    calls: list[str] = []
    real_stored, real_inplace = ntkit.solve.system.robust_cholesky, ntkit.solve.system.dense_cho_factor

    def stored(*args: object, **kwargs: object) -> object:
        calls.append("stored")
        return real_stored(*args, **kwargs)  # type: ignore[arg-type]

    def inplace(*args: object, **kwargs: object) -> object:
        calls.append("in place")
        return real_inplace(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ntkit.solve.system, "robust_cholesky", stored)
    monkeypatch.setattr(ntkit.solve.system, "dense_cho_factor", inplace)
    k, kt, _, y = _problem(3)
    gp_inference(k, y, diag_reg=1e-3)(kt)
    assert calls == ["stored"]
    pytest.importorskip("sklearn")
    from ntkit.sklearn import NTKRegressor

    x = np.random.default_rng(0).standard_normal((20, 3))
    NTKRegressor(depth=2, solver="cholesky").fit(x, x[:, 0])
    assert calls == ["stored", "stored"]
    kernel_regression(torch.from_numpy(x), torch.from_numpy(x[:, 0]), torch.from_numpy(x[:3]), diag_reg=1e-3,
                      solver="cholesky", depth=2)
    assert calls == ["stored", "stored", "in place"]


def test_ntk_regressor_equals_the_former_dense_code_bitwise() -> None:
    pytest.importorskip("sklearn")
    from ntkit.sklearn import NTKRegressor

    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3))
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    x_dup = np.concatenate([x, x[:5]])  # singular: the jitter retry
    y_dup = np.concatenate([y, y[:5]])
    for xs, ys, reg in ((x, y, 1e-3), (x_dup, y_dup, 0.0)):
        model = ntkit.nn.fc(3, 1, depth=2, b_std=0.1, device="meta")  # NTKRegressor(depth=2, b_std=0.1)'s model
        k = ntkit.infinite_kernel(model, torch.from_numpy(xs), which="ntk")
        assert isinstance(k, torch.Tensor)
        scale = float(k.diagonal().abs().mean())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chol, jitter = robust_cholesky(k, diag_reg=reg * scale)
            fit = NTKRegressor(depth=2, b_std=0.1, diag_reg=reg).fit(xs, ys)
        ref = cho_solve(chol, torch.from_numpy(ys - ys.mean(axis=0))).numpy()
        assert np.array_equal(fit.dual_coef_, ref) and fit.jitter_ == jitter
        assert (jitter > 0) == (reg == 0.0)
        assert sum(issubclass(w.category, JitterWarning) for w in caught) == (2 if jitter else 0)
        assert not hasattr(fit, "system_")  # the fitted estimator keeps no N x N kernel or factor


def test_factor_and_whiten() -> None:
    k, kt, _, y = _problem(4)
    system = KernelSystem(k, y, diag_reg=0.1, solver="cholesky")
    chol = system.factor
    assert chol is not None and torch.equal(chol, torch.tril(chol))
    assert torch.allclose(chol @ chol.T, k + 0.1 * torch.eye(k.shape[0], dtype=F64), rtol=1e-13, atol=1e-13)
    v = system.whiten(kt.T)
    assert torch.equal(v, torch.linalg.solve_triangular(chol, kt.T, upper=False))
    assert torch.allclose(system.whiten(kt[0]), v[:, 0], rtol=1e-14, atol=1e-15)  # vector: (N,) in, (N,) out
    ref = kt @ torch.linalg.solve(k + 0.1 * torch.eye(k.shape[0], dtype=F64), kt.T)
    assert torch.allclose(v.T @ v, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"rhs: expected shape \(12,\)"):
        system.whiten(kt)
    cg = KernelSystem(k, y, diag_reg=0.1, solver="cg", tol=1e-12)
    assert cg.factor is None
    with pytest.raises(ValueError, match="whiten needs the Cholesky factor"):
        cg.whiten(kt.T)


def test_factor_of_an_operator_is_the_in_place_one() -> None:
    x = torch.randn(15, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    op = KernelOperator(x, depth=2)
    system = KernelSystem(op, x[:, 0], diag_reg=0.1, solver="cholesky")
    assert system.factor is not None and system.factor.dtype == F64
    k = ntkit.fc_kernel(x, depth=2).ntk
    assert torch.allclose(system.factor @ system.factor.T, k + 0.1 * torch.eye(15, dtype=F64), rtol=1e-12)


def test_linalg_names_are_one_set_of_objects() -> None:
    """The Cholesky helpers moved to the leaf ntkit._linalg; ntkit.solve and ntkit.solve.linalg re-export them,
    so a JitterWarning of random-features ridge is the class users filter on."""
    for name in ("JitterWarning", "NotPSDError", "robust_cholesky", "cho_solve"):
        assert getattr(ntkit.solve, name) is getattr(ntkit.solve.linalg, name) is getattr(ntkit._linalg, name)
    assert ntkit.solve.linalg.warn_jitter is ntkit._linalg.warn_jitter


def _called_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")
    return names


@pytest.mark.parametrize(
    ("path", "entry"),
    [("predict/gp.py", "build_system"), ("predict/_kernel_system.py", "KernelSystem"),
     ("sklearn/_ridge.py", "KernelSystem"), ("solve/regression.py", "KernelSystem")],
)
def test_no_dense_factorisation_outside_the_system(path: str, entry: str) -> None:
    factorising = {"robust_cholesky", "cho_solve", "cholesky", "cholesky_ex", "cho_factor", "dense_cho_factor",
                   "solve_triangular", "cholesky_solve", "exact_solve"}
    called = _called_names(SRC / path)
    assert entry in called
    assert called & factorising == set()
