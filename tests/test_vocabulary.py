"""One vocabulary (issue 20): ``memory_budget`` and ``b_std``; the old spellings warn once and still work.

One test per old spelling: it gives a ``DeprecationWarning`` that points at the caller, and the same
result as the new spelling.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import ntkit
from ntkit._validation import renamed_keyword
from ntkit.experiments.converge import run_convergence
from ntkit.experiments.dynamics import run_dynamics
from ntkit.layerwise import fc_kernel_diag, fixed_layer_ntks, iter_fixed_layer_ntks, layer_kernels
from ntkit.predict import gp_inference, gradient_descent_mse
from ntkit.solve import KernelSystem, kernel_regression, nystrom_krr, resolve_solver

F64 = torch.float64
MEMORY = "memory_bytes is deprecated; use memory_budget"
BIAS = "beta is deprecated; use b_std"


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(20)
    x = torch.randn(30, 3, dtype=F64, generator=g)
    return x, torch.randn(5, 3, dtype=F64, generator=g), x[:, 0].sin()


def _warns_here(match: str) -> Any:
    """``pytest.warns`` for one ``DeprecationWarning`` whose location is this file (the caller's)."""

    class _Check:
        def __enter__(self) -> None:
            self._cm = pytest.warns(DeprecationWarning, match=match)
            self._record = self._cm.__enter__()

        def __exit__(self, *exc: Any) -> None:
            self._cm.__exit__(*exc)
            if exc[0] is None:
                hits = [w for w in self._record if issubclass(w.category, DeprecationWarning)]
                assert len(hits) == 1, [str(w.message) for w in hits]
                assert hits[0].filename == __file__, hits[0].filename

    return _Check()


# --- the helper -------------------------------------------------------------------------------------


def test_renamed_keyword_rules() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_keyword(0.3, None, new="b_std", old="beta", default=0.0) == 0.3  # no warning
    with pytest.warns(DeprecationWarning, match=BIAS):
        assert renamed_keyword(0.0, 0.3, new="b_std", old="beta", default=0.0) == 0.3
    with pytest.warns(DeprecationWarning, match=BIAS), pytest.raises(TypeError, match="b_std, beta: expected one"):
        renamed_keyword(0.1, 0.3, new="b_std", old="beta", default=0.0)


# --- memory_bytes -> memory_budget ------------------------------------------------------------------


def test_resolve_solver_memory_bytes() -> None:
    assert resolve_solver("auto", 1_000, memory_budget="8M") == "cholesky"
    assert resolve_solver("auto", 1_000, memory_budget="7M") == "cg"
    with _warns_here(MEMORY):
        assert resolve_solver("auto", 1_000, memory_bytes=7 * 2**20) == "cg"
    with pytest.raises(ValueError, match="memory_budget: expected"):
        resolve_solver("cg", 10, memory_budget="lots")  # checked whatever the solver


def test_kernel_system_memory_bytes(data: tuple[torch.Tensor, ...]) -> None:
    x, _, y = data
    k = ntkit.fc_kernel(x, depth=2).ntk
    assert KernelSystem(k, y, diag_reg=1e-2, memory_budget="1K").solver == "cg"
    with _warns_here(MEMORY):
        old = KernelSystem(k, y, diag_reg=1e-2, memory_bytes=1024)
    assert old.solver == "cg"
    with pytest.warns(DeprecationWarning, match=MEMORY), pytest.raises(TypeError, match="expected one of them"):
        KernelSystem(k, y, diag_reg=1e-2, memory_budget="1K", memory_bytes=1024)


def test_kernel_regression_memory_bytes(data: tuple[torch.Tensor, ...]) -> None:
    x, xt, y = data
    new = kernel_regression(x, y, xt, diag_reg=1e-2, depth=2, memory_budget="1K", tol=1e-12)
    with _warns_here(MEMORY):
        old = kernel_regression(x, y, xt, diag_reg=1e-2, depth=2, memory_bytes=1024, tol=1e-12)
    torch.testing.assert_close(old, new, rtol=0, atol=0)


@pytest.mark.parametrize("factory", [gp_inference, gradient_descent_mse])
def test_predict_memory_bytes(data: tuple[torch.Tensor, ...], factory: Callable[..., Any]) -> None:
    x, xt, y = data
    k, kt = ntkit.fc_kernel(x, depth=2).ntk, ntkit.fc_kernel(xt, x, depth=2).ntk
    new = factory(k, y, diag_reg=1e-2, memory_budget="1K", tol=1e-12)
    with _warns_here(MEMORY):
        old = factory(k, y, diag_reg=1e-2, memory_bytes=1024, tol=1e-12)

    def test_mean(predict_fn: Callable[..., Any]) -> torch.Tensor:
        return predict_fn(kt).mean if factory is gp_inference else predict_fn(None, k_test_train=kt).test

    torch.testing.assert_close(test_mean(old), test_mean(new), rtol=0, atol=0)


# --- beta -> b_std ----------------------------------------------------------------------------------


def test_fc_network_beta() -> None:
    new = ntkit.FCNetwork(3, [8], 2, b_std=0.3, seed=0)
    with _warns_here(BIAS):
        old = ntkit.FCNetwork(3, [8], 2, beta=0.3, seed=0)
    assert old.b_std == new.b_std == 0.3
    x = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(old(x), new(x), rtol=0, atol=0)
    with _warns_here(BIAS):
        assert new.beta == 0.3  # the old attribute


def test_ntk_linear_beta() -> None:
    new = ntkit.NTKLinear(3, 2, b_std=0.5, generator=torch.Generator().manual_seed(0))
    with _warns_here(BIAS):
        old = ntkit.NTKLinear(3, 2, beta=0.5, generator=torch.Generator().manual_seed(0))
    assert old.b_std == new.b_std == 0.5 and old.bias_scale == new.bias_scale
    with _warns_here(BIAS):
        assert new.beta == 0.5


@pytest.mark.parametrize("fn", [layer_kernels, fixed_layer_ntks, iter_fixed_layer_ntks, fc_kernel_diag])
def test_layerwise_beta(data: tuple[torch.Tensor, ...], fn: Callable[..., Any]) -> None:
    x = data[0][:6]

    def result(**kw: Any) -> list[torch.Tensor]:
        out = fn(x, depth=2, **kw)
        if fn is layer_kernels:
            return [*out.sigma, *out.sigma_dot]
        if fn is fc_kernel_diag:
            return [out]
        items = out.items() if isinstance(out, dict) else ((k[:2], k[2].clone()) for k in out)
        return [v for _, v in sorted(items, key=lambda kv: kv[0])]

    new = result(b_std=0.2)
    with _warns_here(BIAS):
        old = result(beta=0.2)
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kernel_regression_beta(data: tuple[torch.Tensor, ...]) -> None:
    x, xt, y = data
    new = kernel_regression(x, y, xt, diag_reg=1e-2, depth=2, b_std=0.2)
    with _warns_here(BIAS):
        old = kernel_regression(x, y, xt, diag_reg=1e-2, depth=2, beta=0.2)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    ref = ntkit.fc_kernel(xt, x, depth=2, b_std=0.2).ntk @ torch.linalg.solve(
        ntkit.fc_kernel(x, depth=2, b_std=0.2).ntk + 1e-2 * torch.eye(len(x), dtype=F64), y)
    torch.testing.assert_close(new, ref, rtol=1e-8, atol=1e-10)


def test_nystrom_krr_beta(data: tuple[torch.Tensor, ...]) -> None:
    x, xt, y = data
    new = nystrom_krr(x, y, n_centres=10, diag_reg=1e-2, depth=2, b_std=0.2, generator=torch.Generator().manual_seed(1))
    with _warns_here(BIAS):
        old = nystrom_krr(x, y, n_centres=10, diag_reg=1e-2, depth=2, beta=0.2,
                          generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(old.predict(xt), new.predict(xt), rtol=0, atol=0)


def test_run_convergence_beta() -> None:
    kw: dict[str, Any] = dict(widths=[8, 16], n_seeds=2, depth=1, progress=False)
    new = run_convergence(b_std=0.2, **kw)
    with _warns_here(BIAS):
        old = run_convergence(beta=0.2, **kw)
    assert old.mean == new.mean and new.config["beta"] == 0.2


def test_run_dynamics_beta() -> None:
    kw: dict[str, Any] = dict(widths=[8, 16], n_inits=1, n_train=4, n_test=4, steps=2, progress=False)
    new = run_dynamics(b_std=0.2, **kw)
    with _warns_here(BIAS):
        old = run_dynamics(beta=0.2, **kw)
    assert old.means("final_loss") == new.means("final_loss")


@pytest.mark.parametrize("command", ["converge", "dynamics"])
def test_cli_beta_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ntkit.cli import build_parser

    parser = build_parser([command])
    assert parser.parse_args([command, "--b-std", "0.3"]).b_std == 0.3
    assert parser.parse_args([command]).b_std == 0.1
    assert capsys.readouterr().err == ""
    assert parser.parse_args([command, "--beta", "0.3"]).b_std == 0.3
    assert "--beta is deprecated; use --b-std" in capsys.readouterr().err


def _xy() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((30, 2))
    return x, (x[:, 0] * x[:, 1] > 0).astype(int)


@pytest.mark.parametrize("name", ["NTKRegressor", "NTKClassifier"])
def test_sklearn_estimator_beta(name: str) -> None:
    from sklearn.base import clone

    import ntkit.sklearn as sk

    cls = getattr(sk, name)
    x, y = _xy()
    new = cls(depth=2, b_std=0.3).fit(x, y)
    est = cls(depth=2, beta=0.3)
    assert clone(est).get_params()["beta"] == 0.3  # a plain parameter: scikit-learn's contract holds
    with _warns_here(BIAS):
        old = est.fit(x, y)
    assert old.b_std_ == new.b_std_ == 0.3 and old.get_params()["b_std"] == 0.1  # fit does not change parameters
    np.testing.assert_array_equal(old.predict(x), new.predict(x))
    with pytest.warns(DeprecationWarning, match=BIAS), pytest.raises(TypeError, match="expected one of them"):
        cls(b_std=0.2, beta=0.3).fit(x, y)


def test_sklearn_memory_budget() -> None:
    from ntkit.sklearn import NTKRegressor

    x, y = _xy()
    assert NTKRegressor().fit(x, y).solver_ == "cholesky"
    assert NTKRegressor(memory_budget="1K", tol=1e-12).fit(x, y).solver_ == "cg"
    with pytest.raises(ValueError, match="memory_budget: expected"):
        NTKRegressor(memory_budget="lots").fit(x, y)


def test_sklearn_kernel_beta() -> None:
    from sklearn.base import clone

    from ntkit.sklearn import NTKKernel

    x, _ = _xy()
    new = NTKKernel(depth=2, b_std=0.3, b_std_bounds="fixed")
    with _warns_here(BIAS):
        old = NTKKernel(depth=2, beta=0.3)
    assert old.b_std == 0.3 and old.beta is None
    np.testing.assert_array_equal(old(x), new(x))
    np.testing.assert_allclose(clone(old).theta, np.log([0.3, 1.0]))  # clone and theta see b_std
    with pytest.warns(DeprecationWarning, match="beta_bounds is deprecated; use b_std_bounds"):
        fixed = NTKKernel(beta_bounds="fixed")
    assert fixed.hyperparameter_b_std.fixed and fixed.beta_bounds is None
    kern = NTKKernel()
    with _warns_here(BIAS):
        kern.set_params(beta=0.3)
    assert kern.b_std == 0.3 and kern.beta is None


def test_experiment_options_module_parser() -> None:
    from ntkit.experiments._options import add_b_std_argument

    parser = argparse.ArgumentParser(prog="x")
    add_b_std_argument(parser, 0.5)
    assert "--b-std" in parser.format_help()
