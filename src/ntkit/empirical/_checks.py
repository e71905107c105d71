"""Checks of a model and a parameter selection before an empirical kernel is computed.

* :func:`check_eval_mode`: BatchNorm and Dropout in eval mode (in train mode no per-example kernel
  exists);
* :func:`check_rows_independent`: output row ``i`` depends on input row ``i`` only (a model that
  mixes the examples of a batch — batch statistics, a mean over the batch — has no per-example kernel
  either, whatever its modules' modes);
* :func:`check_reaches_output`: at least one selected parameter reaches the output (else the kernel
  is identically zero: a selection that selects nothing).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ntkit.empirical._common import Tensor


def check_eval_mode(model: nn.Module) -> None:
    """Refuse modules whose train-mode output is not a per-example deterministic function."""
    bad = []
    for name, m in model.named_modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            bad.append(f"{name or type(m).__name__} (batch statistics couple the examples)")
        elif isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            bad.append(f"{name or type(m).__name__} (random masks: a different function at every call)")
    if bad:
        raise ValueError(
            "model: expected BatchNorm and Dropout layers in eval mode (call model.eval()), got train mode "
            f"for {bad[:4]}"
        )


#: Rows of ``x1`` (and of ``x2``) run as a batch and one by one by :func:`check_rows_independent`.
CHECK_ROWS = 3


def check_rows_independent(model: nn.Module, x1: Tensor, x2: Tensor | None) -> None:
    """Run up to :data:`CHECK_ROWS` rows of ``x1`` and of ``x2`` as one batch and one at a time; the
    outputs must agree to rounding (``sqrt(eps)`` relative to the largest output)."""
    rows = x1[:CHECK_ROWS] if x2 is None else torch.cat([x1[:CHECK_ROWS], x2[:CHECK_ROWS]])
    m = rows.shape[0]
    if m < 2:
        return
    with torch.no_grad():
        batch = model(rows)
        single = torch.cat([model(rows[i : i + 1]) for i in range(m)])
    if not isinstance(batch, torch.Tensor) or batch.shape != single.shape:
        return  # the output checks report a wrong shape
    scale = float(single.abs().max()) if single.numel() else 0.0
    diff = float((batch - single).abs().max()) if single.numel() else 0.0
    tol = torch.finfo(single.dtype).eps ** 0.5 if single.is_floating_point() else 0.0
    if not diff <= tol * max(scale, torch.finfo(torch.float32).tiny):
        raise ValueError(
            f"model: expected output row i to depend on input row i only, got outputs for a batch of {m} rows "
            f"that differ from the rows computed one at a time by {diff:.3g} (largest output {scale:.3g}): the "
            "model mixes the examples of a batch (batch statistics, a mean or a softmax over the batch axis) "
            "or is not deterministic, so it has no per-example kernel"
        )


def check_reaches_output(model: nn.Module, params: dict[str, Tensor], x: Tensor, selected: bool) -> None:
    """One forward pass on one row: at least one parameter of ``params`` must reach the output.

    The autograd graph of the output is searched for the parameters (no backward pass: for a wide
    model that would cost weight-sized gradients). ``selected`` says whether the caller chose the
    parameters (``parameters=``), for the message.
    """
    live = {n: t.detach().requires_grad_(True) for n, t in params.items()}
    try:
        with torch.enable_grad():
            out = functional_call(model, live, (x[:1],))
            reached = isinstance(out, torch.Tensor) and out.requires_grad and _in_graph(out, list(live.values()))
    except (RuntimeError, TypeError):
        return  # not differentiable this way: the engines report what fails
    if reached:
        return
    names = list(live)
    what = f"the selected parameters {names[:6]}" if selected else f"its trainable parameters {names[:6]}"
    raise ValueError(
        f"parameters: expected a selection that reaches the model's output, got {what}, none of which the "
        "output depends on (the kernel would be zero)"
    )


def _in_graph(out: Tensor, leaves: list[Tensor]) -> bool:
    """Whether any of ``leaves`` is a leaf of the autograd graph of ``out``."""
    ids = {id(t) for t in leaves}
    if out.grad_fn is None:
        return id(out) in ids
    seen: dict[int, object] = {}  # the nodes themselves are kept, so that no id is reused
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if id(getattr(node, "variable", None)) in ids:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False
