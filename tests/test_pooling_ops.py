"""Sum pooling (``ntkit.nn.SumPool1d/2d``) and zero-padded average pooling: modules, ops, errors, features.

Agreement with neural-tangents' ``SumPool`` / ``AvgPool(..., 'SAME', normalize_edges)`` is checked in
``tests/test_infinite_nt.py`` and with the mpmath reference in ``tests/test_infinite_exact.py`` (the
``*sumpool*`` / ``*avgpool_same*`` cases of :mod:`tests.arch_cases`); the per-op moments in
``tests/test_moments.py``. Here: the finite modules against torch, the shape rules and their
errors, exact identities between the kernels (``SumPool = |W|^2 AvgPool``), channel means (a layer
norm after pooled activations, against the mpmath reference), float32, duplicated rows, and the
random features.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError, describe_model
from ntkit.infinite.ops import AvgPool, SumPool
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.nn import SumPool1d, SumPool2d
from tests.conftest import rel_err
from tests.reference_arch import reference_kernels

F64 = torch.float64
IMAGES = torch.randn(6, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
SIGNALS = torch.randn(6, 3, 9, dtype=F64, generator=torch.Generator().manual_seed(1))


def _cnn(pool: nn.Module, channels: int = 2) -> nn.Sequential:
    """conv -> relu -> pool -> conv -> relu -> global pooling -> read-out (no biases: degree 1)."""
    return nn.Sequential(ntkit.nn.Conv2d(channels, 4, 3, device="meta"), nn.ReLU(), pool,
                         ntkit.nn.Conv2d(4, 4, 3, device="meta"), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                         ntkit.nn.Linear(4, 1, device="meta"))


# --- the finite modules --------------------------------------------------------------------------------


@pytest.mark.parametrize("k, s, p", [(2, None, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 0)), (4, 2, 2)])
def test_sum_pool2d_is_average_pooling_times_the_window(k: Any, s: Any, p: Any) -> None:
    x = torch.randn(3, 2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    pool = SumPool2d(k, s, padding=p)
    taps = math.prod(pool.kernel_size)
    want = F.avg_pool2d(x, k, s, p, count_include_pad=True) * taps
    got = pool(x)
    assert got.shape == want.shape and tuple(got.shape[2:]) == pool.output_shape((7, 8))
    assert rel_err(got, want) < 1e-15


def test_sum_pool1d_sums_each_window() -> None:
    x = torch.arange(1.0, 8.0, dtype=F64).reshape(1, 1, 7)
    assert SumPool1d(3, stride=2).forward(x).tolist() == [[[6.0, 12.0, 18.0]]]
    assert SumPool1d(3, stride=2, padding=1)(x).tolist() == [[[3.0, 9.0, 15.0, 13.0]]]  # zeros at the edges
    assert SumPool1d(2)(x).shape == (1, 1, 3)  # stride defaults to the window
    assert SumPool2d(2)(torch.ones(1, 1, 4, 4, dtype=torch.float32)).dtype == torch.float32
    assert "kernel_size=(3,), stride=(2,), padding=(1,)" in repr(SumPool1d(3, 2, 1))


@pytest.mark.parametrize("kwargs, err, match", [
    ({"kernel_size": 0}, ValueError, r"kernel_size\[0\]: expected an integer >= 1, got 0"),
    ({"kernel_size": (2, 2, 2)}, ValueError, "kernel_size: expected an integer or a sequence of 2 integers"),
    ({"kernel_size": 2.0}, ValueError, "kernel_size: expected an integer or a sequence of 2 integers"),
    ({"kernel_size": (2, True)}, TypeError, r"kernel_size\[1\]: expected an integer"),
    ({"kernel_size": 2, "stride": 0}, ValueError, r"stride\[0\]: expected an integer >= 1"),
    ({"kernel_size": 2, "padding": -1}, ValueError, r"padding\[0\]: expected an integer >= 0"),
    ({"kernel_size": 3, "padding": 2}, ValueError, "at most half the window .* got padding 2 for kernel_size 3"),
])
def test_sum_pool_rejects_bad_sizes(kwargs: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        SumPool2d(**kwargs)


def test_sum_pool_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"SumPool2d: expected an input of shape \(N, C, H, W\), got tensor"):
        SumPool2d(2)(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"SumPool1d: expected spatial sizes >= the window \(5,\)"):
        SumPool1d(5)(torch.zeros(1, 1, 4))
    assert SumPool1d(5, stride=1, padding=1)(torch.zeros(1, 1, 4)).shape == (1, 1, 2)  # 4 + 2 >= 5


# --- shape rules and errors of the ops -----------------------------------------------------------------


def test_ops_and_shapes() -> None:
    arch = describe_model(_cnn(SumPool2d(2)), (2, 6, 6))
    op = arch.ops[2]
    assert isinstance(op, SumPool) and op.out_shape == (4, 3, 3) and op.window == (2, 2) and op.padding == (0, 0)
    assert arch.degree == 1 and arch.input_mode == "full"
    padded = describe_model(_cnn(nn.AvgPool2d(3, stride=(1, 2), padding=1, count_include_pad=False)), (2, 6, 6))
    op = padded.ops[2]
    assert isinstance(op, AvgPool) and op.out_shape == (4, 6, 3) and op.padded and not op.count_include_pad
    assert "padding=(1, 1), count_include_pad=False" in repr(op)
    plain = describe_model(_cnn(nn.AvgPool2d(2)), (2, 6, 6)).ops[2]
    assert isinstance(plain, AvgPool) and not plain.padded
    assert "padding" not in repr(plain)  # the description of unpadded pooling is unchanged (resumable outputs)
    one_d = nn.Sequential(ntkit.nn.Conv1d(3, 4, 3, device="meta"), nn.ReLU(), SumPool1d(3, 2, padding=1),
                          nn.Flatten(), ntkit.nn.Linear(20, 1, device="meta"))
    assert describe_model(one_d, (3, 9)).ops[2].out_shape == (4, 5)


@pytest.mark.parametrize("pool, shape, match", [
    (SumPool2d(2), (4, 6), r"2 \(SumPool2d\) expected an input of shape \(C, 2 spatial axes\), got an input of "
                           r"shape \(4, 6\)"),
    (SumPool1d(2), (4, 6, 6), r"2 \(SumPool1d\) expected an input of shape \(C, 1 spatial axes\)"),
    (SumPool2d(7), (4, 6, 6), r"2 \(SumPool2d\) expected spatial sizes \+ 2 x padding \(0, 0\) >= the window "
                              r"\(7, 7\), got an input of shape \(4, 6, 6\)"),
    (nn.AvgPool2d(9, padding=1), (4, 6, 6), r"expected spatial sizes \+ 2 x padding \(1, 1\) >= the pooling window"),
    (nn.AvgPool2d(7), (4, 6, 6), r"expected spatial sizes >= the pooling window \(7, 7\)"),
    (nn.AvgPool2d(2, ceil_mode=True), (4, 6, 6), r"expected ceil_mode=False and no divisor_override .* got "
                                                 r"ceil_mode=True"),
    (nn.AvgPool2d(2, divisor_override=3), (4, 6, 6), "divisor_override=3"),
])
def test_builder_errors_name_the_module(pool: nn.Module, shape: tuple[int, ...], match: str) -> None:
    conv = ntkit.nn.Conv2d(2, 4, 3, device="meta") if len(shape) == 3 else ntkit.nn.Conv1d(2, 4, 3, device="meta")
    model = nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), ntkit.nn.Linear(16, 1, device="meta"))
    with pytest.raises(ArchitectureError, match=match):
        describe_model(model, (2, *shape[1:]))


def test_padding_above_half_the_window_is_refused() -> None:
    pool = nn.AvgPool2d(4, padding=1)
    pool.padding = 3  # torch checks this only in the forward pass
    with pytest.raises(ArchitectureError, match=r"expected padding <= kernel_size / 2 .* got padding=3"):
        describe_model(_cnn(pool), (2, 6, 6))


def test_supported_list_names_the_new_modules() -> None:
    model = nn.Sequential(ntkit.nn.Conv2d(2, 4, 3, device="meta"), nn.MaxPool2d(2), nn.Flatten(),
                          ntkit.nn.Linear(36, 1, device="meta"))
    with pytest.raises(ArchitectureError, match=r"count_include_pad=True/False.*ntkit.nn.SumPool1d/2d"):
        describe_model(model, (2, 6, 6))


# --- exact identities, duplicated rows, float32 --------------------------------------------------------


def test_sum_pooling_is_the_window_squared_times_average_pooling() -> None:
    for sum_pool, avg_pool, taps in [(SumPool2d(2, 1), nn.AvgPool2d(2, 1), 4),
                                     (SumPool2d(3, 1, padding=1), nn.AvgPool2d(3, 1, padding=1), 9)]:
        k_sum = ntkit.infinite_kernel(_cnn(sum_pool), IMAGES)
        k_avg = ntkit.infinite_kernel(_cnn(avg_pool), IMAGES)  # degree 1, no biases: the kernels scale by taps^2
        assert rel_err(k_sum.nngp, taps**2 * k_avg.nngp) < 1e-14
        assert rel_err(k_sum.ntk, taps**2 * k_avg.ntk) < 1e-14


def test_excluding_the_padding_divides_by_the_in_range_taps() -> None:
    """``count_include_pad=False`` is ``True``'s kernel times ``|W|^2 / (n(q) n(q'))`` per output pixel pair."""
    g = torch.Generator().manual_seed(3)
    k = torch.randn(3, 2, 6, 5, 6, 5, dtype=F64, generator=g)
    pairs = Pairs(k, k.flip(0), Layout((6, 5), "full"), 2)
    ops = [AvgPool("pool", (4, 6, 5), (4, 6, 5), (3, 3), (1, 1), (1, 1), include) for include in (True, False)]
    ctx = Context(pairs)  # pooling reads no variances
    inc, exc = (op.apply(pairs, ctx, True) for op in ops)
    n_h, n_w = torch.tensor([2.0, 3, 3, 3, 3, 2], dtype=F64), torch.tensor([2.0, 3, 3, 3, 2], dtype=F64)
    n = n_h[:, None] * n_w[None, :]  # in-range taps per output pixel
    ratio = n.reshape(1, 1, 6, 5, 1, 1) * n.reshape(1, 1, 1, 1, 6, 5) / 81
    assert exc.ntk is not None and inc.ntk is not None
    assert rel_err(exc.nngp * ratio, inc.nngp) < 1e-15 and rel_err(exc.ntk * ratio, inc.ntk) < 1e-15
    assert torch.equal(exc.nngp[..., 2, 2, 3, 1], inc.nngp[..., 2, 2, 3, 1])  # interior pixels: the same divisor


def test_duplicated_rows_and_symmetry() -> None:
    """Identical inputs get exactly the diagonal's values; the rest agree with the symmetric kernel."""
    for model in (_cnn(SumPool2d(3, 1, padding=1)), _cnn(nn.AvgPool2d(3, 2, padding=1, count_include_pad=False))):
        x2 = torch.cat([IMAGES[3:], IMAGES[:2]])
        k = ntkit.infinite_kernel(model, IMAGES, x2)
        sym = ntkit.infinite_kernel(model, IMAGES)
        assert torch.equal(sym.ntk, sym.ntk.T) and torch.equal(sym.nngp, sym.nngp.T)
        for i, j in [(3, 0), (4, 1), (5, 2), (0, 3), (1, 4)]:  # x2[j] is IMAGES[i]
            assert k.ntk[i, j] == sym.ntk[i, i] and k.nngp[i, j] == sym.nngp[i, i]
        assert rel_err(k.ntk, torch.cat([sym.ntk[:, 3:], sym.ntk[:, :2]], 1)) < 1e-14
        assert bool((torch.linalg.eigvalsh(sym.ntk) > 0).all())


