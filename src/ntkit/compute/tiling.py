"""Tile plans: which blocks of an N1 x N2 kernel to evaluate, and how large, under a memory budget.

A tile is a ``t x t`` block (ragged at the right and bottom edges) with ``t`` a multiple of
:data:`ntkit.compute.fused.GRAM_BLOCK`, sized so that the working memory of one tile -- about
:data:`WORK_ARRAYS` tile-sized arrays of the computation dtype -- fits the budget. For the kernel
of a data set with itself (``x2 = None``) only the tiles on and above the diagonal are evaluated
and mirrored, which halves the work and makes the result exactly symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ntkit._validation import check_int, describe, parse_memory_budget
from ntkit.infinite.fused import GRAM_BLOCK

#: Tile-sized arrays alive at once while a tile is evaluated and written (cov, ntk, 2 temporaries,
#: the stacked result and its mirrored copy, and slack).
WORK_ARRAYS = 8
#: Largest tile edge chosen automatically (bigger tiles stop paying off; caches like small ones).
MAX_TILE = 1024
#: Default working-memory budget in bytes.
DEFAULT_BUDGET = 256 * 2**20

def parse_budget(value: Any) -> int:
    """A byte count from an int or a string such as ``"512M"``, ``"2GiB"`` (one parser for every budget:
    :func:`ntkit._validation.parse_memory_budget`)."""
    return parse_memory_budget(value, "budget")


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one evaluation.

    Attributes
    ----------
    n1, n2 : int
        Rows and columns of the kernel (``n2 == n1`` for a diagonal).
    tile : int
        Tile edge (rows and columns).
    symmetric : bool
        Evaluate only tiles ``J >= I`` and mirror them.
    diag : bool
        Only the diagonal ``K(x_i, x_i)``: tiles are row ranges ``(I, 0)``.
    """

    n1: int
    n2: int
    tile: int
    symmetric: bool
    diag: bool

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.n1 / self.tile), 1 if self.diag else math.ceil(self.n2 / self.tile)

    def rows(self, i: int) -> slice:
        return slice(i * self.tile, min((i + 1) * self.tile, self.n1))

    def cols(self, j: int) -> slice:
        return slice(j * self.tile, min((j + 1) * self.tile, self.n2))

    def tiles(self) -> Iterator[tuple[int, int]]:
        """All tiles ``(I, J)`` to evaluate, row by row."""
        g1, g2 = self.grid
        for i in range(g1):
            for j in range(i if self.symmetric else 0, g2):
                yield i, j

    def __len__(self) -> int:
        g1, g2 = self.grid
        return g1 * (g1 + 1) // 2 if self.symmetric else g1 * g2


def choose_tile(n1: int, n2: int, *, itemsize: int, budget: int, tile: int | None = None, diag: bool = False,
                features: int = 1, pair_entries: int = 1, align: int = GRAM_BLOCK, input_bytes: int = 0) -> int:
    """The tile edge for an ``n1 x n2`` kernel whose working memory must fit ``budget`` bytes.

    A pair of inputs costs ``WORK_ARRAYS * pair_entries * itemsize`` bytes (``pair_entries``: the
    covariance entries one pair carries, pixels squared for a pooled convolutional network), and each
    of the tile's ``h + w`` inputs ``input_bytes`` (per-input quantities of a fast path). Tile
    edges are multiples of ``align`` (:data:`GRAM_BLOCK` for the fused path, whose results are then
    bitwise independent of the tiling) unless the kernel is smaller.

    Raises ``ValueError`` when the budget cannot hold the smallest tile (``align`` rows of ``align``
    columns, or the whole kernel when smaller; one row for a diagonal), or when ``tile`` is not a
    multiple of ``align``.
    """
    per_entry = WORK_ARRAYS * itemsize * pair_entries
    if diag:  # row chunks: per row the input row and a few vectors
        per_row = (features + WORK_ARRAYS * pair_entries) * itemsize + input_bytes
        if tile is None:
            rows = budget // per_row
            if rows < 1:
                raise ValueError(
                    f"memory_budget: expected at least {per_row} bytes (one row's working memory), got {budget}")
            tile = max(align, rows // align * align) if rows >= align else rows
            return min(tile, max(align, n1))
        need = min(tile, n1) * per_row
    else:
        def cost(h: int, w: int) -> int:
            return h * w * per_entry + (h + w) * input_bytes

        smallest = cost(min(n1, align), min(n2, align))
        if budget < smallest:
            raise ValueError(
                f"memory_budget: expected at least {smallest} bytes, the working memory of one tile row "
                f"({min(n1, align)} x {min(n2, align)} pairs x {WORK_ARRAYS} arrays x {pair_entries} entries x "
                f"{itemsize} bytes" + (f", and {input_bytes} bytes per input" if input_bytes else "")
                + f"), got {budget}"
            )
        if tile is None:
            # the largest e with e^2 per_entry + 2 e input_bytes <= budget
            root = math.isqrt(input_bytes * input_bytes + per_entry * budget)
            edge = (root - input_bytes) // per_entry // align * align
            edge = max(align, min(edge, MAX_TILE))
            return min(edge, max(n1, n2)) if max(n1, n2) < edge else edge
        need = cost(min(tile, n1), min(tile, n2))
    tile = check_int(tile, "tile", minimum=1)
    if tile % align and tile < max(n1, n2):
        raise ValueError(f"tile: expected a multiple of {align} (or >= the kernel size), got {describe(tile)}")
    if need > budget:
        raise ValueError(f"tile: expected a tile whose working memory ({need} bytes) fits the budget, "
                         f"got tile={tile} with budget={budget}")
    return tile
