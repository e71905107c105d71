"""The layers the streamed engine differentiates itself, and their per-example parameter gradients.

Five kinds of module, each recognised by its exact type and only when its selected parameters
belong to it alone and it is called once per forward pass:

* ``"linear"``: ``nn.Linear`` and the linear layers of :mod:`ntkit.nn`, ``z_p = s_w W a_p + s_b b`` at
  positions ``p`` (1 for a (N, d) input, the sequence positions of an (N, ..., d) input);
* ``"conv"``: ``nn.Conv1d``, ``nn.Conv2d`` and the convolutions of :mod:`ntkit.nn`, the same with
  ``a_p`` the unfolded input patch at output pixel ``p`` (per group);
* ``"norm"``: ``nn.BatchNorm1d/2d/3d`` in eval mode with running statistics and an affine map,
  ``y = gamma * xhat + beta`` with ``xhat = (x - running_mean) / sqrt(running_var + eps)`` per channel
  (the running statistics are constants, so the layer is affine in ``gamma`` and ``beta``);
* ``"layernorm"``: ``nn.LayerNorm`` (and ``nn.RMSNorm``) with an affine map, the same with
  ``xhat = (x - mean(x)) / sqrt(var(x) + eps)`` (RMSNorm: ``x / sqrt(mean(x^2) + eps)``) over the
  normalised trailing dimensions, at every leading position ``p`` (the tokens of a sequence);
* ``"embedding"``: ``nn.Embedding`` without ``max_norm`` or ``scale_grad_by_freq``, ``z_p = W[t_p]``
  for the integer tokens ``t_p`` of an example: ``d f_c / d W[u] = sum_{p: t_p = u} g_{c,p}`` (zero
  at ``padding_idx``), contracted by matching tokens (:mod:`ntkit.empirical._streamed_embedding`).
  An embedding called on one row of indices that the model broadcasts over the batch (GPT-2's
  position embedding ``wpe(arange(L)[None])``) is expanded to the batch by the engine's pass.

With ``g_{c,p} = d f_c / d z_p`` the cotangent of output ``c`` at the layer's output, the
per-example gradients are

    d f_c / d W = s_w sum_p g_{c,p} a_p^T,    d f_c / d b = s_b sum_p g_{c,p},
    d f_c / d gamma = sum_p g_{c,p} * xhat_p,  d f_c / d beta = sum_p g_{c,p}     (per channel).

:func:`layer_jacobian` forms them as (N, kc, F) blocks — one batched GEMM over the examples,
``(kc d_out, P) x (P, d_in)`` each, the unfolded-patch (im2col) form of a convolution's weight
gradient — in slices of output channels that bound their memory; :func:`patch_rows` and
:func:`cotangent_rows` give the layouts of the factored (Gram) products of
:mod:`ntkit.empirical._streamed_contract`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.empirical._common import Tensor
from ntkit.empirical._structured_layers import layer_kind, scale_factors
from ntkit.nn.linear import _ConvNd

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Layer norms recognised by exact type (``nn.RMSNorm`` where this torch has it).
LAYER_NORM_TYPES: tuple[type, ...] = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
#: Kinds whose contribution is a per-example Jacobian of per-channel parameters (``gamma``, ``beta``).
NORM_KINDS = ("norm", "layernorm")


@dataclass
class StreamLayer:
    """A module whose selected parameters the streamed engine differentiates itself.

    ``s_w`` / ``s_b`` scale the weight (gamma) and bias (beta); ``take_w`` / ``take_b`` say which are
    selected. ``positions``, ``d_in`` and ``d_out`` (per group; ``d_in`` is the patch length of a
    convolution, 1 for a norm) come from the probe.
    """

    module: nn.Module
    kind: str  # "linear", "conv", "norm", "layernorm" or "embedding"
    s_w: float
    s_b: float
    take_w: bool
    take_b: bool
    groups: int = 1
    d_in: int = 0
    d_out: int = 0
    positions: int = 0
    calls: int = 0
    in_numel: int = 0  # input entries per example
    out_numel: int = 0  # output entries per example
    names: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        """Selected parameters of the layer."""
        if self.kind in NORM_KINDS:
            return self.d_out * (int(self.take_w) + int(self.take_b))
        return self.groups * self.d_out * (self.d_in * int(self.take_w) + int(self.take_b))


def _kind(module: nn.Module) -> str | None:
    if type(module) in NORM_TYPES:
        bn: Any = module
        if not bn.training and bn.affine and bn.running_mean is not None and bn.running_var is not None:
            return "norm"
        return None
    if type(module) in LAYER_NORM_TYPES:
        return "layernorm" if getattr(module, "elementwise_affine", False) else None
    if type(module) is nn.Embedding:
        emb: Any = module
        return "embedding" if emb.max_norm is None and not emb.scale_grad_by_freq else None
    return layer_kind(module)


def find_stream_layers(model: nn.Module, params: dict[str, Tensor]) -> list[StreamLayer]:
    """The recognised modules of ``model`` with a selected weight or bias (in ``params``) owned by no
    other module (a shared parameter is left to the per-example Jacobians)."""
    owners: dict[int, int] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    layers: list[StreamLayer] = []
    for mname, mod in model.named_modules():
        kind = _kind(mod)
        if kind is None:
            continue
        prefix = f"{mname}." if mname else ""
        wname, bname = prefix + "weight", prefix + "bias"
        weight, bias = mod._parameters.get("weight"), mod._parameters.get("bias")
        take_w = wname in params and weight is not None and owners[id(weight)] == 1
        take_b = bname in params and bias is not None and owners[id(bias)] == 1
        if not (take_w or take_b):
            continue
        s_w, s_b = scale_factors(mod) if kind in ("linear", "conv") else (1.0, 1.0)
        layer = StreamLayer(mod, kind, s_w, s_b, take_w, take_b, groups=int(getattr(mod, "groups", 1)))
        layer.names = [n for n, t in ((wname, take_w), (bname, take_b)) if t]
        layers.append(layer)
    return layers


def probe_shapes(layer: StreamLayer, inp: Tensor, out: Tensor) -> None:
    """Fill in ``positions``, ``d_in``, ``d_out`` from one call on a one-row batch; count the call.

    An embedding whose indices have no batch axis (``wpe(arange(L))``, leading size other than 1)
    cannot be given per-example cotangents: it is counted as called twice, which leaves it to the
    per-example Jacobians."""
    layer.calls += 1
    layer.in_numel, layer.out_numel = inp[0].numel(), out[0].numel()
    if layer.kind == "embedding":
        mod_e: Any = layer.module
        if inp.ndim == 0 or inp.shape[0] != 1:
            layer.calls += 1
        layer.positions, layer.d_in, layer.d_out = inp[0].numel(), mod_e.num_embeddings, mod_e.embedding_dim
    elif layer.kind == "layernorm":
        mod_n: Any = layer.module
        d = 1
        for s in mod_n.normalized_shape:
            d *= int(s)
        layer.positions, layer.d_in, layer.d_out = out[0].numel() // d, 1, d
    elif layer.kind == "linear":
        layer.positions, layer.d_in, layer.d_out = inp.numel() // inp.shape[-1], inp.shape[-1], out.shape[-1]
    elif layer.kind == "conv":
        mod: Any = layer.module
        kernel = 1
        for s in mod.kernel_size:
            kernel *= s
        layer.positions = out[0, 0].numel()
        layer.d_in = mod.in_channels // layer.groups * kernel
        layer.d_out = mod.out_channels // layer.groups
    else:
        layer.positions, layer.d_in, layer.d_out = out[0, 0].numel(), 1, out.shape[1]


class Workspace:
    """Reusable flat buffers for the large temporaries of one pass (patches, Jacobian blocks).

    A fresh multi-megabyte tensor costs page faults at every allocation (the allocator returns large
    blocks to the system); writing into buffers that persist for the pass costs them once.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """A contiguous tensor of ``shape`` (uninitialised) backed by the buffer ``name``."""
        numel = 1
        for s in shape:
            numel *= s
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=self.dtype, device=self.device)
            self.buffers[name] = buf
        return buf[:numel].view(shape)


