"""Kernel transforms of convolutions and average pooling (the reference implementation).

A convolution with filter ``F`` (``|F|`` taps), stride ``s`` and i.i.d. weights averages the input
covariance over the filter, *the same offset on both sides* (Arora et al. 2019, eq. (7);
Novak et al. 2019):

    A(K)(q, q') = (1 / |F|) sum_{delta in F} K(s q + delta - pad, s q' + delta - pad)

with zero padding (``"same"``, ``"valid"``) contributing 0 and circular padding wrapping the
indices around. ``K'`` and ``T'`` then follow :func:`ntkit.infinite.ops.affine`. On same-pixel
covariances (``diag`` layout) the same formula applies with ``q = q'``.

Average pooling with window ``W`` averages *independent* offsets on the two sides:

    P(K)(q, q') = (1 / |W|^2) sum_{delta, delta' in W} K(s q + delta, s q' + delta'),

which needs every pixel pair (``full`` layout), as global pooling does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ntkit.infinite.ops import Dense, KernelOp, affine, count_taps
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.nn.linear import conv_output_size

Tensor = torch.Tensor
Shape = tuple[int, ...]


def _pad_axis(t: Tensor, axis: int, before: int, after: int, circular: bool) -> Tensor:
    if before == 0 and after == 0:
        return t
    n = t.shape[axis]
    if circular:
        idx = torch.arange(-before, n + after, device=t.device) % n
        return t.index_select(axis, idx)
    shape = list(t.shape)
    out = t.new_zeros(*shape[:axis], n + before + after, *shape[axis + 1 :])
    out.narrow(axis, before, n).copy_(t)
    return out


def _groups(lay: Layout, batch_ndim: int) -> list[list[int]]:
    """Tensor axes of the spatial dims: one group (diag, or the per-row means) or two (full: x's, then x''s)."""
    d = len(lay.spatial)
    first = list(range(batch_ndim, batch_ndim + d))
    if lay.mode == "full":
        return [first, [a + d for a in first]]
    return [first]


def stencil(t: Tensor, groups: list[list[int]], filt: Shape, stride: Shape, pads: list[tuple[int, int]],
            out: Shape, circular: bool) -> Tensor:
    """``(1 / |F|) sum_delta t[s q + delta]`` with the same offset ``delta`` on every axis group."""
    for group in groups:
        for k, axis in enumerate(group):
            t = _pad_axis(t, axis, pads[k][0], pads[k][1], circular)
    acc: Tensor | None = None
    for delta in itertools.product(*(range(f) for f in filt)):
        index: list[slice] = [slice(None)] * t.ndim
        for group in groups:
            for k, axis in enumerate(group):
                index[axis] = slice(delta[k], delta[k] + stride[k] * (out[k] - 1) + 1, stride[k])
        piece = t[tuple(index)]
        acc = piece.clone() if acc is None else acc.add_(piece)
    assert acc is not None
    return acc.div_(count_taps(filt))


def window_average(t: Tensor, groups: list[list[int]], window: Shape, stride: Shape, out: Shape) -> Tensor:
    """Average over the window on each axis group *independently* (pooling)."""
    for group in groups:
        t = stencil(t, [group], window, stride, [(0, 0)] * len(window), out, circular=False)
    return t


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

    def degree(self, d: int | None) -> int | None:
        return d if self.b2 == 0.0 or d == 0 else None

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        pads, out = self._geometry()
        groups = _groups(lay, p.batch_ndim)

        def avg(t: Tensor) -> Tensor:
            return stencil(t, groups, self.filter, self.stride, pads, out, circular=self.padding == "circular")

        new_layout = Layout(out, lay.mode)
        return affine(p, self, avg(p.nngp), avg(p.ntk) if ntk and p.ntk is not None else None, new_layout)


@dataclass(frozen=True)
class AvgPool(KernelOp):
    """Average pooling (``nn.AvgPool1d/2d``, ``nn.AdaptiveAvgPool1d/2d`` with divisible sizes), no padding."""

    window: Shape = (1,)
    stride: Shape = (1,)

    def input_mode(self, out_mode: str) -> str:
        return "full"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        out = self.out_shape[1:]
        groups = _groups(lay, p.batch_ndim)

        def pool(t: Tensor) -> Tensor:
            return window_average(t, groups, self.window, self.stride, out)

        mean = None
        if p.mean is not None:
            mean = window_average(p.mean, [list(range(1, 1 + len(out)))], self.window, self.stride, out)
        return p.replace(nngp=pool(p.nngp), ntk=pool(p.ntk) if ntk and p.ntk is not None else None,
                         layout=Layout(out, lay.mode), mean=mean)


__all__ = ["AvgPool", "Conv", "stencil", "window_average"]