@pytest.mark.parametrize("pool", [SumPool2d(2), SumPool2d(3, 1, padding=1), nn.AvgPool2d(3, 1, padding=1),
                                  nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)], ids=str)
def test_float32_agrees_with_float64(pool: nn.Module) -> None:
    model = _cnn(pool)
    k64 = ntkit.infinite_kernel(model, IMAGES)
    k32 = ntkit.infinite_kernel(model, IMAGES.float(), dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    assert rel_err(k32.ntk.double(), k64.ntk) < 1e-5 and rel_err(k32.nngp.double(), k64.nngp) < 1e-5


def test_pooling_on_the_data_is_the_prelude() -> None:
    """Before the first weight layer the module runs on the inputs themselves."""
    head = nn.Sequential(ntkit.nn.Conv2d(2, 4, 3, device="meta"), nn.ReLU(), nn.Flatten(),
                         ntkit.nn.Linear(4 * 36, 1, device="meta"))
    for pool in (SumPool2d(3, 1, padding=1), nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)):
        arch = describe_model(nn.Sequential(pool, *head), (2, 6, 6))
        assert [type(m) for _, m in arch.prelude] == [type(pool)] and arch.degree == 1
        k = ntkit.infinite_kernel(nn.Sequential(pool, *head), IMAGES)
        assert rel_err(k.ntk, ntkit.infinite_kernel(head, pool(IMAGES)).ntk) < 1e-14


