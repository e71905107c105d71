"""One forward and ``k`` plain backward passes that hand each recognised layer its cotangents.

Every recognised layer's output goes through :class:`~ntkit.empirical._cotangents.ProbeCotangent`
(a forward hook), which records the layer's input and, in each backward pass, hands the cotangent
``g_c = d f_c / d z`` (1, N, ...) of output ``c`` to the layer's sink — or, when the sink is None,
keeps it in the recorder's (k, N, ...) buffer. The passes differentiate a scalar ``anchor`` that
every probe takes as an input, so each pass runs exactly the backward operations on the data path
(no parameter gradients: the forward runs on detached parameters). Inputs may be integer tokens; the
anchor and the cotangents are in the parameters' ``dtype``.

An embedding called with one row of indices (leading size 1, e.g. positions ``arange(L)[None]``)
whose output the model broadcasts over the ``N`` rows has no per-example cotangent; its indices and
output are expanded to ``N`` rows here (the broadcast sum computes the same values), so that each row
receives its own cotangent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ntkit.empirical._common import Tensor, check_output
from ntkit.empirical._cotangents import ProbeCotangent, Recorder
from ntkit.empirical._streamed_layers import StreamLayer

#: ``sink_for(layer, rec)``: the sink ``sink(g, c)`` of a layer's call, or None to keep its cotangents.
SinkFactory = Callable[[StreamLayer, Recorder], Callable[[Tensor, int], None] | None]


def backward_passes(
    model: nn.Module,
    detached: dict[str, Tensor],
    layers: list[StreamLayer],
    k: int,
    x: Tensor,
    sink_for: SinkFactory,
    dtype: torch.dtype | None = None,
) -> list[tuple[StreamLayer, Recorder]]:
    """Run ``model`` on ``x`` (N, ...) with ``detached`` parameters, then one backward pass per output
    (cotangents in ``dtype``, default ``x``'s).

    Returns the called layers with their recorders (inputs in ``rec.inp``; kept cotangents in
    ``rec.buf`` for layers without a sink). A layer called twice is an error (the engine takes only
    layers called once by the probe row).
    """
    n = x.shape[0]
    recs: dict[int, tuple[StreamLayer, Recorder]] = {}
    counter = [0]
    dtype = x.dtype if dtype is None else dtype
    anchor = torch.zeros((), dtype=dtype, device=x.device, requires_grad=True)

    def hook(layer: StreamLayer) -> Callable[[nn.Module, Any, Any], Any]:
        def fn(_m: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            if id(layer) in recs:
                raise ValueError(
                    f"model: expected {type(layer.module).__name__} {layer.names} to be called once per forward "
                    "pass, as for the probe row, got a second call"
                )
            rec = Recorder(k, counter)
            inp = inputs[0]
            if layer.kind == "embedding" and n > 1 and inp.ndim > 0 and inp.shape[0] == 1:  # broadcast rows
                inp, output = inp.expand(n, *inp.shape[1:]), output.expand(n, *output.shape[1:])
            out = ProbeCotangent.apply(inp, output, anchor, rec)
            rec.sink = sink_for(layer, rec)
            recs[id(layer)] = (layer, rec)
            return out

        return fn

    handles = [layer.module.register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.enable_grad():
            out = check_output(functional_call(model, detached, (x,)), n)
    finally:
        for h in handles:
            h.remove()
    if out.shape[1] != k:
        raise ValueError(f"model: expected {k} outputs for every block, got {out.shape[1]}")
    if out.requires_grad:
        eye = torch.eye(k, dtype=dtype, device=x.device)
        for c in range(k):
            counter[0] = c
            torch.autograd.grad(
                out, [anchor], grad_outputs=eye[c].expand(n, k), retain_graph=c < k - 1, allow_unused=True
            )
    for _, rec in recs.values():  # a sink refers to its recorder: break the cycle, or the recorded inputs
        rec.sink = None  # outlive the pass until the cyclic garbage collector runs (tiles piled them up)
    return list(recs.values())
