"""Convolutional models through everything downstream: disk and resume, Dask, solvers, scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ntkit
from ntkit.solve import KernelOperator, kernel_regression
from tests.conftest import rel_err

F64 = torch.float64
MODEL = ntkit.nn.myrtle(5, 1, device="meta")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(seed))
    x[-1] = x[0]
    return x


def test_out_of_core_and_resume(tmp_path: Path) -> None:
    x = _images(30)
    ref = ntkit.infinite_kernel(MODEL, x)
    out = tmp_path / "k.npy"
    first = ntkit.compute_kernel(MODEL, x, out=out, tile=8)
    assert first.tiles_computed == first.tiles_total == 10
    assert np.array_equal(np.asarray(first.ntk), ref.ntk.numpy())
    again = ntkit.compute_kernel(MODEL, x, out=out, tile=8)
    assert again.tiles_computed == 0  # resumed: nothing left to do
    with pytest.raises(ValueError, match="different parameters"):
        ntkit.compute_kernel(ntkit.nn.cntk(1, 2, device="meta"), x, out=out, tile=8)


def test_solvers_and_operators_take_the_model() -> None:
    x, xt = _images(40), _images(7, seed=1)
    y = torch.sin(x.reshape(40, -1).sum(1, keepdim=True))
    k, kt = ntkit.infinite_kernel(MODEL, x, which="ntk"), ntkit.infinite_kernel(MODEL, xt, x, which="ntk")
    exact = kt @ torch.linalg.solve(k + 1e-2 * torch.eye(40, dtype=F64), y)
    for solver in ("cholesky", "cg", "nystrom"):
        pred = kernel_regression(x, y, xt, model=MODEL, diag_reg=1e-2, solver=solver, n_centres=40, tol=1e-10)
        assert rel_err(pred, exact) < 1e-6, solver
    op = KernelOperator(x, model=MODEL)
    rng = torch.Generator().manual_seed(121)
    v = torch.randn(40, dtype=F64, generator=rng)
    assert rel_err(op @ v, k @ v) < 1e-12 and rel_err(op.diag(), k.diagonal()) < 1e-12


def test_sklearn_on_images() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from ntkit.sklearn import NTKClassifier, NTKRegressor

    digits = load_digits()
    x = digits.data[:240] / 16.0
    y = digits.target[:240]
    cnn = ntkit.nn.cntk(1, depth=2, device="meta")
    clf = NTKClassifier(model=cnn, input_shape=(1, 8, 8), which="ntk", diag_reg=1e-3).fit(x[:200], y[:200])
    assert clf.score(x[200:], y[200:]) > 0.8
    svc = NTKClassifier(model=cnn, input_shape=(1, 8, 8), method="svc", C=1e3).fit(x[:200], y[:200])  # K ~ 0.1
    assert svc.score(x[200:], y[200:]) > 0.8
    reg = NTKRegressor(model=cnn, input_shape=(1, 8, 8), solver="cg", diag_reg=1e-3).fit(x[:100], y[:100])
    assert reg.predict(x[100:110]).shape == (10,)
    with pytest.raises(ValueError, match="input_shape: expected a shape with 64 entries"):
        NTKRegressor(model=cnn, input_shape=(1, 4, 4)).fit(x[:10], y[:10])


distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  scheduler_port=0, silence_logs=50) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def test_dask_workers_compute_the_same_convolutional_kernel(client: Any) -> None:
    x = _images(21)
    local = ntkit.compute_kernel(MODEL, x, tile=6)
    remote = ntkit.compute_kernel(MODEL, x, tile=6, scheduler=client)
    assert torch.equal(remote.ntk, local.ntk) and torch.equal(remote.nngp, local.nngp)
