"""The reference evaluator (``ntkit.infinite.reference`` over ``ops`` / ``spatial``) entry by entry, fast.

``tests/test_infinite_exact.py`` checks ``infinite_kernel`` (whose fast paths often bypass the
reference evaluator) on larger cases; here the reference evaluator itself is called
(:func:`ntkit.infinite.reference.reference_kernel`, :func:`evaluate_diagonal`, :func:`iter_layers`)
on small architectures chosen to reach every branch of the kernel transforms, against

* the 20-digit mpmath reference of ``tests/reference_arch.py`` (written from the textbook formulas),
* brute-force numpy loops over pixel pairs (input covariances, filter and pooling averages),
* exact identities: ``x + s f(x)`` equals ``x + f'(x)`` with ``f'``'s read-out weights scaled by ``s``;
  ``K(s x, t x') = (s t)^k K(x, x')`` for an architecture of degree ``k``; the derivative kernel of
  ReLU is ``(pi - theta) / 2 pi`` of the layer's input covariances.

Tolerance (float64): ``|got - ref| <= 1e-10 |ref| + 1e-13 max|ref|``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite.ops import Pointwise
from ntkit.infinite.ops.stencil import stencil, window_average
from ntkit.infinite.reference import (
    distinct_rows,
    evaluate,
    evaluate_diagonal,
    input_pairs,
    iter_layers,
    reference_kernel,
)
from ntkit.infinite.state import Layout
from ntkit.infinite.walk import describe_model
from tests.arch_cases import make_inputs
from tests.arch_models import build
from tests.reference_arch import reference_kernels

F64 = torch.float64


def _dense(width: int, w_std: float = 1.0, b_std: float | None = 0.0, par: str = "ntk") -> dict:
    return {"op": "dense", "width": width, "w_std": w_std, "b_std": b_std, "parameterization": par}


def _conv(width: int, filt: tuple[int, ...] = (2, 2), stride: tuple[int, ...] = (1, 1), padding: str = "same",
          w_std: float = 1.0, b_std: float | None = 0.0, par: str = "ntk") -> dict:
    return {"op": "conv", "width": width, "filter": list(filt), "stride": list(stride), "padding": padding,
            "w_std": w_std, "b_std": b_std, "parameterization": par}


RELU = {"op": "act", "name": "relu"}
ERF = {"op": "act", "name": "erf", "a": 0.7, "b": 1.3, "c": 0.2}
LEAKY = {"op": "act", "name": "leaky_relu", "alpha": 0.2}
ABS = {"op": "act", "name": "abs"}
GAP = {"op": "gap"}
FLAT = {"op": "flatten"}

#: (name, spec, input shape, n1, n2): small enough for the 20-digit reference to take well under a second.
CASES = [
    ("fc_standard_bias", [_dense(16, 1.2, 0.3, "standard"), RELU, _dense(12, 0.9, 0.2, "standard"), ERF,
                          _dense(1, 1.1, 0.4, "standard")], [5], 4, 3),
    ("fc_standard_nobias", [_dense(16, 1.3, None, "standard"), RELU, _dense(1, 0.8, None, "standard")], [4], 4, 3),
    ("fc_ntk_erf_leaky", [_dense(8, 1.4, 0.5), ERF, _dense(8, 0.9, 0.3), LEAKY, _dense(1, 1.2, 0.1)], [6], 4, 3),
    ("fc_residual_layernorm", [_dense(8, 1.0, 0.1), RELU,
                               {"op": "residual", "block": [_dense(8, 1.1, 0.2), RELU, _dense(8, 0.9, 0.1)]},
                               {"op": "layernorm", "eps": 0.05}, _dense(8, 1.3, 0.2), ABS, _dense(1, 1.0, 0.2)],
     [5], 4, 3),
    ("fc_preact_residual", [_dense(8, 1.2, 0.1),
                            {"op": "residual", "block": [RELU, _dense(8, 0.8, 0.3)]},
                            {"op": "layernorm", "eps": 0.02}, ERF, _dense(1, 1.0, 0.0)], [4], 4, 3),
    ("conv_same_gap", [_conv(3, (2, 2), w_std=1.2, b_std=0.2), RELU, _conv(3, (3, 2), w_std=0.9), ERF, GAP,
                       _dense(1, 1.0, 0.1)], [2, 4, 3], 3, 2),
    ("conv_valid_flatten", [_conv(3, (2, 3), padding="valid", w_std=1.1, b_std=0.1), ERF,
                            _conv(3, (2, 1), padding="valid"), RELU, FLAT, _dense(1)], [2, 4, 4], 3, 2),
    ("conv_circular_stride", [_conv(3, (3, 2), (2, 1), "circular", b_std=0.1), ABS, FLAT, _dense(1)],
     [1, 5, 4], 3, 2),
    ("conv_same_stride_even", [_conv(3, (2, 3), (2, 2), "same", b_std=0.3), RELU, GAP, _dense(1)], [1, 5, 4], 3, 2),
    ("conv_avgpool", [_conv(3, (2, 2), w_std=1.3), RELU, {"op": "avgpool", "window": [2, 2], "stride": [1, 2],
                                                          "padding": "valid"}, _conv(2, (1, 1)), RELU, GAP, _dense(1)],
     [1, 4, 4], 3, 2),
    ("conv_standard", [_conv(3, (2, 2), par="standard", b_std=0.2), RELU, GAP, _dense(1, par="standard", b_std=0.2)],
     [2, 3, 3], 3, 2),
    ("conv_residual_layernorm", [_conv(3, (2, 2), b_std=0.1), RELU,
                                 {"op": "residual", "block": [_conv(3, (2, 2)), RELU, _conv(3, (1, 2), b_std=0.1)]},
                                 {"op": "layernorm", "eps": 0.05}, _conv(2, (2, 2)), RELU, GAP, _dense(1)],
     [2, 3, 3], 3, 2),
    ("conv_relu_pool_layernorm", [_conv(3, (2, 2), b_std=0.1), RELU, {"op": "avgpool", "window": [2, 2],
                                                                      "stride": [1, 1], "padding": "valid"},
                                  {"op": "layernorm", "eps": 0.05}, _conv(2, (1, 1)), RELU, GAP, _dense(1)],
     [1, 3, 3], 3, 2),  # the ReLU's channel mean pooled, then subtracted by the layer norm
    ("conv1d_same_flatten", [_conv(3, (4,), (2,), "same", b_std=0.1), LEAKY, _conv(2, (2,), (1,), "same"), RELU,
                             FLAT, _dense(1)], [2, 7], 3, 2),
    ("fc_unit_bias", [_dense(8, 1.0, 1.0), RELU, _dense(1, 0.7, 1.0)], [3], 4, 3),  # b_std^2 == 1 exactly
    ("conv_relu_flatten_layernorm", [_conv(3, (2, 2), b_std=0.1), RELU, FLAT, {"op": "layernorm", "eps": 0.05},
                                     _dense(1, 1.0, 0.1)], [1, 3, 3], 3, 2),  # the ReLU's mean, pixel-averaged
]


def _check(got: torch.Tensor, ref: np.ndarray, what: str) -> None:
    g = got.detach().numpy()
    err = np.abs(g - ref)
    bound = 1e-10 * np.abs(ref) + 1e-13 * np.abs(ref).max()
    assert (err <= bound).all(), (what, float((err / np.maximum(np.abs(ref), 1e-300)).max()))


def _arch(spec: list, shape: list[int]):
    model, _ = build(spec, shape)
    return describe_model(model, tuple(shape))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reference_evaluator_matches_mpmath(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    arch = _arch(spec, shape)
    a, b = torch.from_numpy(x1), torch.from_numpy(x2)
    ref_nngp, ref_ntk = reference_kernels(spec, x1, x2, dps=20)
    nngp, ntk = reference_kernel(arch, a, b)
    assert ntk is not None
    _check(nngp, ref_nngp, f"{name} nngp")
    _check(ntk, ref_ntk, f"{name} ntk")
    # against itself: exactly symmetric, duplicated rows (x1[-1] == x1[0]) give identical pairs
    sym_nngp, sym_ntk = reference_kernel(arch, a)
    assert sym_ntk is not None
    ref_sym = reference_kernels(spec, x1, None, dps=20)
    _check(sym_nngp, ref_sym[0], f"{name} nngp sym")
    _check(sym_ntk, ref_sym[1], f"{name} ntk sym")
    for k in (sym_nngp, sym_ntk):
        assert torch.equal(k, k.T)
        assert k[-1, -1] == k[0, 0] and k[-1, 0] == k[0, 0]
        assert torch.allclose(k[-1], k[0], rtol=1e-13, atol=0)
    # identical pairs across x1 / x2 get the self values bit for bit (x2[0] == x1[1], x2[-1] == x1[0])
    assert nngp[1, 0] == sym_nngp[1, 1] and ntk[1, 0] == sym_ntk[1, 1]
    assert nngp[0, -1] == sym_nngp[0, 0] and ntk[0, -1] == sym_ntk[0, 0]
    # the diagonal alone (O(N) path) is the diagonal of the full matrix (up to the batch order of the rows)
    ids = torch.tensor([*range(n1 - 1), 0])  # make_inputs repeats x1[0] as x1[-1]
    diag_nngp, diag_ntk = evaluate_diagonal(arch, arch.prepare(a), ids, ntk=True)
    assert diag_ntk is not None
    assert torch.allclose(diag_nngp, torch.diagonal(sym_nngp), rtol=1e-14, atol=0)
    assert torch.allclose(diag_ntk, torch.diagonal(sym_ntk), rtol=1e-14, atol=0)


def test_nngp_only_skips_the_ntk() -> None:
    name, spec, shape, n1, n2 = CASES[3]
    x1, x2 = make_inputs(name, shape, n1, n2)
    arch = _arch(spec, shape)
    nngp, ntk = reference_kernel(arch, torch.from_numpy(x1), torch.from_numpy(x2), ntk=False)
    assert ntk is None
    _check(nngp, reference_kernels(spec, x1, x2, dps=20)[0], "nngp only")
    d_nngp, d_ntk = evaluate_diagonal(arch, torch.from_numpy(x1), torch.arange(n1), ntk=False)
    assert d_ntk is None
    assert torch.allclose(d_nngp, torch.diagonal(reference_kernel(arch, torch.from_numpy(x1), ntk=False)[0]),
                          rtol=1e-14, atol=0)


def test_step_activation_has_no_ntk() -> None:
    model = nn.Sequential(ntkit.nn.Linear(3, 4, device="meta"), ntkit.nn.Activation("step"),
                          ntkit.nn.Linear(4, 1, device="meta"))
    arch = describe_model(model, (3,))
    x = torch.tensor([[1.0, 0.5, -0.2], [0.3, -1.0, 2.0]], dtype=F64)
    with pytest.raises(ValueError, match="Dirac"):
        reference_kernel(arch, x, ntk=True)
    nngp, ntk = reference_kernel(arch, x, ntk=False)
    assert ntk is None
    # one hidden step layer: K = P(u > 0, v > 0) = (pi - theta) / 2 pi of the input covariances
    k0 = (x @ x.T) / 3
    v = torch.diagonal(k0)
    theta = torch.arccos((k0 / torch.sqrt(v[:, None] * v[None, :])).clamp(-1, 1))
    assert torch.allclose(nngp, (math.pi - theta) / (2 * math.pi), rtol=1e-12, atol=1e-15)


def test_residual_scale_equals_scaled_readout() -> None:
    """``x + s f(x)``, ``f`` ending in ``Linear(w, b)``: the kernels of ``x + g(x)``, ``g`` ending in ``(s w, s b)``."""
    s = 0.6

    def model(scale: float, w: float, b: float) -> nn.Module:
        block = nn.Sequential(ntkit.nn.Activation("relu"), ntkit.nn.Linear(6, 6, w_std=w, b_std=b, device="meta"))
        return nn.Sequential(ntkit.nn.Linear(4, 6, b_std=0.2, device="meta"),
                             ntkit.nn.Residual(block, scale=scale), ntkit.nn.Activation("relu"),
                             ntkit.nn.Linear(6, 1, b_std=0.1, device="meta"))

    x = torch.from_numpy(make_inputs("residual_scale", [4], 4, 1)[0])
    k_s = reference_kernel(describe_model(model(s, 1.3, 0.4), (4,)), x)
    k_1 = reference_kernel(describe_model(model(1.0, s * 1.3, s * 0.4), (4,)), x)
    for got, want in zip(k_s, k_1, strict=True):
        assert got is not None and want is not None
        assert torch.allclose(got, want, rtol=1e-13, atol=0)
    # and the scale matters: s = 1 differs
    k_plain = reference_kernel(describe_model(model(1.0, 1.3, 0.4), (4,)), x)[0]
    assert not torch.allclose(k_plain, k_s[0], rtol=1e-3)


def test_dense_without_bias_ignores_b_std() -> None:
    """``bias=False`` drops the bias variance even when ``b_std`` is set (NTK and standard parameterization)."""
    x = torch.from_numpy(make_inputs("nobias", [3], 3, 1)[0])
    for par in ("ntk", "standard"):
        with_b = nn.Sequential(ntkit.nn.Linear(3, 5, b_std=0.7, bias=False, parameterization=par, device="meta"),
                               ntkit.nn.Activation("erf"),
                               ntkit.nn.Linear(5, 1, b_std=0.7, bias=False, parameterization=par, device="meta"))
        without = nn.Sequential(ntkit.nn.Linear(3, 5, bias=False, parameterization=par, device="meta"),
                                ntkit.nn.Activation("erf"),
                                ntkit.nn.Linear(5, 1, bias=False, parameterization=par, device="meta"))
        got = reference_kernel(describe_model(with_b, (3,)), x)
        want = reference_kernel(describe_model(without, (3,)), x)
        spec = [_dense(5, 1.0, None, par), {"op": "act", "name": "erf", "a": 1.0, "b": 1.0, "c": 0.0},
                _dense(1, 1.0, None, par)]
        ref = reference_kernels(spec, x.numpy(), None, dps=20)
        for g, w, r in zip(got, want, ref, strict=True):
            assert g is not None and w is not None
            assert torch.equal(g, w)
            _check(g, r, f"no bias {par}")


@pytest.mark.parametrize(
    ("layers", "degree"),
    [
        ([ntkit.nn.Linear(3, 4), ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 1)], 1),
        ([ntkit.nn.Linear(3, 4), ntkit.nn.Activation(ntkit.activations.RectifiedMonomial(2)),
          ntkit.nn.Linear(4, 4), ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 1)], 2),
        ([ntkit.nn.Linear(3, 4), ntkit.nn.Activation(ntkit.activations.RectifiedMonomial(2)),
          ntkit.nn.Linear(4, 4), ntkit.nn.Activation(ntkit.activations.RectifiedMonomial(3)), ntkit.nn.Linear(4, 1)],
         6),
        ([ntkit.nn.Linear(3, 4), ntkit.nn.Residual(ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 4)),
          ntkit.nn.Linear(4, 1)], 1),
        ([ntkit.nn.Linear(3, 4), ntkit.nn.LayerNorm(eps=0.0), ntkit.nn.Linear(4, 4, b_std=0.5),
          ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 1, b_std=0.3)], 0),
    ],
)
def test_homogeneous_degree(layers: list, degree: int) -> None:
    """``arch.degree = k`` and ``K(s x, t x') = (s t)^k K(x, x')`` (NNGP and NTK) by the reference evaluator."""
    arch = describe_model(nn.Sequential(*layers), (3,))
    assert arch.degree == degree
    x = torch.from_numpy(make_inputs("degree", [3], 3, 1)[0])
    s, t = 1.7, 0.6
    k = reference_kernel(arch, x, x)
    ks = reference_kernel(arch, s * x, t * x)
    for a, b in zip(ks, k, strict=True):
        assert a is not None and b is not None
        assert torch.allclose(a, (s * t) ** degree * b, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "layers",
    [
        [ntkit.nn.Linear(3, 4, b_std=0.1), ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 1)],
        [ntkit.nn.Linear(3, 4), ntkit.nn.Activation("erf"), ntkit.nn.Linear(4, 1)],
        [ntkit.nn.Linear(3, 4), ntkit.nn.Residual(ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 4, b_std=0.2)),
         ntkit.nn.Linear(4, 1)],
        [ntkit.nn.Linear(3, 4), ntkit.nn.LayerNorm(eps=1e-3), ntkit.nn.Linear(4, 1)],
        [ntkit.nn.Linear(3, 4), ntkit.nn.Activation("relu"), ntkit.nn.Linear(4, 1, b_std=0.2)],
    ],
)
def test_inhomogeneous_architectures(layers: list) -> None:
    """A bias after a nonzero degree, erf, or a layer norm with ``eps > 0`` make the kernel inhomogeneous."""
    arch = describe_model(nn.Sequential(*layers), (3,))
    assert arch.degree is None
    x = torch.from_numpy(make_inputs("degree", [3], 3, 1)[0])
    k = reference_kernel(arch, x, x)[0]
    k2 = reference_kernel(arch, 2 * x, x)[0]
    ratio = k2 / k
    assert float(ratio.max() - ratio.min()) > 1e-6  # no single power of 2 relates them


def _relu_layers() -> list:
    return [ntkit.nn.Linear(4, 6, b_std=0.3),
            ntkit.nn.Residual(ntkit.nn.Activation("relu"), ntkit.nn.Linear(6, 6, w_std=0.8)),
            ntkit.nn.Activation("relu"), ntkit.nn.Linear(6, 1, b_std=0.1)]


def test_iter_layers_streams_every_layer() -> None:
    arch = describe_model(nn.Sequential(*_relu_layers()), (4,))
    x1, x2 = (torch.from_numpy(a) for a in make_inputs("iter_layers", [4], 4, 3))
    a, b = arch.prepare(x1), arch.prepare(x2)
    both = torch.cat([a, b])
    _, ids = torch.unique(both, dim=0, return_inverse=True)
    steps = list(iter_layers(arch, a, b, ids[:4], ids[4:], ntk=True))
    # dense, (relu, dense inside the residual), residual, relu, dense
    assert len(steps) == 6
    nngp, ntk, *_ = evaluate(arch, a, b, ids[:4], ids[4:], ntk=True)
    assert ntk is not None
    last = steps[-1][2]
    assert torch.equal(last.nngp, nngp) and last.ntk is not None and torch.equal(last.ntk, ntk)
    prev_rows, prev_cross = None, None
    for op, rows, cross, dot in steps:
        if isinstance(op, Pointwise):
            assert dot is not None and prev_rows is not None and prev_cross is not None
            _, left, right = distinct_rows(a, b, ids[:4], ids[4:])
            v = prev_rows.nngp
            c = prev_cross.nngp
            cos = (c / torch.sqrt(v[left][:, None] * v[right][None, :])).clamp(-1, 1)
            want = (math.pi - torch.arccos(cos)) / (2 * math.pi)
            assert torch.allclose(dot, want, rtol=1e-7, atol=1e-12)  # arccos loses ~sqrt(eps) at angle 0
            assert prev_cross.ntk is not None and cross.ntk is not None
            assert torch.allclose(cross.ntk, prev_cross.ntk * dot, rtol=1e-14, atol=0)
        else:
            assert dot is None
        prev_rows, prev_cross = rows, cross


def test_distinct_rows() -> None:
    a = torch.tensor([[1.0], [2.0], [1.0]])
    b = torch.tensor([[3.0], [2.0]])
    ids_a, ids_b = torch.tensor([5, 7, 5]), torch.tensor([9, 7])
    rows, left, right = distinct_rows(a, b, ids_a, ids_b)
    assert rows.tolist() == [[1.0], [2.0], [3.0]]
    assert left.tolist() == [0, 1, 0] and right.tolist() == [2, 1]
    for i in range(3):
        assert torch.equal(rows[left[i]], a[i])
    for j in range(2):
        assert torch.equal(rows[right[j]], b[j])


@pytest.mark.parametrize("mode", ["none", "diag", "full"])
def test_input_pairs_brute_force(mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    shape = (5,) if mode == "none" else (3, 2, 3)
    a = torch.randn(3, *shape, generator=g, dtype=F64)
    b = torch.randn(2, *shape, generator=g, dtype=F64)
    layout = Layout(tuple(shape[1:]) if mode != "none" else (), mode)
    for ntk in (True, False):
        cross = input_pairs(a, b, layout, ntk)
        rows = input_pairs(a, None, layout, ntk)
        assert cross.batch_ndim == 2 and rows.batch_ndim == 1
        assert (cross.ntk is not None) == ntk and (rows.ntk is not None) == ntk
        if ntk:
            assert cross.ntk is not None and rows.ntk is not None
            assert not cross.ntk.any() and not rows.ntk.any()
        an, bn = a.numpy(), b.numpy()
        if mode == "none":
            want = np.array([[an[i] @ bn[j] / 5 for j in range(2)] for i in range(3)])
            want_rows = np.array([an[i] @ an[i] / 5 for i in range(3)])
        else:
            c = shape[0]
            af, bf = an.reshape(3, c, -1), bn.reshape(2, c, -1)
            full = np.einsum("icp,jcq->ijpq", af, bf) / c
            self_full = np.einsum("icp,icq->ipq", af, af) / c
            if mode == "diag":
                want = np.einsum("ijpp->ijp", full).reshape(3, 2, *shape[1:])
                want_rows = np.einsum("ipp->ip", self_full).reshape(3, *shape[1:])
            else:
                want = full.reshape(3, 2, *shape[1:], *shape[1:])
                want_rows = self_full.reshape(3, *shape[1:], *shape[1:])
        np.testing.assert_allclose(cross.nngp.numpy(), want, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(rows.nngp.numpy(), want_rows, rtol=1e-13, atol=1e-15)


def _pad_index(i: int, n: int, padding: str) -> int | None:
    if 0 <= i < n:
        return i
    return i % n if padding == "circular" else None


@pytest.mark.parametrize(("filt", "stride", "padding"), [((3, 2), (1, 2), "same"), ((2, 3), (2, 1), "circular"),
                                                         ((2, 2), (1, 1), "valid"), ((4, 1), (3, 1), "same")])
def test_stencil_brute_force(filt: tuple[int, int], stride: tuple[int, int], padding: str) -> None:
    """``(1/|F|) sum_delta K(s q + delta - pad, s q' + delta - pad)`` by loops, full and diag layouts."""
    from ntkit.nn.linear import conv_output_size

    g = torch.Generator().manual_seed(11)
    n = (5, 4)
    geo = [conv_output_size(n[k], filt[k], stride[k], padding) for k in range(2)]
    out = tuple(x[0] for x in geo)
    pads = [(x[1], x[2]) for x in geo]
    full = torch.randn(2, *n, *n, generator=g, dtype=F64)
    full_in = full.clone()
    got = stencil(full, [[1, 2], [3, 4]], filt, stride, pads, out, padding == "circular")
    diag = torch.randn(2, *n, generator=g, dtype=F64)
    diag_in = diag.clone()
    got_diag = stencil(diag, [[1, 2]], filt, stride, pads, out, padding == "circular")
    assert torch.equal(full, full_in) and torch.equal(diag, diag_in)  # layers never mutate their input
    want = np.zeros((2, *out, *out))
    want_diag = np.zeros((2, *out))
    f = full.numpy()
    dg = diag.numpy()
    taps = list(itertools.product(range(filt[0]), range(filt[1])))
    for q in itertools.product(range(out[0]), range(out[1])):
        src = [[_pad_index(stride[k] * q[k] + d[k] - pads[k][0], n[k], padding) for k in range(2)] for d in taps]
        want_diag[(slice(None), *q)] = sum(dg[(slice(None), *p)] for p in src if None not in p) / len(taps)
        for q2 in itertools.product(range(out[0]), range(out[1])):
            total = np.zeros(2)
            for d in taps:
                p1 = [_pad_index(stride[k] * q[k] + d[k] - pads[k][0], n[k], padding) for k in range(2)]
                p2 = [_pad_index(stride[k] * q2[k] + d[k] - pads[k][0], n[k], padding) for k in range(2)]
                if None not in p1 and None not in p2:
                    total += f[(slice(None), *p1, *p2)]
            want[(slice(None), *q, *q2)] = total / len(taps)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(got_diag.numpy(), want_diag, rtol=1e-13, atol=1e-15)


def test_window_average_brute_force() -> None:
    """Pooling averages independent offsets on the two sides: ``(1/|W|^2) sum_{d, d'} K(s q + d, s q' + d')``."""
    g = torch.Generator().manual_seed(5)
    n, w, s = (5, 4), (2, 3), (2, 1)
    out = tuple((n[k] - w[k]) // s[k] + 1 for k in range(2))
    full = torch.randn(3, *n, *n, generator=g, dtype=F64)
    full_in = full.clone()
    got = window_average(full, [[1, 2], [3, 4]], w, s, out)
    assert torch.equal(full, full_in)
    f = full.numpy()
    win = list(itertools.product(range(w[0]), range(w[1])))
    want = np.zeros((3, *out, *out))
    for q in itertools.product(range(out[0]), range(out[1])):
        for q2 in itertools.product(range(out[0]), range(out[1])):
            total = sum(f[(slice(None), s[0] * q[0] + d[0], s[1] * q[1] + d[1],
                           s[0] * q2[0] + e[0], s[1] * q2[1] + e[1])] for d in win for e in win)
            want[(slice(None), *q, *q2)] = total / len(win) ** 2
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-15)


def test_degree_through_spatial_layers() -> None:
    """Flatten, pooling and the inserted diagonal keep the degree: a ReLU CNN is homogeneous of degree 1."""
    for head in ([ntkit.nn.GlobalAvgPool()], [nn.AvgPool2d(2, 1), nn.Flatten()]):
        model = nn.Sequential(ntkit.nn.Conv2d(2, 3, 2, device="meta"), ntkit.nn.Activation("relu"), *head,
                              ntkit.nn.Linear(3 if len(head) == 1 else 3 * 2 * 1, 1, device="meta"))
        arch = describe_model(model, (2, 3, 2))
        assert arch.degree == 1
        x = torch.from_numpy(make_inputs("degree_conv", [2, 3, 2], 3, 1)[0])
        k = reference_kernel(arch, x, x)
        ks = reference_kernel(arch, 1.5 * x, 0.5 * x)
        for a, b in zip(ks, k, strict=True):
            assert a is not None and b is not None
            assert torch.allclose(a, 0.75 * b, rtol=1e-7, atol=0)  # angle ~0 pairs: sqrt(eps) through atan2


def test_a_biased_convolution_breaks_homogeneity() -> None:
    """K(s x, t x') = (s t) K(x, x') fails once a bias enters: a biased convolution's degree is None (the walk
    must then refuse to rescale huge inputs), and its kernel at 2 x is not 4 times the kernel at x."""
    model = nn.Sequential(ntkit.nn.Conv2d(1, 3, 2, b_std=0.3, device="meta"), ntkit.nn.Activation("relu"),
                          ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(3, 1, device="meta"))
    arch = describe_model(model, (1, 3, 3))
    assert arch.degree is None and arch.inhomogeneous_at
    x = torch.from_numpy(make_inputs("degree_conv", [1, 3, 3], 2, 1)[0])
    nngp, _ = reference_kernel(arch, x, x)
    nngp2, _ = reference_kernel(arch, 2 * x, 2 * x)
    assert not torch.allclose(nngp2, 4 * nngp, rtol=1e-3)


def test_output_layout() -> None:
    """The layout after each op of a CNN: spatial ops keep the input's mode, read-outs give vectors."""
    model = nn.Sequential(ntkit.nn.Conv2d(2, 3, 2, device="meta"), ntkit.nn.Activation("relu"),
                          ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(3, 1, device="meta"))
    arch = describe_model(model, (2, 4, 3))
    assert arch.input_mode == "full"
    lay = Layout((4, 3), "full")
    seen = []
    for op in arch.ops:
        lay = op.output_layout(lay)
        seen.append(lay)
    assert seen == [Layout((4, 3), "full"), Layout((4, 3), "full"), Layout((), "none"), Layout((), "none")]
    conv1d = describe_model(nn.Sequential(ntkit.nn.Conv1d(2, 3, 2, padding="valid", device="meta"), nn.Flatten(),
                                          ntkit.nn.Linear(3 * 4, 1, device="meta")), (2, 5))
    assert conv1d.ops[0].output_layout(Layout((5,), "diag")) == Layout((4,), "diag")


def test_op_defaults_are_the_plain_layers() -> None:
    """Ops built with their defaults: a unit-variance NTK dense layer with bias (0 variance), eps 1e-5, scale 1."""
    from ntkit.infinite.ops import Dense, LayerNormOp, Residual
    from ntkit.infinite.state import Context

    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    rows = input_pairs(x, None, Layout((), "none"), True)
    cross = input_pairs(x, x, Layout((), "none"), True)
    cross = cross.replace(ntk=torch.rand(3, 3, generator=g, dtype=F64))
    ctx = Context(rows, torch.arange(3), torch.arange(3))
    out = Dense("d", (4,), (1,)).apply(cross, ctx, True)
    assert torch.equal(out.nngp, cross.nngp) and out.ntk is not None and cross.ntk is not None
    assert torch.allclose(out.ntk, cross.ntk + cross.nngp, rtol=1e-15, atol=0)
    std = Dense("d", (4,), (1,), parameterization="standard").apply(cross, ctx, True)
    assert std.ntk is not None  # fan_in 1, a bias: K + Theta + 1
    assert torch.allclose(std.ntk, cross.nngp + cross.ntk + 1.0, rtol=1e-15, atol=0)
    ln = LayerNormOp("n", (4,), (4,)).apply(cross, ctx, True)
    v = torch.diagonal(cross.nngp)
    scale = torch.sqrt((v[:, None] + 1e-5) * (v[None, :] + 1e-5))
    assert torch.allclose(ln.nngp, cross.nngp / scale, rtol=1e-14, atol=0)
    res = Residual("r", (4,), (4,)).merge([cross, out], True)
    assert torch.allclose(res.nngp, cross.nngp + out.nngp, rtol=1e-15, atol=0)


def test_flatten_of_vectors_and_conv_defaults() -> None:
    """``nn.Flatten`` of vector features changes nothing; a default ``Conv`` op is a 1x1 unit-variance convolution."""
    from ntkit.infinite.ops import Conv
    from ntkit.infinite.state import Context

    x = torch.from_numpy(make_inputs("flatten_vectors", [4], 3, 1)[0])

    def model(flatten: bool) -> nn.Module:
        mid = [nn.Flatten()] if flatten else []
        block = ntkit.nn.Residual(*mid, ntkit.nn.Linear(5, 5, w_std=0.7, device="meta"))
        return nn.Sequential(ntkit.nn.Linear(4, 5, b_std=0.2, device="meta"), *mid, block, ntkit.nn.Activation("relu"),
                             ntkit.nn.Linear(5, 1, device="meta"))

    with_flat = reference_kernel(describe_model(model(True), (4,)), x)
    plain = reference_kernel(describe_model(model(False), (4,)), x)
    for a, b in zip(with_flat, plain, strict=True):
        assert a is not None and b is not None
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(4)
    img = torch.randn(3, 2, 5, generator=g, dtype=F64)
    lay = Layout((5,), "diag")
    rows = input_pairs(img, None, lay, True)
    cross = input_pairs(img, img, lay, True).replace(ntk=torch.rand(3, 3, 5, generator=g, dtype=F64))
    out = Conv("c", (2, 5), (3, 5)).apply(cross, Context(rows, torch.arange(3), torch.arange(3)), True)
    assert out.nngp.shape == (3, 3, 5) and out.ntk is not None and cross.ntk is not None
    assert torch.allclose(out.nngp, cross.nngp, rtol=1e-15, atol=0)
    assert torch.allclose(out.ntk, cross.ntk + cross.nngp, rtol=1e-15, atol=0)
    wide = Conv("c", (2, 5), (3, 5), filter=(3,)).apply(cross, Context(rows, torch.arange(3), torch.arange(3)), True)
    assert wide.nngp.shape == (3, 3, 5)  # the default padding is "same"
    want = (cross.nngp + torch.nn.functional.pad(cross.nngp[..., 1:], (0, 1))
            + torch.nn.functional.pad(cross.nngp[..., :-1], (1, 0))) / 3
    assert torch.allclose(wide.nngp, want, rtol=1e-14, atol=0)


def test_a_single_duplicated_pair_is_snapped() -> None:
    """One identical pair among the cross pairs gets the self value bit for bit (angle exactly 0 at every layer)."""
    layers = _relu_layers()
    layers[0] = ntkit.nn.Linear(64, 6, b_std=0.3)
    arch = describe_model(nn.Sequential(*layers), (64,))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 64, generator=g, dtype=F64)
    b = torch.cat([torch.randn(2, 64, generator=g, dtype=F64), a[2:3]])  # b[2] == a[2]: the only identical pair
    raw = input_pairs(a, b, Layout((), "none"), False).nngp[2, 2]
    assert raw != input_pairs(a, None, Layout((), "none"), False).nngp[2]  # unsnapped, the pair would differ
    ids_a, ids_b = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 2])
    nngp, ntk, self_nngp, self_ntk, left, right = evaluate(arch, a, b, ids_a, ids_b, ntk=True)
    assert ntk is not None and self_ntk is not None
    assert int(left[2]) == int(right[2])
    assert nngp[2, 2] == self_nngp[left[2]] and ntk[2, 2] == self_ntk[left[2]]
    # the other pairs are left as computed: equal to a fresh evaluation without any identical pair
    fresh, _ = reference_kernel(arch, a[:2], b[:2])
    assert torch.allclose(nngp[:2, :2], fresh, rtol=1e-14, atol=0)


