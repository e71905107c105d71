"""``ntkit bench fashion``'s grids beyond depth and bias: the weight variance and the activation, each kernel
against closed forms written out here independently of the library."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ntkit.cli import main as cli_main
from ntkit.compute.api import compute_kernel
from ntkit.experiments.fashion import Settings, prepare, run_fashion_benchmark
from ntkit.experiments.images_kernels import KernelSpec
from tests.fashion_files import bench_args, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")  # small kernels: one thread each


def _relu_kernels(x: torch.Tensor, depth: int, w_var: float, b_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NNGP and NTK of ``depth`` hidden ReLU layers, ``sigma_w^2 = w_var`` and ``b_std`` in every layer, by the
    arc-cosine closed forms (Cho & Saul 2009), written out here independently of the library."""
    k = w_var * x @ x.T / x.shape[1] + b_std**2
    theta = k
    for _ in range(depth):
        norm = torch.sqrt(torch.outer(k.diagonal(), k.diagonal()))
        t = torch.arccos((k / norm).clamp(-1.0, 1.0))
        k = w_var / (2 * math.pi) * norm * (torch.sin(t) + (math.pi - t) * torch.cos(t)) + b_std**2
        theta = k + w_var / (2 * math.pi) * (math.pi - t) * theta
    return k, theta


def test_weight_variance_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--fc-w-vars``: every depth at every (``w_var``, ``b_std``), in the tie order; the kernels are the
    closed forms at ``sigma_w^2 = w_var``; without biases the weight variance only scales the kernels, which
    the relative ridge absorbs (the same validation accuracies); ``w_var = 2`` keeps the old records' names."""
    data_dir = write_dataset(tmp_path / "data")
    s = Settings(stages=("fc",), n_train=60, n_val=20, n_test=40, n_sweep=40, fc_depths=(1,), fc_b_stds=(0.3, 0.0),
                 fc_w_vars=(2.0, 1.0), sizes=(), finals=("nngp",), data_dir=str(data_dir))
    summary = run_fashion_benchmark(s, tmp_path / "out", progress=False, plot=False)
    sweeps = {rec["name"]: rec for rec in summary["stages"]["fc"]["sweeps"]}
    assert list(sweeps) == ["sweep-fc1-w1.0", "sweep-fc1-w1.0-b0.3", "sweep-fc1", "sweep-fc1-b0.3"]
    assert [(r["w_var"], r["b_std"]) for r in sweeps.values()] == [(1.0, 0.0), (1.0, 0.3), (2.0, 0.0), (2.0, 0.3)]
    assert sweeps["sweep-fc1-w1.0"]["val_acc"] == sweeps["sweep-fc1"]["val_acc"]
    (final,) = summary["stages"]["fc"]["finals"]
    assert final["w_var"] in (1.0, 2.0) and final["name"].startswith("final-fc1")
    x = prepare(s).x_pool[:6].flatten(1)
    for w_var, b_std, depth in ((1.5, 0.3, 2), (2.0, 0.0, 1), (2.5, 1.0, 3)):
        spec = KernelSpec("fc", depth, b_std=b_std, w_var=w_var)
        got = compute_kernel(spec.model((28, 28)), x, which="both")
        nngp, ntk = _relu_kernels(x, depth, w_var, b_std)
        torch.testing.assert_close(got.nngp, nngp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.ntk, ntk, rtol=1e-10, atol=1e-12)
    spec = KernelSpec("fc", 3, b_std=0.1, w_var=1.5)
    assert spec.token == "fc3-w1.5-b0.1" and spec.name == "FC-3 w_var 1.5 b_std 0.1"
    assert spec.with_features(64).exact == spec and KernelSpec("gap", 2, w_var=2.0).token == "gap2"
    base = bench_args(data_dir, tmp_path / "o")
    assert cli_main([*base, "--fc-w-vars", "2", "0"]) == 2
    assert "--fc-w-vars: expected finite numbers > 0 (weight variances), got 0.0" in capsys.readouterr().err
    assert cli_main([*base, "--cnn-w-vars", "inf"]) == 2
    assert "--cnn-w-vars: expected finite numbers > 0 (weight variances), got inf" in capsys.readouterr().err


