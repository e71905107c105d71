"""``nn.Flatten``: ``(C, *S) -> (C * |S|,)``.

The next dense layer sums every (channel, pixel) feature with its own weight, so only same-pixel
covariances reach it: ``K'(x, x') = mean_p K(x, x')[p, p]`` (``diag`` layout is enough). Random
features: a count sketch of all (feature, pixel) entries scaled by ``1 / sqrt(pixels)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape, reduce_space
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor


@dataclass(frozen=True)
class Flatten(KernelOp):
    """``(C, *S) -> (C * |S|,)``: the next dense layer averages the same-pixel covariances."""

    reshapes: ClassVar[bool] = True

    def input_mode(self, out_mode: str) -> str:
        return "diag" if self.spatial_in else "none"

    def output_mode(self, in_mode: str) -> str:
        return "none"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        if lay.mode == "none":
            return p
        return reduce_space(p, ntk, lambda t: lay.pixel_diagonal(t, p.batch_ndim))

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        return prog.readout(global_pool=False)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        pixels = math.prod(dims.spatial)
        if pixels == 1 and not dims.spatial:
            return lambda phi, psi: (phi, psi)
        sketches = {}
        for name, d, m in (("phi", dims.phi, fmap.m_phi), ("psi", dims.psi, fmap.m_psi)):
            if d == 0:
                continue
            sketches[name] = fmap.tensor_sketch(d * pixels, 1, m)  # a count sketch
        dims.phi, dims.psi, dims.spatial = fmap.m_phi, (fmap.m_psi if fmap.ntk else 0), ()

        def sketch(t: Tensor, name: str) -> Tensor:
            flat = t.reshape(t.shape[0], -1) / math.sqrt(pixels)
            return sketches[name](flat, torch.ones(flat.shape[0], 1, dtype=flat.dtype, device=flat.device))

        return lambda phi, psi: (sketch(phi, "phi"), None if psi is None or "psi" not in sketches
                                 else sketch(psi, "psi"))


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, nn.Flatten)
    label = f"{name} ({type(module).__name__})"
    if module.start_dim != 1 or module.end_dim != -1:
        raise ArchitectureError(f"infinite_kernel: module {label}: expected start_dim=1, end_dim=-1, got "
                                f"start_dim={module.start_dim}, end_dim={module.end_dim}")
    return Flatten(label, shape, (math.prod(shape),))


register(nn.Flatten, build=_build, names="nn.Flatten")

__all__ = ["Flatten"]
