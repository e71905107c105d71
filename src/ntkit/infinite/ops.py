"""Kernel transforms of the dense, pointwise and structural layers (the reference implementation).

Each layer maps the covariances of its input (a :class:`~ntkit.infinite.state.Pairs`) to those of
its output; this module is the readable definition every fast path is tested against. Writing
``K`` for the NNGP covariance and ``T`` for the NTK of one channel (Jacot et al. 2018; Lee et al.
2018; Arora et al. 2019; Novak et al. 2020):

* weight layer, NTK parameterization: ``K' = w^2 A(K) + b^2``, ``T' = w^2 A(T) + K'``, with ``A`` the
  identity for :class:`Dense` and the filter average for a convolution
  (:mod:`ntkit.infinite.spatial`); standard parameterization (Sohl-Dickstein et al. 2020, as
  neural-tangents): ``T' = fan_in A(K) + w^2 A(T) + [bias]``;
* activation ``sigma``: ``K' = E[sigma(u) sigma(v)]``, ``T' = T E[sigma'(u) sigma'(v)]`` with
  ``(u, v) ~ N(0, [[K(x, x), K(x, x')], [K(x, x'), K(x', x')]])`` entry by entry;
* layer norm over the channels: ``K' = (K - m m') / sqrt((V + eps)(V' + eps))``, ``T' = T / sqrt(...)``
  with ``m`` the channel mean and ``V = K(x, x) - m^2`` the channel variance at each pixel;
* residual ``x + s f(x)`` with ``f`` ending in a weight layer: ``K' = K_x + s^2 K_f`` (same for ``T``);
* flatten: the mean of the same-pixel entries; global average pooling: the mean of all pixel pairs.

Layers never mutate their input. ``ntk=False`` skips the NTK (the NNGP alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ntkit.activations import Activation as ActivationFn
from ntkit.infinite.state import Context, Layout, Pairs, max_mode

Tensor = torch.Tensor
Shape = tuple[int, ...]


@dataclass(frozen=True)
class KernelOp:
    """Base class: one layer's kernel transform.

    Attributes
    ----------
    position : str
        Where the layer sits in the model (``"layers.2 (ReLU)"``), for messages.
    in_shape, out_shape : tuple of int
        Shapes of one example at the layer's input and output (``(F,)`` or ``(C, *S)``).
    """

    position: str
    in_shape: Shape
    out_shape: Shape

    @property
    def spatial_in(self) -> Shape:
        """Spatial shape of the input (``()`` for vectors)."""
        return self.in_shape[1:]

    def input_mode(self, out_mode: str) -> str:
        """The covariance layout this layer needs at its input when its output must carry ``out_mode``."""
        return out_mode

    def output_mode(self, in_mode: str) -> str:
        """The layout of the output for an input carried in ``in_mode``."""
        return in_mode

    def degree(self, d: int | None) -> int | None:
        """Homogeneity degree of the features after this layer, given ``d`` before (None: not homogeneous)."""
        return d

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_layout(self, lay: Layout) -> Layout:
        """The layout after this layer."""
        return Layout(self.out_shape[1:], self.output_mode(lay.mode)) if len(self.out_shape) > 1 else Layout((), "none")


@dataclass(frozen=True)
class Dense(KernelOp):
    """A fully connected layer on vector features (:class:`ntkit.nn.Linear`)."""

    w_std: float = 1.0
    b_std: float = 0.0
    bias: bool = True
    parameterization: str = "ntk"
    fan_in: int = 1

    @property
    def b2(self) -> float:
        """Bias variance (0 without a bias parameter)."""
        return self.b_std**2 if self.bias else 0.0

    def degree(self, d: int | None) -> int | None:
        return d if self.b2 == 0.0 or d == 0 else None

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        return affine(p, self, p.nngp, p.ntk if ntk else None, Layout((), "none"))


def affine(p: Pairs, layer: Dense, avg_nngp: Tensor, avg_ntk: Tensor | None, layout: Layout) -> Pairs:
    """``K' = w^2 A(K) + b^2`` and the NTK update of a weight layer, from the averaged ``A(K)``, ``A(T)``."""
    w2, b2 = layer.w_std**2, layer.b2
    nngp = avg_nngp * w2
    if b2 != 0.0:
        nngp = nngp + b2
    out_ntk: Tensor | None = None
    if avg_ntk is not None:
        if layer.parameterization == "ntk":
            out_ntk = avg_ntk * w2 + nngp
        else:  # standard: every weight's gradient is an input feature (no 1/fan_in), the bias's is 1
            out_ntk = avg_nngp * float(layer.fan_in) + avg_ntk * w2
            if layer.bias:
                out_ntk = out_ntk + 1.0
    return p.replace(nngp=nngp, ntk=out_ntk, layout=layout, mean=None)


