"""The streamed engine's whole-kernel plan by groups of layers: passes repeated per group, not per tile pair.

When the rows of a kernel do not fit one streamed tile, the tiler repeats one forward and ``k``
backward passes for every tile pair (:class:`~ntkit.empirical.streamed.StreamedEngine`), or
recomputes stored features per tile. Here the passes are repeated once per *group* of layers
instead: for each group the passes run over all rows (``x1``'s, then ``x2``'s, in chunks) with probes
on the group's layers only — the backward passes stop at the group's shallowest layer — and store
for every row what the group's layers need:

* per-example Jacobians ``J`` (N, k, F) of batch norms and of layers whose Jacobian is smaller than
  their input and cotangents (``k F <= d_in_numel + k d_out_numel``, the early convolutions), formed
  once while recording;
* else the layer's input ``a`` (N, ...) and cotangents ``g`` (k, N, ...).

A layer whose stored rows exceed the group's share of the budget is split by output channels (its
Jacobian's columns, or its cotangents' channels with the whole input): the kernel is a sum over the
parameters, so the slices' contributions add up. Then each item of the group is contracted over all
rows at once: Jacobians by ``J J^T`` (symmetric kernels: blocks on and above the diagonal only);
inputs and cotangents either by Jacobian slices of output channels formed from them once for all
rows (``2 N k P F``) and contracted (``2 N1 N2 k F``), or by Gram products
``sum_{p,q} (s_w^2 <a_p, a'_q> + s_b^2) <g_p, g'_q>`` (``2 N1 N2 P^2 (d_in + k d_out)``) in pairs of row
chunks that bound the ``(b P)^2`` Grams (:mod:`ntkit.empirical._streamed_contract`). Cost: per group
one forward pass and ``k`` backward passes (down to the group) over all rows, plus each layer's
contraction once: no pass or formation is repeated per tile.

The result is accumulated privately and written to ``out`` when the last group is done (an
interrupted run leaves ``out`` as it was: unlike tiles, no entry is final before every group has
contributed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntkit._progress import Progress
from ntkit.empirical._common import Tensor, block_shape, mode_width
from ntkit.empirical._cotangents import Recorder
from ntkit.empirical._streamed_contract import Accumulator, _gram_sym_into
from ntkit.empirical._streamed_layers import (
    NORM_KINDS,
    StreamLayer,
    Workspace,
    cotangent_rows,
    jacobian_blocks,
    patch_rows,
)
from ntkit.empirical._streamed_pass import backward_passes
from ntkit.empirical.streamed import StreamedEngine

#: Share of the memory budget (after the result) for the stored features of one group; the rest is
#: for a recording pass's graph or the contraction's working blocks.
STORE_SHARE = 0.6
#: Least working memory of a plan (bytes): a smaller budget gets no plan (tiles instead).
MIN_WORK = float(1 << 20)
#: Least share of a layer's output channels that completes a group (thinner slices start a new one).
MIN_SLICE = 0.125


@dataclass
class Item:
    """One layer, or the output channels ``o0:o1`` of one (``layer`` is then a copy with ``d_out = o1 -
    o0``), as stored and contracted by a group: ``keep`` ``"jacobian"`` or ``"cotangents"``, contracted
    by ``method`` ``"jacobian"`` or ``"factored"``; ``row_bytes`` stored per row."""

    base: StreamLayer
    layer: StreamLayer
    o0: int
    o1: int
    keep: str
    method: str
    row_bytes: float
    order: int


def _method(engine: Any, layer: StreamLayer, n: int, n1: int, n2: int, mode: str) -> str:
    """Contraction of a layer over all rows: the fewer flops (Gram products are formed in row chunks,
    so their size does not restrict the choice)."""
    if layer.kind in NORM_KINDS:
        return "jacobian"
    fac = engine.layer_flops(layer, "factored", n, n1, n2, mode, False)
    jac = engine.layer_flops(layer, "jacobian", n, n1, n2, mode, False)
    return "factored" if fac <= jac else "jacobian"


def _row_bytes(layer: StreamLayer, keep: str, k: int, item: int) -> float:
    if keep == "jacobian":
        return float(k * layer.n_params * item)
    return float((layer.in_numel + k * layer.out_numel) * item)


def _slice(layer: StreamLayer, o0: int, o1: int) -> StreamLayer:
    """The layer restricted to output channels ``o0:o1`` (itself when whole)."""
    if (o0, o1) == (0, layer.d_out):
        return layer
    return dataclasses.replace(layer, d_out=o1 - o0, out_numel=layer.out_numel // layer.d_out * (o1 - o0))


def _pack(engine: Any, n: int, n1: int, n2: int, mode: str, store: float) -> list[list[Item]] | None:
    """The layers as stored items packed in order into groups of at most ``store`` bytes for ``n`` rows.
    A layer that does not fit what is left of a group is split by output channels (convolutions and
    linear layers without groups): the channels that fit, at least :data:`MIN_SLICE` of the layer,
    complete the group and the rest go on in the next. None if some layer cannot be stored so."""
    k, item = engine.k, engine.itemsize
    groups: list[list[Item]] = [[]]
    left = store
    for order, layer in enumerate(engine.layers):
        if layer.kind == "embedding":
            return None
        method = _method(engine, layer, n, n1, n2, mode)
        keep = "jacobian" if layer.kind in NORM_KINDS else "cotangents"
        if method == "jacobian" and k * layer.n_params <= layer.in_numel + k * layer.out_numel:
            keep = "jacobian"
        splits = layer.kind not in NORM_KINDS and layer.groups == 1
        fixed = 0.0 if keep == "jacobian" else float(layer.in_numel * item * n)
        per = (_row_bytes(layer, keep, k, item) * n - fixed) / layer.d_out  # bytes per output channel
        o0 = 0
        while o0 < layer.d_out:
            fit = layer.d_out - o0 if per <= 0 else int((left - fixed) // per)
            if fit >= layer.d_out - o0 or (splits and fit >= max(1, MIN_SLICE * layer.d_out)):
                o1 = min(layer.d_out, o0 + fit)
            elif groups[-1]:  # a fresh group
                groups.append([])
                left = store
                continue
            elif splits and fit >= 1:
                o1 = o0 + fit
            else:
                return None
            sub = _slice(layer, o0, o1)
            it = Item(layer, sub, o0, o1, keep, method, _row_bytes(sub, keep, k, item), order)
            groups[-1].append(it)
            left -= it.row_bytes * n
            o0 = o1
    return [g for g in groups if g]


@dataclass
class Plan:
    """The groups of items (in layer order), the bytes for a group's stores, and the working limit."""

    groups: list[list[Item]]
    store: float
    work: float


