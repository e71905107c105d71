"""``ntkit.nn.SelfAttention(..., parameterization="standard")``: the finite module and its infinite-width kernels.

* the module: the same draws as NTK parameterization times the init scales, the same function (to rounding);
* neural-tangents references (``tests/data/nt_reference_tokens.npz``, cases of
  :mod:`tests.arch_cases_attention_standard`): neural-tangents has no standard parameterization for
  ``GlobalSelfAttention``, so ``benchmarks/nt_reference_tokens.py`` composes them from its NTK-parameterization
  kernels by neural-tangents' standard ``Dense`` rule (each weight's term times ``fan_in / W_std^2``);
  float64, distinct pairs to 1e-12;
* the moment harness (:mod:`tests.moments`) at exact weights, as the NTK-parameterization cases of
  :mod:`tests.moment_cases_tokens`: the op's NNGP and NTK increment against the finite module's moments, a 1%
  scale fault failing;
* square-root scaling (relu, abs) against the numerical integration of ``tests/test_attention.py``;
* the empirical NTK of a finite standard-parameterization model converging to the kernel (Monte Carlo);
* the NNGP of both parameterizations equal (to rounding), their NTKs not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError
from ntkit.nn import LayerNorm, Linear, Residual, SelfAttention
from tests.arch_cases import make_inputs
from tests.arch_cases_attention_standard import CASES
from tests.arch_models import activation
from tests.moment_cases_tokens import TOKENS, _frames
from tests.moments import SE_MAX, Z_MAX, MomentCase, run_case
from tests.nt_compare import assert_matches_reference
from tests.test_attention import _expectations

DT = torch.float64
DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "nt_reference_tokens.npz")
META = json.loads((DATA / "nt_reference_tokens.json").read_text())


class TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _tokens(n: int, length: int, c: int, seed: int) -> torch.Tensor:
    return torch.randn(n, length, c, generator=torch.Generator().manual_seed(seed), dtype=DT)


OPTIONS: dict[str, Any] = {"n_heads": 2, "key_features": 5, "value_features": 3, "w_query_std": 1.3,
                           "w_key_std": 0.8, "w_value_std": 1.1, "w_out_std": 0.7, "b_std": 0.2, "dtype": DT}


# --- the finite module --------------------------------------------------------------------------------


@pytest.mark.parametrize(("linear_scaling", "mechanism", "pos_emb"), [
    (True, "softmax", None), (False, "relu", None), (True, "identity", "concat"), (True, "abs", "sum")])
def test_standard_module_is_the_ntk_function_with_scaled_parameters(linear_scaling: bool, mechanism: str,
                                                                    pos_emb: str | None) -> None:
    kw = {**OPTIONS, "linear_scaling": linear_scaling, "mechanism": mechanism, "pos_emb": pos_emb,
          "n_tokens": 5 if pos_emb else None, "pos_emb_std": 0.6}
    ntk = SelfAttention(4, 6, generator=torch.Generator().manual_seed(0), **kw)
    std = SelfAttention(4, 6, generator=torch.Generator().manual_seed(0), parameterization="standard", **kw)
    scales = std.init_scales()
    ck = 8 if pos_emb == "concat" else 4
    want = {"key": math.sqrt((1.3 * 0.8 if linear_scaling else 0.64) / ck), "query": 1.3 / math.sqrt(ck),
            "value": 1.1 / 2.0, "out": 0.7 / math.sqrt(6), "bias": 0.2, "pos": 0.6}
    assert set(scales) == {name for name, _ in std.named_parameters()} and set(ntk.init_scales().values()) == {1.0}
    for name, p in std.named_parameters():
        assert scales[name] == pytest.approx(want[name], rel=1e-15)
        assert torch.equal(p, getattr(ntk, name) * scales[name])  # the same draws, rescaled
    x = _tokens(3, 5, 4, 1)
    with torch.no_grad():
        torch.testing.assert_close(std(x), ntk(x), rtol=1e-13, atol=1e-13)
    assert "parameterization='standard'" in repr(std) and "parameterization" not in repr(ntk)


def test_standard_forward_by_hand() -> None:
    layer = SelfAttention(4, 6, parameterization="standard", generator=torch.Generator().manual_seed(2), **OPTIONS)
    x = _tokens(3, 5, 4, 3)
    heads = []
    for h in range(2):
        k = x @ layer.key[h]
        heads.append(torch.softmax(k @ k.transpose(-1, -2) / 5, dim=-1) @ (x @ layer.value[h]))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.cat(heads, dim=-1) @ layer.out + layer.bias, rtol=1e-14, atol=1e-14)


def test_bad_parameterization_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"parameterization.*'ntk'.*'standard'.*got 'mup'"):
        SelfAttention(4, 6, parameterization="mup")
    with pytest.raises(ValueError, match=r"parameterization: expected one of .*got 1"):
        SelfAttention(4, 6, parameterization=1)  # type: ignore[arg-type]


# --- against neural-tangents (composed references) --------------------------------------------------------


def _build(spec: list[dict[str, Any]], shape: list[int]) -> tuple[nn.Module, int]:
    """The ``ntkit.nn`` model of a spec of :mod:`tests.arch_cases_attention_standard` and its output width."""
    length, c = shape
    layers: list[nn.Module] = []
    for layer in spec:
        op = layer["op"]
        if op == "dense":
            b = layer["b_std"]
            layers.append(Linear(c, layer["width"], w_std=layer["w_std"], b_std=b or 0.0, bias=b is not None,
                                 parameterization=layer["parameterization"], device="meta"))
            c = layer["width"]
        elif op == "act":
            layers.append(nn.ReLU() if layer["name"] == "relu" else ntkit.nn.Activation(activation(layer)))
        elif op == "layernorm":
            layers.append(LayerNorm(c, eps=layer["eps"]))
        elif op == "gap":
            layers.append(TokenMean())
        elif op == "attention":
            (wq, wk), (wo, wv) = layer["w_qk"], layer["w_ov"]
            layers.append(SelfAttention(
                c, layer["width"], n_heads=layer["heads"], key_features=layer["key_features"],
                value_features=layer["value_features"], mechanism=layer["mechanism"],
                linear_scaling=layer["linear_scaling"], w_query_std=wq, w_key_std=wk, w_out_std=wo, w_value_std=wv,
                b_std=layer["b_std"], pos_emb=layer["pos_emb"], n_tokens=length if layer["pos_emb"] else None,
                pos_emb_std=layer["pos_std"], pos_emb_features=layer["pos_features"],
                parameterization=layer["parameterization"], device="meta"))
            c = layer["width"]
        elif op == "residual":
            block, end = _build(layer["block"], [length, c])
            assert end == c
            layers.append(Residual(*block))
        else:
            raise KeyError(op)
    return nn.Sequential(*layers), c


def test_reference_file_covers_the_standard_cases() -> None:
    section = META["standard_parameterization"]
    assert section["supported"] == [case[0] for case in CASES] and len(CASES) >= 8
    assert all(f"{case[0]}/sym/ntk" in REF for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_matches_neural_tangents_composed(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    np.testing.assert_array_equal(x1, REF[f"{name}/x1"])
    model, out = _build(spec, shape)
    assert out == 1
    assert_matches_reference(model, x1, x2, REF, name)


def test_standard_ntk_differs_and_nngp_is_the_ntk_parameterizations() -> None:
    """The fan-ins enter the NTK (here >= 3x the NTK parameterization's); the NNGP is the same (the NTK
    parameterization may take the native token loop of :mod:`ntkit.infinite.tokens_fast`: equal to rounding)."""
    name, spec, shape, n1, n2 = CASES[1]
    x1, x2 = make_inputs(name, shape, n1, n2)
    std, _ = _build(spec, shape)
    ntk, _ = _build([{**layer, "parameterization": "ntk"} for layer in spec], shape)
    k_std = ntkit.infinite_kernel(std, torch.from_numpy(x1), torch.from_numpy(x2))
    k_ntk = ntkit.infinite_kernel(ntk, torch.from_numpy(x1), torch.from_numpy(x2))
    torch.testing.assert_close(k_std.nngp, k_ntk.nngp, rtol=1e-13, atol=0.0)
    assert float(k_std.ntk.abs().max()) > 3.0 * float(k_ntk.ntk.abs().max())


def test_unsupported_options_stay_errors_and_degree() -> None:
    sqrt = nn.Sequential(SelfAttention(3, 8, linear_scaling=False, parameterization="standard", device="meta"),
                         TokenMean(), Linear(8, 1, device="meta"))
    with pytest.raises(ArchitectureError, match="linear_scaling=False with mechanism='softmax' has no closed-form"):
        ntkit.infinite_kernel(sqrt, _tokens(2, 4, 3, 0))
    # the standard bias's 1 in the NTK breaks the homogeneity even with b_std=0; without a bias: degree 3
    for b_std, degree in ((None, 3), (0.0, None)):
        model = nn.Sequential(SelfAttention(3, 4, mechanism="identity", b_std=b_std, parameterization="standard",
                                            device="meta"), TokenMean())
        assert ntkit.infinite.describe_model(model, (5, 3)).degree == degree


# --- the moment harness at exact weights ------------------------------------------------------------------


def _exact_standard(heads: int, key_features: int, value_features: int, **kw: Any) -> Any:
    """:func:`tests.moment_cases_tokens.exact_attention` in standard parameterization: the same frames times the
    init scales (every layer's logits are ``qk K(x, x)``, its channel mean the limit's to rounding)."""
    c = TOKENS.x.shape[1]

    def make(width: int, g: torch.Generator) -> nn.Module:
        n = heads * value_features
        m = SelfAttention(c, n, n_heads=heads, key_features=key_features, value_features=value_features,
                          parameterization="standard", generator=g, dtype=DT, **kw)
        s = m.init_scales()
        with torch.no_grad():
            m.key.copy_(_frames(heads, c, key_features, g) * s["key"])
            m.value.copy_(_frames(heads, c, value_features, g) * s["value"])
            m.out.copy_(torch.eye(n, dtype=DT) * math.sqrt(n) * s["out"])
        return m

    return make


@pytest.mark.usefixtures("single_thread")
def test_moments_at_exact_weights_and_a_one_percent_fault() -> None:
    """C = 8 the values' fan-in, H d_v = 16 the output weights'. No bias: one instance's channel mean of its
    drawn biases is not exact (the bias's NTK term 1 is checked against the composed references)."""
    case = MomentCase("attention_softmax_standard",
                      _exact_standard(2, 1024, 8, w_query_std=1.3, w_key_std=0.9, w_value_std=1.1, w_out_std=0.8),
                      TOKENS,
                      draws=2, max_draws=2, width=16, instances=True, own_draws=2, floor=4e-4)
    nominal, fault = run_case(case, (1.0, 1.01))
    assert nominal.max_se_ratio <= SE_MAX, (nominal.se_ratio, nominal.draws)
    assert nominal.max_z <= Z_MAX, (nominal.z, nominal.worst)
    assert fault.max_z >= 7.5, (fault.z, nominal.z)


# --- square-root scaling: numerical integration ---------------------------------------------------------


def _sqrt_standard_by_quadrature(mech: str, k11: np.ndarray, k22: np.ndarray, k12: np.ndarray, t12: np.ndarray,
                                 w: tuple[float, float, float, float], fans: tuple[int, int, int]
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """The cross token kernels after a standard square-root-scaled attention with a bias (module notes):
    ``w = (w_query, w_key, w_value, w_out)``, ``fans = (C_k, C, H d_v)``."""
    wq, wk, wv, wo = w
    qk2, ov2 = (wq * wk) ** 2, (wo * wv) ** 2
    a, c = fans[1] * wo**2 + fans[2] * wv**2, fans[0] * (wq**2 + wk**2)
    n = k12.shape[0]
    nngp, ntk = np.zeros((n, n)), np.zeros((n, n))
    for p in range(n):
        for pp in range(n):
            for q in range(n):
                for qq in range(n):
                    mm, dd = _expectations(mech, qk2 * k11[p, p] * k11[q, q], qk2 * k22[pp, pp] * k22[qq, qq],
                                           qk2 * k12[p, pp] * k12[q, qq])
                    logits = c * k12[p, pp] * k12[q, qq] + qk2 * (t12[p, pp] * k12[q, qq] + k12[p, pp] * t12[q, qq])
                    nngp[p, pp] += ov2 * mm * k12[q, qq]
                    ntk[p, pp] += mm * (ov2 * t12[q, qq] + a * k12[q, qq]) + ov2 * dd * k12[q, qq] * logits
    return nngp, ntk + 1.0


@pytest.mark.parametrize("mech", ["relu", "abs"])
def test_sqrt_scaling_matches_numerical_integration(mech: str) -> None:
    x = _tokens(2, 3, 2, 7)
    model = nn.Sequential(Linear(2, 8, b_std=0.3, parameterization="standard", device="meta"),
                          SelfAttention(8, 8, n_heads=2, value_features=3, linear_scaling=False, mechanism=mech,
                                        w_query_std=1.3, w_key_std=0.8, w_value_std=1.1, w_out_std=0.9, b_std=0.0,
                                        parameterization="standard", device="meta"),
                          TokenMean())
    k = ntkit.infinite_kernel(model, x[:1], x[1:])
    a, b = x[0].numpy(), x[1].numpy()
    k11, k22, k12 = a @ a.T / 2 + 0.09, b @ b.T / 2 + 0.09, a @ b.T / 2 + 0.09  # after the first Linear
    t12 = 2 * (a @ b.T / 2) + 1.0  # standard: fan_in (2) K_x + 1 (its bias)
    nngp, ntk = _sqrt_standard_by_quadrature(mech, k11, k22, k12, t12, (1.3, 0.8, 1.1, 0.9), (8, 8, 6))
    assert abs(float(k.nngp) - nngp.mean()) < 1e-9 * abs(nngp.mean())
    assert abs(float(k.ntk) - ntk.mean()) < 1e-9 * abs(ntk.mean())


# --- Monte Carlo: the empirical NTK of wide finite models -----------------------------------------------


def _mc_model(width: int, g: torch.Generator | None = None, device: str | None = None) -> nn.Module:
    """Linear(3, W) -> SelfAttention(W, W; 4 heads, d_k = W, d_v = W / 8: H d_v = W / 2) -> mean -> Linear(W, 1),
    all in standard parameterization."""
    kw: dict[str, Any] = {"parameterization": "standard", "generator": g, "device": device, "dtype": DT}
    return nn.Sequential(Linear(3, width, b_std=0.2, **kw),
                         SelfAttention(width, width, n_heads=4, key_features=width, value_features=width // 8,
                                       w_query_std=1.2, w_key_std=0.8, w_value_std=1.1, w_out_std=0.9, b_std=0.1,
                                       **kw),
                         TokenMean(), Linear(width, 1, **kw))


@pytest.mark.slow
def test_empirical_ntk_converges_to_the_standard_kernel() -> None:
    """Per width, the kernel of the model at that width (the fan-ins enter it) against 16 draws of its empirical
    NTK: the largest relative error falls with the width (measured 16.7%, 2.3%, 0.9% at 32, 128, 512: slope -1.05,
    the O(1 / width) bias dominating at 32; -0.67 from 128 to 512) and the estimate at width 512 is within 4
    standard errors (~2.4% of the kernel)."""
    x = _tokens(3, 4, 3, 5)
    widths, errors = (32, 128, 512), []
    for width in widths:
        exact = ntkit.infinite_kernel(_mc_model(width, device="meta"), x).ntk
        mc = ntkit.monte_carlo_kernel(lambda g, w=width: _mc_model(w, g), x, n_samples=16, which="ntk", seed=1)
        assert mc.ntk is not None
        errors.append(float((mc.ntk - exact).abs().max() / exact.abs().max()))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -1.3 < slope < -0.3, (errors, slope)
    assert errors[-1] < 0.03, errors
    assert float(mc.zscore(exact, "ntk").abs().max()) < 4.0
