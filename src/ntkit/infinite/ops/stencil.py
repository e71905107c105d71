"""Window sums over the spatial axes of a covariance: the geometry convolutions and poolings share.

A convolution with filter ``F`` (``|F|`` taps), stride ``s`` and i.i.d. weights averages the input
covariance over the filter, *the same offset on both sides* (Arora et al. 2019, eq. (7); Novak et
al. 2019)::

    A(K)(q, q') = (1 / |F|) sum_{delta in F} K(s q + delta - pad, s q' + delta - pad)

(:func:`stencil` with one group of axes per side), with zero padding contributing 0 and circular
padding wrapping the indices around. A pooling window averages *independent* offsets on the two
sides (:func:`window_average`: one stencil per side), which needs every pixel pair (``full`` layout).
"""

from __future__ import annotations

import itertools

import torch

from ntkit.infinite.ops.base import Shape, count_taps
from ntkit.infinite.state import Layout

Tensor = torch.Tensor


def pad_axis(t: Tensor, axis: int, before: int, after: int, circular: bool) -> Tensor:
    """``t`` padded along ``axis`` with zeros (or wrapped around, ``circular``)."""
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


def axis_groups(lay: Layout, batch_ndim: int) -> list[list[int]]:
    """Tensor axes of the spatial dims: one group (diag, or the per-row means) or two (full: x's, then x''s)."""
    d = len(lay.spatial)
    first = list(range(batch_ndim, batch_ndim + d))
    if lay.mode == "full":
        return [first, [a + d for a in first]]
    return [first]


def window_sum(t: Tensor, groups: list[list[int]], filt: Shape, stride: Shape, pads: list[tuple[int, int]],
               out: Shape, circular: bool) -> Tensor:
    """``sum_delta t[s q + delta - pad]`` with the same offset ``delta`` on every axis group."""
    for group in groups:
        for k, axis in enumerate(group):
            t = pad_axis(t, axis, pads[k][0], pads[k][1], circular)
    acc: Tensor | None = None
    for delta in itertools.product(*(range(f) for f in filt)):
        index: list[slice] = [slice(None)] * t.ndim
        for group in groups:
            for k, axis in enumerate(group):
                index[axis] = slice(delta[k], delta[k] + stride[k] * (out[k] - 1) + 1, stride[k])
        piece = t[tuple(index)]
        acc = piece.clone() if acc is None else acc.add_(piece)
    assert acc is not None
    return acc


def stencil(t: Tensor, groups: list[list[int]], filt: Shape, stride: Shape, pads: list[tuple[int, int]],
            out: Shape, circular: bool) -> Tensor:
    """``(1 / |F|) sum_delta t[s q + delta - pad]`` with the same offset ``delta`` on every axis group."""
    return window_sum(t, groups, filt, stride, pads, out, circular).div_(count_taps(filt))


def window_average(t: Tensor, groups: list[list[int]], window: Shape, stride: Shape, out: Shape) -> Tensor:
    """Average over the window on each axis group *independently* (pooling)."""
    for group in groups:
        t = stencil(t, [group], window, stride, [(0, 0)] * len(window), out, circular=False)
    return t


__all__ = ["axis_groups", "pad_axis", "stencil", "window_average", "window_sum"]