def make_plan(engine: Any, n1: int, n2: int, mode: str, budget: int, sym: bool) -> Plan | None:
    """Groups whose stored rows fit :data:`STORE_SHARE` of ``budget`` (after the result); None if the
    layers cannot be stored so."""
    n = n1 if sym else n1 + n2
    free = budget - float(n1) * n2 * mode_width(engine.k, mode) * engine.itemsize * 2
    store = STORE_SHARE * free
    work = (free - store) / 4
    if work < max(engine.pass_row_bytes(), MIN_WORK) or not engine.layers:
        return None
    groups = _pack(engine, n, n1, n1 if sym else n2, mode, store)
    return None if groups is None else Plan(groups, store, work)


def plan_flops(engine: Any, n1: int, n2: int, mode: str, budget: int, sym: bool) -> float:
    """Estimated flops of the grouped plan (inf if there is none): per group a forward pass and ``k``
    backward passes down to its shallowest layer over all rows, and every layer's contraction."""
    plan = make_plan(engine, n1, n2, mode, budget, sym)
    if plan is None:
        return float("inf")
    n = n1 if sym else n1 + n2
    n2e = n1 if sym else n2
    layer_fwd = [
        2.0 * layer.positions * layer.groups * layer.d_in * layer.d_out if layer.kind in ("linear", "conv") else 0.0
        for layer in engine.layers
    ]
    total = 0.0
    for group in plan.groups:
        first = min(it.order for it in group)
        total += n * engine.forward_flops + engine.k * n * (sum(layer_fwd[first:]) + 4.0 * engine.act_per_row)
        for it in group:
            flops = engine.layer_flops(it.layer, it.method, n, n1, n2e, mode, False)
            if sym and it.method == "jacobian" and (mode != "diagonal" or engine.k == 1):  # upper blocks only
                kk = engine.k * engine.k if mode == "full" else engine.k
                flops -= 0.375 * 2.0 * n1 * n1 * kk * it.layer.n_params
            total += flops
    if engine.fallback is not None:
        total += engine.fallback.flops(n1, n2e, mode)
    return total


# ----------------------------------------------------------------------------- recording
def _slice_g(it: Item, g: Tensor) -> Tensor:
    """The item's output channels of cotangents ``g`` (kc, N, ...)."""
    if (it.o0, it.o1) == (0, it.base.d_out):
        return g
    if it.base.kind == "linear":
        return g[..., it.o0 : it.o1]
    return g[:, :, it.o0 : it.o1]


