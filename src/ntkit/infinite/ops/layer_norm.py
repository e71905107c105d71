"""Layer norm (:class:`ntkit.nn.LayerNorm`): a deterministic rescaling per pixel or per example.

Over the channels at each pixel (:class:`LayerNormOp`, ``normalized_shape=None``), with ``m`` the
channel mean and ``V = K(x, x) - m^2`` the channel variance at each pixel::

    K' = (K - m m') / sqrt((V + eps)(V' + eps)),    T' = T / sqrt((V + eps)(V' + eps)).

Over the channels and the pixels of each example (:class:`LayerNormSpatialOp`, ``normalized_shape``
the whole example shape ``(C, *S)``; neural-tangents' ``LayerNorm(axis=(1, ..., d + 1))``): the mean
over the channels and pixels tends to ``mu = mean_p m(p)`` and the variance to the scalar
``V = mean_p K(x, x)[p, p] - mu^2`` per example, so for every pixel pair ``(p, p')``::

    K'(p, p') = (K(p, p') - mu m'(p') - m(p) mu' + mu mu') / sqrt((V + eps)(V' + eps)),
    T'(p, p') = T(p, p') / sqrt((V + eps)(V' + eps))

(``m = 0`` for a centred Gaussian input, the usual case after a weight layer; the channel mean and
the derivative of the normaliser contribute O(1/width) to the NTK). Same-pixel covariances suffice
at the input (the variances come from the self batch of the context). The channel means come from the
activations before it (``track_mean``); a zero-variance example (or pixel) maps to 0. No
random-feature map. Both rules are evaluated as ``K f f'`` with the per-row (per-pixel) factors
``f = 1 / sqrt(V + eps)`` (0 where ``V + eps <= 0``), never as a division by a pair-sized scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ntkit.infinite.errors import ArchitectureError, shape_error
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

    def pairs_as_list(self) -> bool:
        return True

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        var_l, var_r = ctx.variances(p.batch_ndim)
        means = ctx.means(p.batch_ndim)
        nngp = p.nngp
        if means is not None:
            m_l, m_r = means
            nngp = nngp - m_l * m_r
            var_l, var_r = var_l - m_l * m_l, var_r - m_r * m_r
        return _normalised(p, nngp, _factor(var_l, self.eps), _factor(var_r, self.eps), ntk)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        raise ArchitectureError(f"features: {self.position} (layer norm) has no random-feature map here; "
                                "use ntkit.infinite_kernel for models with layer norm")


class LayerNormSpatialOp(LayerNormOp):
    """Layer norm over the channels and the pixels of each example: one scalar rescaling per example."""

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        variances = ctx.rows.variances()  # (N, *S): K(x, x)[p, p]
        axes = tuple(range(1, variances.ndim))
        var = variances.mean(dim=axes)
        mu = None
        if ctx.rows.mean is not None:
            mu = ctx.rows.mean.mean(dim=axes)
            var = var - mu * mu
        pair_ndim = p.nngp.ndim - p.batch_ndim
        var_l, var_r = _per_row(ctx, var, p.batch_ndim, pair_ndim)
        nngp = p.nngp
        means = ctx.means(p.batch_ndim)
        if means is not None and mu is not None:
            m_l, m_r = means
            mu_l, mu_r = _per_row(ctx, mu, p.batch_ndim, pair_ndim)
            nngp = nngp - mu_l * m_r - m_l * mu_r + mu_l * mu_r
        return _normalised(p, nngp, _factor(var_l, self.eps), _factor(var_r, self.eps), ntk)


def _per_row(ctx: Context, v: Tensor, batch_ndim: int, pair_ndim: int) -> tuple[Tensor, Tensor]:
    """A per-example scalar ``v`` (N,) of the self batch, for the left and the right input of each pair,
    broadcastable against a batch of pairs with ``batch_ndim`` batch axes and ``pair_ndim`` pixel axes."""
    left = v if ctx.left_ids is None else v[ctx.left_ids]
    right = v if ctx.right_ids is None else v[ctx.right_ids]
    if batch_ndim == 2:
        left, right = left[:, None], right[None, :]
    ones = (1,) * pair_ndim
    return left.reshape(*left.shape, *ones), right.reshape(*right.shape, *ones)


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, LayerNorm)
    label = f"{name} ({type(module).__name__})"
    axes = module.normalized_shape
    if axes is None:
        return LayerNormOp(label, shape, shape, module.eps)
    if len(axes) > len(shape) or shape[len(shape) - len(axes) :] != axes:
        raise shape_error(label, f"an example whose last axes are normalized_shape {axes}", shape)
    if len(axes) < len(shape):
        raise ArchitectureError(
            f"infinite_kernel: module {label} normalises examples of shape {shape} over their last axes "
            f"{axes}, without the channel axis: each channel over its own pixels, which stays random at infinite "
            f"width; expected normalized_shape=None (the channels at each pixel) or the whole example shape {shape}")
    if len(shape) == 1:
        return LayerNormOp(label, shape, shape, module.eps)  # vectors: the features are the channels
    return LayerNormSpatialOp(label, shape, shape, module.eps)


def _data_degree(module: nn.Module, d: int | None) -> int | None:
    assert isinstance(module, LayerNorm)
    return 0 if module.eps == 0.0 and d is not None else None


register(LayerNorm, build=_build, names="ntkit.nn.LayerNorm", data_degree=_data_degree)

def _factor(var: Tensor, eps: float) -> Tensor:
    """The per-row (per-pixel) factor ``1 / sqrt(V + eps)`` of one side, 0 where ``V + eps <= 0`` (zero variance)."""
    shifted = var + eps
    return torch.where(shifted > 0, shifted.rsqrt(), torch.zeros_like(shifted))


def _normalised(p: Pairs, nngp: Tensor, f_left: Tensor, f_right: Tensor, ntk: bool) -> Pairs:
    """``K f f'`` and ``T f f'`` with the two sides' factors ``f = 1 / sqrt(V + eps)`` (:func:`_factor`, 0 at zero
    variance), broadcastable against the pairs: two passes over each kernel, in its layout, and no pair-sized
    scale (``K / sqrt((V + eps)(V' + eps))`` up to rounding: a few ulps)."""
    nngp = _rescaled(nngp, f_left, f_right, nngp is not p.nngp)
    out_ntk = None
    if ntk and p.ntk is not None:
        out_ntk = _rescaled(p.ntk, f_left, f_right, False)
    return p.replace(nngp=nngp, ntk=out_ntk, mean=None)


def _rescaled(t: Tensor, f_left: Tensor, f_right: Tensor, own: bool) -> Tensor:
    """``t f f'``: over ``t`` when ``own`` (a tensor of this op's), else into one new tensor."""
    full = torch.broadcast_shapes(t.shape, f_left.shape, f_right.shape)
    if t.shape != full or t.requires_grad:
        return t * f_left * f_right
    out = t.mul_(f_left) if own else t * f_left
    return out.mul_(f_right)


__all__ = ["LayerNormOp", "LayerNormSpatialOp"]