def test_layer_kernels_of_a_constant_derivative_have_the_pairs_shape() -> None:
    """SigmaDot of the identity is 1 everywhere: still one (N1, N2) matrix per layer, as documented (the
    derivative map returns a scalar there; the evaluator broadcasts it to the pairs)."""
    from ntkit.layerwise import layer_kernels

    x = torch.from_numpy(make_inputs("identity_layers", [3], 4, 1)[0])
    res = layer_kernels(x, x[:2], depth=2, activation="identity", b_std=0.2)
    assert all(s.shape == (4, 2) for s in res.sigma_dot)
    assert all(bool((s == 1.0).all()) for s in res.sigma_dot)


def test_layer_norm_without_eps_maps_a_zero_variance_channel_to_exactly_zero() -> None:
    """eps = 0 and an input whose channel is constant (zero input, bias-free layer, then a sigmoid: every channel
    is sigmoid(0)): after removing the mean it has no variance, and its kernel row is 0 exactly, not the rounding
    residue of K(x, x') - m m' (~2e-16)."""
    model = nn.Sequential(ntkit.nn.Linear(3, 8, bias=False, device="meta"), nn.Sigmoid(),
                          ntkit.nn.LayerNorm(eps=0.0), ntkit.nn.Linear(8, 1, device="meta"))
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.5, 0.3], [0.2, 0.9, -1.1]], dtype=F64)
    k = ntkit.infinite_kernel(model, x)
    assert bool((k.nngp[0] == 0).all() and (k.nngp[:, 0] == 0).all())
    assert bool((k.ntk[0] == 0).all() and (k.ntk[:, 0] == 0).all())
    assert float(k.nngp[1, 1]) == pytest.approx(1.0, rel=1e-12)  # a normalised channel has unit variance



