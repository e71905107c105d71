"""Empirical NTK of the networks people train: small ResNet-style CNNs with batch norm.

The streamed structured engine (per-layer contributions formed during the backward passes:
per-example Jacobians from unfolded patches or Gram products; batch-norm affine parameters) against
brute force in float64 and against the Jacobian method in float32; the pseudo-NTK
(``mode="pntk"``) against its definition; the errors for models and selections without a
per-example kernel.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
import ntkit.empirical._choice as choice
import ntkit.empirical.streamed as sm
from ntkit.empirical._common import select_parameters
from ntkit.empirical._streamed_layers import StreamLayer, conv_windows, padded_input, patch_rows
from ntkit.empirical._structured_layers import conv_patches
from ntkit.empirical.tiling import tiled_kernel
from tests._empirical_models import Custom, brute_force_ntk, reduce, single_thread  # noqa: F401
from tests.conftest import rel_err

MODES = ["full", "trace", "diagonal"]


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus a (strided 1x1 conv + BN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNetLike(nn.Module):
    """Stem conv + BN, two residual blocks (the second strided), global average pooling, linear head."""

    def __init__(self, width: int = 4, k: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, width, 3, 1, 1)
        self.bn = nn.BatchNorm2d(width)
        self.block1 = Block(width, width, 1)
        self.block2 = Block(width, 2 * width, 2)
        self.head = nn.Linear(2 * width, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block2(self.block1(F.relu(self.bn(self.stem(x)))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _settle(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> nn.Module:
    """Non-trivial running statistics and affine parameters, then eval mode."""
    model = model.to(dtype)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


def make_real(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded small model and the shape of one input row."""
    torch.manual_seed(0)
    if name == "resnet":
        return _settle(ResNetLike(), (2, 6, 6), dtype), (2, 6, 6)
    if name == "grouped":  # groups, dilation, reflect padding, stride, a bias, a custom module (fallback)
        m: nn.Module = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=2, dilation=2, padding_mode="reflect"),
            nn.BatchNorm2d(4),
            nn.Tanh(),
            nn.Conv2d(4, 6, 3, stride=2, groups=2, padding=1, padding_mode="circular"),
            nn.Flatten(),
            Custom(6 * 3 * 3),
            nn.Linear(6 * 3 * 3, 3),
        )
        return _settle(m, (2, 5, 5), dtype), (2, 5, 5)
    if name == "conv1d":  # Conv1d + BatchNorm1d on (N, C, L) and on (N, C)
        m = nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, padding=1, padding_mode="replicate"),
            nn.BatchNorm1d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16, 5),
            nn.BatchNorm1d(5),
            nn.Tanh(),
            nn.Linear(5, 2),
        )
        return _settle(m, (2, 8), dtype), (2, 8)
    if name == "ntkit":  # ntkit's own convolution and linear layers (weight and bias scales)
        m = nn.Sequential(
            ntkit.nn.Conv2d(2, 3, 3, b_std=0.5, dtype=dtype),
            nn.Tanh(),
            ntkit.nn.Conv2d(3, 4, 3, stride=2, padding="valid", b_std=0.5, dtype=dtype),
            nn.Flatten(),
            ntkit.NTKLinear(4 * 2 * 2, 3, b_std=0.3, dtype=dtype),
        )
        return m.to(dtype).eval(), (2, 5, 5)
    raise KeyError(name)


def inputs(shape: tuple[int, ...], n1: int, n2: int, dtype: torch.dtype = torch.float64) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(21)
    return torch.randn(n1, *shape, generator=g, dtype=dtype), torch.randn(n2, *shape, generator=g, dtype=dtype)


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[Any, ...]]:
    out = {}
    for name in ("resnet", "grouped", "conv1d", "ntkit"):
        model, shape = make_real(name)
        x1, x2 = inputs(shape, 5, 4)
        out[name] = (model, x1, x2, brute_force_ntk(model, x1, x2), brute_force_ntk(model, x1, x1))
    return out


@pytest.mark.parametrize("name", ["resnet", "grouped", "conv1d", "ntkit"])
@pytest.mark.parametrize("method", ["cost model", "jacobian", "factored"])
@pytest.mark.parametrize("store", [False, True])
def test_streamed_engine_equals_brute_force(cases: dict, name: str, method: str, store: bool, monkeypatch: Any) -> None:
    model, x1, x2, ref12, ref11 = cases[name]
    if method != "cost model":
        forced = {"norm": "jacobian", "conv": method, "linear": method}  # batch norms: Jacobians only
        monkeypatch.setattr(sm.StreamedEngine, "layer_method", lambda self, layer, *a: forced[layer.kind])
    k = ref12.shape[-1]
    engine = sm.StreamedEngine(model, select_parameters(model, None), k, x1[:1], 1 << 30, store=store)
    if name != "grouped":
        assert engine.fallback is None  # batch norms and convolutions are all the engine's own
    if method != "cost model":  # tiny working blocks: one output channel per Jacobian slice, patches and
        engine.limit = 64.0  # full-mode Gram blocks row by row (mirrored when symmetric)
        monkeypatch.setattr(sm.StreamedEngine, "record_rows", lambda self: 2)  # stored: passes over 2 rows
    f1, f2, f1a = engine.features(x1), engine.features(x2), engine.features(x1[:4])
    for mode in MODES:
        assert rel_err(engine.block(f1, f2, mode), reduce(ref12, mode)) < 1e-12, (mode, "x2")
        assert rel_err(engine.block(f1, f1, mode), reduce(ref11, mode)) < 1e-12, (mode, "sym")
        pairs = torch.stack([reduce(ref12, mode)[i, i] for i in range(4)])
        assert rel_err(engine.pairs(f1a, f2, mode), pairs) < 1e-12, (mode, "pairs")
        own = torch.stack([reduce(ref11, mode)[i, i] for i in range(5)])
        assert rel_err(engine.pairs(f1, f1, mode), own) < 1e-12, (mode, "own pairs")