def test_channel_means_through_pooling_reach_a_layer_norm() -> None:
    """relu -> pooling -> layer norm: the channel means of the relu are pooled too (mpmath reference)."""
    cases: list[tuple[dict[str, Any], nn.Module]] = [
        ({"op": "sumpool", "window": [3], "stride": [1], "padding": "same"}, SumPool1d(3, 1, padding=1)),
        ({"op": "avgpool", "window": [3], "stride": [2], "padding": "same", "normalize_edges": True},
         nn.AvgPool1d(3, 2, padding=1, count_include_pad=False)),
    ]
    for spec_pool, pool in cases:
        conv = {"op": "conv", "width": 4, "filter": [3], "stride": [1], "padding": "same", "w_std": 1.0,
                "b_std": 0.2, "parameterization": "ntk"}
        readout = {"op": "dense", "width": 1, "w_std": 1.0, "b_std": 0.0, "parameterization": "ntk"}
        spec: list[dict[str, Any]] = [conv, {"op": "act", "name": "relu"}, spec_pool,
                                      {"op": "layernorm", "eps": 1e-12}, {"op": "gap"}, readout]
        model = nn.Sequential(ntkit.nn.Conv1d(3, 4, 3, b_std=0.2, device="meta"), nn.ReLU(), pool,
                              ntkit.nn.LayerNorm(eps=1e-12), ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1))
        x = SIGNALS[:3, :, :7].numpy()
        nngp, ntk = reference_kernels(spec, x)
        k = ntkit.infinite_kernel(model, SIGNALS[:3, :, :7])
        assert rel_err(k.nngp, torch.from_numpy(nngp)) < 1e-13 and rel_err(k.ntk, torch.from_numpy(ntk)) < 1e-13


