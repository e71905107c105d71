"""A convolution (:class:`ntkit.nn.Conv1d` / :class:`ntkit.nn.Conv2d`) on a spatial state.

The filter average ``A(K)(q, q') = (1 / |F|) sum_delta K(s q + delta - pad, s q' + delta - pad)``
(:func:`~ntkit.infinite.ops.stencil.stencil`; zero padding for ``"same"`` / ``"valid"``, wrapped
indices for ``"circular"``), then the weight-layer update of
:func:`~ntkit.infinite.ops.base.affine`. On same-pixel covariances (``diag`` layout) the same
formula applies with ``q = q'``. Lowerings: the compiled convolution program (NTK
parameterization, zero padding) and a random convolution of width ``m`` for random features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.infinite.errors import ArchitectureError, shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape, affine
from ntkit.infinite.ops.dense import Dense
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.ops.stencil import axis_groups, stencil
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.nn.linear import _ConvNd, conv_output_size

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor


@dataclass(frozen=True)
class Conv(Dense):
    """A convolution (:class:`ntkit.nn.Conv1d` / :class:`ntkit.nn.Conv2d`) on a spatial state."""

    filter: Shape = (1,)
    stride: Shape = (1,)
    padding: str = "same"

    def _geometry(self) -> tuple[list[tuple[int, int]], Shape]:
        pads, out = [], []
        for n, f, s in zip(self.spatial_in, self.filter, self.stride, strict=True):
            size, before, after = conv_output_size(n, f, s, self.padding)
            pads.append((before, after))
            out.append(size)
        return pads, tuple(out)

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        pads, out = self._geometry()
        groups = axis_groups(lay, p.batch_ndim)

        def avg(t: Tensor) -> Tensor:
            return stencil(t, groups, self.filter, self.stride, pads, out, circular=self.padding == "circular")

        new_layout = Layout(out, lay.mode)
        return affine(p, self, avg(p.nngp), avg(p.ntk) if ntk and p.ntk is not None else None, new_layout)

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        if type(self) is not Conv or self.parameterization != "ntk" or self.padding == "circular":
            return False
        prog.conv(self.filter, self.stride, self.padding, self.w_std**2, self.b2)
        return True

    def pad(self, x: Tensor) -> Tensor:
        """Zero (same / valid) or circular padding of the spatial axes of features ``x`` (N, C, *S),
        for a 'valid' convolution."""
        pads: list[int] = []
        nd = len(self.spatial_in)
        for axis in reversed(range(nd)):
            _, before, after = conv_output_size(x.shape[2 + axis], self.filter[axis], self.stride[axis], self.padding)
            pads += [before, after]
        if not any(pads):
            return x
        if self.padding != "circular":
            return F.pad(x, pads)
        for axis in range(nd):
            before, after = pads[2 * (nd - 1 - axis)], pads[2 * (nd - 1 - axis) + 1]
            n = x.shape[2 + axis]
            x = x.index_select(2 + axis, torch.arange(-before, n + after, device=x.device) % n)
        return x

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        taps = math.prod(self.filter)
        w, b = self.w_std / math.sqrt(taps), math.sqrt(self.b2)
        standard = self.parameterization == "standard"
        conv = F.conv1d if len(self.filter) == 1 else F.conv2d
        ntk, mp, ms = fmap.ntk, fmap.m_phi, fmap.m_psi
        r_phi = fmap.gauss(mp, dims.phi, *self.filter) / math.sqrt(mp)
        r_bias = fmap.gauss(mp) / math.sqrt(mp)
        r_psi = fmap.gauss(ms, dims.psi, *self.filter) / math.sqrt(ms) if ntk else None
        r_mix = fmap.gauss(ms, mp) / math.sqrt(ms) if ntk else None  # psi's share of phi'
        r_std = fmap.gauss(ms, dims.phi, *self.filter) / math.sqrt(ms) if ntk and standard else None
        ones = fmap.gauss(ms) / math.sqrt(ms) if ntk and standard and self.bias else None
        dims.phi, dims.psi, dims.spatial = mp, (ms if ntk else 0), tuple(self.out_shape[1:])
        view = (1, -1) + (1,) * len(self.filter)
        b2, fan_in, stride, pad = self.b2, self.fan_in, self.stride, self.pad

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            new_phi = conv(pad(phi), r_phi, stride=stride) * w
            if b2 > 0:
                new_phi = new_phi + (r_bias * b).view(view)
            new_psi = None
            if ntk:
                assert psi is not None and r_psi is not None and r_mix is not None
                if psi.shape[1] > 0:
                    patches = conv(pad(psi), r_psi, stride=stride) * w
                else:
                    patches = new_phi.new_zeros(new_phi.shape[0], r_mix.shape[0], *new_phi.shape[2:])
                if standard:
                    assert r_std is not None
                    new_psi = patches + conv(pad(phi), r_std, stride=stride) * math.sqrt(fan_in / taps)
                    if ones is not None:
                        new_psi = new_psi + ones.view(view)
                else:
                    new_psi = patches + torch.einsum("md,nd...->nm...", r_mix, new_phi)
            return new_phi, new_psi

        return step


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, _ConvNd)
    label = f"{name} ({type(module).__name__})"
    nd = module.ndim
    if len(shape) != nd + 1 or shape[0] != module.in_channels:
        raise shape_error(label, f"(C={module.in_channels}, {nd} spatial axes)", shape)
    try:
        out = module.output_shape(shape[1:])
    except ValueError as err:
        raise ArchitectureError(f"infinite_kernel: module {label}: {err}") from None
    return Conv(label, shape, (module.out_channels, *out), module.w_std, module.b_std, module.bias is not None,
                module.parameterization, module.fan_in, module.kernel_size, module.stride, module.padding)


register(_ConvNd, build=_build, names="ntkit.nn.Conv1d, ntkit.nn.Conv2d", has_weights=lambda m: True,
         on_data=False)

__all__ = ["Conv"]
