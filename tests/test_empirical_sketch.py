"""Sketched empirical-NTK features (:mod:`ntkit.empirical.sketch`): ``phi phi^T`` estimates the empirical NTK.

Unbiasedness (the mean over seeds converges to the exact kernel at the Monte Carlo rate), the
``m^-1/2`` decay of the relative Frobenius error on a small MLP and a small CNN, both sketches (count
and tensor), the modes (full / trace / pseudo-NTK), float64, memory without an N x P array (a child
process's peak RSS), the resumable file output, ridge regression on the features, and the errors.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
import ntkit.empirical._sketch_map as sketch_map
from ntkit.empirical import empirical_feature_map, empirical_features
from ntkit.empirical._sketch_layers import choose_method
from ntkit.random_features.ridge import fit_feature_ridge
from tests._empirical_models import make, single_thread  # noqa: F401

SKETCHES = ["count", "tensor", "auto"]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, a residual conv block, global pooling, a linear head (BatchNorm in eval mode)."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.down = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.conv(h))
        h = torch.tanh(self.down(h))
        return self.head(h.mean((2, 3)))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = SmallCNN().double()
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 2, 6, 6, dtype=torch.float64))  # non-trivial running statistics
    return net.eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 48), nn.ReLU(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 3)).double()


def inputs(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def gram(phi: torch.Tensor) -> torch.Tensor:
    """(N, N, k, k) from full features (N, k, m)."""
    return torch.einsum("icm,jdm->ijcd", phi, phi)


def frob(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("sketch", SKETCHES)
def test_unbiased_mean_over_seeds(sketch: str) -> None:
    """The mean of ``phi phi^T`` over S seeds approaches the exact NTK like ``1 / sqrt(S)`` (no bias)."""
    net, x = mlp(), inputs((6, 5))
    exact = ntkit.empirical_ntk(net, x, mode="full")
    fmap_kw = {"sketch": sketch, "mode": "full"}
    seeds = 120
    total = torch.zeros_like(exact)
    sq = 0.0
    for s in range(seeds):
        est = gram(empirical_features(net, x, 16, seed=s, **fmap_kw))
        total += est
        sq += frob(est, exact) ** 2
    single = math.sqrt(sq / seeds)  # RMS error of one draw
    mean_err = frob(total / seeds, exact)
    assert single > 0.1  # m = 16: a single draw is far off ...
    assert mean_err < 2.0 * single / math.sqrt(seeds)  # ... and the mean converges at the Monte Carlo rate


def _slope(net: nn.Module, x: torch.Tensor, sketch: str, mode: str) -> tuple[float, list[float]]:
    ms = [256, 512, 1024, 2048, 4096]
    exact = ntkit.empirical_ntk(net, x, mode="full" if mode == "full" else mode)
    errs = []
    for m in ms:
        sq = 0.0
        for s in range(3):
            phi = empirical_features(net, x, m, seed=100 + s, sketch=sketch, mode=mode)
            est = gram(phi) if mode == "full" else phi @ phi.T
            sq += frob(est, exact) ** 2
        errs.append(math.sqrt(sq / 3))
    slope = float(np.polyfit(np.log(ms), np.log(errs), 1)[0])
    return slope, errs


@pytest.mark.parametrize("sketch", ["count", "tensor"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_error_falls_as_inverse_sqrt_m(model: str, sketch: str) -> None:
    """Relative Frobenius error over m = 256 .. 4096: fitted log-log slope in [-0.65, -0.35]."""
    if model == "mlp":
        net, x, mode = mlp(), inputs((12, 5)), "full"
    else:
        net, x, mode = small_cnn(), inputs((10, 2, 6, 6)), "trace"
    slope, errs = _slope(net, x, sketch, mode)
    assert -0.65 <= slope <= -0.35, (slope, errs)
    assert errs[-1] < 0.15, errs


def test_modes_estimate_their_kernels() -> None:
    """trace: (N, k m) for the trace kernel; pntk: (N, m) for the pseudo-NTK; full: (N, k, m)."""
    net, x = small_cnn(), inputs((8, 2, 6, 6))
    phi = empirical_features(net, x, 4096, mode="full", seed=3)
    assert phi.shape == (8, 3, 4096)
    assert frob(gram(phi), ntkit.empirical_ntk(net, x, mode="full")) < 0.15
    tr = empirical_features(net, x, 4096, mode="trace", seed=3)
    assert tr.shape == (8, 3 * 4096)
    torch.testing.assert_close(tr, phi.reshape(8, -1) / math.sqrt(3))  # the same draw, flattened and scaled
    p = empirical_features(net, x, 4096, mode="pntk", seed=3)
    assert p.shape == (8, 4096)
    assert frob(p @ p.T, ntkit.empirical_ntk(net, x, mode="pntk")) < 0.15


@pytest.mark.parametrize("name", ["batchnorm", "shared", "unknown", "cnn", "conv1d"])
def test_other_layers(name: str) -> None:
    """Batch norm, a module called twice, custom modules (per-example Jacobians), grouped and 1-d convolutions."""
    net, d = make(name)
    x = inputs((8, d))
    phi = empirical_features(net, x, 4096, seed=0)
    exact = ntkit.empirical_ntk(net, x, mode="full")
    assert frob(gram(phi), exact) < 0.15


def test_float64_and_float32() -> None:
    """Features in the model's dtype; float32 agrees with float64 to float32 rounding (same draw)."""
    net, x = mlp(), inputs((5, 5))
    phi64 = empirical_features(net, x, 512, seed=0)
    assert phi64.dtype == torch.float64
    phi32 = empirical_features(net.float(), x.float(), 512, seed=0)
    assert phi32.dtype == torch.float32
    torch.testing.assert_close(phi32.double(), phi64, rtol=1e-4, atol=1e-5)


