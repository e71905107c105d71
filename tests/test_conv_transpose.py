"""Transposed convolutions (``ntkit.nn.ConvTranspose1d/2d``) and layer norm over whole examples.

Agreement with neural-tangents' ``ConvTranspose`` and ``LayerNorm(axis=...)`` is checked in
``tests/test_infinite_nt.py`` and with the mpmath reference in ``tests/test_infinite_exact.py`` (the
``convt*`` / ``*layernorm_all*`` cases of :mod:`tests.arch_cases`); the per-op moments in
``tests/test_moments.py``. Here: the finite modules (neural-tangents' output sizes, the convolution of
the upsampled input, the parameterizations), the shape rules and their errors, float32, the diagonal
and duplicated rows, the empirical NTK of wide finite networks, the random features, and the layer
norm's identities (whole examples of one pixel, scale invariance, the data prelude).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError, describe_model
from ntkit.infinite.ops import ConvTranspose, LayerNormOp, LayerNormSpatialOp
from ntkit.nn import ConvTranspose1d, ConvTranspose2d, LayerNorm
from tests.conftest import rel_err

F64 = torch.float64
IMAGES = torch.randn(5, 2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
SIGNALS = torch.randn(5, 3, 6, dtype=F64, generator=torch.Generator().manual_seed(1))

#: Output lengths of neural-tangents 0.6.5's ``ConvTranspose`` (its ``apply_fn``) for an input of length 5,
#: per (padding, filter, stride): "same" gives 5 s.
NT_VALID_LENGTHS = {(1, 1): 5, (1, 2): 10, (1, 3): 15, (2, 1): 6, (2, 2): 10, (2, 3): 15, (3, 1): 7, (3, 2): 11,
                    (3, 3): 15, (4, 1): 8, (4, 2): 12, (4, 3): 16, (5, 1): 9, (5, 2): 13, (5, 3): 17}


def _upsampled_conv(module: Any, x: torch.Tensor) -> torch.Tensor:
    """The definition, written out: zeros between the pixels, lax's pads, a stride-1 convolution."""
    nd = module.ndim
    u = x
    for axis, (n, k, s) in enumerate(zip(x.shape[2:], module.kernel_size, module.stride, strict=True)):
        if module.padding == "same":
            before = k - 1 if s >= k else -(-(k + s - 2) // 2)
            after = k + s - 2 - before
        else:
            before, after = k - 1, s - 1 + max(k - s, 0)
        shape = list(u.shape)
        shape[2 + axis] = (n - 1) * s + 1 + before + after
        z = u.new_zeros(shape)
        index: list[Any] = [slice(None)] * u.ndim
        index[2 + axis] = slice(before, before + (n - 1) * s + 1, s)
        z[tuple(index)] = u
        u = z
    out = (F.conv1d if nd == 1 else F.conv2d)(u, module.weight) * module.weight_scale
    if module.bias is not None:
        out = out + (module.bias_scale * module.bias).view(-1, *([1] * nd))
    return out


# --- the finite modules --------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_output_sizes_are_neural_tangents(padding: str) -> None:
    for k in range(1, 6):
        for s in range(1, 4):
            want = 5 * s if padding == "same" else NT_VALID_LENGTHS[(k, s)]
            one = ConvTranspose1d(2, 3, k, s, padding, dtype=F64)
            assert one.output_shape((5,)) == (want,) and one(SIGNALS[:2, :2, :5]).shape == (2, 3, want)
            two = ConvTranspose2d(2, 3, (k, 2), (s, 1), padding, dtype=F64)
            width = 4 if padding == "same" else 5
            assert two.output_shape((5, 4)) == (want, width) and two(torch.randn(1, 2, 5, 4, dtype=F64)).shape == (
                1, 3, want, width)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("k, s", [(1, 2), (2, 2), (3, 1), (3, 2), (4, 2), (2, 3), (5, 2)])
@torch.no_grad()
def test_forward_is_the_convolution_of_the_upsampled_input(padding: str, k: int, s: int) -> None:
    g = torch.Generator().manual_seed(k * 10 + s)
    one = ConvTranspose1d(3, 4, k, s, padding, b_std=0.3, generator=g, dtype=F64)
    assert rel_err(one(SIGNALS), _upsampled_conv(one, SIGNALS)) < 1e-14
    two = ConvTranspose2d(2, 4, (k, 3), (s, 2), padding, b_std=0.3, generator=g, dtype=F64)
    assert rel_err(two(IMAGES), _upsampled_conv(two, IMAGES)) < 1e-14


@torch.no_grad()
def test_standard_parameterization_is_the_same_function_at_init() -> None:
    """Same draws: the standard layer holds ``w W / sqrt(fan_in)`` and ``b_std b`` and computes ``W u + b``."""
    ntk = ConvTranspose2d(2, 5, 3, 2, w_std=1.3, b_std=0.4, generator=torch.Generator().manual_seed(2), dtype=F64)
    std = ConvTranspose2d(2, 5, 3, 2, w_std=1.3, b_std=0.4, parameterization="standard",
                          generator=torch.Generator().manual_seed(2), dtype=F64)
    assert ntk.fan_in == std.fan_in == 18 and std.weight_scale == 1.0
    assert rel_err(std(IMAGES), ntk(IMAGES)) < 1e-14
    no_bias = ConvTranspose1d(3, 2, 2, bias=False, dtype=F64)
    assert no_bias.bias is None and "bias=False" in repr(no_bias)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"padding": "circular"}, ValueError, r"padding: expected one of \['same', 'valid'\], got 'circular'"),
    ({"kernel_size": 0}, ValueError, r"kernel_size\[0\]"),
    ({"kernel_size": (3,)}, ValueError, "kernel_size: expected an integer or a sequence of 2 integers"),
    ({"stride": (1, 0)}, ValueError, r"stride\[1\]"),
    ({"in_channels": "2"}, TypeError, "in_channels"),
    ({"w_std": 0.0}, ValueError, "w_std"),
    ({"parameterization": "mup"}, ValueError, "parameterization"),
])
def test_bad_options_are_refused(kwargs: dict, err: type, match: str) -> None:
    args: dict[str, Any] = {"in_channels": 2, "out_channels": 3, "kernel_size": 3, **kwargs}
    with pytest.raises(err, match=match):
        ConvTranspose2d(**args)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ConvTranspose2d: expected an input of shape \(N, 3, H, W\), got tensor of "
                                         r"shape \(5, 2, 3, 4\)"):
        ConvTranspose2d(3, 4, 3)(IMAGES.float())
    with pytest.raises(ValueError, match=r"ConvTranspose1d: expected an input of shape \(N, 3, L\), got tensor of "
                                         r"shape \(5, 2, 3, 4\)"):
        ConvTranspose1d(3, 4, 3)(IMAGES.float())


