"""ntkit.sklearn: estimator conformance (check_estimator), maths against fc_kernel, GP kernel."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra: pip install -e '.[test]'")

from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, SkipTestWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import WhiteKernel
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import ntkit
from ntkit.sklearn import NTKClassifier, NTKKernel, NTKRegressor

ESTIMATORS = [
    NTKRegressor(),
    NTKClassifier(),
    NTKClassifier(method="svc", C=10.0),
    GaussianProcessRegressor(kernel=NTKKernel(depth=2), optimizer=None),  # the optimiser is tested below
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: repr(e)[:60])
def test_check_estimator(estimator: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)  # pandas / array-API checks skipped by sklearn
        warnings.simplefilter("ignore", ConvergenceWarning)  # lbfgs on sklearn's tiny check data sets
        results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert failed == []
    assert sum(r["status"] == "passed" for r in results) >= 45


def _data(gen: torch.Generator, n: int = 40, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).numpy()
    return x, np.sin(x @ np.array([1.0, -2.0, 0.5])[:d])


def test_regressor_is_kernel_ridge_with_fc_kernel(gen: torch.Generator) -> None:
    x, y = _data(gen)
    xt = torch.randn(9, 3, generator=gen, dtype=torch.float64).numpy()
    reg = NTKRegressor(depth=2, b_std=0.2, w_std=1.3, diag_reg=1e-3).fit(x, y)
    k = ntkit.fc_kernel(torch.from_numpy(x), depth=2, b_std=0.2, w_std=1.3).ntk.numpy()
    kt = ntkit.fc_kernel(torch.from_numpy(xt), torch.from_numpy(x), depth=2, b_std=0.2, w_std=1.3).ntk.numpy()
    lam = 1e-3 * np.mean(np.diag(k))
    expect = kt @ np.linalg.solve(k + lam * np.eye(len(x)), y - y.mean()) + y.mean()
    np.testing.assert_allclose(reg.predict(xt), expect, rtol=1e-9, atol=1e-12)
    # multi-output = column by column; interpolation of the training data with a tiny ridge
    y2 = np.stack([y, 2 * y + 1], axis=1)
    pred2 = NTKRegressor(depth=2, b_std=0.2, w_std=1.3, diag_reg=1e-3).fit(x, y2).predict(xt)
    np.testing.assert_allclose(pred2[:, 0], expect, rtol=1e-9, atol=1e-12)
    assert NTKRegressor(depth=2, diag_reg=1e-10).fit(x, y).score(x, y) > 0.999999


def test_classifier_methods_agree_with_definitions(gen: torch.Generator) -> None:
    from sklearn.svm import SVC

    x, y = _data(gen, n=60)
    labels = np.where(y > 0.3, "high", np.where(y < -0.3, "low", "mid"))
    reg_clf = NTKClassifier(depth=1, b_std=0.1).fit(x, labels)
    onehot = (labels[:, None] == reg_clf.classes_[None, :]).astype(float)
    scores = NTKRegressor(depth=1, b_std=0.1).fit(x, onehot).predict(x)
    np.testing.assert_array_equal(reg_clf.predict(x), reg_clf.classes_[np.argmax(scores, axis=1)])
    assert reg_clf.score(x, labels) == 1.0  # near-interpolation of one-hot targets
    svc_clf = NTKClassifier(depth=2, b_std=0.0, method="svc", C=3.0).fit(x, labels)
    k = ntkit.fc_kernel(torch.from_numpy(x), depth=2, b_std=0.0).ntk.numpy()
    ref = SVC(kernel="precomputed", C=3.0).fit(k, labels)
    np.testing.assert_array_equal(svc_clf.predict(x), ref.predict(k))
    assert set(svc_clf.predict(x)) <= set(labels)


def test_ntk_kernel_in_gp_gridsearch_and_pipeline(gen: torch.Generator) -> None:
    x, y = _data(gen, n=30)
    kern = NTKKernel(depth=2, b_std=0.3, w_std=1.2)
    k = kern(x)
    np.testing.assert_allclose(k, ntkit.fc_kernel(torch.from_numpy(x), depth=2, b_std=0.3, w_std=1.2).ntk.numpy())
    np.testing.assert_allclose(kern.diag(x), np.diag(k), rtol=1e-12)
    assert not kern.is_stationary()
    names = {h.name: h.fixed for h in kern.hyperparameters}
    assert names == {"depth": True, "activation": True, "b_std": False, "w_std": False}
    np.testing.assert_allclose(kern.theta, np.log([0.3, 1.2]))
    # finite-difference gradient in log space against an independent (wider-step) difference
    _, grad = kern(x, eval_gradient=True)
    assert grad.shape == (30, 30, 2)
    eps = 1e-4
    for i in range(2):
        up, down = kern.theta.copy(), kern.theta.copy()
        up[i] += eps
        down[i] -= eps
        num = (kern.clone_with_theta(up)(x) - kern.clone_with_theta(down)(x)) / (2 * eps)
        np.testing.assert_allclose(grad[..., i], num, rtol=1e-6, atol=1e-9)
    fixed = NTKKernel(b_std=0.0, b_std_bounds="fixed")
    assert fixed(x, eval_gradient=True)[1].shape == (30, 30, 1)
    # GP with optimised b_std / w_std and a white-noise term
    gpr = GaussianProcessRegressor(
        kernel=NTKKernel(depth=1) + WhiteKernel(1e-3, noise_level_bounds="fixed"), random_state=0
    ).fit(x, y)
    assert gpr.score(x, y) > 0.99
    # grid search over the discrete hyperparameters, inside a pipeline
    pipe = make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel=NTKKernel(), optimizer=None, alpha=1e-3))
    grid = GridSearchCV(
        pipe,
        {
            "gaussianprocessregressor__kernel__depth": [1, 3],
            "gaussianprocessregressor__kernel__activation": ["relu", "erf"],
        },
        cv=3,
    ).fit(x, y)
    assert grid.best_params_["gaussianprocessregressor__kernel__depth"] in (1, 3)
    best_kernel = grid.best_estimator_[-1].kernel_
    assert isinstance(best_kernel, NTKKernel)
    assert best_kernel.activation == grid.best_params_["gaussianprocessregressor__kernel__activation"]
    reg_grid = GridSearchCV(NTKRegressor(), {"depth": [0, 2], "which": ["ntk", "nngp"]}, cv=3).fit(x, y)
    assert clone(reg_grid.best_estimator_).get_params()["depth"] in (0, 2)


def test_bad_parameters_and_inputs(gen: torch.Generator) -> None:
    x, y = _data(gen, n=10)
    with pytest.raises(ValueError, match="which: expected one of"):
        NTKRegressor(which="gp").fit(x, y)
    with pytest.raises(ValueError, match="solver: expected one of"):
        NTKRegressor(solver="cg-magic").fit(x, y)
    with pytest.raises(ValueError, match="activation: expected one of"):
        NTKClassifier(activation="nope").fit(x, y > 0)
    with pytest.raises(ValueError, match="method: expected one of"):
        NTKClassifier(method="knn").fit(x, y > 0)
    with pytest.raises(TypeError, match="depth: expected an integer"):
        NTKRegressor(depth=1.5).fit(x, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 classes"):
        NTKClassifier().fit(x, np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        NTKRegressor().fit(np.where(x > 1, np.nan, x), y)
    with pytest.raises(ValueError, match="features"):
        NTKRegressor().fit(x, y).predict(x[:, :2])
    with pytest.raises(ValueError, match="which: expected one of"):
        NTKKernel(which="gp")(x)


def test_import_ntkit_does_not_import_sklearn() -> None:
    code = "import sys, ntkit, ntkit.layerwise; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
