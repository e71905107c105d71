"""The ABReLU arc-cosine closed form is single-sourced (ntkit.activations.arccos).

The dual maps of ABReLU and the fused fully connected recursion both call
:func:`~ntkit.activations.arccos.abrelu_closed_form`; the compiled loops receive the constants of
:func:`~ntkit.activations.arccos.abrelu_constants` and derive none.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import ntkit
from ntkit.activations import ABReLU, Abs, LeakyReLU, ReLU
from ntkit.activations.arccos import ABReLUConstants, abrelu_closed_form, abrelu_constants
from ntkit.infinite import fused, native
from ntkit.infinite.conv_fast import OP_ACT, match_spatial
from ntkit.infinite.fused import FCSpec
from ntkit.infinite.walk import describe_model
from ntkit.nn.structure import Activation as ActivationModule
from tests.conftest import rel_err

F64 = torch.float64
ACTS = [ReLU(), LeakyReLU(0.1), Abs(), ABReLU(-0.3, 1.2), ABReLU(0.3, -0.7), ABReLU(0.7, 0.0), ABReLU(0.0, 2.5)]
SRC = Path(ntkit.__file__).parent


def test_constants_values_and_factoring() -> None:
    two_pi = 2 * math.pi
    assert abrelu_constants(0.0, 1.0) == ABReLUConstants(1 / two_pi, 0.0, 1 / two_pi, 0.0, 0.0, 1.0)
    for a, b, s in [(0.0, 1.0, 2.0), (0.1, 1.0, 1.7), (-1.0, 1.0, 0.5), (0.3, -0.7, 3.0), (0.7, 0.0, 1.0)]:
        k, f = abrelu_constants(a, b, s), abrelu_constants(a, b, s, factored=True)
        d = b - a
        assert math.isclose(k.k1, s * d * d / two_pi) and math.isclose(k.k2, s * a * b)
        assert (k.ka, k.kb, k.kc, k.ks) == pytest.approx((s * d * d / two_pi, s * a * d / 2, s * a * a, 1.0))
        assert (f.k1, f.k2) == (k.k1, k.k2)
        # ks (ka x + kb y + kc) is the same derivative map, factored or not
        assert (f.ks * f.ka, f.ks * f.kb, f.ks * f.kc) == pytest.approx((k.ka, k.kb, k.kc), rel=1e-15, abs=0)


@pytest.mark.parametrize("bad", [float("nan"), "1", None, True])
def test_constants_reject_bad_input(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="a: expected"):
        abrelu_constants(bad, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scale: expected a number >= 0.0, got -1.0"):
        abrelu_constants(0.0, 1.0, -1.0)


@pytest.mark.parametrize("act", ACTS, ids=repr)
@pytest.mark.parametrize(("w_std", "beta"), [(1.0, 0.0), (1.3, 0.4)])
def test_native_fc_constants_come_from_abrelu_constants(act: ABReLU, w_std: float, beta: float) -> None:
    spec = FCSpec.make(3, act, beta=beta, w_std=w_std)
    k = abrelu_constants(act.a, act.b, w_std**2, factored=True)
    assert list(native._consts(spec)) == [k.k1, k.k2, beta**2, k.ka, k.kb, k.kc, k.ks]


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_native_conv_constants_come_from_abrelu_constants(act: ABReLU) -> None:
    model = nn.Sequential(ntkit.nn.Conv2d(2, 3, 3, device="meta"), ActivationModule(act), nn.AvgPool2d(2),
                          ntkit.nn.Conv2d(3, 3, 2, padding="valid", device="meta"), ActivationModule(act),
                          ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(3, 1, device="meta"))
    prog = match_spatial(describe_model(model, (2, 6, 6)))
    assert prog is not None
    rows = [list(dp[:5]) for op, dp in zip(prog.ops, prog.dps, strict=True) if op[0] == OP_ACT]
    assert rows == [list(abrelu_constants(act.a, act.b)[:5])] * 2


def test_no_other_module_derives_the_constants() -> None:
    """``d^2 / (2 pi)``, ``a d / 2``: written in arccos.py only; the C loops hold no pi at all."""
    pattern = re.compile(r"d \* d / \(2|0\.5 \* a \* d|\(b - a\) \*\* 2|\(self\.b - self\.a\) \*\* 2")
    hits = [p.name for p in SRC.rglob("*.py") if p.name != "arccos.py" and pattern.search(p.read_text())]
    assert hits == []
    for name in ("_fc_native.c", "_cntk_native.c"):
        code = (SRC / "infinite" / name).read_text()
        assert not re.search(r"M_PI|3\.14159|2 \* pi", code), name


def _inputs(t1: int, t2: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variances (t1,), (t2,) with a zero one and covariances of every correlation, duplicates included."""
    v1 = torch.rand(t1, generator=gen, dtype=F64) * 3 + 0.05
    v2 = torch.rand(t2, generator=gen, dtype=F64) * 3 + 0.05
    v1[0] = 0.0
    v2[1] = v1[2]
    rho = torch.rand(t1, t2, generator=gen, dtype=F64) * 2 - 1
    rho[3, :5] = -1.0
    c = rho * (v1[:, None] * v2[None, :]).sqrt()
    c[2, 1] = v1[2]  # a duplicated input: angle exactly 0
    return v1, v2, c


