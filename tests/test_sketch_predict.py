"""Kernel regression with the sketched empirical NTK of a finite model through the solvers
(:class:`ntkit.empirical.EmpiricalTiles`, ``kernel_regression(..., kernel="empirical")``, ``solver="features"``).

The sketched predictions approach kernel regression with the exact empirical NTK as ``m`` grows (on an MLP
and on a CNN with two outputs, whose trace features carry the ``1 / sqrt(k)`` scale), the features'
Gram matrix estimates the kernel at the right scale, the predictors of :mod:`ntkit.predict` take the same
operator, batch sizes agree, an interrupted fit resumes from its checkpoint bit for bit, and the errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
import ntkit.random_features
import ntkit.random_features.ridge as ridge
from ntkit.empirical import EmpiricalTiles, empirical_feature_map
from ntkit.empirical._sketch_map import EmpiricalFeatureMap
from ntkit.predict import gradient_descent_mse
from ntkit.random_features import fit_feature_ridge
from ntkit.solve import KernelOperator, KernelSystem, kernel_regression
from tests._empirical_models import single_thread  # noqa: F401

F64 = torch.float64


def inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


class SmallCNN(nn.Module):
    """Two convolutions (one strided), global mean pooling, a linear head with two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.c2(F.relu(self.c1(x))))
        return self.head(h.mean((2, 3)))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().double()


def problem(net: nn.Module, shape: tuple[int, ...], cols: int | None) -> tuple[Any, ...]:
    """Inputs, targets, test inputs, the ridge and the exact kernel-regression predictions."""
    x, xt = inputs((40, *shape)), inputs((8, *shape), seed=1)
    flat = x.flatten(1)
    y = torch.sin(flat[:, 0]) if cols is None else torch.stack([torch.sin(flat[:, 0]), flat[:, 1]], 1)
    k = ntkit.empirical_ntk(net, x, mode="trace")
    reg = 0.1 * float(k.diagonal().mean())
    exact = ntkit.empirical_ntk(net, xt, x, mode="trace") @ torch.linalg.solve(k + reg * torch.eye(40, dtype=F64), y)
    return x, y, xt, reg, exact, k


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, reg: float, m: int, seed: int = 0) -> KernelSystem:
    op = KernelOperator(x, tile_fn=EmpiricalTiles(net))
    gen = torch.Generator().manual_seed(seed)
    return KernelSystem(op, y, diag_reg=reg, solver="features", n_features=m, generator=gen)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_sketched_predictions_approach_exact_empirical_regression(case: str) -> None:
    """Error of the sketched predictions against exact kernel regression falls with ``m`` (about 0.4 -> 0.03 on
    the MLP from m = 32 to 1024, 0.7 -> 0.15 on the CNN from 32 to 512); the Gram matrix of the fitted features
    estimates the kernel at its scale."""
    net, shape, cols, m, small_bound, big_bound = (
        (mlp(), (5,), None, 1024, 0.1, 0.08) if case == "mlp" else (cnn(), (1, 6, 6), 2, 512, 0.35, 0.25)
    )
    x, y, xt, reg, exact, k = problem(net, shape, cols)
    if case == "mlp":  # the exact tiles through the same front end give the same regression
        chol = kernel_regression(x, y, xt, diag_reg=reg, model=net, kernel="empirical", solver="cholesky")
        torch.testing.assert_close(chol, exact, rtol=1e-9, atol=1e-12)
    small = [rel(fit(net, x, y, reg, 32, s).predict(x_test=xt), exact) for s in (0, 1)]
    systems = [fit(net, x, y, reg, m, s) for s in (0, 1)]
    big = [rel(system.predict(x_test=xt), exact) for system in systems]
    assert min(small) > small_bound and max(big) < big_bound
    assert sum(big) < sum(small) / 2.5
    # kernel_regression(kernel="empirical") is this system
    front = kernel_regression(x, y, xt, diag_reg=reg, model=net, kernel="empirical", solver="features", n_features=m)
    torch.testing.assert_close(front, systems[0].predict(x_test=xt), rtol=1e-12, atol=1e-12)
    assert front.shape == exact.shape
    # the features the solver fits: Phi Phi^T ~ Theta (a wrong scale, e.g. without 1 / sqrt(k), fails here)
    assert systems[0]._features is not None
    fmap = systems[0]._features.ridge.fmap
    assert fmap.m == m * (1 if cols is None else cols)
    phi = torch.cat([p for _, p in fmap.batches(x)])
    assert rel(phi @ phi.T, k) < 0.15
    scaled = torch.sqrt(torch.tensor(2.0, dtype=F64)) * phi
    assert rel(scaled @ scaled.T, k) > 0.5