def record_group(engine: Any, group: list[Item], x: Tensor, rows: int, bar: Progress) -> list[list[Tensor] | None]:
    """Per item of ``group``: ``[J (N, k, F)]`` or ``[a (N, ...), g (k, N, ...)]`` (None if not called),
    from passes over ``rows`` rows of ``x`` at a time."""
    n, k = x.shape[0], engine.k
    stores: list[list[Tensor] | None] = [None] * len(group)
    by_layer: dict[int, list[int]] = {}
    for idx, it in enumerate(group):
        by_layer.setdefault(id(it.base), []).append(idx)
    layers = [layer for layer in engine.layers if id(layer) in by_layer]
    ws = Workspace(engine.dtype, x.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)

        def sink_for(layer: StreamLayer, rec: Recorder, r0: int = r0, r1: int = r1) -> Callable[[Tensor, int], None]:
            def sink(g: Tensor, c: int) -> None:
                inp = rec.inp
                assert inp is not None
                for idx in by_layer[id(layer)]:
                    it = group[idx]
                    gs = _slice_g(it, g)
                    st = stores[idx]
                    if it.keep == "jacobian":
                        if st is None:
                            st = stores[idx] = [g.new_zeros((n, k, it.layer.n_params))]
                        off = 0
                        for part in jacobian_blocks(it.layer, inp, gs, ws, engine.limit, flat=False):
                            st[0][r0:r1, c, off : off + part.shape[2]] = part[:, 0]
                            off += part.shape[2]
                    else:
                        if st is None:
                            st = stores[idx] = [inp.new_empty((n, *inp.shape[1:])), g.new_empty((k, n, *gs.shape[2:]))]
                        st[1][c, r0:r1] = gs[0]

            return sink

        recs = backward_passes(engine.model, engine.detached, layers, k, x[r0:r1], sink_for, engine.dtype)
        for layer, rec in recs:
            for idx in by_layer[id(layer)]:
                st = stores[idx]
                if st is not None and len(st) == 2 and rec.inp is not None:
                    st[0][r0:r1] = rec.inp
        recs.clear()
        bar.update()
    ws.buffers.clear()
    return stores


# --------------------------------------------------------------------------- contraction
def _gram_into(acc: Accumulator, j: Tensor) -> None:
    """Add per-example Jacobians ``j`` (N, M) or (N, k, F) of all rows; symmetric flat Grams by blocks
    on and above the diagonal."""
    if acc.sym and j.ndim == 2 and not acc.pairs:
        _gram_sym_into(acc.acc.view(acc.n1, acc.n1), j)
    else:
        acc.jacobian(j, 0)


def _chunk_pairs(n1: int, n2: int, b: int, sym: bool) -> list[tuple[int, int, int, int]]:
    """Row chunks ``(i0, i1, j0, j1)`` of the pass rows (``x2``'s rows after ``x1``'s)."""
    if sym:
        starts = list(range(0, n1, b))
        return [(i, min(n1, i + b), j, min(n1, j + b)) for i in starts for j in starts if j >= i]
    return [(i, min(n1, i + b), n1 + j, n1 + min(n2, j + b)) for i in range(0, n1, b) for j in range(0, n2, b)]


def _add_block(acc: Accumulator, sub: Tensor, i0: int, i1: int, j0: int, j1: int, mirror: bool) -> None:
    """Add a chunk pair's accumulator ``sub`` into ``acc`` at rows ``i0:i1``, columns ``j0:j1``."""
    mode, a = acc.mode, acc.acc
    if mode == "trace":
        a[i0:i1, j0:j1] += sub
        if mirror:
            a[j0:j1, i0:i1] += sub.T
    elif mode == "diagonal":
        a[:, i0:i1, j0:j1] += sub
        if mirror:
            a[:, j0:j1, i0:i1] += sub.transpose(1, 2)
    else:
        a[i0:i1, :, j0:j1] += sub
        if mirror:
            a[j0:j1, :, i0:i1] += sub.permute(2, 3, 0, 1)


