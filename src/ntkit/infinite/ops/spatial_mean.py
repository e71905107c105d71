"""A mean or a sum over the spatial axes written in a forward (``x.mean((2, 3))``): global average / sum pooling.

:mod:`ntkit.infinite.capture` lifts ``x.mean(dim)`` (and ``F.adaptive_avg_pool2d(x, 1)`` followed by a
flatten) to a :class:`SpatialMean` holding the axes as written; the rank of its input is known only
here, from the input shape ``(C, *S)``, so the builder checks that the axes are exactly the spatial
ones, ``{2, ..., ndim - 1}`` of an ``(N, C, *S)`` tensor (negative axes counted from the end), and
returns the global pooling op (:class:`~ntkit.infinite.ops.global_pool.GlobalPool`,
``K'(x, x') = mean_{p, p'} K(x, x')[p, p']``): the same op, so the same kernel and fast paths, as
:class:`ntkit.nn.GlobalAvgPool`. Any other axes (the channels, a part of the spatial axes) are
refused with the module's name. ``x.sum(dims)`` is :class:`SpatialSum`, the same with
:class:`GlobalSumPool` (``K' = |S|^2 mean_{p, p'} K[p, p']``). On tokens ``(N, *S, C)`` (channels last,
:mod:`ntkit.infinite.ops.tokens`) the axes are ``1 .. ndim - 2`` instead (``x.mean(dim=1)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.global_pool import GlobalPool
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs

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
        if not spatial_axes(self.dims, x.ndim) and not token_axes(self.dims, x.ndim):
            raise ValueError(f"{type(self).__name__}: expected dims {self.dims} to be every spatial axis of an input "
                             f"of shape (N, C, *spatial) or every token axis of tokens (N, *tokens, C), got an input "
                             f"of shape {tuple(x.shape)}")
        return self.reduce(x)

    def reduce(self, x: Tensor) -> Tensor:
        """The reduction itself: the mean over ``dims``."""
        return x.mean(dim=self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class SpatialSum(SpatialMean):
    """``x.sum(dims)`` over every spatial axis (or every token axis): global sum pooling.

    Examples
    --------
    >>> SpatialSum((1,))(torch.arange(6.0).reshape(1, 3, 2)).tolist()  # tokens (N, L, C): the sum over L
    [[6.0, 9.0]]
    """

    def reduce(self, x: Tensor) -> Tensor:
        return x.sum(dim=self.dims)


def token_axes(dims: Sequence[int], ndim: int) -> bool:
    """Whether ``dims`` are exactly the token axes ``1 .. ndim - 2`` of an ``ndim``-dimensional token tensor."""
    if ndim < 3 or any(not -ndim <= d < ndim for d in dims):
        return False
    return sorted(d % ndim for d in dims) == list(range(1, ndim - 1))


@dataclass(frozen=True)
class GlobalSumPool(GlobalPool):
    """Global sum pooling ``(C, *S) -> (C,)``: ``K' = |S|^2 mean_{p, p'} K[p, p']`` (the sum over all pixel pairs)."""

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        out = super().apply(p, ctx, ntk)
        n = float(math.prod(self.in_shape[1:]))
        return out.replace(nngp=out.nngp * (n * n), ntk=None if out.ntk is None else out.ntk * (n * n),
                           mean=None if out.mean is None else out.mean * n)

    def lower_native(self, prog: Any) -> bool:
        return False

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        dims.spatial = ()
        return lambda phi, psi: (phi.sum(dim=tuple(range(2, phi.ndim))),
                                 None if psi is None else psi.sum(dim=tuple(range(2, psi.ndim))))


def pooling_op(module: SpatialMean, label: str, shape: Shape) -> KernelOp:
    """The global pooling op of a :class:`SpatialMean` / :class:`SpatialSum` whose axes were checked."""
    kind = GlobalSumPool if isinstance(module, SpatialSum) else GlobalPool
    return kind(label, shape, shape[:1])


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, SpatialMean)
    label = f"{name} ({type(module).__name__})"
    if not spatial_axes(module.dims, len(shape) + 1):
        given = ", ".join(["N", *map(str, shape)])
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected a mean over every spatial axis (dims {{2, ..., ndim - 1}} "
            f"of an input of shape (N, C, *spatial)), got dims={module.dims} for an input of shape ({given})"
        )
    return pooling_op(module, label, shape)


register(SpatialMean, build=_build, names="x.mean / x.sum over the spatial axes (in a forward)")

__all__ = ["GlobalSumPool", "SpatialMean", "SpatialSum", "pooling_op", "spatial_axes", "token_axes"]