@dataclass(frozen=True)
class Pointwise(KernelOp):
    """A pointwise activation (every torch activation module with a dual map, :class:`ntkit.nn.Activation`)."""

    fn: ActivationFn
    #: Compute the channel mean ``E[sigma(u)]`` of the self pairs (a later layer norm needs it).
    track_mean: bool = False

    def degree(self, d: int | None) -> int | None:
        k = self.fn.homogeneous_degree
        if d == 0:
            return 0
        return None if d is None or k is None else d * k

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        return self.apply_dual(p, ctx, ntk)[0]

    def apply_dual(self, p: Pairs, ctx: Context, ntk: bool) -> tuple[Pairs, Tensor | None]:
        """:meth:`apply`, also returning the derivative kernel ``E[sigma'(u) sigma'(v)]`` (None without the NTK)."""
        var_l, var_r = ctx.variances(p.batch_ndim)
        want = ntk and p.ntk is not None
        if want and not self.fn.has_derivative_map:
            raise ValueError(
                f"infinite_kernel: the NTK of {self.position} is undefined (the derivative of activation "
                f"{self.fn.name!r} is a Dirac delta); use which='nngp'"
            )
        nngp, dot = self.fn.dual(var_l, p.nngp, var_r, derivative=want)
        nngp = torch.broadcast_to(nngp, p.nngp.shape)
        out_ntk = None
        if want:
            assert dot is not None and p.ntk is not None
            dot = torch.broadcast_to(dot, p.ntk.shape)
            out_ntk = p.ntk * dot
        mean = None
        if self.track_mean and p.batch_ndim == 1:
            mean = self.fn.mean(p.variances())
        return p.replace(nngp=nngp, ntk=out_ntk, mean=mean), dot if want else None


@dataclass(frozen=True)
class LayerNormOp(KernelOp):
    """Layer norm over the channels (:class:`ntkit.nn.LayerNorm`): per pixel, a deterministic rescaling."""

    eps: float = 1e-5

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


@dataclass(frozen=True)
class Flatten(KernelOp):
    """``(C, *S) -> (C * |S|,)``: the next dense layer averages the same-pixel covariances."""

    def input_mode(self, out_mode: str) -> str:
        return "diag" if self.spatial_in else "none"

    def output_mode(self, in_mode: str) -> str:
        return "none"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        if lay.mode == "none":
            return p
        return _reduce_space(p, ntk, lambda t: lay.pixel_diagonal(t, p.batch_ndim))


def _reduce_space(p: Pairs, ntk: bool, select: Callable[[Tensor], Tensor]) -> Pairs:
    """The vector state after a read-out: the mean over the spatial axes of ``select(kernel)``."""

    def reduce(t: Tensor) -> Tensor:
        t = select(t)
        axes = tuple(range(p.batch_ndim, t.ndim))
        return t.mean(dim=axes) if axes else t

    mean = None if p.mean is None else p.mean.mean(dim=tuple(range(1, p.mean.ndim)))
    return p.replace(nngp=reduce(p.nngp), ntk=reduce(p.ntk) if ntk and p.ntk is not None else None,
                     layout=Layout((), "none"), mean=mean)


@dataclass(frozen=True)
class GlobalPool(KernelOp):
    """Global average pooling ``(C, *S) -> (C,)``: the mean over all pixel pairs."""

    def input_mode(self, out_mode: str) -> str:
        return "full"

    def output_mode(self, in_mode: str) -> str:
        return "none"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        assert p.layout.mode == "full"
        return _reduce_space(p, ntk, lambda t: t)


@dataclass(frozen=True)
class Diagonal(KernelOp):
    """Drops the cross-pixel covariances (``full -> diag``) once no later layer needs them."""

    def output_mode(self, in_mode: str) -> str:
        return "diag"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        lay = p.layout
        nngp = lay.pixel_diagonal(p.nngp, p.batch_ndim)
        out_ntk = lay.pixel_diagonal(p.ntk, p.batch_ndim) if ntk and p.ntk is not None else None
        return p.replace(nngp=nngp, ntk=out_ntk, layout=lay.replace(mode="diag"))


@dataclass(frozen=True)
class Residual(KernelOp):
    """``x + scale * block(x)``: the evaluator runs ``block`` and adds the two branches' kernels."""

    block: tuple[KernelOp, ...] = ()
    scale: float = 1.0

    def input_mode(self, out_mode: str) -> str:
        mode = out_mode
        for op in reversed(self.block):
            mode = op.input_mode(mode)
        return max_mode(mode, out_mode)

    def degree(self, d: int | None) -> int | None:
        inner = d
        for op in self.block:
            inner = op.degree(inner)
        return d if inner == d else None

    def combine(self, x: Pairs, fx: Pairs, ntk: bool) -> Pairs:
        """Kernels of ``x + scale f(x)`` from those of ``x`` and ``f(x)`` (independent branches)."""
        s2 = self.scale * self.scale
        nngp = x.nngp + fx.nngp * s2 if s2 != 1.0 else x.nngp + fx.nngp
        out_ntk = None
        if ntk and x.ntk is not None and fx.ntk is not None:
            out_ntk = x.ntk + fx.ntk * s2 if s2 != 1.0 else x.ntk + fx.ntk
        mean = x.mean
        if fx.mean is not None:
            mean = fx.mean * self.scale if mean is None else mean + fx.mean * self.scale
        return x.replace(nngp=nngp, ntk=out_ntk, mean=mean)


def count_taps(shape: Shape) -> int:
    """Number of taps of a filter / pooling window."""
    return math.prod(shape)


__all__ = ["Dense", "Diagonal", "Flatten", "GlobalPool", "KernelOp", "LayerNormOp", "Pointwise", "Residual",
           "affine", "count_taps"]
