"""Architectures as text or Python files (``--arch``): parsing, building, and the commands that take them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit
from ntkit.cli import main
from ntkit.nn.arch_spec import load_arch, parse_arch
from tests.conftest import rel_err


def test_text_builds_the_model_it_says() -> None:
    spec = load_arch("dense residual(relu, dense(b_std=0.5), relu, dense) layernorm(eps=0) tanh dense")
    model = spec.build(32, (3,), 2, w_std=1.2, b_std=0.1, dtype=torch.float64)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "Residual", "LayerNorm", "Activation", "Linear"]
    assert model[0].out_features == 32 and model[-1].out_features == 2 and model[0].w_std == 1.2
    inner = list(model[1].block)
    assert inner[1].b_std == 0.5 and inner[3].b_std == 0.1 and model[2].eps == 0.0
    assert model(torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).shape == (4, 2)


def test_text_for_images_and_repetition() -> None:
    spec = load_arch("repeat(2, conv(3, padding=circular), relu) avgpool(2) conv(2, stride=2) leaky_relu(0.2) "
                     "flatten dense")
    model = spec.build(8, (1, 8, 8), 1, device="meta")
    assert sum(isinstance(m, ntkit.nn.Conv2d) for m in model) == 3
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert ntkit.infinite_kernel(model, x, which="ntk").shape == (3, 3)
    conv1d = load_arch("conv(3) relu gap dense").build(4, (2, 9), 1, device="meta")
    assert isinstance(conv1d[0], ntkit.nn.Conv1d)


def test_the_default_text_is_the_fully_connected_network() -> None:
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = load_arch("dense relu dense relu dense").build(16, (3,), 1, b_std=0.2, device="meta")
    k, ref = ntkit.infinite_kernel(model, x), ntkit.fc_kernel(x, depth=2, b_std=0.2)
    assert rel_err(k.ntk, ref.ntk) < 1e-15


@pytest.mark.parametrize(
    ("text", "match"),
    [("dense relu dense(", "expected more"), ("dense foo dense", "unknown layer 'foo'"), ("", "expected a description"),
     ("dense relu(dense) dense", "takes no arguments"), ("repeat(0, dense) dense", "repeat"),
     ("dense residual(dense(width=3)) dense", "residual block changes the shape"),
     ("conv(0) dense", "positive integer kernel_size"), ("dense 3 dense", "expected a layer name")],
)
def test_bad_text(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_arch(text).build(8, (3,), 1)


def test_python_file(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(
        "import torch, ntkit\n"
        "def build(width, in_shape, out_features):\n"
        "    return torch.nn.Sequential(ntkit.nn.Linear(in_shape[0], width, b_std=0.1), torch.nn.Tanh(),\n"
        "                               ntkit.nn.Linear(width, out_features, b_std=0.1))\n"
    )
    spec = load_arch(str(path))
    a = spec.build(64, (3,), 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = spec.build(64, (3,), 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(a[0].weight, b[0].weight) and a[0].weight.dtype == torch.float64
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="must define build"):
        load_arch(str(tmp_path / "empty.py"))
    with pytest.raises(FileNotFoundError):
        load_arch(str(tmp_path / "missing.py"))
    assert [layer.name for layer in parse_arch("dense, relu,dense")] == ["dense", "relu", "dense"]


@pytest.mark.parametrize("arch", ["dense residual(relu, dense, relu, dense) relu dense",
                                  "dense layernorm relu dense layernorm relu dense"])
def test_converge_takes_an_architecture(tmp_path: Path, arch: str) -> None:
    out = tmp_path / "run"
    assert main(["converge", "--arch", arch, "--widths", "32", "128", "512", "--seeds", "3", "--b-std", "0.1",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["arch"] == arch and summary["complete"]
    assert summary["mean"][0] > summary["mean"][-1] and summary["slope"] < -0.3


def test_kernel_command_takes_an_architecture(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((40, 4))
    np.save(tmp_path / "x.npy", x)
    arch = "dense layernorm relu dense"
    assert main(["kernel", str(tmp_path / "x.npy"), "--arch", arch, "--beta", "0.2", "--which", "ntk",
                 "--out", str(tmp_path / "k.npy"), "--quiet"]) == 0
    model = load_arch(arch).build(8, (4,), 1, b_std=0.2, device="meta")
    ref = ntkit.infinite_kernel(model, torch.from_numpy(x), which="ntk")
    assert rel_err(torch.from_numpy(np.load(tmp_path / "k.npy")), ref) < 1e-14
    assert main(["kernel", str(tmp_path / "x.npy"), "--arch", "dense maxpool dense", "--out",
                 str(tmp_path / "k2.npy"), "--quiet"]) == 2