def test_predict_and_pseudo_ntk_paths() -> None:
    """``ntkit.predict.gradient_descent_mse`` on the same operator gives the same predictions; the pseudo-NTK
    (``which="pntk"``, one backward pass per input) approaches its exact regression."""
    net = cnn()
    x, y, xt, reg, _, _ = problem(net, (1, 6, 6), 2)
    want = fit(net, x, y, reg, 256).predict(x_test=xt)
    op = KernelOperator(x, tile_fn=EmpiricalTiles(net))
    fn = gradient_descent_mse(op, y, diag_reg=reg, solver="features", n_features=256)
    torch.testing.assert_close(fn(None, x_test=xt).test, want, rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(0)  # default m: a ridge of min(N, 4096) features, m = 40 // k per output
    assert EmpiricalTiles(net).feature_map(x, None, gen).m == 40
    assert EmpiricalTiles(net, mode="pntk").feature_map(x, None, gen).m == 40
    kp = ntkit.empirical_ntk(net, x, mode="pntk")
    exact = ntkit.empirical_ntk(net, xt, x, mode="pntk") @ torch.linalg.solve(kp + reg * torch.eye(40, dtype=F64), y)
    got = kernel_regression(x, y, xt, diag_reg=reg, model=net, kernel="empirical", which="pntk", solver="features",
                            n_features=1024)
    assert rel(got, exact) < 0.25


def test_batch_sizes_agree() -> None:
    net = mlp()
    x, y, xt, reg, _, _ = problem(net, (5,), None)
    out = []
    for b in (None, 3, 40):
        op = KernelOperator(x, tile_fn=EmpiricalTiles(net, batch_size=b))
        out.append(KernelSystem(op, y, diag_reg=reg, solver="features", n_features=128).predict(x_test=xt))
    for o in out[1:]:
        torch.testing.assert_close(o, out[0], rtol=1e-10, atol=1e-12)


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, reg: float, path: Path | None) -> Any:
    op = KernelOperator(x, tile_fn=EmpiricalTiles(net, batch_size=6, checkpoint=path))
    return KernelSystem(op, y, diag_reg=reg, solver="features", n_features=64).predict(x_test=xt)