# --- the op: shapes, errors, registration --------------------------------------------------------------


def test_ops_and_shapes() -> None:
    model = nn.Sequential(ConvTranspose2d(2, 4, 3, 2, device="meta"), nn.ReLU(),
                          ConvTranspose2d(4, 4, (2, 3), (1, 2), "valid", device="meta"), nn.Flatten(),
                          ntkit.nn.Linear(4 * 7 * 17, 1, device="meta"))
    arch = describe_model(model, (2, 3, 4))
    first, second = (op for op in arch.ops if isinstance(op, ConvTranspose))
    assert (first.in_shape, first.out_shape, first.filter, first.stride) == ((2, 3, 4), (4, 6, 8), (3, 3), (2, 2))
    assert second.out_shape == (4, 7, 17) and second.padding == "valid" and second.fan_in == 4 * 6
    assert arch.input_mode == "diag"  # same-pixel covariances suffice, as for a convolution
    # the compiled convolution program runs it (an upsampling step, then a convolution: tests/test_native_branches.py)
    assert ntkit.infinite.tiles.KernelTiles(arch).path == "spatial"


def test_builder_errors_name_the_module() -> None:
    wrong = nn.Sequential(ConvTranspose2d(3, 4, 3, device="meta"), ntkit.nn.GlobalAvgPool(),
                          ntkit.nn.Linear(4, 1, device="meta"))
    with pytest.raises(ArchitectureError, match=r"module 0 \(ConvTranspose2d\) expected \(C=3, 2 spatial axes\), "
                                                r"got an input of shape \(2, 3, 4\)"):
        ntkit.infinite_kernel(wrong, IMAGES)
    one_d = nn.Sequential(ConvTranspose1d(2, 4, 3, device="meta"), ntkit.nn.GlobalAvgPool(),
                          ntkit.nn.Linear(4, 1, device="meta"))
    with pytest.raises(ArchitectureError, match=r"\(ConvTranspose1d\) expected \(C=2, 1 spatial axes\)"):
        ntkit.infinite_kernel(one_d, IMAGES)