@pytest.mark.parametrize("mode", MODES)
def test_stored_features_under_tiles(cases: dict, mode: str) -> None:
    model, x1, x2, ref12, ref11 = cases["resnet"]
    engine = sm.StreamedEngine(model, select_parameters(model, None), 3, x1[:1], 1 << 30, store=True)
    budget = int(engine.row_bytes() * 4 + engine.tile_bytes(2, 2, mode)) + 1  # two-row tiles
    for x, ref in ((x2, ref12), (None, ref11)):
        got = tiled_kernel(engine, x1, x, mode=mode, pairs="all", budget=budget, progress=False, out=None)
        assert rel_err(got, reduce(ref, mode)) < 1e-12
    got = tiled_kernel(engine, x1[:4], x2, mode=mode, pairs="diagonal", budget=budget, progress=False, out=None)
    assert rel_err(got, torch.stack([reduce(ref12, mode)[i, i] for i in range(4)])) < 1e-12


def test_conv_patches_are_unfold() -> None:
    g = torch.Generator().manual_seed(3)
    convs: list[nn.Module] = [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(2, 1), padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, groups=2, padding="same", padding_mode="circular"),
        nn.Conv1d(3, 4, 5, stride=2, padding=2, padding_mode="replicate"),
        ntkit.nn.Conv2d(3, 4, 3, stride=2),
        ntkit.nn.Conv1d(3, 4, 3, padding="circular"),
    ]
    for conv in convs:
        c_in = conv.in_channels  # type: ignore[attr-defined]
        x = torch.randn(2, c_in, 7, 6, generator=g) if not isinstance(conv, (nn.Conv1d, ntkit.nn.Conv1d)) else (
            torch.randn(2, c_in, 9, generator=g)
        )
        out = conv(x)
        layer = StreamLayer(conv, "conv", 1.0, 1.0, True, True, groups=int(getattr(conv, "groups", 1)))
        layer.d_in = c_in // layer.groups * int(torch.tensor(conv.kernel_size).prod())  # type: ignore[attr-defined]
        layer.positions = out[0, 0].numel()
        windows = conv_windows(conv, padded_input(conv, x))
        assert tuple(windows.shape[-out.ndim + 2 :]) == tuple(out.shape[2:])
        want = conv_patches(conv, x).view(2, layer.groups, layer.d_in, -1)  # type: ignore[arg-type]
        assert torch.equal(patch_rows(layer, x), want)


def test_structured_streams_a_batchnorm_resnet(cases: dict) -> None:
    model, x1, x2, ref12, ref11 = cases["resnet"]
    params = select_parameters(model, None)
    engine = choice.choose_engine("structured", model, params, 3, x1, 5, 5, "trace", 1 << 30, sym=True)
    assert isinstance(engine, sm.StreamedEngine)
    for implementation in ("auto", "structured"):
        for mode in MODES:
            got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation=implementation)
            assert rel_err(got, reduce(ref12, mode)) < 1e-12
            got = ntkit.empirical_ntk(model, x1, mode=mode, implementation=implementation, pairs="diagonal")
            assert rel_err(got, torch.stack([reduce(ref11, mode)[i, i] for i in range(5)])) < 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_streamed_tiles_under_a_small_budget(cases: dict, mode: str) -> None:
    model, x1, x2, ref12, ref11 = cases["resnet"]
    engine = sm.StreamedEngine(model, select_parameters(model, None), 3, x1[:1], 1 << 30)
    budget = int(engine.tile_bytes(2, 2, mode)) + 1  # passes over at most four rows
    for x, ref in ((x2, ref12), (None, ref11)):
        got = ntkit.empirical_ntk(model, x1, x, mode=mode, implementation="structured", memory_budget=budget)
        assert rel_err(got, reduce(ref, mode)) < 1e-12


def test_float32_equals_the_jacobian_method() -> None:
    model, shape = make_real("resnet", torch.float32)
    x1, x2 = inputs(shape, 12, 9, torch.float32)
    for mode in ("trace", "full", "pntk"):
        ref = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="jacobian")
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        assert rel_err(got, ref) < 1e-5, mode
        sym = ntkit.empirical_ntk(model, x1, mode=mode)
        assert rel_err(sym, ntkit.empirical_ntk(model, x1, mode=mode, implementation="jacobian")) < 1e-5, mode


