"""Which engine computes a kernel: estimated flops of the whole tiled computation, within the budget.

Candidates: the structured engine (layer inputs and cotangents stored as features), the streamed
structured engine (each layer contracted during the backward passes, nothing stored; or, with
``store=True``, per-layer Jacobians or inputs and cotangents stored, for few outputs) for models
where it can differ (convolutions, layers contracted as Jacobians, parameters left to per-example
Jacobians), and for ``"auto"`` the Jacobian engine; the NTK-vector-product engine when none fits.
When the rows of an all-pairs kernel need several streamed tiles, also the grouped plan
(:mod:`ntkit.empirical._streamed_grouped`: passes repeated per group of layers, not per tile pair).

The estimate follows the tiler (:func:`ntkit.empirical.tiling.tiled_kernel`): tile sizes from the
engines' memory estimates, features of the column tiles recomputed per tile unless they are cached,
a streamed tile costing one pass over its rows. The streamed engine replaces the stored one only
when it is estimated at least :data:`STREAMED_MARGIN` times cheaper (models that fit one tile keep
the stored engine's results bit for bit).
"""

from __future__ import annotations

from torch import nn

from ntkit.empirical._common import Engine, Tensor
from ntkit.empirical._streamed_grouped import GroupedEngine
from ntkit.empirical.jacobian import JacobianEngine
from ntkit.empirical.ntvp import NTVPEngine
from ntkit.empirical.streamed import StreamedEngine
from ntkit.empirical.structured import StructuredEngine
from ntkit.empirical.tiling import tile_sizes

#: The streamed engine is chosen over the stored structured one when this many times cheaper.
STREAMED_MARGIN = 1.5
#: The grouped plan's estimate is weighed by this factor (its passes run in chunks of rows and its
#: Jacobian slices of all rows are thinner than a tile's): it replaces the tiles when clearly cheaper.
GROUPED_MARGIN = 1.2


def _fits(engine: Engine, mode: str, budget: int) -> bool:
    return engine.row_bytes() * 2 + engine.tile_bytes(1, 1, mode) <= budget


def plan_flops(engine: Engine, n1: int, n2: int, mode: str, budget: int, sym: bool, pairs: bool) -> float:
    """Estimated flops of the whole kernel with ``engine``, tiles and recomputed features included."""
    if isinstance(engine, GroupedEngine):
        return float("inf") if pairs else engine.plan_flops(n1, n2, mode, budget, sym)
    if isinstance(engine, StreamedEngine) and not engine.store:
        if pairs:
            return engine.pass_flops(n1 if sym else 2 * n1, n1, n1, mode, pairs=True)
        b1, b2 = tile_sizes(engine, n1, n2, mode, budget, sym)
        if b1 == 0:
            return float("inf")
        total = 0.0
        for i, j, r, c in _tiles(n1, n2, b1, b2, sym):
            total += engine.pass_flops(r if sym and i == j else r + c, r, c, mode)
        return total
    if isinstance(engine, StreamedEngine):
        if pairs:
            return engine.feature_flops(n1 if sym else 2 * n1) + engine.contract_flops(n1, n1, mode, True, sym)
        b1, b2 = tile_sizes(engine, n1, n2, mode, budget, sym)
        if b1 == 0:
            return float("inf")
        tiles = list(_tiles(n1, n2, b1, b2, sym))
        cached = len(tiles) == 1 or engine.row_bytes() * (n2 + b1) + engine.tile_bytes(b1, b2, mode) <= budget
        rows = n1 + (0 if sym else n2) if cached else n1 + sum(c for i, j, r, c in tiles if not (sym and i == j))
        total = engine.feature_flops(rows)
        for i, j, r, c in tiles:
            total += engine.contract_flops(r, c, mode, False, sym and i == j)
        return total
    total = engine.flops(n1, 1 if pairs else n2, mode)
    if pairs:
        return total
    b1, b2 = tile_sizes(engine, n1, n2, mode, budget, sym)
    if b1 == 0:
        return float("inf")
    row_tiles = -(-n1 // b1)
    col_tiles = -(-n2 // b2)
    if row_tiles == 1 or engine.row_bytes() * (n2 + b1) + engine.tile_bytes(b1, b2, mode) <= budget:
        return total  # every row's features computed once
    n_tiles = row_tiles * (row_tiles + 1) // 2 if sym else row_tiles * col_tiles
    extra_rows = n_tiles * b2 - n2
    return total + max(0, extra_rows) * engine.flops(1, 0, mode)


def _tiles(n1: int, n2: int, b1: int, b2: int, sym: bool) -> list[tuple[int, int, int, int]]:
    """The tiler's tiles: (row start, column start, rows, columns)."""
    return [
        (i, j, min(b1, n1 - i), min(b2, n2 - j))
        for i in range(0, n1, b1)
        for j in range(0, n2, b2)
        if not (sym and j < i)
    ]


def choose_engine(
    implementation: str,
    model: nn.Module,
    params: dict[str, Tensor],
    k: int,
    t1: Tensor,
    n1: int,
    n2: int,
    mode: str,
    budget: int,
    *,
    sym: bool = False,
    pairs: bool = False,
) -> Engine:
    """The engine for ``implementation`` (see :func:`ntkit.empirical.empirical_ntk`)."""
    if implementation in ("structured", "fc", "auto"):
        structured = StructuredEngine(model, params, k, t1[:1], n1, 1 if pairs else n2, mode)
        streamable = structured.fallback is not None or any(
            layer.positions > 1 or layer.groups > 1 or layer.method == "jacobian" for layer in structured.layers
        )
        best: Engine = structured
        if streamable:
            cost_best = plan_flops(structured, n1, n2, mode, budget, sym, pairs) / STREAMED_MARGIN
            tiles = False
            for store in (False, True):
                streamed = StreamedEngine(model, params, k, t1[:1], budget, store=store)
                tiles = tiles or (not store and tile_sizes(streamed, n1, n2, mode, budget, sym)[0] < n1)
                if not _fits(streamed, mode, budget):
                    continue
                cost = plan_flops(streamed, n1, n2, mode, budget, sym, pairs)
                if cost < cost_best:
                    best, cost_best = streamed, cost
            if tiles and not pairs:  # streamed tiles would repeat the passes: whole kernel by groups of layers
                grouped = GroupedEngine(model, params, k, t1[:1], budget)
                cost = plan_flops(grouped, n1, n2, mode, budget, sym, pairs) * GROUPED_MARGIN
                if cost < cost_best:
                    best, cost_best = grouped, cost
        if implementation != "auto":
            return best
        jac = JacobianEngine(model, params, k, structured.forward_flops)
        fits = [e for e in (best, jac) if _fits(e, mode, budget)]
        if not fits:
            return NTVPEngine(model, params, k, structured.forward_flops, budget / 4)
        n2_eff = 1 if pairs else n2
        if best is structured:  # the estimate the choice has always used
            return min(fits, key=lambda e: e.flops(n1, n2_eff, mode))
        return min(fits, key=lambda e: plan_flops(e, n1, n2, mode, budget, sym, pairs))
    n_params = float(sum(p.numel() for p in params.values()))
    if implementation == "jacobian":
        return JacobianEngine(model, params, k, 2.0 * n_params)
    return NTVPEngine(model, params, k, 2.0 * n_params, budget / 4)
