"""Graph aggregation ``(C, V) -> (C, V)`` (:class:`ntkit.nn.Aggregate`): ``out_i = sum_j A_ij x_j`` per example.

Each example ``x`` comes with its own adjacency ``A`` (V x V; ``A[i, j]`` the weight of the edge
``j -> i``), so the covariances of a pair ``(x, A), (x', A')`` transform with both graphs, over every
node pair (``full`` layout; Du et al. 2019, "Graph Neural Tangent Kernel"; neural-tangents'
``stax.Aggregate``):

    K'(x, x')[i, i'] = sum_{j, j'} A_ij K(x, x')[j, j'] A'_{i'j'},     i.e. K' = A K A'^T,

and the NTK likewise, ``T' = A T A'^T``: the layer is linear in the features and has no parameters.
Channel means (for a later layer norm) become ``A m``. The adjacency of every row of the self batch
travels with it (:attr:`ntkit.infinite.state.Pairs.adjacency`, read through
:meth:`ntkit.infinite.state.Context.adjacency`); the inputs carry it as :class:`ntkit.Graphs`.

Shapes: ``K`` of the self batch (U, V, V) with ``A`` (U, V, V); of the pairs (N1, N2, V, V) with
``A_left`` (N1, V, V) and ``A_right`` (N2, V, V). The op sees node features channel-first, ``(C, V)``;
node tokens ``(N, V, C)`` (``Aggregate(channel_axis=-1)`` after per-node ``ntkit.nn.Linear`` layers) reach
it in the same layout (:mod:`ntkit.infinite.ops.tokens`).

The layer ends the prelude (registered with ``on_data=False``): it needs each example's graph, which
the parameter-free modules run on the data do not get. Random features: ``phi' = phi A^T`` (exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ntkit._validation import describe
from ntkit.infinite.errors import ArchitectureError, shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs
from ntkit.nn.aggregate import Aggregate

Tensor = torch.Tensor


@dataclass(frozen=True)
class AggregateOp(KernelOp):
    """Graph aggregation over the nodes (the spatial axis) of node features ``(C, V)``: ``K' = A K A'^T``."""

    reshapes: ClassVar[bool] = True  # linear and the same map for every channel

    @property
    def nodes(self) -> int:
        """Number of nodes ``V`` (the adjacency is V x V)."""
        return self.in_shape[1]

    def input_mode(self, out_mode: str) -> str:
        return "full"

    def output_mode(self, in_mode: str) -> str:
        return "full"

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        assert p.layout.mode == "full"
        graphs = ctx.adjacency()
        if graphs is None:
            raise ArchitectureError(
                f"infinite_kernel: module {self.position} aggregates over each example's graph: expected inputs given "
                "as ntkit.Graphs(x, adjacency), got inputs without adjacency (this function does not take graphs)")
        left, right = graphs
        if p.batch_ndim == 2:  # (N1, 1, V, V) @ (N1, N2, V, V) @ (1, N2, V, V)
            left, right = left.unsqueeze(1), right.unsqueeze(0)
        right_t = right.transpose(-1, -2)

        def agg(t: Tensor) -> Tensor:
            return torch.matmul(torch.matmul(left, t), right_t)

        mean = p.mean
        if mean is not None:  # the self batch: m' = A m per row
            mean = torch.matmul(left, mean.unsqueeze(-1)).squeeze(-1)
        return p.replace(nngp=agg(p.nngp), ntk=agg(p.ntk) if ntk and p.ntk is not None else None, mean=mean)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        """Exact and linear: each feature channel aggregated, ``phi' = phi A^T`` per example (the batch's
        adjacency, ``fmap.adjacency`` (B, V, V); phi, psi of shape (B, m, V))."""
        position = self.position

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            a = fmap.adjacency
            if a is None:
                raise ArchitectureError(f"features: module {position} aggregates over each example's graph: "
                                        "expected inputs given as ntkit.Graphs(x, adjacency), got plain tensors")
            a_t = a.transpose(1, 2)
            return torch.matmul(phi, a_t), None if psi is None else torch.matmul(psi, a_t)

        return step


def graph_ops(ops: Sequence[KernelOp]) -> list[AggregateOp]:
    """The aggregation ops of ``ops``, inner branches included (depth first)."""
    found: list[AggregateOp] = []
    for op in ops:
        if isinstance(op, AggregateOp):
            found.append(op)
        for branch in op.branches():
            found += graph_ops(branch)
    return found


def check_adjacency(ops: Sequence[KernelOp], adjacency: Tensor | None) -> None:
    """Check that graph inputs come exactly with a model that aggregates over graphs, with the right node count.

    ``adjacency``: the validated (N, V, V) adjacencies of the inputs, or None for plain tensors.

    Raises
    ------
    ArchitectureError
        Plain tensors for a model with an :class:`ntkit.nn.Aggregate`, graphs for a model without one,
        or adjacencies whose node count is not the one the aggregation sees.
    """
    found = graph_ops(ops)
    if adjacency is None:
        if found:
            raise ArchitectureError(
                f"infinite_kernel: module {found[0].position} aggregates over each example's graph: expected inputs "
                "given as ntkit.Graphs(x, adjacency), got plain tensors")
        return
    if not found:
        raise ArchitectureError(
            "infinite_kernel: expected plain tensors for a model without ntkit.nn.Aggregate, got ntkit.Graphs "
            f"(adjacency {describe(adjacency)}); the model never reads the graphs")
    nodes = adjacency.shape[-1]
    for op in found:
        if op.nodes != nodes:
            raise ArchitectureError(
                f"infinite_kernel: module {op.position} aggregates over V = {op.nodes} nodes (its input (C, V) = "
                f"{op.in_shape}), got adjacencies over {nodes} nodes ({describe(adjacency)})")


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder, tokens: bool = False) -> KernelOp:
    assert isinstance(module, Aggregate)
    label = f"{name} ({type(module).__name__})"
    if module.tokens != tokens:
        got = "node tokens (N, V, C), channels last" if tokens else "channel-first node features (N, C, V)"
        raise ArchitectureError(
            f"infinite_kernel: module {label} has channel_axis={module.channel_axis}, got {got} (of channel-first "
            f"shape {shape}): expected Aggregate(channel_axis={-1 if tokens else 1})")
    if len(shape) != 2:
        raise shape_error(label, "node features of shape (C, V) (channels first, nodes last)", shape)
    return AggregateOp(label, shape, shape)


def _build_tokens(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    return _build(name, module, shape, block, tokens=True)  # the walk gives tokens (V, C) as (C, V)


# on_data=False: it needs each example's graph, so the prelude (run on the data alone) ends at it
register(Aggregate, build=_build, names="ntkit.nn.Aggregate", on_data=False, tokens=_build_tokens)

__all__ = ["AggregateOp", "check_adjacency", "graph_ops"]
