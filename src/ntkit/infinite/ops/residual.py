"""A residual block ``x + scale * block(x)`` (:class:`ntkit.nn.Residual`).

The block must end with a weight layer (possibly followed by pooling / flatten): its output is then
independent of ``x`` in the limit, and the kernels add::

    K' = K_x + scale^2 K_block,    T' = T_x + scale^2 T_block.

A block of activations only (``x + s relu(x)``) is instead one pointwise function ``g(x) = x + s f(x)``:
the op is then the activation ``g`` (:func:`~ntkit.activations.composite.composite`: the arc-cosine closed
form for the ReLU family), whose dual maps hold the cross terms the sum above would drop.

Its branches (:meth:`Residual.branches`) are the identity and the block: the evaluator runs both from
the same state and merges with :meth:`Residual.merge`. Random features: ``[phi_x, s phi_f]`` projected
back to ``m``. Native lowering: ``FORK``, ``JOIN(1)`` (the identity), the block's steps, ``JOIN(scale^2)``
(:meth:`~ntkit.infinite.conv_fast.NativeProgramBuilder.fork`). (:class:`~ntkit.infinite.ops.branches.Parallel`
merges any branches; a residual block stays its own op, with its scale.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntkit.activations.composite import LEAF, Scaled, Sum, chain, composite
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import (
    FeatureStep,
    KernelOp,
    Shape,
    branch_degree,
    branch_gaussian,
    branch_input_mode,
    branch_mixed,
    ends_fresh,
)
from ntkit.infinite.ops.pointwise import Pointwise
from ntkit.infinite.ops.registry import BlockBuilder, Item, block_has_weights, lookup, register
from ntkit.infinite.state import Pairs, max_mode
from ntkit.nn.structure import Residual as ResidualModule

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder

Tensor = torch.Tensor


@dataclass(frozen=True)
class Residual(KernelOp):
    """``x + scale * block(x)``: the evaluator runs ``block`` and adds the two branches' kernels."""

    block: tuple[KernelOp, ...] = ()
    scale: float = 1.0

    def input_mode(self, out_mode: str) -> str:
        return max_mode(branch_input_mode(self.block, out_mode), out_mode)

    def degree(self, d: int | None) -> int | None:
        return d if branch_degree(self.block, d) == d else None

    def gaussian_out(self, gaussian: bool) -> bool:
        inner = branch_gaussian(self.block, gaussian)
        return gaussian and inner

    def mixed_out(self, mixed: str) -> str:
        inner = branch_mixed(self.block, mixed)
        return mixed or inner

    def branches(self) -> tuple[tuple[KernelOp, ...], ...]:
        return ((), self.block)

    def pairs_as_list(self) -> bool:
        return all(op.pairs_as_list() for op in self.block)

    def with_branches(self, branches: tuple[tuple[KernelOp, ...], ...]) -> KernelOp:
        identity, block = branches
        assert not identity
        return dataclasses.replace(self, block=block)

    def merge(self, states: Sequence[Pairs], ntk: bool) -> Pairs:
        """Kernels of ``x + scale f(x)`` from those of ``x`` and ``f(x)`` (independent branches)."""
        x, fx = states
        s2 = self.scale * self.scale
        nngp = x.nngp + fx.nngp * s2 if s2 != 1.0 else x.nngp + fx.nngp
        out_ntk = None
        if ntk and x.ntk is not None and fx.ntk is not None:
            out_ntk = x.ntk + fx.ntk * s2 if s2 != 1.0 else x.ntk + fx.ntk
        mean = x.mean
        if fx.mean is not None:
            mean = fx.mean * self.scale if mean is None else mean + fx.mean * self.scale
        return x.replace(nngp=nngp, ntk=out_ntk, mean=mean)

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        """The identity's join (weight 1), then the block's steps and its join (weight ``scale^2``)."""
        slot = prog.fork()
        return (slot is not None and prog.join(slot, 1.0, last=False)
                and all(op.lower_native(prog) for op in self.block)
                and prog.join(slot, self.scale * self.scale, last=True))

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        inner = dataclasses.replace(dims)
        block = fmap.build(self.block, inner)
        proj_phi = fmap.proj(dims.phi + inner.phi, fmap.m_phi)
        proj_psi = fmap.proj(dims.psi + inner.psi, fmap.m_psi) if fmap.ntk else None
        dims.phi, dims.psi = fmap.m_phi, (fmap.m_psi if fmap.ntk else 0)
        s, ntk = self.scale, fmap.ntk

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            f_phi, f_psi = phi, psi
            for inner_step in block:
                f_phi, f_psi = inner_step(f_phi, f_psi)
            new_phi = proj_phi(torch.cat([phi, f_phi * s], dim=1))
            new_psi = None
            if ntk:
                assert psi is not None and f_psi is not None and proj_psi is not None
                new_psi = proj_psi(torch.cat([psi, f_psi * s], dim=1))
            return new_phi, new_psi

        return step


def _block_items(module: nn.Module, name: str) -> list[Item]:
    """The block's items: containers opened, a custom forward captured (:func:`~ntkit.infinite.capture.expand`)."""
    from ntkit.infinite.capture import expand  # the capture builds Residual modules: imported where used

    assert isinstance(module, ResidualModule)
    return list(expand(module.block, f"{name}.block"))


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, ResidualModule)
    label = f"{name} ({type(module).__name__})"
    ops = block(_block_items(module, name), shape)
    end = ops[-1].out_shape if ops else shape
    if end != shape:
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected its block to keep the input's shape {shape}, got {end}"
        )
    if not ops:  # x + s x is (1 + s) x, whose kernels are (1 + s)^2 times, not (1 + s^2) times x's
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected a block with a weight layer (then the two branches are "
            "independent in the limit), got a block that is the identity"
        )
    if all(isinstance(op, Pointwise) for op in ops):  # x + s g(x): one activation of x (closed form: ReLU family)
        g = chain([op.fn for op in ops if isinstance(op, Pointwise)])
        g = g if module.scale == 1.0 else Scaled(module.scale, g)
        return Pointwise(label, shape, shape, composite(Sum((LEAF, g))))
    if not ends_fresh(ops):
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected a block that ends with a weight layer (then the two "
            f"branches are independent in the limit), got one ending with {ops[-1].position}"
        )
    return Residual(label, shape, shape, tuple(ops), module.scale)


def _data_degree(module: nn.Module, d: int | None) -> int | None:
    inner = d
    for _, sub in _block_items(module, ""):
        entry = lookup(sub)
        if entry is not None:  # pass-through modules (identity, eval dropout) keep the degree
            inner = entry.data_degree(sub, inner)
    return d if inner == d else None


register(ResidualModule, build=_build, names="ntkit.nn.Residual",
         has_weights=lambda m: block_has_weights(_block_items(m, "")), data_degree=_data_degree,
         children=_block_items)

__all__ = ["Residual"]