@pytest.mark.parametrize("act", ACTS, ids=repr)
@pytest.mark.parametrize(("w2", "b2"), [(1.0, 0.0), (1.69, 0.16)])
def test_fused_layer_agrees_with_the_dual_map(act: ABReLU, w2: float, b2: float) -> None:
    gen = torch.Generator().manual_seed(0)
    v1, v2, c = _inputs(37, 53, gen)
    ntk = torch.rand(37, 53, generator=gen, dtype=F64) + 0.5
    shape = (37, 53)
    cb, tb = fused.padded_empty(shape, c), fused.padded_empty(shape, c)
    fused._view(cb, shape).copy_(c)
    fused._view(tb, shape).copy_(ntk)
    s, th = fused._abrelu_layer(v1[:, None], v2[None, :], cb, tb, shape, act, w2, b2)
    assert th is not None
    nngp = w2 * act.expect(v1[:, None], c, v2[None, :]) + b2
    theta = nngp + ntk * (w2 * act.expect_derivative(v1[:, None], c, v2[None, :]))
    assert rel_err(fused._view(s, shape), nngp) < 1e-15
    assert rel_err(fused._view(th, shape), theta) < 1e-15


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_closed_form_padded_and_plain_agree_bitwise(act: ABReLU) -> None:
    """The flat padded layout of the fused program and plain broadcast tensors give the same bits."""
    gen = torch.Generator().manual_seed(1)
    v1, v2, c = _inputs(19, 70, gen)
    shape = (19, 70)
    k = abrelu_constants(act.a, act.b, 1.3, factored=True)
    flat = torch.zeros(64 * 22, dtype=F64)
    flat[: c.numel()] = c.reshape(-1)
    got = abrelu_closed_form(v1[:, None], v2[None, :], flat, k, shift=0.2, shape=shape)
    want = abrelu_closed_form(v1[:, None], v2[None, :], c, k, shift=0.2)
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None
        assert torch.equal(g[: c.numel()].view(shape), w)
    nngp, dot = abrelu_closed_form(v1[:, None], v2[None, :], c, k, nngp=False)
    assert nngp is None and dot is not None
    nngp, dot = abrelu_closed_form(v1[:, None], v2[None, :], c, k, derivative=False)
    assert nngp is not None and dot is None


@pytest.mark.parametrize("act", [ReLU(), ABReLU(-0.3, 1.2)], ids=repr)
def test_dual_maps_stay_differentiable(act: ABReLU) -> None:
    """Under autograd the closed form makes new tensors (no in-place step): gradients of the maps exist."""
    gen = torch.Generator().manual_seed(2)
    v1, v2 = torch.rand(6, generator=gen, dtype=F64) + 0.5, torch.rand(6, generator=gen, dtype=F64) + 0.5
    c = (torch.rand(6, generator=gen, dtype=F64) * 1.6 - 0.8) * (v1 * v2).sqrt()
    args = tuple(t.clone().requires_grad_(True) for t in (v1, c, v2))
    assert torch.autograd.gradcheck(act.expect, args)
    assert torch.autograd.gradcheck(act.expect_derivative, args)
    with torch.no_grad():
        assert torch.equal(act.expect(*args), act.expect(v1, c, v2))
    assert torch.equal(act.expect(*args).detach(), act.expect(v1, c, v2))  # the same values either way
