"""Stored features of the streamed engine: per-layer Jacobians or inputs and cotangents, contracted later.

For few outputs (the pseudo-NTK has one) and many rows, storing what each layer needs is cheaper
than repeating the backward passes tile by tile: per example and layer either its per-example
Jacobian (``k F`` numbers: batch norms, and layers whose ``F`` parameters are fewer than their
output entries, such as early convolutions) or its input and its ``k`` output cotangents. The
features of a row block are recorded in passes over chunks of rows (:func:`record_features`, memory
of one chunk's forward graph); a block between two feature sets is contracted layer by layer
(:func:`contract_features`), forming the Jacobians of the other layers in slices of output channels
from their inputs and cotangents, or their Gram products, as the engine's cost model chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ntkit.empirical._common import Tensor
from ntkit.empirical._cotangents import Recorder
from ntkit.empirical._streamed_contract import Accumulator
from ntkit.empirical._streamed_embedding import add_embedding
from ntkit.empirical._streamed_layers import (
    NORM_KINDS,
    StreamLayer,
    Workspace,
    cotangent_rows,
    jacobian_blocks,
    patch_rows,
)
from ntkit.empirical._streamed_pass import backward_passes


def keeps_jacobian(layer: StreamLayer) -> bool:
    """Whether the layer's stored feature is its per-example Jacobian (else its input and cotangents)."""
    if layer.kind == "embedding":  # tokens and cotangents, contracted by matching tokens
        return False
    return layer.kind in NORM_KINDS or layer.n_params <= layer.out_numel + layer.in_numel


def feature_row_bytes(layers: list[StreamLayer], k: int, itemsize: int) -> float:
    """Bytes of stored features per example."""
    total = 0.0
    for layer in layers:
        total += k * layer.n_params if keeps_jacobian(layer) else layer.in_numel + k * layer.out_numel
    return total * itemsize


def record_features(engine: Any, x: Tensor) -> dict[str, Any]:
    """Features of the rows ``x`` (N, ...): per layer ``("jacobian", J (N, k, F))``, ``("cotangents",
    inputs (N, ...), g (N, k, ...))`` or None (not called); passes over :meth:`record_rows` rows each."""
    n, k = x.shape[0], engine.k
    layers: list[StreamLayer] = engine.layers
    stores: dict[int, list[Tensor]] = {}
    ws = Workspace(engine.dtype, x.device)
    step = engine.record_rows()
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)

        def sink_for(layer: StreamLayer, rec: Recorder, r0: int = r0, r1: int = r1) -> Callable[[Tensor, int], None]:
            def sink(g: Tensor, c: int) -> None:
                inp = rec.inp
                assert inp is not None
                if keeps_jacobian(layer):
                    if id(layer) not in stores:
                        stores[id(layer)] = [g.new_zeros((n, k, layer.n_params))]
                    off = 0
                    for part in jacobian_blocks(layer, inp, g, ws, engine.limit, flat=False):
                        stores[id(layer)][0][r0:r1, c, off : off + part.shape[2]] = part[:, 0]
                        off += part.shape[2]
                    return
                if id(layer) not in stores:
                    stores[id(layer)] = [inp.new_empty((n, *inp.shape[1:])), g.new_zeros((n, k, *g.shape[2:]))]
                stores[id(layer)][1][r0:r1, c] = g[0]

            return sink

        for layer, rec in backward_passes(engine.model, engine.detached, layers, k, x[r0:r1], sink_for, engine.dtype):
            if id(layer) in stores and len(stores[id(layer)]) == 2 and rec.inp is not None:
                stores[id(layer)][0][r0:r1] = rec.inp
    feats: list[Any] = []
    for layer in layers:
        st = stores.get(id(layer))
        feats.append(None if st is None else ("jacobian" if len(st) == 1 else "cotangents", *st))
    fb = engine.fallback.features(x) if engine.fallback is not None else None
    return {"layers": feats, "fallback": fb, "n": n}


def contract_features(engine: Any, f1: dict[str, Any], f2: dict[str, Any], mode: str, pairs: bool) -> Tensor:
    """The block (or with ``pairs`` its ``i == j`` entries) between two feature sets."""
    sym = f1 is f2
    n1 = f1["n"]
    n2 = n1 if sym else f2["n"]
    k = engine.k
    like = next((item[-1] for item in f1["layers"] if item is not None), None)
    if like is None:
        like = next(iter(f1["fallback"].values()))
    acc = Accumulator(n1, n2, k, mode, sym=sym, pairs=pairs, dtype=like.dtype, device=like.device)
    ws = Workspace(like.dtype, like.device)
    flat = mode == "trace" or k == 1
    rows = max(n1, n2)
    for layer, l1, l2 in zip(engine.layers, f1["layers"], f2["layers"], strict=True):
        if l1 is None or l2 is None:
            continue
        if l1[0] == "jacobian":
            j1, j2 = l1[1], l2[1]
            acc.jacobian(j1.reshape(n1, -1) if flat else j1, 0, None if sym else (j2.reshape(n2, -1) if flat else j2))
            continue
        g1 = l1[2].movedim(1, 0)  # (k, N, ...)
        g2 = None if sym else l2[2].movedim(1, 0)
        if layer.kind == "embedding":
            add_embedding(acc, layer.module, l1[1], g1, 0, engine.limit, None if g2 is None else (l2[1], g2))
            continue
        method = engine.layer_method(layer, n1 if sym else n1 + n2, n1, n2, mode, pairs)
        if method == "factored":
            s_w2 = layer.s_w**2 if layer.take_w else 0.0
            s_b2 = layer.s_b**2 if layer.take_b else 0.0
            right_a = None if sym else patch_rows(layer, l2[1])
            gram = acc.input_gram(patch_rows(layer, l1[1]), s_w2, s_b2, right_a)
            right_g = None if g2 is None else cotangent_rows(layer, g2)
            acc.factored(gram, cotangent_rows(layer, g1), 0, engine.limit, right_g)
            continue
        left = jacobian_blocks(layer, l1[1], g1, ws, engine.limit, flat, "1", rows)
        if g2 is None:
            for j in left:
                acc.jacobian(j, 0)
        else:
            right = jacobian_blocks(layer, l2[1], g2, ws, engine.limit, flat, "2", rows)
            for ja, jb in zip(left, right, strict=True):
                acc.jacobian(ja, 0, jb)
    result = acc.result()
    if engine.fallback is not None:
        fb1, fb2 = f1["fallback"], f2["fallback"]
        term = engine.fallback.pairs(fb1, fb2, mode) if pairs else engine.fallback.block(fb1, fb2, mode)
        result = result + term
    return result