def test_draw_does_not_depend_on_batches() -> None:
    """The same seed gives the same features whatever the batch size, budget or rows (consistent maps)."""
    net, x = small_cnn(), inputs((9, 2, 6, 6))
    a = empirical_features(net, x, 256, seed=5)
    b = empirical_features(net, x, 256, seed=5, batch_size=2, memory_budget="64MB")
    torch.testing.assert_close(a, b)
    fmap = empirical_feature_map(net, x, 256, seed=5)
    torch.testing.assert_close(fmap(x[3:5]), a[3:5])
    assert not torch.equal(empirical_features(net, x, 256, seed=6), a)


def test_auto_picks_tensor_sketch_for_wide_layers() -> None:
    """A wide dense layer (few positions) takes the tensor sketch, a small early convolution the count sketch."""
    wide = nn.Sequential(nn.Linear(4, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1)).double()
    fmap = empirical_feature_map(wide, inputs((3, 4)), 1024)
    assert fmap.methods["2.weight"] == "tensor" and fmap.methods["2.bias"] == "count"
    conv = small_cnn()
    fmap = empirical_feature_map(conv, inputs((3, 2, 6, 6)), 1024)
    layer = next(ls.layer for ls in fmap.sketches.values() if ls.layer.module is conv.stem)
    assert choose_method(layer, 1024, "auto") == "count" and fmap.methods["stem.weight"] == "count"


