"""The kernel ops: one module per layer kind, each owning everything infinite-width about it.

An op (:class:`~ntkit.infinite.ops.base.KernelOp`) holds its reference kernel transform, its shape
rule and errors, its spatial layout needs, its homogeneity degree and its optional lowerings (a step
of the compiled convolution program, a random-feature step). The module types it accepts are filled
into one registry (:mod:`~ntkit.infinite.ops.registry`) by the op module itself, which the walk
(:mod:`ntkit.infinite.walk`) consults for every leaf module. Adding a layer is one op module, its
``register(...)`` call, an import line below and its tests (the developers' guide walks through one).

============================  =======================================================================
module                        op and the torch modules it accepts
============================  =======================================================================
:mod:`.dense`                 :class:`Dense`: :class:`ntkit.nn.Linear`
:mod:`.conv`                  :class:`Conv`: :class:`ntkit.nn.Conv1d` / :class:`ntkit.nn.Conv2d`
:mod:`.conv_transpose`        :class:`ConvTranspose`: :class:`ntkit.nn.ConvTranspose1d` / ``ConvTranspose2d``
:mod:`.residual`              :class:`Residual`: :class:`ntkit.nn.Residual`
:mod:`.branches`              :class:`Parallel`: :class:`ntkit.nn.Parallel` (sum, concatenation, product)
:mod:`.layer_norm`            :class:`LayerNormOp`, :class:`LayerNormSpatialOp`: :class:`ntkit.nn.LayerNorm`
:mod:`.global_pool`           :class:`GlobalPool`: :class:`ntkit.nn.GlobalAvgPool`
:mod:`.flatten`               :class:`Flatten`: ``nn.Flatten``
:mod:`.avg_pool`              :class:`AvgPool`: ``nn.AvgPool1d/2d`` (padded too), ``nn.AdaptiveAvgPool1d/2d``
:mod:`.sum_pool`              :class:`SumPool`: :class:`ntkit.nn.SumPool1d` / :class:`ntkit.nn.SumPool2d`
:mod:`.pointwise`             :class:`Pointwise`: :class:`ntkit.nn.Activation`, torch activation modules
:mod:`.spatial_mean`          :class:`GlobalPool` again: ``x.mean(spatial dims)`` of a captured forward
:mod:`.diagonal`              :class:`Diagonal`: inserted by the walk (``full -> diag`` layout)
:mod:`.attention`             :class:`Attention`: :class:`ntkit.nn.SelfAttention` (on tokens)
:mod:`.tokens`                :class:`TokenDense` and the token builders: token inputs ``(N, L, C)``
:mod:`.aggregate`             :class:`AggregateOp`: :class:`ntkit.nn.Aggregate` (graphs, per-example adjacency)
============================  =======================================================================
"""

from ntkit.infinite.ops.aggregate import AggregateOp
from ntkit.infinite.ops.attention import Attention
from ntkit.infinite.ops.avg_pool import AvgPool
from ntkit.infinite.ops.base import KernelOp, affine, count_taps, reduce_space
from ntkit.infinite.ops.branches import Parallel
from ntkit.infinite.ops.conv import Conv
from ntkit.infinite.ops.conv_transpose import ConvTranspose
from ntkit.infinite.ops.dense import Dense
from ntkit.infinite.ops.diagonal import Diagonal
from ntkit.infinite.ops.flatten import Flatten
from ntkit.infinite.ops.global_pool import GlobalPool
from ntkit.infinite.ops.layer_norm import LayerNormOp, LayerNormSpatialOp
from ntkit.infinite.ops.pointwise import Pointwise
from ntkit.infinite.ops.residual import Residual
from ntkit.infinite.ops.spatial_mean import SpatialMean
from ntkit.infinite.ops.stencil import stencil, window_average
from ntkit.infinite.ops.sum_pool import SumPool
from ntkit.infinite.ops.tokens import TokenDense

__all__ = ["AggregateOp", "Attention", "AvgPool", "Conv", "ConvTranspose", "Dense", "Diagonal", "Flatten", "GlobalPool",
           "KernelOp", "LayerNormOp", "LayerNormSpatialOp", "Parallel", "Pointwise", "Residual", "SpatialMean",
           "SumPool", "TokenDense", "affine", "count_taps", "reduce_space", "stencil", "window_average"]
