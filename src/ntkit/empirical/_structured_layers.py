"""The layers the structured engine factors: which they are, their scales, shapes and input patches.

A layer is recognised only by its exact type (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``) or as one
of the weight layers of :mod:`ntkit.nn` (:class:`ntkit.nn.Linear` and its subclass
:class:`ntkit.NTKLinear`, :class:`ntkit.nn.Conv1d`, :class:`ntkit.nn.Conv2d`), and only for
parameters that no other module shares (:func:`find_layers`). One probe row through the model
(:func:`probe_layers`) tells which layers are called, their positions per example (summed over
calls) and per-group sizes, and the activation sizes that bound the memory of a backward pass. A
convolution's inputs enter the factored formula as its unfolded patches (:func:`conv_patches`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.empirical._common import Tensor
from ntkit.nn.linear import Linear, _ConvNd

ConvModule = nn.Conv1d | nn.Conv2d | _ConvNd


@dataclass
class Layer:
    """A recognised module whose selected parameters are handled by the factored formula.

    ``w_scale2`` and ``b_scale2`` are ``s_w^2`` and ``s_b^2`` of ``z = s_w W a + s_b b``; ``d_in``,
    ``d_out`` and ``positions`` come from :func:`probe_layers`; ``method`` is chosen by the engine.
    """

    module: nn.Module
    kind: str  # "linear" or "conv"
    w_scale2: float  # 0 when the weight is not selected
    b_scale2: float  # 0 when the bias is absent or not selected
    groups: int = 1
    d_in: int = 0  # per group (patch length for a convolution)
    d_out: int = 0  # per group
    positions: int = 0  # per example, summed over the calls of the module
    method: str = "factored"  # or "jacobian"
    names: list[str] = field(default_factory=list)


def scale_factors(module: nn.Module) -> tuple[float, float]:
    """``(s_w, s_b)`` of a linear layer ``z = s_w W a + s_b b`` (1, 1 but for the layers of ntkit.nn)."""
    if isinstance(module, (Linear, _ConvNd)):
        return float(module.weight_scale), float(module.bias_scale)
    return 1.0, 1.0


def layer_kind(module: nn.Module) -> str | None:
    """``"linear"`` or ``"conv"`` for a recognised layer (by exact type), else None."""
    if type(module) is nn.Linear or isinstance(module, Linear):
        return "linear"
    if type(module) in (nn.Conv1d, nn.Conv2d) or isinstance(module, _ConvNd):
        return "conv"
    return None


def find_layers(model: nn.Module, params: dict[str, Tensor]) -> list[Layer]:
    """The recognised layers of ``model`` with a selected weight or bias (in ``params``) that is not
    shared with another module (a shared parameter is left to the per-example Jacobians)."""
    owners: dict[int, set[int]] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(mod))
    layers: list[Layer] = []
    for mname, mod in model.named_modules():
        kind = layer_kind(mod)
        if kind is None:
            continue
        prefix = f"{mname}." if mname else ""
        wname, bname = prefix + "weight", prefix + "bias"
        s_w, s_b = scale_factors(mod)
        take_w = wname in params and len(owners[id(mod.weight)]) == 1
        bias = mod._parameters.get("bias")
        take_b = bname in params and bias is not None and len(owners[id(bias)]) == 1
        if not (take_w or take_b):
            continue
        layer = Layer(mod, kind, s_w**2 if take_w else 0.0, s_b**2 if take_b else 0.0)
        layer.groups = int(getattr(mod, "groups", 1))
        layer.names = [n for n, t in ((wname, take_w), (bname, take_b)) if t]
        layers.append(layer)
    return layers


def probe_layers(model: nn.Module, layers: list[Layer], probe: Tensor) -> tuple[list[Layer], float, int]:
    """Run the one-row ``probe`` (1, ...) through ``model`` and fill in the layers' shapes.

    Sets ``positions``, ``d_in`` and ``d_out`` of every layer that was called (the positions of
    several calls of one module add up). Returns ``(called, act_per_row, act_max)``: the called
    layers, the summed sizes of the leaf modules' outputs for one row and the largest of them.
    """
    act, act_max = [0], [1]
    sizes: dict[int, tuple[int, int, int]] = {}

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            act[0] += out[0].numel()
            act_max[0] = max(act_max[0], out[0].numel())

    def shape_hook(idx: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(m: nn.Module, inputs: Any, output: Any) -> None:
            p, d_in, d_out = call_shape(layers[idx], inputs[0], output)
            p0 = sizes[idx][0] if idx in sizes else 0
            sizes[idx] = (p0 + p, d_in, d_out)  # calls of one module: positions add up

        return hook

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    handles += [layer.module.register_forward_hook(shape_hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    for i, layer in enumerate(layers):
        if i in sizes:
            layer.positions, layer.d_in, layer.d_out = sizes[i]
    called = [layer for i, layer in enumerate(layers) if i in sizes]
    return called, float(act[0]), act_max[0]


def call_shape(layer: Layer, inp: Tensor, output: Tensor) -> tuple[int, int, int]:
    """(positions, d_in, d_out) per group of one call of a recognised layer on one example."""
    if layer.kind == "linear":
        return inp.numel() // inp.shape[-1], inp.shape[-1], output.shape[-1]
    module = layer.module
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, _ConvNd))
    kernel = 1
    for s in module.kernel_size:
        kernel *= s
    positions = output[0, 0].numel()
    return positions, module.in_channels // layer.groups * kernel, module.out_channels // layer.groups


def conv_patches(module: ConvModule, x: Tensor) -> Tensor:
    """Unfolded input patches (N, C_in * prod(kernel), P) matching ``weight.flatten(1)``'s order."""
    if isinstance(module, _ConvNd):  # ntkit.nn: its own padding (same / valid / circular), no dilation
        x = module.pad(x)
        if module.ndim == 1:
            return F.unfold(x.unsqueeze(2), (1, module.kernel_size[0]), stride=(1, module.stride[0]))
        return F.unfold(x, module.kernel_size, stride=module.stride)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    pad = list(module._reversed_padding_repeated_twice)
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    if isinstance(module, nn.Conv1d):
        return F.unfold(
            x.unsqueeze(2),
            (1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            stride=(1, module.stride[0]),
        )
    return F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
