"""The pair-cost model: how large the tiles of an architecture's kernel may be under a memory budget.

One rule sizes every tiled evaluation of a model's kernel (:func:`ntkit.compute.compute_kernel`,
:func:`ntkit.infinite_kernel`, :class:`ntkit.solve.KernelOperator`): a pair of inputs in a tile
costs :data:`~ntkit.compute.tiling.WORK_ARRAYS` arrays of
:meth:`KernelTiles.pair_entries <ntkit.infinite.tiles.KernelTiles.pair_entries>` entries (1 on the
fast paths, up to pixels squared for a pooled convolutional network on the reference evaluator), and
every thread of the native spatial path holds a fixed workspace
(:meth:`KernelTiles.workspace_bytes <ntkit.infinite.tiles.KernelTiles.workspace_bytes>`), and every input of a
tile on the token path its stored per-input quantities
(:meth:`KernelTiles.input_bytes <ntkit.infinite.tiles.KernelTiles.input_bytes>`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ntkit.compute.tiling import WORK_ARRAYS, choose_tile
from ntkit.infinite.fused import GRAM_BLOCK
from ntkit.infinite.tiles import KernelTiles

Tensor = torch.Tensor


def pair_bytes(tiles: KernelTiles, x: Tensor) -> int:
    """Working memory of one pair of inputs like ``x`` in a tile, in bytes."""
    return WORK_ARRAYS * tiles.pair_entries(x) * x.element_size()


def size_tiles(
    tiles: KernelTiles, x: Tensor, n1: int, n2: int, *, budget: int, threads: int, tile: int | None = None,
    diag: bool = False,
) -> tuple[int, int]:
    """Tile edge and thread count for an ``n1 x n2`` kernel (or its diagonal) of inputs like ``x`` within ``budget``.

    The per-thread workspaces of the native spatial path come off the budget first (fewer threads
    when they do not fit half of it); the rest is shared by one tile per thread, or held by a single
    tile when a thread's share cannot hold the smallest tile.

    Parameters
    ----------
    tiles : KernelTiles
        The architecture's tiles (their path for ``x`` decides the pair cost).
    x : Tensor of shape (N, *input_shape)
        Inputs (their dtype, device and shape; not their values).
    n1, n2 : int
        Kernel rows and columns (``n2 == n1`` for a diagonal).
    budget : int
        Working memory in bytes.
    threads : int
        Threads wanted (at least 1).
    tile : int, optional
        A tile edge to check instead of choosing one.
    diag : bool
        Size row chunks of the diagonal ``K(x_i, x_i)``.

    Returns
    -------
    (edge, threads) : tuple of int

    Raises
    ------
    ValueError
        The budget cannot hold one pair's workspace or the smallest tile; ``tile`` does not fit.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import KernelTiles, describe_model
    >>> x = torch.zeros(5000, 3, dtype=torch.float64)
    >>> tiles = KernelTiles(describe_model(ntkit.nn.fc(3, depth=2, device="meta"), (3,)))
    >>> size_tiles(tiles, x, 5000, 5000, budget=2**28, threads=2)  # 128 MiB a thread: 1024 x 1024
    (1024, 2)
    """
    sizing: dict[str, Any] = {
        "itemsize": x.element_size(), "tile": tile, "diag": diag, "features": math.prod(x.shape[1:]),
        "pair_entries": tiles.pair_entries(x), "align": GRAM_BLOCK if tiles.arch.pair_entries == 1 else 1,
        "input_bytes": tiles.input_bytes(x),
    }
    workspace = tiles.workspace_bytes(x)  # per thread of a native path: one pair at a time
    if workspace * threads > budget // 2:
        threads = max(1, min(threads, budget // 2 // max(workspace, 1)))
    if workspace > budget // 2:
        raise ValueError(
            f"memory_budget: expected at least {2 * workspace} bytes: one pair of these images needs a "
            f"{workspace}-byte workspace (its pixel-pair covariances), got {budget}"
        )
    budget -= workspace * threads
    try:  # one tile per thread, each with 1/threads of the budget (else fewer threads)
        edge = choose_tile(n1, n2, budget=budget // threads, **sizing)
    except ValueError:
        threads = 1
        edge = choose_tile(n1, n2, budget=budget, **sizing)
    return edge, threads


def fit_tile_shape(
    tiles: KernelTiles, x: Tensor, rows: int, cols: int, *, budget: int, threads: int = 1
) -> tuple[int, int]:
    """``(rows, cols)`` of a rectangular tile, shrunk (same aspect ratio) until its pairs fit ``budget``.

    ``threads`` workspaces of the native spatial path come off the budget first. A tile that
    already fits is returned unchanged; a smaller one never goes below one pair.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import KernelTiles, describe_model
    >>> model = torch.nn.Sequential(ntkit.nn.Conv2d(1, 4, 3, device="meta"), ntkit.nn.LayerNorm(),
    ...                             torch.nn.ReLU(), ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1, device="meta"))
    >>> x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)  # reference path: 256 entries a pair, 16 KiB
    >>> fit_tile_shape(KernelTiles(describe_model(model, (1, 4, 4))), x, 1024, 2048, budget=2**24)
    (22, 46)
    """
    per_pair, per_input = pair_bytes(tiles, x), tiles.input_bytes(x)
    available = max(budget - threads * tiles.workspace_bytes(x), per_pair + 2 * per_input)
    if rows * cols * per_pair + (rows + cols) * per_input <= available:
        return rows, cols
    # the scale s of both sides with rows cols s^2 per_pair + (rows + cols) s per_input = available
    a, b = rows * cols * per_pair, (rows + cols) * per_input
    scale = (math.sqrt(b * b + 4 * a * available) - b) / (2 * a)
    new_rows = max(1, min(rows, math.floor(rows * scale)))
    new_cols = max(1, min(cols, (available - new_rows * per_input) // (new_rows * per_pair + per_input)))
    return new_rows, new_cols


__all__ = ["fit_tile_shape", "pair_bytes", "size_tiles"]
