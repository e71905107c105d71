"""Recording the layer inputs and the output cotangents of the structured engine's layers.

One forward pass and backward passes vectorised over the ``k`` output basis vectors (in chunks of
outputs that keep temporaries small) record, for every recognised layer, its inputs and the
cotangents reaching its output (the autograd functions are in :mod:`ntkit.empirical._cotangents`).
Linear layers pass the cotangents on themselves; the model's output layer has the basis vectors as
cotangents and records none; in trace mode with ``x1`` and ``x2`` in one pass, dense layers add
their cotangents straight into the trace Gram between the two halves instead of storing them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ntkit.empirical._common import Tensor, check_output
from ntkit.empirical._cotangents import LinearCotangent, LinearCotangentOf, ProbeCotangent, Recorder
from ntkit.empirical._gemm import matmul_t
from ntkit.empirical._structured_layers import Layer, conv_patches, scale_factors
from ntkit.nn.linear import _ConvNd


def capture_layers(
    model: nn.Module, layers: list[Layer], k: int, x: Tensor, *, vectorised: bool, trace_rows: int | None, chunk: int
) -> list[Any]:
    """Layer inputs and output cotangents of every recognised layer for the inputs ``x`` (N, ...).

    One forward pass records the layers' inputs; the cotangents of the ``k`` outputs reaching each
    layer are then computed by backward passes vectorised over the outputs in chunks of ``chunk``
    outputs (``vectorised``), or by ``k`` plain backward passes.

    Returns per layer ``("cotangents", a, g)`` with ``a`` (N, G, d_in, P) and ``g``
    (k, N, G, d_out, P); ``("identity", a, None)`` for the model's output layer (a linear layer
    called once whose output *is* the model's output: its cotangents are the basis vectors
    ``e_c``); None for a layer that was not called. With ``trace_rows = n1``, dense layers
    called once instead give ``("gram", a, G)``: the trace cotangent Gram ``G[i, j] = sum_c
    <g_c(x_i), g_c(x_{n1 + j})>`` between rows ``i < n1`` and the rest, accumulated while the
    cotangents are computed (they are never stored).
    """
    n = x.shape[0]
    counter = [0]
    recs: dict[int, list[Recorder]] = {i: [] for i in range(len(layers))}
    scaled: dict[int, tuple[Tensor, Tensor | None]] = {}

    def weights(idx: int) -> tuple[Tensor, Tensor | None]:
        if idx not in scaled:
            mod = layers[idx].module
            w_s, b_s = scale_factors(mod)
            weight: Tensor = mod.weight.detach()  # type: ignore[operator]
            bias: Tensor | None = mod.bias.detach() if mod.bias is not None else None  # type: ignore[operator]
            scaled[idx] = (
                weight * w_s if w_s != 1.0 else weight,
                None if bias is None else (bias * b_s if b_s != 1.0 else bias),
            )
        return scaled[idx]

    def patched_forward(idx: int, anchor: Tensor) -> Callable[[Tensor], Tensor]:
        def forward(inp: Tensor) -> Tensor:
            rec = Recorder(k, counter, *weights(idx))
            rec.out = LinearCotangent.apply(inp, anchor, rec)
            recs[idx].append(rec)
            return rec.out

        return forward

    def hook(idx: int, anchor: Tensor) -> Callable[[nn.Module, Any, Any], Any]:
        def fn(_m: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            if layers[idx].kind == "linear":
                rec = Recorder(k, counter, *weights(idx))
                rec.out = LinearCotangentOf.apply(inputs[0], output.detach(), anchor, rec)
            else:
                rec = Recorder(k, counter)
                rec.out = ProbeCotangent.apply(inputs[0], output, anchor, rec)
            recs[idx].append(rec)
            return rec.out

        return fn

    grams: dict[int, Tensor] = {}

    def gram_sink(rec: Recorder) -> Callable[[Tensor, int], None]:
        assert trace_rows is not None
        n1 = trace_rows

        def sink(g: Tensor, _c0: int) -> None:  # g (kc, N, d): add sum_c g[c, :n1] g[c, n1:]^T
            rows = g.transpose(0, 1)
            if rows.is_contiguous():
                c = matmul_t(rows[:n1].reshape(n1, -1), rows[n1:].reshape(n - n1, -1))
            else:
                c = matmul_t(g[0, :n1], g[0, n1:])
                for a in range(1, g.shape[0]):
                    c.add_(matmul_t(g[a, :n1], g[a, n1:]))
            key = id(rec)
            grams[key] = c if key not in grams else grams[key].add_(c)

        return sink

    def run(anchor: Tensor) -> Tensor:
        handles, patched = [], []
        for idx, layer in enumerate(layers):
            mod = layer.module
            if layer.kind == "linear" and "forward" not in mod.__dict__:
                mod.forward = patched_forward(idx, anchor)  # shadows the class's forward for this call
                patched.append(mod)
            else:
                handles.append(mod.register_forward_hook(hook(idx, anchor)))
        try:
            out = check_output(model(x), n)
        finally:
            for h in handles:
                h.remove()
            for mod in patched:
                del mod.forward
        if out.shape[1] != k:
            raise ValueError(f"model: expected {k} outputs for every block, got {out.shape[1]}")
        for rl in recs.values():
            for rec in rl:
                dense = len(rl) == 1 and rec.w_eff is not None and len(rec.out_shape) == 2
                rec.identity = dense and rec.out is out
                rec.out = None
                if dense and not rec.identity and trace_rows is not None:
                    rec.sink = gram_sink(rec)
        return out

    dtype = x.dtype if x.is_floating_point() else next(model.parameters()).dtype  # integer token inputs
    eye = torch.eye(k, dtype=dtype, device=x.device)
    anchor = torch.zeros((), dtype=dtype, device=x.device, requires_grad=True)
    with torch.enable_grad():
        out = run(anchor)
    if out.requires_grad and vectorised:

        def pull(v: Tensor) -> Tensor:
            torch.autograd.grad(out, [anchor], grad_outputs=v, retain_graph=True, allow_unused=True)
            return v[0, 0]  # vmap wants a tensor back; the recorders hold the results

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            torch.func.vmap(pull, chunk_size=chunk)(eye[:, None, :].expand(k, n, k))
    elif out.requires_grad:
        for c in range(k):
            counter[0] = c
            torch.autograd.grad(
                out, [anchor], grad_outputs=eye[c].expand(n, k), retain_graph=c < k - 1, allow_unused=True
            )
    for rl in recs.values():  # a sink refers to its recorder: break the cycle, or the recorded inputs
        for rec in rl:  # and Grams outlive the call until the cyclic garbage collector runs
            if rec.sink is not None:
                rec.sink = _done
    feats: list[Any] = []
    for i, layer in enumerate(layers):
        rl = recs[i]
        if not rl:
            feats.append(None)
            continue
        if rl[0].identity or rl[0].sink is not None:
            inp = rl[0].inp
            assert inp is not None
            a = inp.reshape(n, 1, inp.shape[1], 1)
            if rl[0].identity:
                feats.append(("identity", a, None))
            else:
                n1 = int(trace_rows or 0)
                zero = torch.zeros((n1, n - n1), dtype=dtype, device=x.device)
                feats.append(("gram", a, grams.get(id(rl[0]), zero)))
            continue
        a_parts, g_parts = [], []
        for rec in rl:
            assert rec.inp is not None
            a_u, g_u = layer_tensors(layer, rec.inp, rec.cotangents(dtype, x.device), n, k)
            a_parts.append(a_u)
            g_parts.append(g_u)
        a = torch.cat(a_parts, dim=-1) if len(a_parts) > 1 else a_parts[0]  # (N, G, d_in, P)
        g = torch.cat(g_parts, dim=-1) if len(g_parts) > 1 else g_parts[0]  # (k, N, G, d_out, P)
        feats.append(("cotangents", a, g))
    return feats


def _done(g: Tensor, c0: int) -> None:
    """The sink of a recorder after its pass (in place of the one that referred to it)."""
    raise RuntimeError("structured capture: a cotangent arrived after the backward passes")


def layer_tensors(layer: Layer, inp: Tensor, grad: Tensor, n: int, k: int) -> tuple[Tensor, Tensor]:
    """One call's input ``a`` (N, G, d_in, P) and cotangents ``g`` (k, N, G, d_out, P) of ``layer``,
    from its recorded input ``inp`` and the cotangents ``grad`` (k, N, ...) reaching its output."""
    groups = layer.groups
    if layer.kind == "linear":
        d_in, d_out = inp.shape[-1], grad.shape[-1]
        a = inp.reshape(n, -1, d_in).transpose(1, 2).unsqueeze(1)
        g = grad.reshape(k, n, -1, d_out).transpose(2, 3).unsqueeze(2)
        return a, g
    module = layer.module
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, _ConvNd))
    patches = conv_patches(module, inp)  # (N, C_in K, P)
    a = patches.reshape(n, groups, -1, patches.shape[-1])
    g = grad.reshape(k, n, groups, -1, patches.shape[-1])
    return a, g
