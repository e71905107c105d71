"""Tiled evaluation of an empirical NTK under a memory budget, with progress.

The kernel is computed in (b1, b2) tiles of (x1, x2) rows. Tile sizes are the largest whose
estimated working memory — features of the tile's rows and columns plus the tile's temporaries,
as estimated by the implementation — fits the budget; the result itself is not counted (it is what
the caller asked for; pass ``out`` to provide it). Ragged last tiles are fine. With ``x2=None`` only
tiles on and above the diagonal are computed and mirrored. Column features are cached when they all
fit in the budget, else recomputed per tile. Finished tiles are written into ``out`` as they
complete, so an interrupted run keeps them. An engine with a ``whole_kernel`` method (the streamed
engine's grouped plan, :mod:`ntkit.empirical._streamed_grouped`) computes an all-pairs kernel itself
when it has a plan within the budget.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ntkit._progress import Progress
from ntkit.empirical._common import Engine, Tensor, block_shape, pairs_shape


def _largest(n: int, fits: Callable[[int], bool]) -> int:
    """Largest b in [1, n] with ``fits(b)`` (monotone), or 0 if none."""
    if not fits(1):
        return 0
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _too_small(engine: Engine, budget: int, need: float) -> ValueError:
    return ValueError(
        f"memory_budget: expected at least {int(need) + 1} bytes ({need / 2**20:.1f} MiB) for one 1 x 1 tile "
        f"with this model and implementation, got {budget} bytes ({budget / 2**20:.1f} MiB)"
    )


def _check_out(out: Tensor | None, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    dtype = like.dtype if dtype is None else dtype
    if out is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape or out.dtype != dtype:
        got = f"{type(out).__name__}" if not isinstance(out, torch.Tensor) else f"{tuple(out.shape)} {out.dtype}"
        raise ValueError(f"out: expected a tensor of shape {shape} and dtype {dtype}, got {got}")
    return out


def _transpose_block(block: Tensor, mode: str) -> Tensor:
    """Theta(x2, x1) from Theta(x1, x2): swap the example axes (and the output axes for "full")."""
    return block.permute(1, 0, 3, 2) if mode == "full" else block.transpose(0, 1)


def tile_cost(engine: Engine, n1: int, mode: str, sym: bool, b1: int, b2: int) -> float:
    """Bytes of a ``b1 x b2`` tile: its rows' and its columns' features and the block. One symmetric tile
    of all ``n1`` rows (x1 with itself) holds one side's features and has its own estimate; in a symmetric
    kernel of several tiles the off-diagonal tiles hold both sides' features, so every tile is charged both."""
    rb = engine.row_bytes()
    if sym and b1 == n1:  # one symmetric tile: x1 with itself
        return rb * b1 + engine.sym_tile_bytes(b1, mode)
    return rb * (b1 + b2) + engine.tile_bytes(b1, b2, mode)


def tile_sizes(engine: Engine, n1: int, n2: int, mode: str, budget: int, sym: bool) -> tuple[int, int]:
    """The tile edges ``(b1, b2)`` of an all-pairs kernel within ``budget``; ``(0, 0)`` if no tile fits."""

    def cost(b1: int, b2: int) -> float:
        return tile_cost(engine, n1, mode, sym, b1, b2)

    b = _largest(max(n1, n2), lambda t: cost(min(n1, t), min(n2, t)) <= budget)
    if sym and b < n1 and cost(n1, n1) <= budget:  # one symmetric tile may fit where two rows of tiles do not
        b = n1
    if b == 0:
        return 0, 0
    b1, b2 = min(n1, b), min(n2, b)
    if not sym and b1 == n1 and b2 < n2:  # all rows fit: widen the column tiles
        b2 = _largest(n2, lambda t: cost(b1, t) <= budget)
    return b1, b2


def tiled_kernel(
    engine: Engine,
    x1: Tensor,
    x2: Tensor | None,
    *,
    mode: str,
    pairs: str,
    budget: int,
    progress: bool | None,
    out: Tensor | None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Evaluate the kernel with ``engine`` tile by tile (see the module docstring); the result is in
    ``dtype`` (default ``x1``'s: pass the model's for integer token inputs)."""
    sym = x2 is None
    xb = x1 if x2 is None else x2
    n1, n2, k = x1.shape[0], xb.shape[0], engine.k
    rb = engine.row_bytes()

    if pairs == "diagonal":
        def fits_rows(b: int) -> bool:
            return rb * b * (1 if sym else 2) + engine.tile_bytes(b, 1, mode) * 2 <= budget

        b = _largest(n1, fits_rows)
        if b == 0:
            raise _too_small(engine, budget, rb * 2 + engine.tile_bytes(1, 1, mode) * 2)
        result = _check_out(out, pairs_shape(n1, k, mode), x1, dtype)
        steps = list(range(0, n1, b))
        show = bool(progress) or (progress is None and len(steps) >= 4)
        bar = Progress(len(steps), "empirical_ntk rows", enabled=show)
        for s in steps:
            f1 = engine.features(x1[s : s + b])
            f2 = f1 if sym else engine.features(xb[s : s + b])
            result[s : s + b] = engine.pairs(f1, f2, mode)
            bar.update()
        bar.close()
        return result

    whole = getattr(engine, "whole_kernel", None)  # an engine with its own plan for the whole kernel
    if whole is not None:
        done = whole(x1, x2, mode=mode, budget=budget, progress=progress, out=out, dtype=dtype)
        if done is not None:
            return done
    b1, b2 = tile_sizes(engine, n1, n2, mode, budget, sym)
    if b1 == 0:
        raise _too_small(engine, budget, tile_cost(engine, n1, mode, sym, 1, 1))
    result = _check_out(out, block_shape(n1, n2, k, mode), x1, dtype)
    rows = list(range(0, n1, b1))
    cols = list(range(0, n2, b2))
    if sym:
        tiles = [(i, j) for i in rows for j in cols if j >= i]
    else:
        tiles = [(i, j) for i in rows for j in cols]
    cache_cols = len(rows) > 1 and rb * (n2 + b1) + engine.tile_bytes(b1, b2, mode) <= budget
    cache: dict[int, object] = {}
    if not sym and len(tiles) == 1 and engine.splits:  # one tile: features of rows and columns in one pass
        f1, f2 = engine.pair_features(x1, xb, mode)
        engine.block_into(f1, f2, mode, result)
        return result
    bar = Progress(len(tiles), "empirical_ntk tiles", enabled=bool(progress) or (progress is None and len(tiles) >= 4))
    done_rows: dict[int, object] = {}
    for i, j in tiles:
        if i not in done_rows:
            done_rows.clear()
            done_rows[i] = engine.features(x1[i : i + b1])
        f1 = done_rows[i]
        if sym and j == i:
            f2 = f1
        elif j in cache:
            f2 = cache[j]
        else:
            f2 = engine.features(xb[j : j + b2])
            if cache_cols:
                cache[j] = f2
        if sym and cache_cols and i not in cache:
            cache[i] = f1
        blk = result[i : i + b1, j : j + b2]
        engine.block_into(f1, f2, mode, blk)
        if sym and j != i:
            result[j : j + b2, i : i + b1] = _transpose_block(blk, mode)
        bar.update()
    if bar.enabled:
        bar.close()
    return result
