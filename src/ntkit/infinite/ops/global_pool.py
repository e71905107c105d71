"""Global average pooling ``(C, *S) -> (C,)`` (:class:`ntkit.nn.GlobalAvgPool`).

``K'(x, x') = mean_{p, p'} K(x, x')[p, p']``: the mean over every pixel pair (``full`` layout).
Random features: the mean of the features over the pixels (exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ntkit.infinite.errors import shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape, reduce_space
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs
from ntkit.nn.structure import GlobalAvgPool

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor


@dataclass(frozen=True)
class GlobalPool(KernelOp):
    """Global average pooling ``(C, *S) -> (C,)``: the mean over all pixel pairs."""

    reshapes: ClassVar[bool] = True

    def input_mode(self, out_mode: str) -> str:
        return "full"

    def output_mode(self, in_mode: str) -> str:
        return "none"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        assert p.layout.mode == "full"
        return reduce_space(p, ntk, lambda t: t)

    def pairs_as_list(self) -> bool:
        return True

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        return prog.readout(global_pool=True)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        dims.spatial = ()
        return lambda phi, psi: (phi.mean(dim=tuple(range(2, phi.ndim))),
                                 None if psi is None else psi.mean(dim=tuple(range(2, psi.ndim))))


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    label = f"{name} ({type(module).__name__})"
    if len(shape) < 2:
        raise shape_error(label, "an input of shape (C, *spatial)", shape)
    return GlobalPool(label, shape, shape[:1])


register(GlobalAvgPool, build=_build, names="ntkit.nn.GlobalAvgPool")

__all__ = ["GlobalPool"]