def test_memory_is_linear_in_n() -> None:
    """N = 2000 rows of a 2M-parameter MLP in float64 (N x P would take 32 GB): the child's peak RSS stays
    below 1.5 GB, and one pass holds ``batch_size`` rows."""
    code = textwrap.dedent(
        """
        import resource, torch
        from torch import nn
        from ntkit.empirical import empirical_features
        torch.set_num_threads(1)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(),
                            nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1)).double()
        x = torch.randn(2000, 64, dtype=torch.float64)
        phi = empirical_features(net, x, 256, memory_budget="256MB")
        assert phi.shape == (2000, 1, 256), phi.shape
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stdout.split()[-1])
    assert peak_kib < 1.5 * 2**20, peak_kib


def test_batch_size_within_budget() -> None:
    """Rows per pass shrink with the budget; the features of a batch are (rows, k, m), never (rows, P)."""
    net, x = small_cnn(), inputs((4, 2, 6, 6))
    big = empirical_feature_map(net, x, 64, memory_budget="1GB").batch_size()
    small = empirical_feature_map(net, x, 64, memory_budget="40MB").batch_size()
    assert 1 <= small < big <= sketch_map.MAX_ROWS


def test_resumable_file_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features streamed to .npy block by block; an interrupted run resumes with the missing blocks only."""
    net, x = small_cnn(), inputs((10, 2, 6, 6))
    expected = empirical_features(net, x, 128, seed=2)
    path = tmp_path / "phi.npy"
    calls = {"n": 0}
    original = sketch_map.EmpiricalFeatureMap.__call__

    def flaky(self: sketch_map.EmpiricalFeatureMap, rows: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, rows)

    monkeypatch.setattr(sketch_map.EmpiricalFeatureMap, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        empirical_features(net, x, 128, seed=2, batch_size=3, out=path)
    calls["n"] = 10  # no more interruptions
    got = empirical_features(net, x, 128, seed=2, batch_size=3, out=path)
    assert calls["n"] == 12  # blocks 0 and 1 were kept, blocks 2 and 3 computed
    assert isinstance(got, np.ndarray) and got.shape == (10, 3, 128)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="different parameters"):
        empirical_features(net, x, 128, seed=3, batch_size=3, out=path)
    again = empirical_features(net, x, 128, seed=3, batch_size=3, out=path, overwrite=True)
    assert not np.allclose(again, got)


def test_ridge_on_features_matches_kernel_ridge() -> None:
    """The ``solver="features"`` path: ridge regression on the features approaches kernel ridge regression
    with the exact (trace) empirical NTK."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 48), nn.ReLU(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 1)).double()
    x = inputs((40, 5))
    y = torch.sin(x[:, 0])
    exact = ntkit.empirical_ntk(net, x, mode="trace")
    reg = 1e-1 * float(exact.diagonal().mean())
    alpha = torch.linalg.solve(exact + reg * torch.eye(40, dtype=torch.float64), y)
    xt = inputs((7, 5), seed=9)
    want = ntkit.empirical_ntk(net, xt, x, mode="trace") @ alpha
    fmap = empirical_feature_map(net, x, 2048, mode="trace", seed=0)  # a scalar output: (N, m) features
    assert fmap.m == 2048
    fit = fit_feature_ridge(fmap, x, y, diag_reg=reg)
    got = fit.predict(xt)
    assert got.shape == (7,)
    assert float(torch.linalg.norm(got - want) / torch.linalg.norm(want)) < 0.1


def test_errors() -> None:
    net, x = mlp(), inputs((4, 5))
    with pytest.raises(ValueError, match=r"m: expected an integer >= 1, got 0"):
        empirical_features(net, x, 0)
    with pytest.raises(TypeError, match="m: expected an integer"):
        empirical_features(net, x, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        empirical_features(net, x, 8, mode="diagonal")
    with pytest.raises(ValueError, match="sketch"):
        empirical_features(net, x, 8, sketch="gaussian")
    with pytest.raises(ValueError, match="seed, generator: expected one of them"):
        empirical_features(net, x, 8, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"generator: expected a torch\.Generator"):
        empirical_features(net, x, 8, generator=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        empirical_features(lambda t: t, x, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parameters"):
        empirical_features(net, x, 8, parameters=["nope.weight"])
    with pytest.raises(ValueError, match=r"ending in \.npy or \.zarr"):
        empirical_features(net, x, 8, out="phi.txt")
    bn, d = make("batchnorm")
    with pytest.raises(ValueError, match=r"eval mode \(call model.eval\(\)\)"):
        empirical_features(bn.train(), inputs((4, d)), 8)


def test_rows_mixing_model_refused() -> None:
    class BatchMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            return h - h.mean(0, keepdim=True)

    with pytest.raises(ValueError, match="depend on input row i only"):
        empirical_features(BatchMean(), inputs((4, 3)), 8)