def test_torch_transposed_convolutions_point_to_ntkit() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(2, 4, 3), ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1))
    names = r"use ntkit.nn.ConvTranspose2d .*Supported: .*ntkit.nn.ConvTranspose1d, ntkit.nn.ConvTranspose2d"
    with pytest.raises(ArchitectureError, match=names):
        ntkit.infinite_kernel(model, IMAGES)


# --- the kernels -----------------------------------------------------------------------------------------


def _net(padding: str = "same", device: str | None = "meta", width: int = 4,
         g: torch.Generator | None = None) -> nn.Sequential:
    opts: dict[str, Any] = {"device": device, "dtype": None if device == "meta" else F64, "generator": g}
    return nn.Sequential(ConvTranspose2d(2, width, 3, 2, padding, b_std=0.2, **opts), nn.ReLU(),
                         ConvTranspose2d(width, width, 2, 1, "valid", b_std=0.1, **opts),
                         ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(width, 1, **opts))


def test_duplicated_rows_symmetry_and_the_diagonal() -> None:
    """Identical inputs get exactly the diagonal's values; ``var1`` is the diagonal of the symmetric kernel."""
    model = _net("valid")
    x2 = torch.cat([IMAGES[3:], IMAGES[:2]])
    k = ntkit.infinite_kernel(model, IMAGES, x2)
    sym = ntkit.infinite_kernel(model, IMAGES)
    assert torch.equal(sym.ntk, sym.ntk.T) and torch.equal(sym.nngp, sym.nngp.T)
    for i, j in [(3, 0), (4, 1), (0, 2), (1, 3)]:  # x2[j] is IMAGES[i]
        assert k.ntk[i, j] == sym.ntk[i, i] and k.nngp[i, j] == sym.nngp[i, i]
    diagonal = sym.nngp.diagonal()
    assert rel_err(k.var1, diagonal) < 1e-15 and rel_err(k.var2, diagonal[[3, 4, 0, 1]]) < 1e-15
    assert rel_err(k.ntk, torch.cat([sym.ntk[:, 3:], sym.ntk[:, :2]], 1)) < 1e-14
    assert bool((torch.linalg.eigvalsh(sym.ntk) > 0).all())


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_float32_agrees_with_float64(padding: str) -> None:
    model = _net(padding)
    k64 = ntkit.infinite_kernel(model, IMAGES)
    k32 = ntkit.infinite_kernel(model, IMAGES.float(), dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    assert rel_err(k32.ntk.double(), k64.ntk) < 1e-5 and rel_err(k32.nngp.double(), k64.nngp) < 1e-5


def test_a_stride_one_same_transposed_convolution_of_an_odd_filter_is_a_convolution() -> None:
    """Stride 1, odd k, "same": pads (k - 1) / 2 on both sides, the filter flipped: the same kernels as Conv2d."""
    def model(layer: nn.Module) -> nn.Sequential:
        return nn.Sequential(layer, nn.ReLU(), ntkit.nn.Conv2d(3, 3, 3, device="meta"), nn.ReLU(),
                             ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(3, 1, device="meta"))

    up = ntkit.infinite_kernel(model(ConvTranspose2d(2, 3, 3, b_std=0.3, device="meta")), IMAGES)
    conv = ntkit.infinite_kernel(model(ntkit.nn.Conv2d(2, 3, 3, b_std=0.3, device="meta")), IMAGES)
    assert rel_err(up.ntk, conv.ntk) < 1e-14 and rel_err(up.nngp, conv.nngp) < 1e-14


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_empirical_ntk_of_wide_networks_approaches_the_kernel(parameterization: str) -> None:
    """One hidden layer of 16384 channels between two transposed convolutions: the empirical NTK is within
    3% of the infinite one (natural scale ``sqrt(T(x, x) T(x', x'))``; measured 0.4-0.8%, 1-4% at width 256),
    so a 10% error in the kernel fails. Standard parameterization: the exact kernel at this width."""
    x = IMAGES[:4, :, :3, :3]
    width = 16384

    def model(device: str | None, g: torch.Generator | None = None) -> nn.Sequential:
        opts: dict[str, Any] = {"device": device, "dtype": None if device == "meta" else F64, "generator": g,
                                "parameterization": parameterization}
        return nn.Sequential(ConvTranspose2d(2, width, 3, 2, "same", b_std=0.2, **opts), nn.ReLU(),
                             ConvTranspose2d(width, 1, 2, 1, "valid", b_std=0.1, **opts), ntkit.nn.GlobalAvgPool())

    exact = ntkit.infinite_kernel(model("meta"), x).ntk
    scale = (exact.diagonal()[:, None] * exact.diagonal()[None, :]).sqrt()
    for seed in (0, 1):
        emp = ntkit.empirical_ntk(model(None, torch.Generator().manual_seed(seed)), x).reshape(4, 4)
        err = float(((emp - exact) / scale).abs().max())
        assert err < 0.03, (seed, err)


def test_random_features_approximate_the_kernel() -> None:
    """The mean of phi phi^T over 16 draws of m = 256 features: within 12% (Frobenius) of the exact
    kernel (the convolution's random step on upsampled features)."""
    model = nn.Sequential(ConvTranspose1d(3, 4, 3, 2, device="meta"), nn.ReLU(),
                          ConvTranspose1d(4, 4, 2, 3, "valid", b_std=0.2, device="meta"), nn.ReLU(),
                          ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1, device="meta"))
    for which in ("nngp", "ntk"):
        exact = ntkit.infinite_kernel(model, SIGNALS, which=which)
        draws = [(lambda p: p @ p.T)(ntkit.features(model, SIGNALS, n_features=256, which=which, seed=s, dtype=F64))
                 for s in range(16)]
        err = float(torch.linalg.norm(torch.stack(draws).mean(0) - exact) / torch.linalg.norm(exact))
        assert err < 0.12, (which, err)