def test_resume_from_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted fit resumes after its last saved batch and gives the uninterrupted weights bit for bit; a
    finished checkpoint is not recomputed; another fit in the same file is an error."""
    net = mlp()
    x, y, xt, reg, _, _ = problem(net, (5,), None)
    want = _fit(net, x, y, xt, reg, None)
    monkeypatch.setattr(ridge, "CHECKPOINT_EVERY", 0.0)
    orig = EmpiricalFeatureMap.batches
    seen: list[int] = []

    def failing(self: Any, xs: torch.Tensor, batch_size: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        for i, item in enumerate(orig(self, xs, batch_size)):
            if i == 3:
                raise RuntimeError("interrupted")
            yield item

    def counting(self: Any, xs: torch.Tensor, batch_size: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        seen.append(xs.shape[0])
        yield from orig(self, xs, batch_size)

    path = tmp_path / "fit.pt"
    monkeypatch.setattr(EmpiricalFeatureMap, "batches", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(net, x, y, xt, reg, path)
    assert torch.load(path, weights_only=True)["rows"] == 18  # three batches of 6 saved
    monkeypatch.setattr(EmpiricalFeatureMap, "batches", counting)
    got = _fit(net, x, y, xt, reg, path)
    assert seen[0] == 40 - 18  # the training pass resumed at row 18 (then the 8 test inputs)
    assert torch.equal(got, want)
    seen.clear()
    assert torch.equal(_fit(net, x, y, xt, reg, path), want)
    assert seen == [8]  # finished: only the test inputs
    with pytest.raises(ValueError, match=r"checkpoint: .* holds another fit \(it differs in y\)"):
        _fit(net, x, y + 1.0, xt, reg, path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        _fit(net, x, y, xt, reg, path)
    fmap = empirical_feature_map(net, x, 16, mode="trace")
    with pytest.raises(ValueError, match="identity: expected a description of the feature map"):
        fit_feature_ridge(fmap, x, y, diag_reg=reg, checkpoint=tmp_path / "other.pt")


def test_errors() -> None:
    net = mlp()
    x, y = inputs((6, 5)), inputs((6,), seed=2)
    with pytest.raises(ValueError, match=r"kernel: expected one of \['infinite', 'empirical'\], got 'finite'"):
        kernel_regression(x, y, x, diag_reg=0.1, model=net, kernel="finite", solver="features")
    with pytest.raises(ValueError, match="n_features: expected an integer >= 1, got 0"):
        kernel_regression(x, y, x, diag_reg=0.1, model=net, kernel="empirical", solver="features", n_features=0)
    with pytest.raises(ValueError, match=r"model: kernel 'empirical' needs a torch\.nn\.Module, got None"):
        kernel_regression(x, y, x, diag_reg=0.1, kernel="empirical", solver="features")
    with pytest.raises(ValueError, match="kernel: 'empirical' takes the finite torch model as model=, got depth"):
        kernel_regression(x, y, x, diag_reg=0.1, model=net, depth=2, kernel="empirical", solver="features")
    with pytest.raises(ValueError, match="which: expected 'ntk' or 'pntk' for kernel 'empirical', got 'nngp'"):
        kernel_regression(x, y, x, diag_reg=0.1, model=net, kernel="empirical", which="nngp", solver="features")
    flat = nn.Sequential(net, nn.Flatten(0))  # outputs (N,), not (N, k)
    with pytest.raises(ValueError, match=r"model: expected an output of shape \(N, k\)"):
        kernel_regression(x, y, x, diag_reg=0.1, model=flat, kernel="empirical", solver="features", n_features=8)
    with pytest.raises(ValueError, match=r"x_train: the model failed on an input of shape \(1, 5\)|model failed"):
        kernel_regression(inputs((6, 4)), y, inputs((6, 4)), diag_reg=0.1, model=net, kernel="empirical",
                          solver="features", n_features=8)
    with pytest.raises(ValueError, match="mode: expected one of"):
        EmpiricalTiles(net, mode="full")
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        EmpiricalTiles("net")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="checkpoint: expected a path"):
        EmpiricalTiles(net, checkpoint=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="diag_reg: expected a ridge > 0 for solver 'features'"):
        KernelSystem(KernelOperator(x, tile_fn=EmpiricalTiles(net)), y, diag_reg=0.0, solver="features")
    with pytest.raises(ValueError, match=r"needs the kernel as a KernelOperator of a model .*FeatureTiles"):
        KernelSystem(torch.eye(6, dtype=F64), y, diag_reg=0.1, solver="features")


def test_fit_feature_ridge_is_exported() -> None:
    assert "fit_feature_ridge" in ntkit.random_features.__all__
    assert ntkit.random_features.fit_feature_ridge is ridge.fit_feature_ridge
    assert "EmpiricalTiles" in ntkit.empirical.__all__