# --- random features -----------------------------------------------------------------------------------


def test_features_of_sum_pooling_are_the_window_times_those_of_average_pooling() -> None:
    """The pooling steps draw nothing: the same seed gives the same weights, and every later layer is
    positively homogeneous of degree 1 (no biases), so the features scale by |W| exactly."""
    x = IMAGES[:4]
    for sum_pool, avg_pool, taps in [(SumPool2d(2), nn.AvgPool2d(2), 4),
                                     (SumPool2d(3, 1, padding=1), nn.AvgPool2d(3, 1, padding=1), 9)]:
        for which in ("nngp", "ntk"):
            a = ntkit.features(_cnn(sum_pool), x, n_features=32, which=which, seed=5, dtype=F64)
            b = ntkit.features(_cnn(avg_pool), x, n_features=32, which=which, seed=5, dtype=F64)
            assert rel_err(a, taps * b) < 1e-13, which


def _swapped(pool: nn.Module) -> nn.Module | None:
    """The same average pooling with ``count_include_pad`` flipped (None for sum pooling)."""
    if not isinstance(pool, (nn.AvgPool1d, nn.AvgPool2d)):
        return None
    flip: Any = type(pool)
    return flip(pool.kernel_size, pool.stride, pool.padding, count_include_pad=not pool.count_include_pad)


@pytest.mark.parametrize("pool", [SumPool2d(2, 1), SumPool1d(3, 2, padding=1),
                                  nn.AvgPool2d(3, 1, padding=1, count_include_pad=False),
                                  nn.AvgPool1d(3, 2, padding=1)], ids=str)
@pytest.mark.parametrize("which", ["nngp", "ntk"])
def test_random_features_approximate_the_kernel(pool: nn.Module, which: str) -> None:
    """The mean of phi phi^T over 24 draws of m = 256 features: within 12% (Frobenius; measured 2-6%) of
    the exact kernel, and farther than that from the kernel with ``count_include_pad`` flipped (17-37%
    away; a missing |W| would be 300% off)."""

    def model_of(p: nn.Module) -> nn.Sequential:
        if isinstance(p, (SumPool1d, nn.AvgPool1d)):
            return nn.Sequential(ntkit.nn.Conv1d(3, 4, 3, device="meta"), nn.ReLU(), p,
                                 ntkit.nn.Conv1d(4, 4, 3, device="meta"), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                                 ntkit.nn.Linear(4, 1, device="meta"))
        return _cnn(p)

    model = model_of(pool)
    x = SIGNALS if isinstance(pool, (SumPool1d, nn.AvgPool1d)) else IMAGES
    exact = ntkit.infinite_kernel(model, x, which=which)
    draws = [(lambda p: p @ p.T)(ntkit.features(model, x, n_features=256, which=which, seed=s, dtype=F64))
             for s in range(24)]
    mean = torch.stack(draws).mean(0)
    err = float(torch.linalg.norm(mean - exact) / torch.linalg.norm(exact))
    assert err < 0.12, err
    swapped = _swapped(pool)
    if swapped is not None:
        other = ntkit.infinite_kernel(model_of(swapped), x, which=which)
        assert float(torch.linalg.norm(mean - other) / torch.linalg.norm(other)) > 0.12
