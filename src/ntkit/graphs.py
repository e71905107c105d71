"""Graph inputs: node features with a per-example adjacency, :class:`Graphs`, as the kernel functions take them.

A graph neural network's forward takes ``(x, adjacency)`` (:class:`ntkit.nn.Aggregate`); its kernels
are functions of pairs of *graphs*. :func:`ntkit.infinite_kernel`, :func:`ntkit.compute.compute_kernel`
and :func:`ntkit.empirical_ntk` take them as ``Graphs(x, adjacency)`` for ``x1`` and ``x2`` -- each side
with its own graphs -- and cut them into tiles along the batch axis together. Two rows are the same
input when both their features and their adjacency are equal.

* ``x``: node features (N, C, V), channels first (the input of :class:`ntkit.nn.Conv1d`);
* ``adjacency``: (N, V, V), ``adjacency[n, i, j]`` the weight of the edge ``j -> i`` of graph ``n``.

This module validates them (:func:`split_graphs`) and, for the empirical kernels, turns a model of
``(x, adjacency)`` into a model of one packed tensor per row (:class:`PackedGraphs`), so that every
engine slices, concatenates and differentiates graph batches as plain tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkit._validation import as_tensor, check_pair, describe

Tensor = torch.Tensor


@dataclass(frozen=True)
class Graphs:
    """A batch of graphs: node features ``x`` (N, C, V) and adjacencies ``adjacency`` (N, V, V).

    Pass it as ``x1`` / ``x2`` of the kernel functions for a model whose forward is ``model(x, adjacency)``;
    the arrays are validated (and converted to the kernel's dtype) there. ``len`` and indexing act on the
    batch axis of both.

    Parameters
    ----------
    x : array_like
        Node features, (N, C, V) channels first, or node tokens (N, V, C) for a model whose
        :class:`ntkit.nn.Aggregate` has ``channel_axis=-1``.
    adjacency : array_like
        (N, V, V): ``adjacency[n, i, j]`` the weight of the edge ``j -> i`` of graph ``n``.

    Examples
    --------
    >>> import torch, ntkit
    >>> g = ntkit.Graphs(torch.randn(4, 3, 5), torch.eye(5).expand(4, 5, 5))
    >>> len(g), g[1:3].x.shape, g[1:3].adjacency.shape
    (4, torch.Size([2, 3, 5]), torch.Size([2, 5, 5]))
    """

    x: Any
    adjacency: Any

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: Any) -> Graphs:
        return Graphs(self.x[index], self.adjacency[index])


def _check(g: Graphs, name: str, dtype: torch.dtype | None, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    x = as_tensor(g.x, f"{name}.x", dtype=dtype, device=device, ndim=None)
    a = as_tensor(g.adjacency, f"{name}.adjacency", dtype=x.dtype, device=x.device, ndim=3)
    if a.shape[0] != x.shape[0] or a.shape[1] != a.shape[2]:
        raise ValueError(f"{name}.adjacency: expected shape (N, V, V) with N = {x.shape[0]} graphs (as {name}.x), "
                         f"got {describe(a)}")
    if x.ndim < 2 or a.shape[2] not in x.shape[1:]:
        raise ValueError(f"{name}: expected node features (N, C, V) for adjacencies over V = {a.shape[2]} nodes, "
                         f"got {name}.x of shape {tuple(x.shape)}")
    return x, a


def split_graphs(
    x1: Any, x2: Any | None, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(t1, t2, adjacency1, adjacency2)``: validated inputs, plain (adjacencies None) or :class:`Graphs`.

    Plain inputs are checked by :func:`ntkit._validation.check_pair`. Graphs: features of any rank with a
    batch axis, adjacencies (N, V, V) in the features' dtype, V one of the features' axes (the model
    checks which), the same feature shape and node count on both sides.

    Raises
    ------
    ValueError
        One side graphs and the other not, adjacencies of the wrong shape, node counts that differ.
    TypeError
        Arrays that are not numeric.
    """
    if not isinstance(x1, Graphs) and not isinstance(x2, Graphs):
        t1, t2 = check_pair(x1, x2, dtype=dtype, device=device, ndim=None)
        return t1, t2, None, None
    if not isinstance(x1, Graphs) or (x2 is not None and not isinstance(x2, Graphs)):
        raise ValueError(f"x1 and x2: expected both ntkit.Graphs(x, adjacency) or both plain arrays, got "
                         f"{type(x1).__name__} and {type(x2).__name__}")
    t1, a1 = _check(x1, "x1", dtype, device)
    if x2 is None:
        return t1, None, a1, None
    t2, a2 = _check(x2, "x2", t1.dtype, t1.device)
    if t1.shape[1:] != t2.shape[1:] or a1.shape[1:] != a2.shape[1:]:
        raise ValueError(f"x1 and x2: expected graphs of the same feature shape and node count, got x1.x "
                         f"{tuple(t1.shape[1:])}, x1.adjacency {tuple(a1.shape[1:])} and x2.x {tuple(t2.shape[1:])}, "
                         f"x2.adjacency {tuple(a2.shape[1:])}")
    return t1, t2, a1, a2


class PackedGraphs(nn.Module):
    """``model(x, adjacency)`` as a model of one packed row ``[x.flatten(), adjacency.flatten()]`` per graph.

    The wrapper shares the model's parameters (named ``net.<name>``) and training flag; :func:`pack`
    builds its input.
    """

    def __init__(self, model: nn.Module, feature_shape: tuple[int, ...], nodes: int) -> None:
        super().__init__()
        self.net = model
        self.feature_shape, self.nodes = feature_shape, nodes
        self.training = model.training

    def forward(self, packed: Tensor) -> Tensor:
        n, f = packed.shape[0], math.prod(self.feature_shape)
        x = packed[:, :f].reshape(n, *self.feature_shape)
        return self.net(x, packed[:, f:].reshape(n, self.nodes, self.nodes))


def pack(x: Tensor, adjacency: Tensor) -> Tensor:
    """The input rows of :class:`PackedGraphs`: shape (N, prod(feature shape) + V^2)."""
    return torch.cat([x.flatten(1), adjacency.flatten(1)], 1)


__all__ = ["Graphs", "PackedGraphs", "pack", "split_graphs"]
