"""FCNetwork / NTKLinear: shapes, seeding, parameterizations, orthogonal init, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import ntkit
from ntkit.networks import NTKLinear, orthogonal_


def test_forward_shapes_dtypes_and_seeding() -> None:
    rng = torch.Generator().manual_seed(123)
    x = torch.randn(7, 3, dtype=torch.float64, generator=rng)
    a = ntkit.FCNetwork(3, [16, 8], 4, seed=5)
    b = ntkit.FCNetwork(3, [16, 8], 4, seed=5)
    c = ntkit.FCNetwork(3, [16, 8], 4, seed=6)
    assert a(x).shape == (7, 4) and a(x).dtype == torch.float64
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))
    assert a.depth == 2 and len(a.linears) == 3
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(ntkit.FCNetwork(3, [4], 1, generator=g1)(x), ntkit.FCNetwork(3, [4], 1, generator=g2)(x))
    f32 = ntkit.FCNetwork(3, [16], 2, dtype=torch.float32, seed=0)
    assert f32(x.float()).dtype == torch.float32
    assert ntkit.FCNetwork(3, [], 2, seed=0)(x).shape == (7, 2)  # depth 0: a linear model


def test_ntk_and_standard_parameterizations_define_the_same_functions() -> None:
    """With W_std = w_std W_ntk / sqrt(n) and b_std_standard = b_std b_ntk both nets compute the same f."""
    rng = torch.Generator().manual_seed(124)
    x = torch.randn(5, 3, dtype=torch.float64, generator=rng)
    ntk_net = ntkit.FCNetwork(3, [32, 16], 2, activation="erf", b_std=0.3, w_std=1.4, seed=1)
    std_net = ntkit.FCNetwork(3, [32, 16], 2, activation="erf", b_std=0.3, w_std=1.4, parameterization="standard")
    with torch.no_grad():
        for ln, ls in zip(ntk_net.linears, std_net.linears, strict=True):
            ls.weight.copy_(ln.weight * ln.weight_scale)
            ls.bias.copy_(ln.bias * ln.bias_scale)
    torch.testing.assert_close(ntk_net(x), std_net(x), rtol=1e-13, atol=1e-14)


def test_standard_parameterization_draws_scaled_weights() -> None:
    net = ntkit.FCNetwork(400, [300], 1, parameterization="standard", w_std=2.0, b_std=0.5, seed=0)
    w = net.linears[0].weight.detach()
    assert float(w.var()) == pytest.approx(4.0 / 400, rel=0.05)
    assert float(net.linears[0].bias.detach().std()) == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize(("rows", "cols"), [(5, 9), (9, 5), (6, 6)])
def test_orthogonal_init_is_scaled_semi_orthogonal(rows: int, cols: int) -> None:
    w = orthogonal_(torch.empty(rows, cols, dtype=torch.float64), torch.Generator().manual_seed(0))
    big = max(rows, cols)
    gram = w @ w.T if rows <= cols else w.T @ w
    torch.testing.assert_close(gram, big * torch.eye(min(rows, cols), dtype=torch.float64), rtol=0, atol=1e-12)
    net = ntkit.FCNetwork(4, [64, 64], 3, init="orthogonal", seed=0)
    wl = net.linears[1].weight.detach()
    torch.testing.assert_close(wl @ wl.T, 64 * torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-10)
    assert float((wl**2).mean()) == pytest.approx(1.0, rel=1e-12)  # unit-variance entries as Gaussian


def test_networks_are_trainable() -> None:
    net = ntkit.FCNetwork(2, [8], 1, b_std=0.1, seed=0)
    rng = torch.Generator().manual_seed(125)
    x = torch.randn(4, 2, dtype=torch.float64, generator=rng)
    loss = net(x).pow(2).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters() if p.grad is not None)


def test_infinite_kernel_uses_the_same_description() -> None:
    net = ntkit.FCNetwork(3, [10, 10, 10], 2, activation="erf", b_std=0.2, w_std=1.1, seed=0)
    rng = torch.Generator().manual_seed(126)
    x = torch.randn(4, 3, dtype=torch.float64, generator=rng)
    k = net.infinite_kernel(x)
    ref = ntkit.fc_kernel(x, depth=3, activation="erf", b_std=0.2, w_std=1.1)
    assert torch.equal(k.ntk, ref.ntk) and torch.equal(k.nngp, ref.nngp)
    assert torch.equal(ntkit.infinite_kernel(net, x, which="ntk"), ref.ntk)
    # standard parameterization: the same NNGP; an NTK that grows with the widths (fan_in K + ...)
    std = ntkit.FCNetwork(3, [10, 20], 1, parameterization="standard", b_std=0.3)
    ntk_net = ntkit.FCNetwork(3, [10, 20], 1, b_std=0.3)
    ks, kn = std.infinite_kernel(x), ntk_net.infinite_kernel(x)
    torch.testing.assert_close(ks.nngp, kn.nngp, rtol=1e-14, atol=0)
    wide = ntkit.FCNetwork(3, [10, 2000], 1, parameterization="standard", b_std=0.3).infinite_kernel(x)
    assert bool((wide.ntk > 10 * ks.ntk).all())


def test_ntk_linear_scales() -> None:
    layer = NTKLinear(9, 2, w_std=2.0, b_std=0.5)
    assert layer.weight_scale == pytest.approx(2.0 / math.sqrt(9))
    assert layer.bias_scale == 0.5
    assert "parameterization='ntk'" in repr(layer)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0, [4], 1), {}, ValueError, "in_features: expected an integer >= 1, got 0"),
        ((2, [4, 0], 1), {}, ValueError, r"hidden\[1\]: expected an integer >= 1, got 0"),
        ((2, [4, -3], 1), {}, ValueError, r"hidden\[1\]"),
        ((2, 4, 1), {}, TypeError, "hidden: expected a sequence"),
        ((2, [4], 0), {}, ValueError, "out_features"),
        ((2, [4.5], 1), {}, TypeError, r"hidden\[0\]"),
        ((2, [4], 1), {"b_std": -1.0}, ValueError, "b_std: expected a number >= 0"),
        ((2, [4], 1), {"w_std": -1.0}, ValueError, "w_std"),
        ((2, [4], 1), {"parameterization": "mup"}, ValueError, "parameterization: expected one of"),
        ((2, [4], 1), {"init": "xavier"}, ValueError, "init: expected one of"),
        ((2, [4], 1), {"activation": "nope"}, ValueError, "activation: expected one of"),
        ((2, [4], 1), {"generator": 3}, TypeError, "generator"),
        ((2, [4], 1), {"dtype": torch.int32}, TypeError, "dtype"),
    ],
)
def test_bad_construction(args: tuple, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ntkit.FCNetwork(*args, **kwargs)
