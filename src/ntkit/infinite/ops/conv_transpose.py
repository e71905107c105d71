"""A transposed convolution (:class:`ntkit.nn.ConvTranspose1d` / ``2d``; neural-tangents' ``ConvTranspose``).

The layer is a stride-1 ``"valid"`` convolution of the *upsampled* input ``u`` (see
:mod:`ntkit.nn.conv_transpose`): per spatial axis, ``u(pad_a + s i) = x(i)`` and zeros elsewhere
(``s - 1`` zeros between neighbouring pixels, ``pad_a`` before, ``pad_b`` after). ``u`` is linear in
``x``, so its covariance is the input's upsampled on *both* sides::

    K_u(pad_a + s i, pad_a + s i') = K(i, i'),    0 where either pixel is an inserted zero,

and the layer transforms it as a convolution does (the filter average of
:mod:`ntkit.infinite.ops.conv`, the same offset on both sides)::

    A(K)(q, q') = (1 / |F|) sum_delta K_u(q + delta, q' + delta),

then the weight-layer update of :func:`~ntkit.infinite.ops.base.affine` (NTK or standard
parameterization, ``fan_in = C_in |F|``). The divisor counts every tap, those reading inserted zeros
too: neural-tangents' ``_conv_kernel_full_spatial_transpose`` (a ``lax.conv_transpose`` of the
covariance with the filter ``diag(1 / k)`` per axis) and ``_conv_kernel_diagonal_spatial_transpose``.
Same-pixel covariances (``diag`` layout) suffice, as for a convolution: ``A(K)(q, q)`` reads only
``K_u(p, p)``, that is ``K(i, i)``.

Lowerings: in the compiled convolution program, an upsampling step (``UPS``) then the stride-1 ``valid``
convolution's step (NTK parameterization; the standard one runs on the reference evaluator); random
features: the convolution's random step (a random convolution of width ``m``) applied to the upsampled
features, exact in law as the convolution's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntkit.infinite.errors import shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.conv import Conv
from ntkit.infinite.ops.dense import Dense
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.ops.stencil import axis_groups
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.nn.conv_transpose import _ConvTransposeNd, conv_transpose_size

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor


def upsample_axis(t: Tensor, axis: int, stride: int, before: int, after: int) -> Tensor:
    """``t`` with ``stride - 1`` zeros inserted between neighbouring entries along ``axis``, then ``before`` /
    ``after`` zeros: entry ``i`` moves to ``before + stride i`` (length ``(n - 1) stride + 1 + before + after``)."""
    n = t.shape[axis]
    if stride == 1 and before == 0 and after == 0:
        return t
    shape = list(t.shape)
    shape[axis] = (n - 1) * stride + 1 + before + after
    out = t.new_zeros(shape)
    index: list[slice] = [slice(None)] * t.ndim
    index[axis] = slice(before, before + (n - 1) * stride + 1, stride)
    out[tuple(index)] = t
    return out


@dataclass(frozen=True)
class ConvTranspose(Dense):
    """A transposed convolution on a spatial state: the convolution of the upsampled covariances (module notes).

    Attributes
    ----------
    filter, stride : tuple of int
        Per spatial axis (``stride``: the upsampling factor).
    padding : {"same", "valid"}
        neural-tangents' (``lax.conv_transpose``'s) output sizes and pads.
    """

    filter: Shape = (1,)
    stride: Shape = (1,)
    padding: str = "same"

    def _pads(self) -> list[tuple[int, int]]:
        """``(pad_a, pad_b)`` per spatial axis."""
        return [conv_transpose_size(n, k, s, self.padding)[1:]
                for n, k, s in zip(self.spatial_in, self.filter, self.stride, strict=True)]

    def inner(self) -> Conv:
        """The stride-1 ``"valid"`` convolution that reads the upsampled input."""
        up = tuple((n - 1) * s + 1 + a + b for n, s, (a, b) in zip(self.spatial_in, self.stride, self._pads(),
                                                                     strict=True))
        return Conv(self.position, (self.in_shape[0], *up), self.out_shape, self.w_std, self.b_std, self.bias,
                    self.parameterization, self.fan_in, self.filter, (1,) * len(self.filter), "valid")

    def upsample(self, t: Tensor, groups: list[list[int]]) -> Tensor:
        """``t`` upsampled along the spatial axes of every group (one group per side of a pair)."""
        pads = self._pads()
        for group in groups:
            for k, axis in enumerate(group):
                t = upsample_axis(t, axis, self.stride[k], *pads[k])
        return t

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        inner = self.inner()
        groups = axis_groups(p.layout, p.batch_ndim)
        up = p.replace(nngp=self.upsample(p.nngp, groups),
                       ntk=self.upsample(p.ntk, groups) if ntk and p.ntk is not None else None,
                       layout=Layout(inner.spatial_in, p.layout.mode), mean=None)
        return inner.apply(up, ctx, ntk)

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        inner = self.inner()
        if self.parameterization != "ntk":
            return False
        before = tuple(a for a, _ in self._pads())
        return prog.upsample(self.stride, before, inner.spatial_in) and inner.lower_native(prog)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        step = self.inner().feature_step(fmap, dims)
        axes = [list(range(2, 2 + len(self.filter)))]
        upsample = self.upsample

        def transposed(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            return step(upsample(phi, axes), None if psi is None else upsample(psi, axes))

        return transposed


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, _ConvTransposeNd)
    label = f"{name} ({type(module).__name__})"
    nd = module.ndim
    if len(shape) != nd + 1 or shape[0] != module.in_channels:
        raise shape_error(label, f"(C={module.in_channels}, {nd} spatial axes)", shape)
    out = module.output_shape(shape[1:])
    return ConvTranspose(label, shape, (module.out_channels, *out), module.w_std, module.b_std,
                         module.bias is not None, module.parameterization, module.fan_in, module.kernel_size,
                         module.stride, module.padding)


register(_ConvTransposeNd, build=_build, names="ntkit.nn.ConvTranspose1d, ntkit.nn.ConvTranspose2d",
         has_weights=lambda m: True, on_data=False)

__all__ = ["ConvTranspose", "upsample_axis"]