# --- layer norm over whole examples ----------------------------------------------------------------------


@torch.no_grad()
def test_layer_norm_over_the_last_axes_is_torchs() -> None:
    for x, shape in [(IMAGES, (2, 3, 4)), (SIGNALS, (3, 6)), (IMAGES, (3, 4)), (SIGNALS, 6)]:
        want = F.layer_norm(x, (shape,) if isinstance(shape, int) else shape, eps=1e-3)
        assert rel_err(LayerNorm(shape, eps=1e-3)(x), want) < 1e-13
    vectors = torch.randn(4, 7, dtype=F64)
    assert torch.equal(LayerNorm(7)(vectors), LayerNorm()(vectors))
    assert repr(LayerNorm()) == "LayerNorm(eps=1e-05)"
    assert repr(LayerNorm([2, 3], eps=0.1)) == "LayerNorm(normalized_shape=(2, 3), eps=0.1)"


@pytest.mark.parametrize("value, err, match", [
    (0, ValueError, r"normalized_shape\[0\]: expected"), ((3, -1), ValueError, r"normalized_shape\[1\]"),
    (1.5, TypeError, "normalized_shape: expected None, an integer or a non-empty sequence of integers, got float"),
    ((), TypeError, "non-empty"), ("CHW", TypeError, "got str"), ((2, True), TypeError, "tuple"),
])
def test_bad_normalized_shapes_are_refused(value: Any, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        LayerNorm(value)


def test_layer_norm_inputs_must_end_with_the_normalized_shape() -> None:
    with pytest.raises(ValueError, match=r"LayerNorm: expected an input of shape \(N, ..., 4, 4\) \(normalized_shape "
                                         r"\(4, 4\) as its last axes\), got tensor of shape \(5, 2, 3, 4\)"):
        LayerNorm((4, 4))(IMAGES)


def _head(norm: nn.Module, channels: int = 4) -> nn.Sequential:
    return nn.Sequential(ntkit.nn.Conv2d(2, channels, 3, b_std=0.2, device="meta"), nn.ReLU(),
                         ntkit.nn.Conv2d(channels, channels, 2, device="meta"), norm, nn.ReLU(),
                         ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(channels, 1, device="meta"))


def test_layer_norm_ops() -> None:
    for norm, op in [(LayerNorm(), LayerNormOp), (LayerNorm((4, 3, 4)), LayerNormSpatialOp)]:
        ops = describe_model(_head(norm), (2, 3, 4)).ops
        assert [type(o) for o in ops if isinstance(o, LayerNormOp)] == [op]
    vec = describe_model(nn.Sequential(ntkit.nn.Linear(3, 4), LayerNorm(4), ntkit.nn.Linear(4, 1)), (3,))
    assert [type(o) for o in vec.ops if isinstance(o, LayerNormOp)] == [LayerNormOp]  # vectors: the channels


@pytest.mark.parametrize("norm, match", [
    (LayerNorm((3, 4)), r"module 3 \(LayerNorm\) normalises examples of shape \(4, 3, 4\) over their last axes "
                        r"\(3, 4\), without the channel axis: .* expected normalized_shape=None \(the channels at "
                        r"each pixel\) or the whole example shape \(4, 3, 4\)"),
    (LayerNorm((4, 4, 4)), r"module 3 \(LayerNorm\) expected an example whose last axes are normalized_shape "
                           r"\(4, 4, 4\), got an input of shape \(4, 3, 4\)"),
    (LayerNorm((1, 4, 3, 4)), r"expected an example whose last axes are normalized_shape \(1, 4, 3, 4\)"),
])
def test_layer_norm_without_the_channels_is_refused(norm: nn.Module, match: str) -> None:
    with pytest.raises(ArchitectureError, match=match):
        ntkit.infinite_kernel(_head(norm), IMAGES)


def test_over_one_pixel_whole_examples_are_the_channels() -> None:
    x = torch.randn(4, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(4))

    def model(norm: nn.Module) -> nn.Sequential:
        return nn.Sequential(ntkit.nn.Conv2d(2, 4, 1, b_std=0.3, device="meta"), nn.ReLU(), norm,
                             ntkit.nn.Conv2d(4, 4, 1, device="meta"), norm, nn.ReLU(), nn.Flatten(),
                             ntkit.nn.Linear(4, 1, device="meta"))

    a = ntkit.infinite_kernel(model(LayerNorm(eps=0.1)), x)
    b = ntkit.infinite_kernel(model(LayerNorm((4, 1, 1), eps=0.1)), x)
    assert rel_err(b.nngp, a.nngp) < 1e-14 and rel_err(b.ntk, a.ntk) < 1e-14


def test_without_eps_whole_example_layer_norm_is_scale_invariant() -> None:
    assert describe_model(_head(LayerNorm((4, 3, 4), eps=0.0)), (2, 3, 4)).degree is None  # the biased conv
    plain = nn.Sequential(ntkit.nn.Conv2d(2, 4, 3, device="meta"), nn.ReLU(), ntkit.nn.Conv2d(4, 4, 2, device="meta"),
                          LayerNorm((4, 3, 4), eps=0.0), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                          ntkit.nn.Linear(4, 1, device="meta"))
    assert describe_model(plain, (2, 3, 4)).degree == 0
    k = ntkit.infinite_kernel(plain, IMAGES)
    scaled = ntkit.infinite_kernel(plain, IMAGES * torch.tensor([3.0, 0.5, 1.0, 7.0, 0.1], dtype=F64).view(-1, 1, 1, 1))
    assert rel_err(scaled.ntk, k.ntk) < 1e-12 and rel_err(scaled.nngp, k.nngp) < 1e-12


def test_whole_example_layer_norm_on_the_data_is_the_prelude() -> None:
    norm = LayerNorm((2, 3, 4), eps=1e-3)
    head = nn.Sequential(ntkit.nn.Conv2d(2, 4, 3, device="meta"), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                         ntkit.nn.Linear(4, 1, device="meta"))
    arch = describe_model(nn.Sequential(norm, *head), (2, 3, 4))
    assert [type(m) for _, m in arch.prelude] == [LayerNorm]
    k = ntkit.infinite_kernel(nn.Sequential(norm, *head), IMAGES)
    assert rel_err(k.ntk, ntkit.infinite_kernel(head, norm(IMAGES)).ntk) < 1e-14


def test_whole_example_layer_norm_has_no_random_features() -> None:
    with pytest.raises(ArchitectureError, match="layer norm"):
        ntkit.features(_head(LayerNorm((4, 3, 4))), IMAGES, n_features=16, seed=0)


def test_whole_example_layer_norm_divides_by_the_mean_variance() -> None:
    """After a weight layer (centred): ``K' = K / sqrt((V + eps)(V' + eps))``, ``V`` the mean over the pixels of
    the same-pixel variances, checked on the covariances the reference evaluator carries."""
    from ntkit.infinite.reference import iter_layers

    model = _head(LayerNorm((4, 3, 4), eps=0.05))
    x = IMAGES[:3]
    arch = describe_model(model, (2, 3, 4))
    ids = torch.arange(3)
    steps = list(iter_layers(arch, x, x, ids, ids, ntk=True))
    at = next(i for i, step in enumerate(steps) if isinstance(step[0], LayerNormSpatialOp))
    before, after = steps[at - 1][2], steps[at][2]  # the cross Pairs, full layout (N, N, 3, 4, 3, 4)
    var = np.array([float(before.nngp[i, i].reshape(12, 12).diagonal().mean()) for i in range(3)])
    scale = torch.from_numpy(np.sqrt(np.outer(var + 0.05, var + 0.05))).view(3, 3, 1, 1, 1, 1)
    assert rel_err(after.nngp, before.nngp / scale) < 1e-14 and rel_err(after.ntk, before.ntk / scale) < 1e-14
