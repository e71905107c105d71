"""The structured engine's capture for chains of dense layers and elementwise activations (MLPs).

For a model that is an ``nn.Sequential`` of recognised linear layers and elementwise activations
(``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.SiLU``, ``nn.GELU``) ending in a linear layer, on
inputs (N, d), the layer inputs and output cotangents that
:func:`ntkit.empirical._structured_capture.capture_layers` records through autograd are computed here
directly, with the same operations in the same order, and so the same numbers bit for bit:

    forward:   z_l = a_l (s_w W_l)^T + s_b b_l,    a_{l+1} = phi_l(z_l);
    backward:  the output layer's cotangents are e_c, so the cotangent reaching its input is the row
               c of s_w W_L (no product); through an activation  g <- phi'(z) * g  (the elementwise
               backward kernel autograd calls, e.g. ``threshold_backward`` for ReLU); through a linear
               layer  g <- g (s_w W).

The ``k`` cotangents go through in chunks of ``chunk`` outputs, each a (N, kc, d) block whose rows
(i, c) are the layout of the Gram products, with no autograd graph, no ``vmap`` and no copy of the
output layer's rows (the activation's backward kernel reads them broadcast). In trace mode with
``x1`` and ``x2`` in one pass (``trace_rows``), each dense layer's trace cotangent Gram
``sum_c <g_c(x_i), g_c(x'_j)>`` is accumulated chunk by chunk (as there), except for the layer that
feeds the output layer through one activation, whose cotangents are ``g_c(x) = phi'(z(x)) * w_c``
(``w_c`` the row c of ``s_w W_L``), so that

    sum_c <g_c(x), g_c(x')> = sum_m phi'(z(x))_m phi'(z(x'))_m sum_c w_{c,m}^2

is one (N1, d) x (d, N2) product instead of one (N1, k d) x (k d, N2) product (equal up to
rounding). Otherwise (full and diagonal blocks, tiles) that layer's cotangents are not stored but kept
as their factors ``phi'(z)`` (N, d) and the rows ``w_c`` (feature ``("scaled", a, (phi', W))``), whose
full Gram ``G_cd = (phi' * w_c w_d) phi'^T`` needs only the k(k+1)/2 distinct products ``w_c w_d``
(:func:`ntkit.empirical._structured_products._scaled_gram`). Any other model (hooks, other modules,
inputs with more than two dimensions, a module used twice, in-place activations) keeps the autograd
capture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkit.empirical._common import Tensor
from ntkit.empirical._gemm import matmul_t
from ntkit.empirical._structured_capture import layer_tensors
from ntkit.empirical._structured_layers import Layer, layer_kind, scale_factors

#: ``grad -> phi'(z) * grad`` from ``(grad, z, phi(z), out=)``: the kernels autograd uses for each type.
Backward = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

_ACTIVATIONS: dict[type, Callable[[nn.Module], Backward]] = {
    nn.ReLU: lambda m: lambda g, z, y, out: torch.ops.aten.threshold_backward.grad_input(g, y, 0, grad_input=out),
    nn.Tanh: lambda m: lambda g, z, y, out: torch.ops.aten.tanh_backward.grad_input(g, y, grad_input=out),
    nn.Sigmoid: lambda m: lambda g, z, y, out: torch.ops.aten.sigmoid_backward.grad_input(g, y, grad_input=out),
    nn.SiLU: lambda m: lambda g, z, y, out: torch.ops.aten.silu_backward.grad_input(g, z, grad_input=out),
    nn.GELU: lambda m: lambda g, z, y, out: torch.ops.aten.gelu_backward.grad_input(
        g, z, approximate=m.approximate, grad_input=out
    ),
}


@dataclass
class Step:
    """One module of the chain: a linear layer (``layer`` its index in the engine's layers) or an
    activation with its ``backward`` kernel."""

    module: nn.Module
    linear: bool
    layer: int | None = None
    backward: Backward | None = None


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__
    )


def dense_chain(model: nn.Module, layers: list[Layer]) -> list[Step] | None:
    """The steps of ``model`` if it is such a chain (see the module docstring), else None.

    ``layers`` are the engine's recognised layers (probed): the chain's linear modules, each called
    once at one position (a linear module none of whose parameters is selected keeps the autograd
    capture, which runs it as the module computes it).
    """
    if type(model) is not nn.Sequential or _hooked(model):
        return None
    glob = nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks:
        return None
    index = {id(layer.module): i for i, layer in enumerate(layers)}
    steps: list[Step] = []
    seen: set[int] = set()
    for module in model:
        if id(module) in seen or _hooked(module):
            return None
        seen.add(id(module))
        if layer_kind(module) == "linear":
            i = index.get(id(module))
            if i is None or layers[i].positions != 1 or layers[i].groups != 1:
                return None
            steps.append(Step(module, True, i))
        elif type(module) in _ACTIVATIONS and not getattr(module, "inplace", False):
            steps.append(Step(module, False, backward=_ACTIVATIONS[type(module)](module)))
        else:
            return None
    if not steps or not steps[-1].linear or len(index) != sum(s.linear for s in steps):
        return None
    return steps


def _scaled(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(s_w W, s_b b)`` as :func:`ntkit.empirical._structured_capture.capture_layers` forms them."""
    w_s, b_s = scale_factors(module)
    weight: Tensor = module.weight.detach()  # type: ignore[operator]
    bias: Tensor | None = module.bias.detach() if module.bias is not None else None  # type: ignore[operator]
    return (weight * w_s if w_s != 1.0 else weight), (None if bias is None else (bias * b_s if b_s != 1.0 else bias))


def capture_chain(
    steps: list[Step], layers: list[Layer], k: int, x: Tensor, *, trace_rows: int | None, chunk: int
) -> list[Any]:
    """Layer inputs and output cotangents of the chain ``steps`` for inputs ``x`` (N, d), in the
    format of :func:`ntkit.empirical._structured_capture.capture_layers` (same arguments)."""
    n = x.shape[0]
    weights = [_scaled(s.module) if s.linear else None for s in steps]
    saved: list[tuple[Tensor, Tensor]] = []  # per step: (input, output)
    h = x
    for step, wb in zip(steps, weights, strict=True):
        if wb is not None:
            out = matmul_t(h, wb[0])
            if wb[1] is not None:
                out = out.add_(wb[1])
        else:
            out = step.module(h)
        saved.append((h, out))
        h = out
    if h.ndim != 2 or h.shape[0] != n:
        raise ValueError(f"model: expected an output of shape (N, k) with N = {n}, got shape {tuple(h.shape)}")
    if h.shape[1] != k:
        raise ValueError(f"model: expected {k} outputs for every block, got {h.shape[1]}")
    first = next(i for i, s in enumerate(steps) if s.linear)  # nothing before it needs cotangents
    last = len(steps) - 1
    # the layer feeding the output layer through one activation: its trace Gram from phi'(z) alone
    fed = last - 2 if last >= 2 and not steps[last - 1].linear and steps[last - 2].linear else None
    grams: dict[int, Tensor] = {}
    stores: dict[int, Tensor] = {}
    n1 = trace_rows
    # without trace rows the fed layer's cotangents phi'(z) * w_c are kept as their two factors
    factored = fed if n1 is None and fed is not None and steps[fed].layer is not None else None
    for c0 in range(0, k, chunk):
        kc = min(chunk, k - c0)
        rows = weights[last][0][c0 : c0 + kc]  # type: ignore[index]  # cotangent at the output layer's input
        g: Tensor | None = None  # (N, kc, d), contiguous
        for i in range(last - 1, first - 1, -1):
            step = steps[i]
            z, y = saved[i]
            if not step.linear:
                assert step.backward is not None
                grad = rows.expand(n, kc, rows.shape[-1]) if g is None else g
                out = torch.empty((n, kc, grad.shape[-1]), dtype=grad.dtype, device=grad.device)
                g = step.backward(grad, z.unsqueeze(1), y.unsqueeze(1), out)
                del grad, out
                continue
            if g is None:
                g = rows.expand(n, kc, rows.shape[-1]).contiguous()
            if step.layer is not None:
                if i == fed and (n1 is not None or i == factored):
                    pass  # Gram or factors after the loop
                elif n1 is not None:
                    c = matmul_t(g[:n1].reshape(n1, -1), g[n1:].reshape(n - n1, -1))
                    grams[i] = c if i not in grams else grams[i].add_(c)
                elif kc == k:
                    stores[i] = g.movedim(1, 0)
                else:
                    if i not in stores:
                        stores[i] = torch.empty((n, k, g.shape[-1]), dtype=g.dtype, device=g.device).movedim(1, 0)
                    stores[i].movedim(0, 1)[:, c0 : c0 + kc] = g
            if i > first:
                g = matmul_t(g, weights[i][0].T)  # type: ignore[index]
    if n1 is not None and fed is not None and steps[fed].layer is not None:
        grams[fed] = _fed_gram(steps[fed + 1], saved[fed + 1], weights[last][0], n1)  # type: ignore[index]
    feats: list[Any] = [None] * len(layers)
    for i, step in enumerate(steps):
        if step.layer is None:
            continue
        inp = saved[i][0]
        if i == last:
            feats[step.layer] = ("identity", inp.reshape(n, 1, inp.shape[1], 1), None)
        elif n1 is not None:
            feats[step.layer] = ("gram", inp.reshape(n, 1, inp.shape[1], 1), grams[i])
        elif i == factored:
            s = _phi_prime(steps[i + 1], saved[i + 1])
            feats[step.layer] = ("scaled", inp.reshape(n, 1, inp.shape[1], 1), (s, weights[last][0]))  # type: ignore[index]
        else:
            a, gg = layer_tensors(layers[step.layer], inp, stores[i], n, k)
            feats[step.layer] = ("cotangents", a, gg)
    return feats


def _phi_prime(act: Step, zy: tuple[Tensor, Tensor]) -> Tensor:
    """``phi'(z)`` (N, d) of the activation ``act`` from its saved input and output ``zy``."""
    assert act.backward is not None
    z, y = zy
    ones = torch.ones_like(y)
    return act.backward(ones, z, y, torch.empty_like(ones))


def _fed_gram(act: Step, zy: tuple[Tensor, Tensor], w_out: Tensor, n1: int) -> Tensor:
    """``sum_c <phi'(z_i) * w_c, phi'(z'_j) * w_c>`` between rows ``i < n1`` and the rest:
    ``(phi' * P) phi'^T`` with ``P_m = sum_c w_{c,m}^2``."""
    s = _phi_prime(act, zy)
    p = (w_out * w_out).sum(0)
    return matmul_t(s[:n1] * p, s[n1:])
