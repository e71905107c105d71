"""ntkit.nn: the finite modules (shapes, padding, parameterizations, init, meta device) and builders that train."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
from ntkit.train import train_gd
from tests.conftest import rel_err

F64 = torch.float64


@pytest.mark.parametrize(("n", "k", "s", "padding", "out"), [
    (7, 3, 2, "same", 4), (6, 3, 2, "same", 3), (5, 4, 1, "same", 5), (6, 2, 1, "valid", 5), (7, 3, 3, "valid", 2),
    (5, 3, 2, "circular", 3),
])
def test_conv_output_sizes_and_tensorflow_same_padding(n: int, k: int, s: int, padding: str, out: int) -> None:
    conv = ntkit.nn.Conv2d(2, 3, k, stride=s, padding=padding, generator=torch.Generator().manual_seed(0), dtype=F64)
    rng = torch.Generator().manual_seed(127)
    x = torch.randn(2, 2, n, n, dtype=F64, generator=rng)
    conv.requires_grad_(False)
    y = conv(x)
    assert y.shape == (2, 3, out, out) == (2, 3, *conv.output_shape((n, n)))
    if padding == "same":  # TensorFlow / JAX SAME: the odd pixel of padding at the end
        total = max((out - 1) * s + k - n, 0)
        pads = [total // 2, total - total // 2] * 2
        ref = F.conv2d(F.pad(x, pads), conv.weight, stride=s) * conv.weight_scale
        assert rel_err(y, ref + conv.bias_scale * conv.bias.view(-1, 1, 1)) < 1e-14
    if padding == "circular":
        wrapped = torch.cat([x[..., -1:, :], x, x[..., :1, :]], dim=2)
        wrapped = torch.cat([wrapped[..., -1:], wrapped, wrapped[..., :1]], dim=3)
        ref = F.conv2d(wrapped, conv.weight, stride=s) * conv.weight_scale
        assert rel_err(y, ref[..., :out, :out] + conv.bias_scale * conv.bias.view(-1, 1, 1)) < 1e-14


def test_parameterizations_define_the_same_function_and_standard_scales() -> None:
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = ntkit.nn.Conv1d(3, 5, 3, w_std=1.3, b_std=0.4, generator=g1, dtype=F64)
    b = ntkit.nn.Conv1d(3, 5, 3, w_std=1.3, b_std=0.4, parameterization="standard", generator=g2, dtype=F64)
    rng = torch.Generator().manual_seed(128)
    x = torch.randn(4, 3, 9, dtype=F64, generator=rng)
    torch.testing.assert_close(a(x), b(x), rtol=1e-13, atol=1e-13)
    assert a.fan_in == 9 and a.weight_scale == pytest.approx(1.3 / 3) and b.weight_scale == 1.0
    big = ntkit.nn.Linear(400, 300, w_std=2.0, b_std=0.5, parameterization="standard", dtype=F64,
                          generator=torch.Generator().manual_seed(5))
    assert float(big.weight.detach().var()) == pytest.approx(4.0 / 400, rel=0.05)
    no_bias = ntkit.nn.Linear(3, 2, bias=False)
    assert no_bias.bias is None and no_bias(torch.zeros(1, 3)).abs().max() == 0


def test_orthogonal_init_and_meta_device() -> None:
    conv = ntkit.nn.Conv2d(4, 8, 3, init="orthogonal", generator=torch.Generator().manual_seed(0), dtype=F64)
    w = conv.weight.reshape(8, -1)
    torch.testing.assert_close(w @ w.T, 36 * torch.eye(8, dtype=F64), rtol=0, atol=1e-10)
    huge = ntkit.nn.Linear(10**6, 10**6, device="meta")  # no memory: a description only
    assert huge.weight.device.type == "meta"
    with pytest.raises(ValueError, match="padding: expected one of"):
        ntkit.nn.Conv2d(1, 1, 3, padding="reflect")
    with pytest.raises(ValueError, match="kernel_size"):
        ntkit.nn.Conv2d(1, 1, (3, 3, 3))
    with pytest.raises(ValueError, match="expected a spatial size >= 5"):
        ntkit.nn.Conv2d(1, 1, 5, padding="valid")(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, 1, H, W\)"):
        ntkit.nn.Conv2d(1, 1, 3)(torch.zeros(1, 2, 3, 3))


def test_structural_modules() -> None:
    rng = torch.Generator().manual_seed(129)
    x = torch.randn(3, 4, 5, 5, dtype=F64, generator=rng)
    ln = ntkit.nn.LayerNorm(eps=0.0)(x)
    torch.testing.assert_close(ln.mean(1), torch.zeros(3, 5, 5, dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(ln.pow(2).mean(1), torch.ones(3, 5, 5, dtype=F64), rtol=1e-12, atol=0)
    assert ntkit.nn.GlobalAvgPool()(x).shape == (3, 4)
    res = ntkit.nn.Residual(ntkit.nn.Conv2d(4, 4, 3, dtype=F64, generator=rng), nn.ReLU(), scale=0.5)
    assert isinstance(res.block, nn.Sequential) and res(x).shape == x.shape
    with pytest.raises(ValueError, match="keep the input's shape"):
        ntkit.nn.Residual(ntkit.nn.Conv2d(4, 2, 3, dtype=F64))(x)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module blocks"):
        ntkit.nn.Residual("relu")  # type: ignore[arg-type]
    assert ntkit.nn.Activation("erf")(torch.zeros(2)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("model", [
    ntkit.nn.cntk(1, 3, width=16, out_features=2, generator=torch.Generator().manual_seed(0), dtype=F64),
    ntkit.nn.cntk(1, 2, readout="flatten", image_shape=(8, 8), width=8, out_features=2,
                  generator=torch.Generator().manual_seed(1), dtype=F64),
    ntkit.nn.myrtle(5, 1, width=8, out_features=2, generator=torch.Generator().manual_seed(2), dtype=F64),
], ids=["cntk-gap", "cntk-v", "myrtle5"])
def test_builders_train_and_have_a_structured_empirical_ntk(model: nn.Module) -> None:
    x = torch.randn(6, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    y = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    structured = ntkit.empirical_ntk(model, x, implementation="structured")
    assert rel_err(structured, ntkit.empirical_ntk(model, x, implementation="jacobian")) < 1e-12
    history = train_gd(model, x, y, learning_rate=2.0, steps=60, check_learning_rate=False)
    assert history.loss[-1] < 0.5 * history.loss[0], history.loss[::10]
    assert math.isfinite(history.loss[-1])


def test_builder_arguments() -> None:
    with pytest.raises(ValueError, match="image_shape"):
        ntkit.nn.cntk(1, 2, readout="flatten")
    with pytest.raises(ValueError, match="depth: expected one of"):
        ntkit.nn.myrtle(6)
    with pytest.raises(ValueError, match="readout"):
        ntkit.nn.cntk(1, 2, readout="max")
    fc = ntkit.nn.fc(3, 16, 2, depth=2, activation="tanh", b_std=0.1)
    assert [type(m).__name__ for m in fc] == ["Linear", "Activation", "Linear", "Activation", "Linear"]