def _factored(acc: Accumulator, it: Item, a: Tensor, g: Tensor, work: float) -> None:
    """Gram products of an item in pairs of row chunks whose ``(b P)^2`` Grams fit ``work`` bytes."""
    layer, k, item = it.layer, acc.k, a.element_size()
    pp = layer.positions * layer.groups
    b = max(1, int((work / (3.0 * item * max(1, pp * layer.positions))) ** 0.5))
    patch_row = layer.groups * layer.d_in * layer.positions * item
    b = max(1, min(b, int(work // max(1, 2 * patch_row))))
    s_w2 = layer.s_w**2 if layer.take_w else 0.0
    s_b2 = layer.s_b**2 if layer.take_b else 0.0
    n2 = acc.n1 if acc.sym else acc.n2
    for i0, i1, j0, j1 in _chunk_pairs(acc.n1, n2, b, acc.sym):
        same = acc.sym and i0 == j0
        sub = Accumulator(i1 - i0, j1 - j0, k, acc.mode, sym=same, pairs=False, dtype=a.dtype, device=a.device)
        right_a = None if same else patch_rows(layer, a[j0:j1])
        gram = sub.input_gram(patch_rows(layer, a[i0:i1]), s_w2, s_b2, right_a)
        right_g = None if same else cotangent_rows(layer, g[:, j0:j1])
        sub.factored(gram, cotangent_rows(layer, g[:, i0:i1]), 0, work, right_g)
        off = 0 if acc.sym else acc.n1
        _add_block(acc, sub.acc, i0, i1, j0 - off, j1 - off, acc.sym and not same)


def contract_group(acc: Accumulator, group: list[Item], stores: list[list[Tensor] | None], work: float) -> None:
    """Add the group's contributions to ``acc`` (all rows; see the module docstring)."""
    flat = acc.mode == "trace" or acc.k == 1
    for idx, it in enumerate(group):
        st = stores[idx]
        if st is None:
            continue
        if it.keep == "jacobian":
            j = st[0]
            _gram_into(acc, j.reshape(j.shape[0], -1) if flat else j)
        elif it.method == "factored":
            _factored(acc, it, st[0], st[1], work)
        else:
            ws = Workspace(st[1].dtype, st[1].device)
            for j in jacobian_blocks(it.layer, st[0], st[1], ws, work, flat):
                _gram_into(acc, j)
        stores[idx] = None  # free the item's rows as soon as it is contracted


def grouped_kernel(
    engine: Any,
    x1: Tensor,
    x2: Tensor | None,
    mode: str,
    budget: int,
    progress: bool | None,
    out: Tensor | None,
    dtype: torch.dtype | None,
) -> Tensor | None:
    """The whole ``mode`` kernel by the grouped plan, or None when there is none within ``budget``."""
    from ntkit.empirical.tiling import _check_out, tiled_kernel

    sym = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    plan = make_plan(engine, n1, n2, mode, budget, sym)
    if plan is None:
        return None
    k = engine.k
    result = _check_out(out, block_shape(n1, n2, k, mode), x1, dtype)
    x = x1 if x2 is None else torch.cat([x1, x2])
    n = x.shape[0]
    rows = max(1, min(n, int((plan.work * 3) // max(1.0, engine.pass_row_bytes()))))
    chunks = -(-n // rows)
    acc = Accumulator(n1, n2, k, mode, sym=sym, pairs=False, dtype=engine.dtype, device=x.device)
    steps = len(plan.groups) * (chunks + 1)
    bar = Progress(steps, "empirical_ntk layer groups", enabled=bool(progress) or (progress is None and steps >= 4))
    for group in plan.groups:
        stores = record_group(engine, group, x, rows, bar)
        contract_group(acc, group, stores, plan.work)
        bar.update()
    bar.close()
    kernel = acc.result()
    if engine.fallback is not None:
        kernel += tiled_kernel(
            engine.fallback, x1, x2, mode=mode, pairs="all", budget=budget, progress=False, out=None, dtype=dtype
        )
    result.copy_(kernel)
    return result


class GroupedEngine(StreamedEngine):
    """The stored streamed engine (``store=True``) whose all-pairs kernels follow the grouped plan of
    this module (:meth:`whole_kernel`); its ``pairs="diagonal"`` rows are the stored engine's.

    Parameters
    ----------
    model, params, k, probe, budget
        As for :class:`~ntkit.empirical.streamed.StreamedEngine`.
    """

    def __init__(self, model: nn.Module, params: dict[str, Tensor], k: int, probe: Tensor, budget: int) -> None:
        super().__init__(model, params, k, probe, budget, store=True)

    def plan_flops(self, n1: int, n2: int, mode: str, budget: int, sym: bool) -> float:
        """Estimated flops of the whole kernel by groups (inf without a plan): :func:`plan_flops`."""
        return plan_flops(self, n1, n2, mode, budget, sym)

    def whole_kernel(
        self,
        x1: Tensor,
        x2: Tensor | None,
        *,
        mode: str,
        budget: int,
        progress: bool | None,
        out: Tensor | None,
        dtype: torch.dtype | None,
    ) -> Tensor | None:
        """The all-pairs kernel by groups (:func:`grouped_kernel`); None without a plan (then tiles)."""
        return grouped_kernel(self, x1, x2, mode, budget, progress, out, dtype)
