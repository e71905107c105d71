"""Any torch ``forward`` as a description (:mod:`ntkit.infinite.capture`): a custom forward gives exactly the
kernel of the equivalent ``nn.Sequential`` (same ops, same fast path), and what it cannot lift is refused with
the node, its target and its source line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
from ntkit.infinite import ArchitectureError, KernelTiles, conv_fast, describe_model
from ntkit.infinite.capture import capture, needs_capture
from ntkit.infinite.ops import Residual

F64 = torch.float64
VECTORS = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
IMAGES = torch.randn(4, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))


def _same(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Bit-for-bit the kernels of ``reference`` (NNGP and NTK), by the same path."""
    shape = tuple(x.shape[1:])
    got, want = KernelTiles(describe_model(model, shape)), KernelTiles(describe_model(reference, shape))
    assert got.path_for(x) == want.path_for(x)
    a, b = ntkit.infinite_kernel(model, x), ntkit.infinite_kernel(reference, x)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    half = ntkit.infinite_kernel(model, x[:2], x[2:], which="ntk")
    assert torch.equal(half, ntkit.infinite_kernel(reference, x[:2], x[2:], which="ntk"))


class MLP(nn.Module):
    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.l1 = ntkit.nn.Linear(3, 64, b_std=0.1, device=device)
        self.l2 = ntkit.nn.Linear(64, 1, b_std=0.1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(x)))


def test_custom_forward_mlp_equals_sequential_on_the_fused_path() -> None:
    model = MLP()
    reference = nn.Sequential(model.l1, nn.ReLU(), model.l2)
    _same(model, reference, VECTORS)
    assert KernelTiles(describe_model(model, (3,))).path == "fused"
    assert [name for name, _ in capture(model, "")] == ["l1", "relu", "l2"]


class Block(nn.Module):
    """A ResNet basic block without normalisation: ``x + c * conv2(relu(conv1(x)))``, written as ``form``."""

    def __init__(self, channels: int, form: str = "plain", device: str | None = None) -> None:
        super().__init__()
        self.conv1 = ntkit.nn.Conv2d(channels, channels, 3, device=device)
        self.conv2 = ntkit.nn.Conv2d(channels, channels, 3, device=device)
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv2(F.relu(self.conv1(x)))
        if self.form == "half":
            return x + 0.5 * f
        if self.form == "right":
            return f * 0.5 + x
        if self.form == "minus":
            return x - f / 4
        if self.form == "iadd":
            f += x
            return f
        return x + f


class ResNet(nn.Module):
    def __init__(self, form: str = "plain", device: str | None = None) -> None:
        super().__init__()
        self.stem = ntkit.nn.Conv2d(2, 8, 3, device=device)
        self.block = Block(8, form, device)
        self.fc = ntkit.nn.Linear(8, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        x = F.relu(x)
        return self.fc(x.mean((2, 3)))


def _resnet_reference(model: ResNet, scale: float = 1.0) -> nn.Sequential:
    block = ntkit.nn.Residual(model.block.conv1, nn.ReLU(), model.block.conv2, scale=scale)
    return nn.Sequential(model.stem, block, nn.ReLU(), ntkit.nn.GlobalAvgPool(), model.fc)


def test_resnet_block_equals_sequential_residual() -> None:
    model = ResNet()
    _same(model, _resnet_reference(model), IMAGES)
    ops = describe_model(model, (2, 6, 6)).ops
    assert isinstance(ops[1], Residual) and ops[1].scale == 1.0
    assert [op.position for op in ops[1].block] == ["add.block.conv1 (Conv2d)", "add.block.relu (ReLU)",
                                                    "add.block.conv2 (Conv2d)"]


@pytest.mark.parametrize(("form", "scale"), [("half", 0.5), ("right", 0.5), ("minus", -0.25), ("iadd", 1.0)])
def test_residual_scale_from_the_forward(form: str, scale: float) -> None:
    model = ResNet(form)
    residual = describe_model(model, (2, 6, 6)).ops[1]
    assert isinstance(residual, Residual) and residual.scale == scale
    _same(model, _resnet_reference(model, scale), IMAGES)


def test_model_on_meta_device() -> None:
    meta, cpu = ResNet("half", device="meta"), ResNet("half")
    assert next(meta.parameters()).is_meta
    k = ntkit.infinite_kernel(meta, IMAGES)
    assert torch.equal(k.ntk, ntkit.infinite_kernel(cpu, IMAGES).ntk)
    assert torch.equal(ntkit.infinite_kernel(MLP("meta"), VECTORS).ntk, ntkit.infinite_kernel(MLP(), VECTORS).ntk)


class Wrapper(nn.Module):
    """A custom module holding a Sequential that holds a custom module."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ntkit.nn.Linear(8, 8), Half(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Half(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = ntkit.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.lin(F.relu(x))


def test_nested_custom_modules_inside_sequential() -> None:
    first, last = ntkit.nn.Linear(3, 8), ntkit.nn.Linear(8, 1)
    half = Half(8)
    model = nn.Sequential(first, half, Wrapper(), nn.Sequential(nn.Tanh(), last))
    assert needs_capture(half) and not needs_capture(model)
    wrapper = model[2]
    assert isinstance(wrapper, Wrapper)
    reference = nn.Sequential(
        first, ntkit.nn.Residual(nn.ReLU(), half.lin, scale=0.5), wrapper.body[0],
        ntkit.nn.Residual(nn.ReLU(), wrapper.body[1].lin, scale=0.5), nn.Tanh(), last)
    model.eval()
    _same(model, reference, VECTORS)
    names = [op.position for op in describe_model(model, (3,)).ops]
    assert names == ["0 (Linear)", "1.add (Residual)", "2.body.0 (Linear)", "2.body.1.add (Residual)", "3.0 (Tanh)",
                     "3.1 (Linear)"]


class Functional(nn.Module):
    """Every functional form of the lifting, against its module."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.conv = ntkit.nn.Conv2d(2, 4, 3)
        self.fc = ntkit.nn.Linear(4 * 9, 1) if form not in ("gap", "adaptive") else ntkit.nn.Linear(4, 1)
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.conv(x), 0.2, self.training)
        x = F.avg_pool2d(torch.erf(x), 2, 2).contiguous()
        if self.form == "gap":
            return self.fc(x.mean((-1, -2)))
        if self.form == "adaptive":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        if self.form == "view":
            return self.fc(x.view(x.size(0), -1))
        if self.form == "reshape":
            return self.fc(x.reshape(x.shape[0], -1))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("form", ["gap", "adaptive", "view", "reshape", "flatten"])
