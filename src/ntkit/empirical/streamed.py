"""Streamed structured empirical NTK: every layer's contribution is formed during the backward passes.

The structured engine (:mod:`ntkit.empirical.structured`) records the inputs and the cotangents of
every layer for all ``k`` outputs and contracts them afterwards: its features grow as ``k`` times the
network's activations per example (and, for layers contracted as Jacobians, ``k`` times their
parameters), so for a ResNet only a few rows fit a tile and every tile repeats the backward passes.
This engine does not store them. One forward pass over the rows of a block (``x1``'s and ``x2``'s,
or ``x1``'s alone for a symmetric block) records each recognised layer's input; ``k`` plain backward
passes, one per output basis vector, deliver each layer's cotangents ``g_c`` (N, ...), and the
layer's contribution is added to the block there and then (:mod:`ntkit.empirical._streamed_contract`),
by the cheaper of two exact forms, chosen per layer and block by a flop count within a memory limit:

* per-example Jacobians (:mod:`ntkit.empirical._streamed_layers`): for a convolution
  ``J_c(x) = s_w g_c(x) unfold(x)^T`` — a batched GEMM over the examples, the im2col form of a
  weight gradient — contracted by GEMMs (``(N1, F) x (F, N2)`` per output), in slices of output
  channels; cost ``2 N k P F + 2 N1 N2 k F`` for ``F`` weights at ``P`` positions;
* Gram products ``sum_{p,q} (s_w^2 <a_p, a'_q> + s_b^2) <g_{c,p}, g'_{d,q}>`` (Novak et al. 2022,
  structured derivatives) — cost ``2 N1 N2 P^2 (d_in + k d_out)`` — cheaper for layers with few
  positions and many parameters (a ResNet's last stage, dense layers).

Batch norms in eval mode and layer norms contribute their affine parameters by per-example Jacobians
as well (``d f / d gamma = sum_p g_p xhat_p``, ``d f / d beta = sum_p g_p``); embeddings (integer token
inputs) by matching the tokens of the two examples (:mod:`ntkit.empirical._streamed_embedding`), so
that a transformer's Linear layers (at its ``L`` token positions), layer norms and token and position
embeddings are all handled here and its ``N x P`` Jacobian is never formed. Parameters of other modules, of
modules called more than once and shared ones are left to :class:`~ntkit.empirical.jacobian.
JacobianEngine` restricted to them.

Trace and diagonal blocks add up output by output. Full blocks couple the outputs: each layer keeps
its per-example Jacobian (when smaller than its cotangents, e.g. early convolutions and batch norms)
or its cotangents across the ``k`` passes and is contracted after the last. The passes are plain
(one output each): PyTorch's batching rules for convolution and batch-norm backward are slower per
output than plain passes, so vectorising them over the outputs does not pay here.

The features of a block are its input rows, so a tile costs one forward and ``k`` backward passes
over its rows (``x1``'s and ``x2``'s together): the tiler makes tiles as large as the memory budget
allows (:meth:`StreamedEngine.pass_bytes`). When the rows need several tiles, the passes would repeat
per tile pair; the grouped plan (:mod:`ntkit.empirical._streamed_grouped`) repeats them per group of
layers instead, storing each group's Jacobians or inputs and cotangents for all rows. References:
Novak, Sohl-Dickstein, Schoenholz (2022), "Fast finite width neural tangent kernel", ICML; the
per-example weight gradient of a convolution as a product of unfolded patches and output cotangents
is the usual im2col form (e.g. Opacus, BackPACK).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ntkit.empirical._common import Engine, Tensor, mode_width
from ntkit.empirical._cotangents import Recorder
from ntkit.empirical._streamed_contract import Accumulator
from ntkit.empirical._streamed_embedding import add_embedding, pair_estimate
from ntkit.empirical._streamed_layers import (
    NORM_KINDS,
    StreamLayer,
    Workspace,
    cotangent_rows,
    find_stream_layers,
    jacobian_blocks,
    patch_rows,
    probe_shapes,
)
from ntkit.empirical._streamed_pass import backward_passes
from ntkit.empirical._streamed_store import contract_features, feature_row_bytes, keeps_jacobian, record_features
from ntkit.empirical.jacobian import JacobianEngine

#: Upper bound of one layer's working blocks (Jacobian slices, Gram blocks), also at most an eighth of
#: the memory budget.
LAYER_BYTES = 256 << 20
#: Saved forward tensors per activation entry (layer inputs kept for the backward pass and for us).
SAVED_PER_ACTIVATION = 1.5
#: Activation-sized temporaries of one plain backward pass.
BACKWARD_TEMPORARIES = 3.0


class StreamedEngine(Engine):
    """Streamed: features are the input rows, a block is one forward and ``k`` backward passes over its
    rows. Stored (``store=True``): features are per-layer Jacobians or inputs and cotangents
    (:mod:`ntkit.empirical._streamed_store`), recorded once per row and contracted per block —
    cheaper for few outputs and many rows, where streamed tiles would repeat the passes.

    Parameters
    ----------
    model : nn.Module
    params : dict of str to Tensor
        The selected parameters (by qualified name).
    k : int
        Outputs of the model.
    probe : Tensor of shape (1, ...)
        One input row, run once to learn the layers' shapes and calls.
    budget : int
        Memory budget in bytes (bounds the per-layer working blocks: :data:`LAYER_BYTES`).
    store : bool
        Store per-layer features instead of streaming every block.
    """

    def __init__(
        self, model: nn.Module, params: dict[str, Tensor], k: int, probe: Tensor, budget: int, store: bool = False
    ) -> None:
        self.model = model
        self.store = store
        self.k = k
        ref = next(iter(params.values()))
        self.itemsize = ref.element_size()
        self.dtype = ref.dtype
        self.limit = float(min(LAYER_BYTES, max(budget // 8, 1 << 20)))
        layers = find_stream_layers(model, params)
        self.act_per_row, self.act_max = self._probe(layers, probe)
        self.layers = [layer for layer in layers if layer.calls == 1]
        handled = {n for layer in self.layers for n in layer.names}
        rest = {n: t for n, t in params.items() if n not in handled}
        self.forward_flops = sum(
            2.0 * layer.positions * layer.groups * layer.d_in * layer.d_out
            for layer in layers
            if layer.kind in ("linear", "conv")
        ) + 4.0 * self.act_per_row
        self.fallback = JacobianEngine(model, rest, k, self.forward_flops) if rest else None
        self.fallback_names = list(rest)
        self.detached = {n: p.detach() for n, p in model.named_parameters()}

    def _probe(self, layers: list[StreamLayer], probe: Tensor) -> tuple[float, int]:
        """Run one row: the layers' shapes and calls, the summed and the largest leaf outputs per row."""
        act, act_max = [0], [1]

        def count(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                act[0] += out[0].numel()
                act_max[0] = max(act_max[0], out[0].numel())

        def shape_hook(layer: StreamLayer) -> Callable[[nn.Module, Any, Any], None]:
            return lambda _m, inputs, output: probe_shapes(layer, inputs[0], output)

        handles = [m.register_forward_hook(count) for m in self.model.modules() if not list(m.children())]
        handles += [layer.module.register_forward_hook(shape_hook(layer)) for layer in layers]
        try:
            with torch.no_grad():
                self.model(probe)
        finally:
            for h in handles:
                h.remove()
        return float(act[0]), act_max[0]

    # ------------------------------------------------------------------ costs
    def layer_flops(self, layer: StreamLayer, method: str, n: int, n1: int, n2: int, mode: str, pairs: bool) -> float:
        """Flops of one layer's contribution to a block (n1, n2) from a pass over ``n`` rows."""
        k, p, g, din, dout = self.k, layer.positions, layer.groups, layer.d_in, layer.d_out
        kk = k * k if mode == "full" else k
        cross = float(n1) * (1 if pairs else n2)
        if layer.kind in NORM_KINDS:
            return 4.0 * n * k * p * dout + 2.0 * cross * kk * layer.n_params
        if layer.kind == "embedding":  # token rows, then the matched pairs' inner products
            return 2.0 * n * k * p * dout + 2.0 * pair_estimate(n1, n2, p, din, pairs) * kk * dout
        if method == "jacobian":
            return 2.0 * n * k * p * g * dout * din * int(layer.take_w) + 2.0 * cross * kk * layer.n_params
        return 2.0 * cross * p * p * g * (din * int(layer.take_w) + kk * dout + kk)

    def layer_method(self, layer: StreamLayer, n: int, n1: int, n2: int, mode: str, pairs: bool) -> str:
        """``"jacobian"`` or ``"factored"``: the fewer flops, factored only if its Gram fits the layer limit
        (``"tokens"`` for an embedding)."""
        if layer.kind in NORM_KINDS:
            return "jacobian"
        if layer.kind == "embedding":
            return "tokens"
        pp = float(layer.positions) ** 2 * layer.groups
        gram_bytes = (float(n1) * (1 if pairs else n2)) * pp * self.itemsize
        if gram_bytes > self.limit:
            return "jacobian"
        fac = self.layer_flops(layer, "factored", n, n1, n2, mode, pairs)
        jac = self.layer_flops(layer, "jacobian", n, n1, n2, mode, pairs)
        return "factored" if fac <= jac else "jacobian"

    def pass_flops(self, n: int, n1: int, n2: int, mode: str, pairs: bool = False) -> float:
        """Estimated flops of one block (n1, n2) from a pass over ``n`` rows."""
        total = (1.0 + self.k) * n * self.forward_flops
        for layer in self.layers:
            method = self.layer_method(layer, n, n1, n2, mode, pairs)
            total += self.layer_flops(layer, method, n, n1, n2, mode, pairs)
        if self.fallback is not None:
            total += self.fallback.flops(n1, n2 if not pairs else 1, mode)
        return total

    def feature_flops(self, n: int) -> float:
        """Stored strategy: flops of recording the features of ``n`` rows."""
        total = (1.0 + self.k) * n * self.forward_flops
        for layer in self.layers:
            if keeps_jacobian(layer):
                total += self.layer_flops(layer, "jacobian", n, 0, 0, "trace", False)
        if self.fallback is not None:
            total += self.fallback.flops(n, 0, "trace")
        return total

    def contract_flops(self, n1: int, n2: int, mode: str, pairs: bool = False, sym: bool = False) -> float:
        """Stored strategy: flops of contracting an (n1, n2) block from stored features."""
        n = n1 if sym else n1 + n2
        kk = self.k * self.k if mode == "full" else self.k
        total = 0.0
        for layer in self.layers:
            if keeps_jacobian(layer):
                total += 2.0 * n1 * (1 if pairs else n2) * kk * layer.n_params
            else:
                method = self.layer_method(layer, n, n1, n2, mode, pairs)
                total += self.layer_flops(layer, method, n, n1, n2, mode, pairs)
        if self.fallback is not None:
            total += 2.0 * n1 * (1 if pairs else n2) * kk * self.fallback.n_params
        return total

    def flops(self, n1: int, n2: int, mode: str) -> float:
        if self.store:
            return self.feature_flops(n1 + n2) + self.contract_flops(n1, n2, mode)
        return self.pass_flops(n1 + n2, n1, n2, mode)

    def pass_row_bytes(self) -> float:
        """Memory of a forward and backward pass per row (saved tensors and temporaries)."""
        item = self.itemsize
        return self.act_per_row * item * SAVED_PER_ACTIVATION + BACKWARD_TEMPORARIES * self.act_max * item

    def record_rows(self) -> int:
        """Stored strategy: rows per recording pass (its graph within the layer limit)."""
        return max(1, int(self.limit // max(1.0, self.pass_row_bytes())))

    def full_keeps_jacobian(self, layer: StreamLayer, method: str) -> bool:
        """Full mode: whether the layer keeps its per-example Jacobian across the ``k`` passes (when
        smaller than its cotangents) rather than its cotangents."""
        if layer.kind in NORM_KINDS:
            return True
        if layer.kind == "embedding":
            return False
        return method == "jacobian" and layer.n_params <= layer.positions * layer.groups * layer.d_out

    def pass_bytes(self, n: int, n1: int, n2: int, mode: str, pairs: bool = False) -> float:
        """Estimated working memory of one pass over ``n`` rows for an (n1, n2) block: saved forward
        tensors, backward temporaries, what full mode keeps across the passes, the largest layer's
        working blocks and the block itself."""
        item, k = self.itemsize, self.k
        cross = float(n1) * (1 if pairs else n2)
        total = n * self.act_per_row * item * SAVED_PER_ACTIVATION + BACKWARD_TEMPORARIES * n * self.act_max * item
        peak = 0.0
        for layer in self.layers:
            method = self.layer_method(layer, n, n1, n2, mode, pairs)
            if mode == "full" and k > 1:
                if self.full_keeps_jacobian(layer, method):
                    total += float(n) * k * layer.n_params * item
                else:
                    total += float(n) * k * layer.positions * layer.groups * layer.d_out * item
            if layer.kind in NORM_KINDS:
                continue
            kc = k if mode == "full" else 1
            if layer.kind == "embedding":  # token rows of both sides, gathered pairs
                peak = max(peak, 2.0 * n * kc * layer.positions * layer.d_out * item + self.limit)
                continue
            patches = float(n) * layer.positions * layer.groups * layer.d_in * item if layer.kind == "conv" else 0.0
            if method == "jacobian":
                copies = 2.0 if kc > 1 else 1.0
                work = patches + copies * min(self.limit, float(n) * kc * layer.n_params * item)
                work += (kc > 1) * float(n) * kc * layer.positions * layer.groups * layer.d_out * item
            else:
                gram = cross * layer.positions**2 * layer.groups * item
                work = patches + 2.0 * gram + (min(self.limit, gram * kc * kc) if mode == "full" else gram)
            peak = max(peak, work)
        total += peak + cross * mode_width(k, mode) * item
        if self.fallback is not None:
            total += self.fallback.row_bytes() * n
        return total

    def contract_bytes(self, b1: int, b2: int, mode: str) -> float:
        """Stored strategy: working memory of contracting a (b1, b2) block (Jacobian slices of both
        sides and unfolded patches, or Gram products) or of one recording pass, whichever is larger."""
        item, k, b, cross = self.itemsize, self.k, max(b1, b2), float(b1) * b2
        work = 0.0
        for layer in self.layers:
            if keeps_jacobian(layer):
                continue
            if layer.kind == "embedding":
                work = max(work, 2.0 * (b1 + b2) * k * layer.positions * layer.d_out * item + self.limit)
                continue
            jac = 2.0 * min(self.limit, float(b) * k * layer.n_params * item) * (2.0 if mode == "full" else 1.0)
            patches = 0.0
            if layer.kind == "conv":
                patches = min(self.limit, float(b) * layer.groups * layer.d_in * layer.positions * item)
            if self.layer_method(layer, b1 + b2, b1, b2, mode, False) == "factored":
                gram = 2.0 * cross * layer.positions**2 * layer.groups * item
                work = max(work, patches + gram + (min(self.limit, gram * k * k) if mode == "full" else gram / 2))
            else:
                work = max(work, patches + jac)
        record = min(self.record_rows(), b1 + b2) * self.pass_row_bytes()
        return max(record, work) + cross * mode_width(k, mode) * item

    def row_bytes(self) -> float:
        if not self.store:
            return 0.0  # features are the input rows; a block's memory is all in tile_bytes
        fb = self.fallback.row_bytes() if self.fallback is not None else 0.0
        return feature_row_bytes(self.layers, self.k, self.itemsize) + fb

    def tile_bytes(self, b1: int, b2: int, mode: str) -> float:
        if self.store:
            return self.contract_bytes(b1, b2, mode)
        return self.pass_bytes(b1 + b2, b1, b2, mode)

    def sym_tile_bytes(self, b: int, mode: str) -> float:
        if self.store:
            return self.contract_bytes(b, b, mode)
        return self.pass_bytes(b, b, b, mode)

    # ------------------------------------------------------------- the pass
    def features(self, x: Tensor) -> Any:
        return record_features(self, x) if self.store else x

    def block(self, f1: Any, f2: Any, mode: str) -> Tensor:
        if self.store:
            return contract_features(self, f1, f2, mode, False)
        if f1 is f2:
            return self._run(f1, f1.shape[0], mode, sym=True, pairs=False)
        return self._run(torch.cat([f1, f2]), f1.shape[0], mode, sym=False, pairs=False)

    def pairs(self, f1: Any, f2: Any, mode: str) -> Tensor:
        if self.store:
            return contract_features(self, f1, f2, mode, True)
        if f1 is f2:
            return self._run(f1, f1.shape[0], mode, sym=True, pairs=True)
        return self._run(torch.cat([f1, f2]), f1.shape[0], mode, sym=False, pairs=True)

    def _run(self, x: Tensor, n1: int, mode: str, *, sym: bool, pairs: bool) -> Tensor:
        """The block (or its ``i == j`` entries) of the rows ``x[:n1]`` against ``x[n1:]`` (or ``x``)."""
        n, k = x.shape[0], self.k
        n2 = n1 if sym else n - n1
        acc = Accumulator(n1, n2, k, mode, sym=sym, pairs=pairs, dtype=self.dtype, device=x.device)
        ws = Workspace(self.dtype, x.device)
        methods = {id(layer): self.layer_method(layer, n, n1, n2, mode, pairs) for layer in self.layers}
        keep = mode == "full" and k > 1  # outputs coupled: keep Jacobians or cotangents until the last pass
        kept: dict[int, Tensor] = {}

        def sink_for(layer: StreamLayer, rec: Recorder) -> Callable[[Tensor, int], None] | None:
            method = methods[id(layer)]
            state: dict[str, Tensor] = {}
            if not keep:

                def sink(g: Tensor, c0: int) -> None:
                    assert rec.inp is not None
                    self._contribute(layer, method, rec.inp, g, c0, acc, state, ws)

                return sink
            if not self.full_keeps_jacobian(layer, method):
                return None  # the recorder keeps the k cotangents

            def keep_jacobian(g: Tensor, c0: int) -> None:
                assert rec.inp is not None
                off = 0
                for part in jacobian_blocks(layer, rec.inp, g, ws, self.limit, flat=False):  # (N, 1, F_i)
                    if id(layer) not in kept:
                        kept[id(layer)] = g.new_zeros((n, k, layer.n_params))
                    kept[id(layer)][:, c0, off : off + part.shape[2]] = part[:, 0]
                    off += part.shape[2]

            return keep_jacobian

        recs = backward_passes(self.model, self.detached, self.layers, k, x, sink_for, self.dtype)
        for layer, rec in recs:  # full mode: contract what was kept
            if id(layer) in kept:
                acc.jacobian(kept.pop(id(layer)), 0)
            elif keep and rec.buf is not None and rec.inp is not None:
                g = rec.cotangents(self.dtype, x.device)
                rec.buf = None
                self._contribute(layer, methods[id(layer)], rec.inp, g, 0, acc, {}, ws)
        recs.clear()  # free the recorded inputs and the workspace before the fallback runs
        ws.buffers.clear()
        result = acc.result()
        if self.fallback is not None:
            fb = self.fallback.features(x)
            f1, f2 = (fb, fb) if sym else self.fallback.split(fb, n1)
            term = self.fallback.pairs(f1, f2, mode) if pairs else self.fallback.block(f1, f2, mode)
            result = result + term
        return result

    def _contribute(
        self,
        layer: StreamLayer,
        method: str,
        inp: Tensor,
        g: Tensor,
        c0: int,
        acc: Accumulator,
        state: dict[str, Tensor],
        ws: Workspace,
    ) -> None:
        """Add one layer's contribution for the cotangents ``g`` (kc, N, ...) of outputs ``c0 ..``."""
        if method == "tokens":
            add_embedding(acc, layer.module, inp, g, c0, self.limit)
            return
        if method == "factored":
            if "gram" not in state:
                s_w2 = layer.s_w**2 if layer.take_w else 0.0
                s_b2 = layer.s_b**2 if layer.take_b else 0.0
                state["gram"] = acc.input_gram(patch_rows(layer, inp), s_w2, s_b2)
            acc.factored(state["gram"], cotangent_rows(layer, g), c0, self.limit)
            return
        flat = acc.mode == "trace" or g.shape[0] == 1
        for j in jacobian_blocks(layer, inp, g, ws, self.limit, flat):
            acc.jacobian(j, c0)
