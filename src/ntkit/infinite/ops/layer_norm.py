"""Layer norm over the channels (:class:`ntkit.nn.LayerNorm`): per pixel, a deterministic rescaling.

With ``m`` the channel mean and ``V = K(x, x) - m^2`` the channel variance at each pixel::

    K' = (K - m m') / sqrt((V + eps)(V' + eps)),    T' = T / sqrt((V + eps)(V' + eps)).

The channel means come from the activations before it (``track_mean``); a channel of zero variance
maps to 0. No random-feature map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs
from ntkit.nn.structure import LayerNorm

Tensor = torch.Tensor


@dataclass(frozen=True)
class LayerNormOp(KernelOp):
    """Layer norm over the channels (:class:`ntkit.nn.LayerNorm`): per pixel, a deterministic rescaling."""

    eps: float = 1e-5

    mean_role: ClassVar[str] = "sink"

    def degree(self, d: int | None) -> int | None:
        return 0 if self.eps == 0.0 and d is not None else None

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        var_l, var_r = ctx.variances(p.batch_ndim)
        means = ctx.means(p.batch_ndim)
        nngp = p.nngp
        if means is not None:
            m_l, m_r = means
            nngp = nngp - m_l * m_r
            var_l, var_r = var_l - m_l * m_l, var_r - m_r * m_r
        scale = ((var_l + self.eps) * (var_r + self.eps)).sqrt()
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero-variance channel maps to 0
        nngp = torch.where(scale > 0, nngp / safe, torch.zeros_like(nngp))
        out_ntk = None
        if ntk and p.ntk is not None:
            out_ntk = torch.where(scale > 0, p.ntk / safe, torch.zeros_like(p.ntk))
        return p.replace(nngp=nngp, ntk=out_ntk, mean=None)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        raise ArchitectureError(f"features: {self.position} (layer norm) has no random-feature map here; "
                                "use ntkit.infinite_kernel for models with layer norm")


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, LayerNorm)
    return LayerNormOp(f"{name} ({type(module).__name__})", shape, shape, module.eps)


def _data_degree(module: nn.Module, d: int | None) -> int | None:
    assert isinstance(module, LayerNorm)
    return 0 if module.eps == 0.0 and d is not None else None


register(LayerNorm, build=_build, names="ntkit.nn.LayerNorm", data_degree=_data_degree)

__all__ = ["LayerNormOp"]
