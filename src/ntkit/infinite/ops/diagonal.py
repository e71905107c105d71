"""Drops the cross-pixel covariances (``full -> diag``) once no later layer needs them.

Not a module of its own: the walk inserts it where the carried layout is ``full`` but every later op
needs same-pixel entries only (after the last pooling, before convolutions and a flatten).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ntkit.infinite.ops.base import FeatureStep, KernelOp
from ntkit.infinite.state import Context, Pairs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder


@dataclass(frozen=True)
class Diagonal(KernelOp):
    """Drops the cross-pixel covariances (``full -> diag``) once no later layer needs them."""

    reshapes: ClassVar[bool] = True

    def output_mode(self, in_mode: str) -> str:
        return "diag"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        nngp = lay.pixel_diagonal(p.nngp, p.batch_ndim)
        out_ntk = lay.pixel_diagonal(p.ntk, p.batch_ndim) if ntk and p.ntk is not None else None
        return p.replace(nngp=nngp, ntk=out_ntk, layout=lay.replace(mode="diag"))

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        return prog.diagonal()

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        return lambda phi, psi: (phi, psi)


__all__ = ["Diagonal"]
