"""A fully connected layer on vector features (:class:`ntkit.nn.Linear`).

NTK parameterization: ``K' = w^2 K + b^2``, ``T' = w^2 T + K'``; standard parameterization
(Sohl-Dickstein et al. 2020, as neural-tangents): ``T' = fan_in K + w^2 T + [bias]`` — see
:func:`~ntkit.infinite.ops.base.affine`. Random features (NTK parameterization):
``phi' = [w phi, b]``, ``psi' = [w psi, phi']``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ntkit.infinite.errors import shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape, affine
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.nn.linear import Linear

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.fused import FCProgramBuilder

Tensor = torch.Tensor


@dataclass(frozen=True)
class Dense(KernelOp):
    """A fully connected layer on vector features (:class:`ntkit.nn.Linear`)."""

    w_std: float = 1.0
    b_std: float = 0.0
    bias: bool = True
    parameterization: str = "ntk"
    fan_in: int = 1

    weighted: ClassVar[bool] = True
    mean_role: ClassVar[str] = "reset"

    @property
    def b2(self) -> float:
        """Bias variance (0 without a bias parameter)."""
        return self.b_std**2 if self.bias else 0.0

    def degree(self, d: int | None) -> int | None:
        # The NTK of the standard parameterization gains 1 from a bias parameter even at b_std = 0.
        ntk_constant = self.b2 != 0.0 or (self.bias and self.parameterization == "standard")
        return None if ntk_constant and d != 0 else d

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        return affine(p, self, p.nngp, p.ntk if ntk else None, Layout((), "none"))

    def pairs_as_list(self) -> bool:
        return True

    def lower_fc(self, prog: FCProgramBuilder) -> bool:
        return type(self) is Dense and prog.dense(self.w_std, self.b_std, self.bias, self.parameterization)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        w, b = self.w_std, math.sqrt(self.b2)
        standard = self.parameterization == "standard"
        d_phi = dims.phi + (1 if self.b2 > 0 else 0)
        d_psi = (dims.phi + dims.psi + (1 if self.bias else 0)) if standard else dims.psi + d_phi
        dims.phi, dims.psi = d_phi, (d_psi if fmap.ntk else 0)
        ntk, b2, fan_in, has_bias = fmap.ntk, self.b2, self.fan_in, self.bias

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            ones = torch.ones(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)
            new_phi = torch.cat([phi * w, ones * b], dim=1) if b2 > 0 else phi * w
            new_psi = None
            if ntk:
                assert psi is not None
                parts = [phi * math.sqrt(fan_in), psi * w] if standard else [psi * w, new_phi]
                if standard and has_bias:
                    parts.append(ones)
                new_psi = torch.cat(parts, dim=1)
            return new_phi, new_psi

        return step


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, Linear)
    label = f"{name} ({type(module).__name__})"
    if shape != (module.in_features,):
        raise shape_error(label, f"({module.in_features},) features (add nn.Flatten or a global pooling "
                          f"before it for images), or tokens (N, L, {module.in_features}) (channels last)", shape)
    return Dense(label, shape, (module.out_features,), module.w_std, module.b_std, module.bias is not None,
                 module.parameterization, module.fan_in)


register(Linear, build=_build, names="ntkit.nn.Linear", has_weights=lambda m: True, on_data=False)

__all__ = ["Dense"]