def _erf_kernels(x: torch.Tensor, depth: int, w_var: float, b_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NNGP and NTK of ``depth`` hidden erf layers by Williams' (1997) closed forms:
    ``E[erf(u) erf(v)] = (2 / pi) arcsin(2 k_uv / sqrt((1 + 2 k_uu)(1 + 2 k_vv)))`` and
    ``E[erf'(u) erf'(v)] = (4 / pi) / sqrt((1 + 2 k_uu)(1 + 2 k_vv) - 4 k_uv^2)`` for ``(u, v) ~ N(0, k)``."""
    k = w_var * x @ x.T / x.shape[1] + b_std**2
    theta = k
    for _ in range(depth):
        d = 1 + 2 * k.diagonal()
        prod = torch.outer(d, d)
        dot = w_var * 4 / math.pi / torch.sqrt(prod - 4 * k * k)
        k = w_var * 2 / math.pi * torch.arcsin(2 * k / torch.sqrt(prod)) + b_std**2
        theta = k + dot * theta
    return k, theta


def _erf_conv_nngp(images: torch.Tensor, w_var: float) -> torch.Tensor:
    """NNGP of one 3x3 convolution (zero padding), erf, and a linear read-out of the flattened maps (CNTK-V-1,
    no biases): the read-out averages the per-pixel erf kernel ``w_var (2 / pi) arcsin(...)`` over the pixels."""
    patches = torch.nn.functional.unfold(images, 3, padding=1)  # (N, 9, P)
    k = w_var * torch.einsum("akp,bkp->abp", patches, patches) / 9
    d = 1 + 2 * torch.diagonal(k).T  # (N, P)
    per_pixel = torch.arcsin(2 * k / torch.sqrt(d[:, None, :] * d[None, :, :]))
    return w_var * 2 / math.pi * per_pixel.mean(-1)


def test_activation_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--fc-activations relu erf``: every depth with every activation, in the order given (the tie order), the
    activation in the records and on the results page; FC and CNN erf kernels equal Williams' closed forms; erf
    is not homogeneous, so the weight variance changes the shape of its kernel (the correlations), not only the
    scale; ReLU keeps the old records' names."""
    data_dir = write_dataset(tmp_path / "data")
    s = Settings(stages=("fc",), n_train=60, n_val=20, n_test=40, n_sweep=40, fc_depths=(1, 2), fc_b_stds=(0.0,),
                 fc_w_vars=(1.0,), fc_activations=("relu", "erf"), sizes=(), finals=("ntk",), data_dir=str(data_dir))
    out = tmp_path / "out"
    summary = run_fashion_benchmark(s, out, progress=False, plot=False)
    sweeps = summary["stages"]["fc"]["sweeps"]
    assert [r["name"] for r in sweeps] == ["sweep-fc1-w1.0", "sweep-fc1-erf-w1.0", "sweep-fc2-w1.0",
                                           "sweep-fc2-erf-w1.0"]
    assert [r["activation"] for r in sweeps] == ["relu", "erf", "relu", "erf"]
    (final,) = summary["stages"]["fc"]["finals"]
    best = max(max(a for a in r["val_acc"]["ntk"] if a is not None) for r in sweeps)
    first = next(r for r in sweeps if best in r["val_acc"]["ntk"])  # the first maximum in sweep order
    assert final["kernel"] == first["kernel"] and final["activation"] == first["activation"]
    assert "| fc1-erf-w1.0 | erf | 1 | 0 |" in (out / "results.md").read_text()
    data = prepare(s)
    x = data.x_pool[:6].flatten(1)
    x[5] = x[4]  # a duplicated row: the arcsin at the diagonal's value
    for w_var, b_std, depth in ((1.0, 0.0, 1), (1.5, 0.3, 2), (4.0, 1.0, 3)):
        spec = KernelSpec("fc", depth, b_std=b_std, w_var=w_var, activation="erf")
        got = compute_kernel(spec.model((28, 28)), x, which="both")
        nngp, ntk = _erf_kernels(x, depth, w_var, b_std)
        torch.testing.assert_close(got.nngp, nngp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.ntk, ntk, rtol=1e-10, atol=1e-12)
    k1, _ = _erf_kernels(x, 2, 1.0, 0.0)
    k4, _ = _erf_kernels(x, 2, 4.0, 0.0)
    corr = [k / torch.sqrt(torch.outer(k.diagonal(), k.diagonal())) for k in (k1, k4)]
    assert (corr[0] - corr[1]).abs().max() > 1e-3  # the weight variance shapes an erf kernel
    spec = KernelSpec("fc", 3, b_std=0.1, w_var=1.5, activation="erf")
    assert spec.token == "fc3-erf-w1.5-b0.1" and spec.name == "FC-3 erf w_var 1.5 b_std 0.1"
    assert spec.with_features(64).exact == spec and KernelSpec("fc", 3, activation="relu").token == "fc3"
    images = data.x_pool[:4]
    conv = compute_kernel(KernelSpec("v", 1, w_var=1.5, activation="erf").model((28, 28)), images, which="nngp")
    torch.testing.assert_close(conv.nngp, _erf_conv_nngp(images, 1.5), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="Myrtle is ReLU only, got activation 'erf'"):
        KernelSpec("myrtle", 5, activation="erf").model((32, 32))
    base = bench_args(data_dir, tmp_path / "o")
    assert cli_main([*base, "--fc-activations", "relu", "relo"]) == 2
    assert "--fc-activations: expected activation names among ['ab_relu'," in capsys.readouterr().err
    assert cli_main([*base, "--cnn-activations", "sigmoid_lik"]) == 2
    assert "got 'sigmoid_lik'" in capsys.readouterr().err
