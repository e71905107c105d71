"""A pointwise activation: every torch activation module with a Gaussian dual map, and :class:`ntkit.nn.Activation`.

``K' = E[sigma(u) sigma(v)]``, ``T' = T E[sigma'(u) sigma'(v)]`` with
``(u, v) ~ N(0, [[K(x, x), K(x, x')], [K(x, x'), K(x', x')]])`` entry by entry (the activation's
dual maps, :mod:`ntkit.activations`). Exact only for Gaussian inputs: the op raises where its input
is an activation's output. Lowerings: the compiled convolution program takes the ReLU family
(arc-cosine kernels); random features ``phi' = sigma(G phi) / sqrt(m)`` and a tensor sketch of
``psi (x) sigma'(G phi)`` (Cho & Saul 2009; Pham & Pagh 2013).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ntkit.activations import Activation as ActivationFn
from ntkit.activations import Identity
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.activation_modules import ACTIVATION_MODULES, activation_of
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs
from ntkit.nn.structure import Activation as ActivationModule

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ntkit.infinite.conv_fast import NativeProgramBuilder
    from ntkit.infinite.fused import FCProgramBuilder

Tensor = torch.Tensor


@dataclass(frozen=True)
class Pointwise(KernelOp):
    """A pointwise activation (every torch activation module with a dual map, :class:`ntkit.nn.Activation`)."""

    fn: ActivationFn
    #: Compute the channel mean ``E[sigma(u)]`` of the self pairs (a later layer norm needs it).
    track_mean: bool = False

    mean_role: ClassVar[str] = "source"

    def degree(self, d: int | None) -> int | None:
        k = self.fn.homogeneous_degree
        if d == 0:
            return 0
        return None if d is None or k is None else d * k

    def gaussian_out(self, gaussian: bool) -> bool:
        if isinstance(self.fn, Identity):
            return gaussian
        if not gaussian:
            raise ArchitectureError(
                f"infinite_kernel: module {self.position} receives a non-Gaussian input (an activation's output, "
                "possibly through a residual sum); its kernel is not a function of the input covariance. "
                "Expected a weight layer (or a pre-activation residual block) before each activation"
            )
        return False

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        return self.apply_dual(p, ctx, ntk)[0]

    def pairs_as_list(self) -> bool:
        return True

    def apply_dual(self, p: Pairs, ctx: Context, ntk: bool) -> tuple[Pairs, Tensor | None]:
        var_l, var_r = ctx.variances(p.batch_ndim)
        want = ntk and p.ntk is not None
        if want and not self.fn.has_derivative_map:
            raise ValueError(
                f"infinite_kernel: the NTK of {self.position} is undefined (the derivative of activation "
                f"{self.fn.name!r} is a Dirac delta); use which='nngp'"
            )
        # entrywise: evaluated with the axes in the kernel's memory order (every step then runs on dense
        # tensors, whatever layout the pairs are held in), the same values in the same layout
        order = memory_order(p.nngp) if var_l.ndim == var_r.ndim == p.nngp.ndim else tuple(range(p.nngp.ndim))
        back = tuple(sorted(range(len(order)), key=order.__getitem__))
        cov = p.nngp.permute(order)
        if order != tuple(range(len(order))):
            var_l, var_r = var_l.permute(order), var_r.permute(order)
        nngp, dot = self.fn.dual(var_l, cov, var_r, derivative=want)
        nngp = torch.broadcast_to(nngp, cov.shape).permute(back)
        out_ntk = None
        if want:
            assert dot is not None and p.ntk is not None
            dot = torch.broadcast_to(dot, cov.shape).permute(back)
            out_ntk = p.ntk * dot
        mean = None
        if self.track_mean and p.batch_ndim == 1 and ctx.left_ids is None:  # the self batch, not a list of pairs
            mean = self.fn.mean(p.variances())
        return p.replace(nngp=nngp, ntk=out_ntk, mean=mean), dot if want else None

    def lower_fc(self, prog: FCProgramBuilder) -> bool:
        return prog.activation_step(self.fn)

    def lower_native(self, prog: NativeProgramBuilder) -> bool:
        return prog.activation(self.fn)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        ntk, mp, ms = fmap.ntk, fmap.m_phi, fmap.m_psi
        g = fmap.orthogonal_gauss(mp, dims.phi) if fmap.method == "orthogonal" else fmap.gauss(mp, dims.phi)
        ts = fmap.tensor_sketch(dims.psi, mp, ms) if ntk else None
        fn = self.fn
        if ntk and not fn.has_derivative_map:
            raise ArchitectureError(f"features: the NTK of {self.position} is undefined (no derivative map)")
        dims.phi, dims.psi = mp, (ms if ntk else 0)
        scale = 1.0 / math.sqrt(mp)

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            u = torch.einsum("md,nd...->nm...", g, phi)
            if not ntk:
                return fn(u) * scale, None
            value, slope = fn.value_and_derivative(u)
            assert psi is not None and ts is not None
            return value * scale, ts(psi, slope * scale)

        return step


def memory_order(t: Tensor) -> tuple[int, ...]:
    """The axes of ``t`` from the slowest to the fastest in memory (``t.permute`` of it is contiguous when ``t``
    is dense); the identity for a contiguous ``t`` or when strides tie."""
    strides = t.stride()
    return tuple(sorted(range(t.ndim), key=lambda d: (-strides[d], d)))


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    act = activation_of(module)
    assert act is not None
    return Pointwise(f"{name} ({type(module).__name__})", shape, shape, act)


def _data_degree(module: nn.Module, d: int | None) -> int | None:
    act = activation_of(module)
    assert act is not None
    return 0 if d == 0 else (None if d is None or act.homogeneous_degree is None else d * act.homogeneous_degree)


register(ActivationModule, exact=tuple(ACTIVATION_MODULES), build=_build,
         names="ntkit.nn.Activation and the activation modules "
         + ", ".join(f"nn.{t.__name__}" for t in ACTIVATION_MODULES),
         data_degree=_data_degree)

__all__ = ["Pointwise"]