def test_functional_forms_equal_their_modules(form: str) -> None:
    model = Functional(form).eval()
    read = [ntkit.nn.GlobalAvgPool()] if form in ("gap", "adaptive") else [nn.Flatten()]
    reference = nn.Sequential(model.conv, ntkit.nn.Activation("erf"), nn.AvgPool2d(2, 2), *read, model.fc)
    _same(model, reference, IMAGES)


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ntkit.nn.Linear(3 if i == 0 else 8, 8 if i < 6 else 1) for i in range(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0, l1, l2, l3, l4, l5, l6 = self.layers
        x = torch.tanh(l0(x))
        x = l1(x).sigmoid()
        x = F.gelu(l2(x), approximate="tanh")
        x = F.silu(l3(x))
        x = F.leaky_relu(l4(x), 0.2, inplace=True)
        x = l5(x).relu()
        return l6(x)


def test_functional_activations_are_their_modules() -> None:
    model = Activations()
    l0, l1, l2, l3, l4, l5, l6 = model.layers
    reference = nn.Sequential(l0, nn.Tanh(), l1, nn.Sigmoid(), l2, nn.GELU(approximate="tanh"), l3, nn.SiLU(), l4,
                              nn.LeakyReLU(0.2), l5, nn.ReLU(), l6)
    _same(model, reference, VECTORS)
    items = capture(model, "")
    assert not any(getattr(m, "inplace", False) for _, m in items)  # the lifted modules never mutate the data


def test_prelude_before_the_first_weight_layer() -> None:
    class Prelude(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = ntkit.nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean((2, 3)))

    arch = describe_model(Prelude(), (2, 6, 6))
    assert [name for name, _ in arch.prelude] == ["mean"] and arch.data_shape == (2,)
    reference = nn.Sequential(ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(2, 1))
    _same(Prelude(), reference, IMAGES)


# --- what is refused -----------------------------------------------------------------------------------------------


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = ntkit.nn.Linear(3, 4), ntkit.nn.Linear(3, 4), ntkit.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = torch.cat([a, b], 0)
        return self.out(y)


class MaxPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = ntkit.nn.Conv2d(2, 4, 3), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.mean((2, 3)))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = ntkit.nn.Linear(3, 4), ntkit.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.out = ntkit.nn.Linear(3, 4), ntkit.nn.LayerNorm(), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.out(F.relu(h) * torch.tanh(self.norm(h)))


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = ntkit.nn.Linear(3, 4), ntkit.nn.Linear(3, 4), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x) - self.b(x))


class NotSeriesParallel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = ntkit.nn.Linear(3, 4), ntkit.nn.Linear(3, 4), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        m = h + self.b(x)
        return self.out(m + F.relu(h))


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = ntkit.nn.Linear(3, 4), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(2.0 * self.a(x))


class Weight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class SelfSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.out = ntkit.nn.Linear(3, 4), ntkit.nn.LayerNorm(), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.out(y + self.norm(F.dropout(y, 0.0)))


class ChannelMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = ntkit.nn.Conv2d(2, 4, 3), ntkit.nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((1, 2)))


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = ntkit.nn.Linear(3, 4), ntkit.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y.relu_()
        return self.b(y) + 0 * y.sum()