def test_duplicated_rows_are_exact_where_the_direct_angle_is_not() -> None:
    """Rows of many features: x.x' by a matrix product and x.x by a row sum round differently, so the
    arc-cosine angle of a duplicated pair computed directly is ~sqrt(eps) instead of 0 (errors ~1e-8 through
    arccos). The evaluator gives every duplicated pair its self value: NNGP and NTK equal K(x, x) bit for
    bit, and the diagonal of K(X, X) too."""
    model = nn.Sequential(ntkit.nn.Linear(64, 8, device="meta"), nn.ReLU(), ntkit.nn.Linear(8, 8, device="meta"),
                          nn.ReLU(), ntkit.nn.Linear(8, 1, device="meta"))
    arch = describe_model(model, (64,))
    # features of magnitudes 1e-3 .. 1e3: x.x by a matrix product and by a row sum differ in the last bits
    x1 = torch.randn(6, 64, generator=torch.Generator().manual_seed(11), dtype=F64) * torch.logspace(-3, 3, 64,
                                                                                                  dtype=F64)
    x2 = x1[[1, 3, 4]].clone()
    direct, sums = x1 @ x2.T, (x1 * x1).sum(1)
    assert any(bool(direct[i, j] != sums[i]) for j, i in enumerate([1, 3, 4]))  # the premise: they do differ
    nngp, ntk = reference_kernel(arch, x1, x2)
    self_nngp, self_ntk = reference_kernel(arch, x1, None)
    assert ntk is not None and self_ntk is not None
    for j, i in enumerate([1, 3, 4]):
        assert nngp[i, j] == self_nngp[i, i] and ntk[i, j] == self_ntk[i, i], (i, j)
    # the self values are the exact angle-0 values: E[relu(u)^2] = K / 2 per layer, K(x, x) = |x|^2 / (4 d)
    sq = (x1 * x1).sum(1) / 64 / 4
    torch.testing.assert_close(self_nngp.diagonal(), sq, rtol=1e-14, atol=0)
