"""Token inputs ``(N, L, C)``: batch first, channels *last*, as transformers take them; the same ops.

Every op sees one example channel-first, ``(C, *S)``, with covariances over the positions ``S``
(:mod:`ntkit.infinite.state`). A token tensor of torch shape ``(N, *S, C)`` (``S = (L,)`` for a
sequence) holds the same features in another order, so its kernels are those of the channel-first
tensor ``(N, C, *S)``: *where the channel axis is* is a fact of the torch side only, kept at the
boundary:

* the walk (:mod:`ntkit.infinite.walk`) reads data of rank >= 2 channel-first, and as tokens when the
  model only fits them so (its ``Linear`` / ``SelfAttention`` act on the last axis); its builder
  carries that reading along the chain and into every inner branch (residual blocks, parallel
  branches), and builds each module with its entry's token builder
  (:attr:`~ntkit.infinite.ops.registry.Entry.tokens`), given the channel-first shape ``(C, *S)`` like
  every builder; a module without one is refused on tokens, naming it. Vectors ``(N, F)`` (after a
  pooling or a flatten) are the same in both readings.
* :meth:`ntkit.infinite.walk.Architecture.prepare` moves the data's channels to axis 1 after the prelude
  (the modules before the first weight layer run on the data as given), so the input covariances,
  the tiles, the solvers and every evaluator see channel-first data; users pass ``(N, L, C)`` as is.

The token builders of this module, for the modules that act on tokens:

* :class:`ntkit.nn.Linear` on ``(N, *S, C)``: the same weights on every token, a 1x1 convolution in
  kernel terms: :class:`TokenDense`, ``K'[p, p'] = w^2 K[p, p'] + b^2`` (the NTK as
  :func:`~ntkit.infinite.ops.base.affine`), any layout;
* :class:`ntkit.nn.LayerNorm` with ``normalized_shape=(C,)`` (or ``C``): each token over its channels
  (:class:`~ntkit.infinite.ops.layer_norm.LayerNormOp`); the whole example ``(*S, C)``: over tokens and
  channels (:class:`~ntkit.infinite.ops.layer_norm.LayerNormSpatialOp`); ``None`` (axis 1: the tokens) is refused;
* activations and ``nn.Flatten`` (``x.flatten(1)``: the features in another order, the same kernel):
  their own builders;
* :class:`ntkit.nn.Residual` and :class:`ntkit.nn.Parallel`: their own builders, the branches built as
  tokens too; a concatenation must be along the channels, the last axis (``dim=-1``);
* ``x.mean(dim=1)`` / ``x.sum(dim=1)`` of a captured forward (:class:`~ntkit.infinite.ops.spatial_mean.SpatialMean`,
  :class:`~ntkit.infinite.ops.spatial_mean.SpatialSum`): over the token axes ``1 .. ndim - 2``, global
  average / sum pooling; a mean over the channel axis is refused.

:class:`ntkit.nn.SelfAttention` registers its own (:mod:`ntkit.infinite.ops.attention`). Convolutions,
poolings and :class:`ntkit.nn.GlobalAvgPool` (torch's axes 2.. : the channels of a token tensor) have
none.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops import branches, flatten, pointwise, residual
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape, affine
from ntkit.infinite.ops.dense import Dense
from ntkit.infinite.ops.layer_norm import LayerNormOp, LayerNormSpatialOp
from ntkit.infinite.ops.registry import BlockBuilder, register_tokens
from ntkit.infinite.ops.spatial_mean import SpatialMean, pooling_op, token_axes
from ntkit.infinite.state import Context, Pairs
from ntkit.nn.branches import Parallel as ParallelModule
from ntkit.nn.linear import Linear
from ntkit.nn.structure import LayerNorm
from ntkit.nn.structure import Residual as ResidualModule

Tensor = torch.Tensor


def token_shape(shape: Shape) -> str:
    """The torch shape ``(N, *S, C)`` of tokens whose channel-first shape is ``shape = (C, *S)``, as text."""
    return "(" + ", ".join(["N", *map(str, shape[1:]), str(shape[0])]) + ")"


@dataclass(frozen=True)
class TokenDense(Dense):
    """:class:`ntkit.nn.Linear` on every token (a 1x1 convolution): ``K'[p, p'] = w^2 K[p, p'] + b^2``, layout kept."""

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        return affine(p, self, p.nngp, p.ntk if ntk else None, p.layout)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        raise ArchitectureError(f"features: {self.position} (a Linear on tokens) has no random-feature map here")


def _linear(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, Linear)
    label = f"{name} ({type(module).__name__})"
    if shape[0] != module.in_features:
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected tokens (N, ..., {module.in_features}) (in_features channels "
            f"last), got tokens {token_shape(shape)}")
    return TokenDense(label, shape, (module.out_features, *shape[1:]), module.w_std, module.b_std,
                      module.bias is not None, module.parameterization, module.fan_in)


def _layer_norm(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, LayerNorm)
    label = f"{name} ({type(module).__name__})"
    axes = module.normalized_shape
    torch_shape = (*shape[1:], shape[0])
    if axes is None:
        raise ArchitectureError(
            f"infinite_kernel: module {label} without normalized_shape normalises axis 1, the tokens of "
            f"{token_shape(shape)}: expected LayerNorm({shape[0]}) (each token over its channels)")
    if len(axes) > len(torch_shape) or torch_shape[len(torch_shape) - len(axes):] != axes:
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected tokens whose last axes are normalized_shape {axes}, got "
            f"tokens {token_shape(shape)}")
    if len(axes) == 1:
        return LayerNormOp(label, shape, shape, module.eps)
    if len(axes) == len(torch_shape):
        return LayerNormSpatialOp(label, shape, shape, module.eps)
    raise ArchitectureError(
        f"infinite_kernel: module {label} normalises tokens {token_shape(shape)} over their last axes {axes}: "
        f"expected normalized_shape ({shape[0]},) (each token) or the whole example {torch_shape}")


def _parallel(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, ParallelModule)
    if module.merge == "concat":
        rank = len(shape) + 1
        if module.dim not in (-1, rank - 1):
            raise ArchitectureError(
                f"infinite_kernel: module {name} ({type(module).__name__}): expected a concatenation of tokens "
                f"{token_shape(shape)} along their channels (dim=-1), got dim={module.dim}")
        module = copy.copy(module)  # the same branches, concatenated along the channel-first axis
        module.dim = 1
    return branches._build(name, module, shape, block)


def _mean(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, SpatialMean)
    label = f"{name} ({type(module).__name__})"
    if not token_axes(module.dims, len(shape) + 1):
        ndim = len(shape) + 1
        over_channels = any(d % ndim == ndim - 1 for d in module.dims if -ndim <= d < ndim)
        channel = " (the channel axis among them)" if over_channels else ""
        raise ArchitectureError(
            f"infinite_kernel: module {label}: expected a reduction over every token axis (dims 1 .. ndim - 2 of "
            f"tokens (N, *tokens, C), e.g. x.mean(dim=1)), got dims={module.dims}{channel} for tokens "
            f"{token_shape(shape)}")
    return pooling_op(module, label, shape)


register_tokens(Linear, _linear)
register_tokens(LayerNorm, _layer_norm)
register_tokens(nn.ReLU, pointwise._build)  # the activation modules share one entry
register_tokens(nn.Flatten, flatten._build)
register_tokens(ResidualModule, residual._build)
register_tokens(ParallelModule, _parallel)
register_tokens(SpatialMean, _mean)  # SpatialSum is a SpatialMean

__all__ = ["TokenDense", "token_shape"]