def test_memory_estimate_is_a_bound_for_the_kept_tensors(cases: dict) -> None:
    model, x1, *_ = cases["resnet"]
    engine = sm.StreamedEngine(model, select_parameters(model, None), 3, x1[:1], 1 << 30)
    assert engine.row_bytes() == 0
    for mode in MODES:
        assert engine.sym_tile_bytes(5, mode) < engine.tile_bytes(5, 5, mode)
        assert engine.pass_bytes(10, 5, 5, "full") > engine.pass_bytes(10, 5, 5, "trace")


# ----------------------------------------------------------------------------- pNTK


@pytest.mark.parametrize("implementation", ["auto", "structured", "jacobian", "ntvp"])
def test_pntk_is_the_ntk_of_the_scaled_sum_of_logits(cases: dict, implementation: str) -> None:
    model, x1, x2, ref12, ref11 = cases["resnet"]
    k = ref12.shape[-1]
    want12 = ref12.sum((2, 3)) / k  # (1/k) sum_{a,b} Theta_ab
    got = ntkit.empirical_ntk(model, x1, x2, mode="pntk", implementation=implementation)
    assert got.shape == (5, 4)
    assert rel_err(got, want12) < 1e-12
    sym = ntkit.empirical_ntk(model, x1, mode="pntk", implementation=implementation)
    assert rel_err(sym, ref11.sum((2, 3)) / k) < 1e-12
    pairs = ntkit.empirical_ntk(model, x1, mode="pntk", implementation=implementation, pairs="diagonal")
    assert pairs.shape == (5,)
    assert rel_err(pairs, torch.diagonal(ref11.sum((2, 3)) / k)) < 1e-12


def test_pntk_by_its_definition_and_a_parameter_subset() -> None:
    model, shape = make_real("resnet")
    x1, x2 = inputs(shape, 4, 3)

    class Summed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x).sum(1, keepdim=True) / 3**0.5

    names = ["block2.conv2.weight", "block2.bn2.weight", "head.bias"]
    want = brute_force_ntk(Summed(), x1, x2, [f"net.{n}" for n in names])[..., 0, 0]
    got = ntkit.empirical_ntk(model, x1, x2, mode="pntk", parameters=names)
    assert rel_err(got, want) < 1e-12
    full = ntkit.empirical_ntk(model, x1, x2, mode="full", parameters=names, implementation="jacobian")
    assert rel_err(got, full.sum((2, 3)) / 3) < 1e-12
    assert model.training is False  # the wrapper leaves the model's mode alone


def test_pntk_of_one_output_is_the_ntk() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert rel_err(ntkit.empirical_ntk(model, x, mode="pntk"), ntkit.empirical_ntk(model, x, mode="trace")) < 1e-14


# ----------------------------------------------------------------------------- errors


class BatchCentred(nn.Module):
    """Subtracts the batch mean: output rows depend on the other rows."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return h - h.mean(0, keepdim=True)


def test_error_for_an_output_that_mixes_examples() -> None:
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"model: expected output row i to depend on input row i only.*mixes"):
        ntkit.empirical_ntk(BatchCentred(), x, mode="trace")
    # batch norm without running statistics uses batch statistics even in eval mode
    bn = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(), nn.Linear(12, 2)
    ).eval()
    with pytest.raises(ValueError, match=r"depend on input row i only"):
        ntkit.empirical_ntk(bn, torch.randn(3, 2, 4, 4), torch.randn(2, 2, 4, 4), mode="pntk")


def test_error_for_train_mode_batchnorm_in_every_mode(cases: dict) -> None:
    model, x1, *_ = cases["resnet"]
    model.block2.bn1.train()
    try:
        for mode in ("trace", "pntk"):
            with pytest.raises(ValueError, match=r"eval mode \(call model.eval\(\)\), got train mode.*block2.bn1"):
                ntkit.empirical_ntk(model, x1, mode=mode)
    finally:
        model.eval()


def test_errors_for_selections_that_select_nothing(cases: dict) -> None:
    model, x1, *_ = cases["resnet"]
    with pytest.raises(ValueError, match=r"parameters: expected at least one parameter name, got an empty sequence"):
        ntkit.empirical_ntk(model, x1, mode="trace", parameters=[])
    with pytest.raises(ValueError, match=r"got unknown \['block2'\] \('block2' is a module: name its parameters"):
        ntkit.empirical_ntk(model, x1, mode="trace", parameters=["block2"])

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.spare = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"parameters: expected a selection that reaches the model's output, got "
                       r"the selected parameters \['spare.weight', 'spare.bias'\], none of which"):
        ntkit.empirical_ntk(Unused(), x, mode="pntk", parameters=["spare.weight", "spare.bias"])
    frozen = Unused()
    frozen.used.requires_grad_(False)
    with pytest.raises(ValueError, match=r"got its trainable parameters \['spare.weight', 'spare.bias'\], none"):
        ntkit.empirical_ntk(frozen, x)
    with pytest.raises(ValueError, match=r"mode: .*pntk"):
        ntkit.empirical_ntk(model, x1, mode="sum")
