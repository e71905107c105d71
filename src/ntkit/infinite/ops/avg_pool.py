"""Average pooling: ``nn.AvgPool1d/2d`` (also zero-padded) and ``nn.AdaptiveAvgPool1d/2d`` (divisible sizes).

A window ``W`` with stride ``s`` averages *independent* offsets on the two sides::

    P(K)(q, q') = (1 / |W|^2) sum_{delta, delta' in W} K(s q + delta, s q' + delta'),

which needs every pixel pair (``full`` layout), as global pooling does. With torch's symmetric
zero ``padding = p`` the window of output ``q`` reads the input at ``s q + delta - p`` and the
entries outside the input are 0; the divisor is

* ``count_include_pad=True``: ``|W|^2`` (the zeros count, neural-tangents' ``AvgPool(..., 'SAME')``);
* ``count_include_pad=False``: ``n(q) n(q')``, the numbers of in-range taps of the two windows
  (neural-tangents' ``normalize_edges=True``)::

      P(K)(q, q') = (1 / (n(q) n(q'))) sum_{delta, delta' in W, in range} K(s q + delta - p, s q' + delta' - p).

``ceil_mode=True`` and ``divisor_override`` are refused. Random features: the same pooling of the
features (exact, pooling is linear). Compiled convolution program: the pooling step for unpadded
windows; padded pooling runs on the reference evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.infinite.errors import ArchitectureError, shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.ops.stencil import axis_groups, stencil, window_average, window_sum
from ntkit.infinite.state import Context, Layout, Pairs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor


def in_range_taps(n: int, w: int, s: int, p: int, out: int) -> list[int]:
    """Per output index of one axis (size ``n``, window ``w``, stride ``s``, padding ``p``), the number
    of window taps inside the input: ``min(s q - p + w, n) - max(s q - p, 0)``."""
    return [min(s * q - p + w, n) - max(s * q - p, 0) for q in range(out)]


@dataclass(frozen=True)
class AvgPool(KernelOp):
    """Average pooling (``nn.AvgPool1d/2d``, ``nn.AdaptiveAvgPool1d/2d`` with divisible sizes).

    Attributes
    ----------
    window, stride : tuple of int
        Per spatial axis.
    padding : tuple of int
        Zeros on both sides of each axis (``()`` or zeros: unpadded).
    count_include_pad : bool
        Whether the padded zeros count in the divisor (only with padding).
    """

    window: Shape = (1,)
    stride: Shape = (1,)
    padding: Shape = ()
    count_include_pad: bool = True

    reshapes: ClassVar[bool] = True

    @property
    def padded(self) -> bool:
        """Whether the windows reach outside the input."""
        return any(self.padding)

    def __repr__(self) -> str:  # the unpadded op describes itself as before padding existed (resumable keys)
        extra = f", padding={self.padding!r}, count_include_pad={self.count_include_pad!r}" if self.padded else ""
        return (f"{type(self).__qualname__}(position={self.position!r}, in_shape={self.in_shape!r}, "
                f"out_shape={self.out_shape!r}, window={self.window!r}, stride={self.stride!r}{extra})")

    def input_mode(self, out_mode: str) -> str:
        return "full"

    def _divisor(self, like: Tensor, first_axis: int) -> Tensor:
        """``n(q)``: in-range taps per output pixel, shaped (and placed from ``first_axis``) to broadcast."""
        out = self.out_shape[1:]
        n = like.new_ones(out)
        for k, (size, w, s, p, o) in enumerate(zip(self.spatial_in, self.window, self.stride, self.padding, out,
                                                   strict=True)):
            taps = like.new_tensor(in_range_taps(size, w, s, p, o))
            n = n * taps.reshape([o if j == k else 1 for j in range(len(out))])
        return n.reshape(*n.shape, *([1] * (like.ndim - first_axis - len(out))))

    def _pool(self, t: Tensor, groups: list[list[int]]) -> Tensor:
        """The padded pooling of ``t`` on each axis group independently."""
        out = self.out_shape[1:]
        pads = [(p, p) for p in self.padding]
        for group in groups:
            if self.count_include_pad:
                t = stencil(t, [group], self.window, self.stride, pads, out, circular=False)
            else:
                t = window_sum(t, [group], self.window, self.stride, pads, out, circular=False)
                t = t.div_(self._divisor(t, group[0]))
        return t

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        out = self.out_shape[1:]
        groups = axis_groups(lay, p.batch_ndim)
        mean_groups = [list(range(1, 1 + len(out)))]

        def pool(t: Tensor, g: list[list[int]]) -> Tensor:
            if self.padded:
                return self._pool(t, g)
            return window_average(t, g, self.window, self.stride, out)

        mean = None if p.mean is None else pool(p.mean, mean_groups)
        return p.replace(nngp=pool(p.nngp, groups), ntk=pool(p.ntk, groups) if ntk and p.ntk is not None else None,
                         layout=Layout(out, lay.mode), mean=mean)

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        if self.padded:
            return False  # padded windows: the reference evaluator
        return prog.pool(self.window, self.stride, self.out_shape[1:])

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        dims.spatial = tuple(self.out_shape[1:])
        pool = F.avg_pool1d if len(self.window) == 1 else F.avg_pool2d
        window, stride = self.window, self.stride
        if self.padded:
            padding, include = self.padding, self.count_include_pad

            def padded_step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
                return (pool(phi, window, stride, padding, count_include_pad=include),
                        None if psi is None else pool(psi, window, stride, padding, count_include_pad=include))

            return padded_step

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            return pool(phi, window, stride), None if psi is None else pool(psi, window, stride)

        return step


def _geometry(label: str, module: nn.Module, shape: Shape, ndim: int) -> tuple[Shape, Shape, Shape, Shape]:
    """(window, stride, padding, out spatial) of an average pooling module, validated."""
    if len(shape) != ndim + 1:
        raise shape_error(label, f"an input of shape (C, {ndim} spatial axes)", shape)
    spatial = shape[1:]
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        size = module.output_size
        sizes = (size,) * ndim if isinstance(size, int) or size is None else tuple(size)
        outs: Shape = tuple(n if o is None else int(o) for n, o in zip(spatial, sizes, strict=True))
        if any(n % o for n, o in zip(spatial, outs, strict=True)):
            raise shape_error(label, f"spatial sizes divisible by its output size {outs}", shape)
        window = tuple(n // o for n, o in zip(spatial, outs, strict=True))
        return window, window, (0,) * ndim, outs
    assert isinstance(module, (nn.AvgPool1d, nn.AvgPool2d))
    k = module.kernel_size
    s = module.stride if module.stride is not None else k
    pad = module.padding
    window = (k,) * ndim if isinstance(k, int) else tuple(k)
    stride = (s,) * ndim if isinstance(s, int) else tuple(s)
    pads = (pad,) * ndim if isinstance(pad, int) else tuple(pad)
    if module.ceil_mode or getattr(module, "divisor_override", None):
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected ceil_mode=False and no divisor_override (padding with "
            f"count_include_pad=True or False is supported), got ceil_mode={module.ceil_mode}, "
            f"divisor_override={getattr(module, 'divisor_override', None)}"
        )
    if any(2 * p > w for p, w in zip(pads, window, strict=True)):
        raise ArchitectureError(f"infinite_kernel: module {label}: expected padding <= kernel_size / 2 (torch's "
                                f"rule), got padding={pad} for kernel_size={k}")
    if not any(pads):
        out = tuple((n - w) // st + 1 for n, w, st in zip(spatial, window, stride, strict=True))
        if any(o < 1 for o in out):
            raise shape_error(label, f"spatial sizes >= the pooling window {window}", shape)
        return window, stride, pads, out
    out = tuple((n + 2 * p - w) // st + 1 for n, w, st, p in zip(spatial, window, stride, pads, strict=True))
    if any(n + 2 * p < w for n, w, p in zip(spatial, window, pads, strict=True)):
        raise shape_error(label, f"spatial sizes + 2 x padding {pads} >= the pooling window {window}", shape)
    return window, stride, pads, out


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    label = f"{name} ({type(module).__name__})"
    nd = 1 if isinstance(module, (nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
    window, stride, pads, out = _geometry(label, module, shape, nd)
    if not any(pads):
        return AvgPool(label, shape, (shape[0], *out), window, stride)
    include = bool(getattr(module, "count_include_pad", True))
    return AvgPool(label, shape, (shape[0], *out), window, stride, pads, include)


register(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, build=_build,
         names="nn.AvgPool1d/2d (zero padding, count_include_pad=True/False), nn.AdaptiveAvgPool1d/2d")

__all__ = ["AvgPool", "in_range_taps"]