def padded_input(module: Any, x: Tensor) -> Tensor:
    """A convolution's input with its padding applied (zeros, reflect, replicate, circular, or
    :mod:`ntkit.nn`'s own)."""
    if isinstance(module, _ConvNd):
        return module.pad(x)
    pad = list(module._reversed_padding_repeated_twice)
    if any(pad):
        return F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    return x


def conv_windows(module: Any, xp: Tensor) -> Tensor:
    """The sliding windows of a padded input (N, C, *L) as a strided view (N, C, *kernel, *out)."""
    kernel, stride = tuple(module.kernel_size), tuple(module.stride)
    dilation = tuple(getattr(module, "dilation", (1,) * len(kernel)))
    spatial = xp.shape[2:]
    out = tuple((s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(spatial, kernel, stride, dilation, strict=True))
    st_x = xp.stride()
    strides = (
        st_x[0],
        st_x[1],
        *(st_x[2 + i] * dilation[i] for i in range(len(kernel))),
        *(st_x[2 + i] * stride[i] for i in range(len(kernel))),
    )
    return xp.as_strided((xp.shape[0], xp.shape[1], *kernel, *out), strides, xp.storage_offset())


def patch_rows(layer: StreamLayer, inp: Tensor, ws: Workspace | None = None) -> Tensor:
    """The layer's input rows ``a_p`` as (N, G, d_in, P): a view for a linear layer (then strided),
    the unfolded patches of a convolution (written into ``ws``'s buffer ``"patches"`` if given), in
    the order of ``weight.flatten(1)`` per group."""
    n = inp.shape[0]
    if layer.kind == "linear":
        return inp.reshape(n, 1, -1, inp.shape[-1]).transpose(2, 3)
    windows = conv_windows(layer.module, padded_input(layer.module, inp))
    shape = (n, layer.groups, layer.d_in, layer.positions)
    if ws is None:
        return windows.reshape(shape)
    buf = ws.get("patches", tuple(windows.shape))
    buf.copy_(windows)
    return buf.view(shape)


def cotangent_rows(layer: StreamLayer, g: Tensor) -> Tensor:
    """Cotangents (kc, N, ...) at the layer's output as (kc, N, G, d_out, P) (a view)."""
    kc, n = g.shape[0], g.shape[1]
    if layer.kind == "linear":
        return g.reshape(kc, n, 1, -1, g.shape[-1]).transpose(3, 4)
    return g.reshape(kc, n, layer.groups, layer.d_out, -1)


def out_slices(layer: StreamLayer, n: int, kc: int, itemsize: int, limit: float) -> list[tuple[int, int]]:
    """Slices of output channels (per group) whose Jacobian block (N, kc, G o d_in) fits ``limit`` bytes."""
    per_channel = max(1, n * kc * layer.groups * (layer.d_in + 1) * itemsize)
    step = max(1, min(layer.d_out, int(limit // per_channel)))
    return [(o, min(layer.d_out, o + step)) for o in range(0, layer.d_out, step)]


def weight_jacobian(
    layer: StreamLayer,
    inp: Tensor,
    g5: Tensor,
    o0: int,
    o1: int,
    ws: Workspace,
    flat: bool,
    limit: float,
    tag: str = "",
) -> Tensor:
    """Per-example Jacobian of the weight rows of output channels ``o0:o1`` (per group): ``s_w sum_p
    g_{c,p} a_p^T`` for every example, one batched GEMM ``(d_in, P) x (P, kc o)`` per example and group.

    ``inp`` (N, ...) is the layer's input (unfolded :func:`patch_rows` for as many examples at a time
    as fit ``limit`` bytes), ``g5`` (kc, N, G, d_out, P) the cotangents. Returns a view of the
    workspace buffer ``"jac" + tag``: (N, M) with the outputs' sum left to the caller's inner products
    (``flat``: any order of the kc F entries), or (N, kc, F).
    """
    kc, n, groups, _, p = g5.shape
    oc, d_in = o1 - o0, layer.d_in
    jt = ws.get("jac" + tag, (n, groups, d_in, kc * oc))
    step = n if layer.kind == "linear" else max(1, int(limit // max(1, groups * d_in * p * ws.itemsize)))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        m = r1 - r0
        a = patch_rows(layer, inp[r0:r1], ws)  # (m, G, d_in, P)
        gs = g5[:, r0:r1, :, o0:o1]
        if kc == 1:
            lhs = gs[0].reshape(m * groups, oc, p)
        else:
            buf = ws.get("lhs", (m, groups, kc, oc, p))
            buf.copy_(gs.permute(1, 2, 0, 3, 4))
            lhs = buf.view(m * groups, kc * oc, p)
        out = jt[r0:r1].view(m * groups, d_in, kc * oc)
        torch.bmm(a.reshape(m * groups, d_in, p), lhs.transpose(1, 2), out=out)
    if layer.s_w != 1.0:
        jt.mul_(layer.s_w)
    if flat or kc == 1:
        return jt.view(n, -1) if flat else jt.view(n, 1, -1)
    split = ws.get("split" + tag, (n, kc, groups, d_in, oc))
    split.copy_(jt.view(n, groups, d_in, kc, oc).permute(0, 3, 1, 2, 4))
    return split.view(n, kc, -1)


def bias_jacobian(layer: StreamLayer, g5: Tensor) -> Tensor:
    """Per-example Jacobian (N, kc, G d_out) of the bias: ``s_b sum_p g_{c,p}``."""
    kc, n = g5.shape[0], g5.shape[1]
    jb = g5.sum(-1).permute(1, 0, 2, 3).reshape(n, kc, -1)
    return jb * layer.s_b if layer.s_b != 1.0 else jb


def norm_jacobian(layer: StreamLayer, inp: Tensor, g: Tensor) -> Tensor:
    """Per-example Jacobian (N, kc, F) of a batch norm's or layer norm's selected ``gamma`` then ``beta``
    from its input ``inp`` (N, ...) and the cotangents ``g`` (kc, N, ...) at its output. Batch norm
    (channels on axis 1): ``sum_p g_p xhat_p = (sum_p g_p x_p - mean sum_p g_p) / sqrt(var + eps)``;
    layer norm (normalised trailing dimensions, ``P`` leading positions): ``sum_p g_p * xhat_p`` with
    ``xhat`` recomputed from the input as the module normalises it."""
    if layer.kind == "layernorm":
        return _layer_norm_jacobian(layer, inp, g)
    mod: Any = layer.module
    kc, n, c = g.shape[0], g.shape[1], g.shape[2]
    g3 = g.reshape(kc, n, c, -1)
    gsum = g3.sum(-1).transpose(0, 1)  # (N, kc, C)
    parts = []
    if layer.take_w:
        gx = torch.einsum("kncp,ncp->nkc", g3, inp.reshape(n, c, -1))
        parts.append((gx - gsum * mod.running_mean).mul_(torch.rsqrt(mod.running_var + mod.eps)))
    if layer.take_b:
        parts.append(gsum)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _layer_norm_jacobian(layer: StreamLayer, inp: Tensor, g: Tensor) -> Tensor:
    """:func:`norm_jacobian` of a layer norm (``nn.LayerNorm``, ``nn.RMSNorm``): (N, kc, F)."""
    mod: Any = layer.module
    kc, n, d = g.shape[0], g.shape[1], layer.d_out
    g3 = g.reshape(kc, n, -1, d)  # (kc, N, P, D)
    parts = []
    if layer.take_w:
        shape = tuple(mod.normalized_shape)
        if isinstance(mod, nn.LayerNorm):
            xhat = F.layer_norm(inp, shape, None, None, mod.eps)
        else:
            xhat = F.rms_norm(inp, shape, None, mod.eps)
        parts.append(torch.einsum("knpd,npd->nkd", g3, xhat.reshape(n, -1, d)))
    if layer.take_b:
        parts.append(g3.sum(2).transpose(0, 1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def jacobian_blocks(
    layer: StreamLayer,
    inp: Tensor,
    g: Tensor,
    ws: Workspace,
    limit: float,
    flat: bool,
    tag: str = "",
    rows: int | None = None,
) -> Iterator[Tensor]:
    """The layer's per-example Jacobian in blocks of parameters of at most about ``limit`` bytes each
    (their kernel contributions add up), from its input ``inp`` (N, ...) and cotangents ``g`` (kc, N,
    ...): (N, M) if ``flat`` (outputs summed by the inner products), else (N, kc, F). Blocks may be
    views of the workspace, valid until the next block. The slices are those of ``rows`` examples
    (default N), so that two sides of a block slice alike."""
    if layer.kind in NORM_KINDS:
        j = norm_jacobian(layer, inp, g)
        yield j.reshape(j.shape[0], -1) if flat else j
        return
    g5 = cotangent_rows(layer, g)
    if layer.take_b:
        jb = bias_jacobian(layer, g5)
        yield jb.reshape(jb.shape[0], -1) if flat else jb
    if layer.take_w:
        for o0, o1 in out_slices(layer, rows or g.shape[1], g.shape[0], ws.itemsize, limit):
            yield weight_jacobian(layer, inp, g5, o0, o1, ws, flat, limit, tag)
