"""A mean over the spatial axes written in a forward (``x.mean((2, 3))``): global average pooling.

:mod:`ntkit.infinite.capture` lifts ``x.mean(dim)`` (and ``F.adaptive_avg_pool2d(x, 1)`` followed by a
flatten) to a :class:`SpatialMean` holding the axes as written; the rank of its input is known only
here, from the input shape ``(C, *S)``, so the builder checks that the axes are exactly the spatial
ones, ``{2, ..., ndim - 1}`` of an ``(N, C, *S)`` tensor (negative axes counted from the end), and
returns the global pooling op (:class:`~ntkit.infinite.ops.global_pool.GlobalPool`,
``K'(x, x') = mean_{p, p'} K(x, x')[p, p']``): the same op, so the same kernel and fast paths, as
:class:`ntkit.nn.GlobalAvgPool`. Any other axes (the channels, a part of the spatial axes) are
refused with the module's name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import KernelOp, Shape
from ntkit.infinite.ops.global_pool import GlobalPool
from ntkit.infinite.ops.registry import BlockBuilder, register

Tensor = torch.Tensor


def spatial_axes(dims: Sequence[int], ndim: int) -> bool:
    """Whether ``dims`` are exactly the spatial axes ``2 .. ndim - 1`` of an ``ndim``-dimensional tensor."""
    if ndim < 3 or any(not -ndim <= d < ndim for d in dims):
        return False
    normal = sorted(d % ndim for d in dims)
    return normal == list(range(2, ndim))


class SpatialMean(nn.Module):
    """``x.mean(dims)`` where ``dims`` must be every spatial axis of ``x`` of shape ``(N, C, *S)``: ``(N, C)``.

    Parameters
    ----------
    dims : sequence of int
        The axes as written in the forward (``(2, 3)``, ``(-2, -1)``, ...).

    Raises
    ------
    ValueError
        At the call, ``dims`` that are not exactly the spatial axes of the input.

    Examples
    --------
    >>> SpatialMean((-2, -1))(torch.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[1.5, 5.5]]
    """

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x: Tensor) -> Tensor:
        if not spatial_axes(self.dims, x.ndim):
            raise ValueError(f"SpatialMean: expected dims {self.dims} to be every spatial axis of an input of shape "
                             f"(N, C, *spatial), got an input of shape {tuple(x.shape)}")
        return x.mean(dim=self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, SpatialMean)
    label = f"{name} ({type(module).__name__})"
    if not spatial_axes(module.dims, len(shape) + 1):
        given = ", ".join(["N", *map(str, shape)])
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected a mean over every spatial axis (dims {{2, ..., ndim - 1}} "
            f"of an input of shape (N, C, *spatial)), got dims={module.dims} for an input of shape ({given})"
        )
    return GlobalPool(label, shape, shape[:1])


register(SpatialMean, build=_build, names="x.mean over the spatial axes (in a forward)")

__all__ = ["SpatialMean", "spatial_axes"]
