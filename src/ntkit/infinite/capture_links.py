"""The values of a captured forward as chains of items (:class:`Link`), and their series-parallel structure.

:mod:`ntkit.infinite.capture` lifts every node of a traced graph to a link ``value = items(prev)``:
the items (``(name, module)`` pairs the walk understands) applied to an earlier value. A merge of
branches (a residual sum, :class:`ntkit.nn.Parallel`) is one item whose ``prev`` is the branches'
*fork*, the nearest value on every operand's chain (:func:`fork_of`); each branch is the chain of
items from the fork to its operand (:func:`between`). Links record the graph nodes their items compute
(:func:`computed`), so that two branches computing the same node -- a graph that is not
series-parallel -- are recognised.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ntkit.infinite.ops.registry import Item


@dataclass(frozen=True, eq=False)
class Link:
    """A graph value: ``items`` applied to ``prev`` (None: the input), then times ``scale`` (None: 1,
    pending until a residual sum takes it); ``pooled`` marks an adaptive pooling to size 1 (over those
    axes) that a flatten turns into a spatial mean; ``inner``: the graph nodes besides ``node`` that
    ``items`` compute (a merge's branches)."""

    node: fx.Node
    prev: Link | None
    items: tuple[Item, ...] = ()
    scale: float | None = None
    pooled: tuple[int, ...] | None = None
    inner: frozenset[fx.Node] = frozenset()


def computed(link: Link) -> frozenset[fx.Node]:
    """The graph nodes a link's items compute: its own and those of the branches it merges."""
    return link.inner | {link.node}


def between(link: Link, ancestor: Link) -> tuple[list[Item], frozenset[fx.Node]]:
    """The items from ``ancestor`` (excluded) to ``link`` in order, and the graph nodes they compute."""
    items: list[Item] = []
    covers: frozenset[fx.Node] = frozenset()
    step: Link | None = link
    while step is not ancestor:
        assert step is not None
        items[:0] = step.items
        covers |= computed(step)
        step = step.prev
    return items, covers


def fork_of(links: list[Link]) -> Link:
    """The nearest value on the chain of every link (a link itself included)."""
    chains = []
    for link in links:
        chain: list[Link] = []
        step: Link | None = link
        while step is not None:
            chain.append(step)
            step = step.prev
        chains.append(chain)
    common = set(chains[0]).intersection(*chains[1:])
    return next(step for step in chains[0] if step in common)


def shared_node(computes: list[frozenset[fx.Node]]) -> tuple[fx.Node, int, int] | None:
    """A graph node that two branches both compute (the first in graph order), with the two branches'
    indices, or None: branches merging from one fork must be disjoint."""
    for i, nodes in enumerate(computes):
        for j in range(i):
            both = nodes & computes[j]
            if both:
                order = {n: k for k, n in enumerate(next(iter(both)).graph.nodes)}
                return min(both, key=order.__getitem__), j, i
    return None


def sequential_of(items: list[Item]) -> nn.Sequential:
    """The items as an ``nn.Sequential`` (a child's name has no dots: the last part, made unique)."""
    names: dict[str, nn.Module] = {}
    for item_name, module in items:
        base = item_name.rsplit(".", 1)[-1]
        key = next(k for k in (base, *(f"{base}_{i}" for i in range(1, len(items) + 1))) if k not in names)
        names[key] = module
    return nn.Sequential(OrderedDict(names))


def reaches(link: Link, target: Link) -> bool:
    """Whether ``target`` is a strict ancestor of ``link`` on its chain."""
    step = link.prev
    while step is not None:
        if step is target:
            return True
        step = step.prev
    return False


__all__ = ["Link", "between", "computed", "fork_of", "reaches", "sequential_of", "shared_node"]