@pytest.mark.parametrize(
    ("model", "x", "match", "line"),
    [
        (Cat(), VECTORS, r"node cat \(torch\.cat\): expected a concatenation along the channels \(dim=1\), got dim=0",
         "y = torch.cat([a, b], 0)"),
        (MaxPool(), IMAGES, r"node max_pool2d \(torch\.nn\.functional\.max_pool2d\).*max pooling",
         "x = F.max_pool2d(F.relu(self.conv(x)), 2)"),
        (Branchy(), VECTORS, r"Branchy\): the forward has data-dependent control flow", "if x.sum() > 0:"),
        (Product(), VECTORS, r"module mul \(Parallel\) at .*: the product of branch 0 \(ending with mul\.branches\.0"
         r"\.relu \(ReLU\)\) and branch 1 \(ending with mul\.branches\.1\.tanh \(Tanh\)\) is not independent",
         "return self.out(F.relu(h) * torch.tanh(self.norm(h)))"),
        (TwoBranches(), VECTORS, r"node sub \(operator\.sub\).*a difference or a scaled sum of two branches.*not yet",
         "return self.out(self.a(x) - self.b(x))"),
        (NotSeriesParallel(), VECTORS, r"node add_1 \(operator\.add\): node a \(a\) is computed in two of the merged "
         r"branches \(operands 0 and 1 from their fork x\): the graph is not series-parallel",
         "return self.out(m + F.relu(h))"),
        (Scaled(), VECTORS, r"node mul \(operator\.mul\).*constant 2\.0 outside a residual sum.*not yet",
         "return self.out(2.0 * self.a(x))"),
        (Weight(), VECTORS, r"node w \(get_attr w\).*parameter or buffer used directly", "return x @ self.w"),
        (SelfSum(), VECTORS, r"node add \(operator\.add\).*no weight layer and norm \(LayerNorm\) in it is not "
         r"pointwise", "return self.out(y + self.norm(F.dropout(y, 0.0)))"),
        (InPlace(), VECTORS, r"node relu_ \(Tensor\.relu_\).*in-place operation on node a, which", "y.relu_()"),
    ],
)
def test_refused_forwards_name_the_node_and_line(model: nn.Module, x: torch.Tensor, match: str, line: str) -> None:
    with pytest.raises(ArchitectureError, match=match) as info:
        ntkit.infinite_kernel(model, x)
    message = str(info.value)
    assert "test_capture.py:" in message and line in message, message
    assert "in forward" in message


def test_refused_by_the_op_and_the_walk() -> None:
    with pytest.raises(ArchitectureError, match=r"module mean \(SpatialMean\): expected a mean over every spatial "
                                                 r"axis.*got dims=\(1, 2\) for an input of shape \(N, 4, 6, 6\)"):
        ntkit.infinite_kernel(ChannelMean(), IMAGES)

    class Random(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = ntkit.nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(F.dropout(x, 0.5, self.training))

    with pytest.raises(ArchitectureError, match=r"dropout is random in training mode; call model.eval"):
        ntkit.infinite_kernel(Random(), VECTORS)
    assert ntkit.infinite_kernel(Random().eval(), VECTORS).ntk.shape == (5, 5)

    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(ArchitectureError, match=r"expected a forward of one tensor input.*got forward\(x, y\)"):
        ntkit.infinite_kernel(TwoInputs(), VECTORS)

    class TorchLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    with pytest.raises(ArchitectureError, match=r"module lin \(Linear\) has no infinite-width kernel transform: "
                                                 r"torch\.nn\.Linear"):
        ntkit.infinite_kernel(TorchLinear(), VECTORS)


def test_defaults_are_fixed_and_python_branches_followed() -> None:
    class Options(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = ntkit.nn.Linear(3, 8), ntkit.nn.Linear(8, 1)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, act: bool = True) -> torch.Tensor:
            if mask is not None:
                x = x * mask
            h = self.a(x)
            return self.b(F.relu(h) if act else h)

    model = Options()
    _same(model, nn.Sequential(model.a, nn.ReLU(), model.b), VECTORS)


def test_sequential_subclass_with_its_own_forward_is_captured() -> None:
    class Skip(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    first, last = ntkit.nn.Linear(3, 8), ntkit.nn.Linear(8, 1)
    skip = Skip(nn.ReLU(), ntkit.nn.Linear(8, 8))
    assert needs_capture(skip)
    model = nn.Sequential(first, skip, last)
    _same(model, nn.Sequential(first, ntkit.nn.Residual(nn.ReLU(), skip[1]), last), VECTORS)


class CNN(nn.Module):
    """A CNN the native spatial loop serves: convolutions, ReLU, average pooling, a global mean."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = ntkit.nn.Conv2d(2, 8, 3), ntkit.nn.Conv2d(8, 8, 3), ntkit.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.relu(self.c1(x)), 2)
        x = self.c2(x).relu()
        return self.fc(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


def test_cnn_on_the_native_spatial_path() -> None:
    model = CNN()
    reference = nn.Sequential(model.c1, nn.ReLU(), nn.AvgPool2d(2), model.c2, nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                              model.fc)
    want = KernelTiles(describe_model(reference, (2, 6, 6))).path_for(IMAGES)
    if conv_fast.usable(IMAGES):
        assert want == "spatial"
    _same(model, reference, IMAGES)
