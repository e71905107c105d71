"""``empirical_ntk``: the public entry point, validation and the choice of implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_choice, describe, parse_memory_budget
from ntkit.empirical._checks import check_eval_mode, check_reaches_output, check_rows_independent
from ntkit.empirical._choice import choose_engine
from ntkit.empirical._common import (
    DEFAULT_MEMORY_BUDGET,
    IMPLEMENTATIONS,
    NTK_MODES,
    PAIRS,
    Tensor,
    model_output,
    select_parameters,
)
from ntkit.empirical._tokens import token_inputs
from ntkit.empirical.pntk import SumOfLogits, pntk_parameters
from ntkit.empirical.tiling import tiled_kernel
from ntkit.graphs import PackedGraphs, pack, split_graphs

#: Kept for callers of the former private name (``ntkit.monte_carlo``).
_check_eval_mode = check_eval_mode


def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any | None = None,
    *,
    mode: str = "full",
    implementation: str = "auto",
    parameters: Sequence[str] | str | None = None,
    pairs: str = "all",
    memory_budget: int | str | None = None,
    progress: bool | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Empirical NTK of ``model`` between ``x1`` and ``x2``.

    For a model ``f(x; theta)`` with ``k`` outputs,

        Theta(x, x')_{ab} = sum_p  d f_a(x) / d theta_p  *  d f_b(x') / d theta_p

    (Jacot, Gabriel, Hongler 2018), summed over the selected parameters ``p``.

    Parameters
    ----------
    model : nn.Module
        Maps a batch (N, ...) to outputs (N, k), row by row. BatchNorm and Dropout must be in eval
        mode (``model.eval()``): in train mode BatchNorm couples the examples of a batch and Dropout
        draws a new function at every call, so no per-example kernel exists (a ValueError says so).
        Buffers (BatchNorm running statistics) are constants. Parameters with
        ``requires_grad=False`` are constants.
    x1 : Tensor of shape (N1, ...), or ntkit.Graphs
        For a model of ``(x, adjacency)`` (:class:`ntkit.nn.Aggregate`): graphs :class:`ntkit.Graphs`,
        the model called as ``model(x, adjacency)``.
    x2 : Tensor of shape (N2, ...), or ntkit.Graphs, optional
        Same trailing shape as ``x1``. ``None`` computes the symmetric kernel of ``x1``: features
        once, and only the tiles on and above the diagonal. Integer inputs (token ids) of a model
        with an ``nn.Embedding`` are passed unchanged (``x2`` integer too; the derivatives are with
        respect to the parameters only); other inputs are cast to the model's dtype.
    mode : {"full", "trace", "diagonal", "pntk"}
        ``"full"``: blocks (N1, N2, k, k); ``"trace"``: ``(1/k) sum_a Theta_aa``, (N1, N2) —
        comparable with the scalar infinite-width kernel; ``"diagonal"``: ``Theta_aa``, (N1, N2, k);
        ``"pntk"``: the pseudo-NTK of Mohamadi et al. (2023), the NTK of the one output
        ``f_sum = sum_a f_a / sqrt(k)``, i.e. ``(1/k) sum_{a,b} Theta_ab``, (N1, N2) — one backward
        pass per example instead of ``k`` (:mod:`ntkit.empirical.pntk`).
    implementation : {"auto", "jacobian", "ntvp", "structured", "fc"}
        ``"jacobian"``: per-example Jacobians contracted (PyTorch's tutorial method;
        memory ``N k P``). ``"ntvp"``: vjp then jvp, never forming the Jacobian (least memory, most
        compute). ``"structured"`` (alias ``"fc"``): layer-factored Gram products for
        ``nn.Linear``, ``nn.Conv1d/2d`` and :class:`ntkit.NTKLinear`, autodiff for other
        parameters (see :mod:`ntkit.empirical.structured`); for convolutional networks, batch norm,
        transformers and per-layer Jacobians it may instead stream each layer's contribution during
        the backward passes (per-example weight gradients from unfolded patches or token positions,
        or Gram products; batch-norm and layer-norm affine parameters and embeddings included) when
        that is estimated cheaper with the tiles the budget allows (:mod:`ntkit.empirical.streamed`).
        ``"auto"``: the cheaper of structured and jacobian by an
        estimated flop count among those whose one-row tile fits the budget, else ntvp.
    parameters : str or sequence of str, optional
        Names as in ``model.named_parameters()``; default all trainable parameters.
    pairs : {"all", "diagonal"}
        ``"diagonal"`` computes only ``Theta(x1_i, x2_i)`` (``x2`` defaults to ``x1``; same N):
        shapes (N, k, k), (N,) or (N, k) by mode.
    memory_budget : int or str, optional
        Working memory per tile in bytes or as ``"512MB"``, ``"2GB"`` (default 1 GiB): features
        of a tile's rows and columns and its temporaries, by the implementation's estimate. The
        result is not counted. Too small for a 1 x 1 tile: ValueError.
    progress : bool, optional
        Progress on stderr; default: shown when the work takes 4 tiles or more.
    out : Tensor, optional
        Preallocated result, filled tile by tile (kept on interruption).

    Returns
    -------
    Tensor in the model's dtype and device, shape as given by ``mode`` and ``pairs`` (``"pntk"``:
    that of ``"trace"``).

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``, or ``progress`` is not a bool or None.
    ValueError
        An unknown ``mode``, ``implementation`` or ``pairs``; BatchNorm or Dropout in training mode;
        a model whose output rows depend on other rows of the batch (batch statistics, means over
        the batch; checked on a few rows); a parameter name the model does not have, an empty
        selection, or a selection none of whose parameters reaches the output; inputs of different
        trailing shapes; an ``out`` of the wrong shape; a ``memory_budget`` too small for one 1 x 1
        tile.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(3, [64], 2, seed=0)
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> ntkit.empirical_ntk(net, x).shape
    torch.Size([4, 4, 2, 2])
    >>> ntkit.empirical_ntk(net, x, mode="trace", pairs="diagonal").shape
    torch.Size([4])
    >>> ntkit.empirical_ntk(net, x, mode="pntk").shape
    torch.Size([4, 4])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    check_choice(mode, "mode", NTK_MODES)
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    check_choice(pairs, "pairs", PAIRS)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool or None, got {describe(progress)}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_memory_budget(memory_budget)
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None else None
    device = ref.device if ref is not None else None
    tokens = token_inputs(model, x1, x2, device)  # integer token ids of a model with an embedding: kept
    t1, t2, adj1, adj2 = (*tokens, None, None) if tokens else split_graphs(x1, x2, dtype=dtype, device=device)
    inner = model
    if adj1 is not None:  # graphs: a model of one packed row per graph, sliced and differentiated as a tensor
        model = PackedGraphs(model, tuple(t1.shape[1:]), adj1.shape[-1])
        t1, t2 = pack(t1, adj1), None if t2 is None or adj2 is None else pack(t2, adj2)
    if pairs == "diagonal" and t2 is not None and t2.shape[0] != t1.shape[0]:
        raise ValueError(
            f"x1 and x2: expected the same number of rows for pairs='diagonal', got {t1.shape[0]} and {t2.shape[0]}"
        )
    check_eval_mode(model)
    k = model_output(model, t1, "x1").shape[1]
    if t2 is not None:
        model_output(model, t2, "x2")
    check_rows_independent(model, t1, t2)
    params = select_parameters(inner, parameters)
    if inner is not model:
        params = {f"net.{n}": t for n, t in params.items()}  # their names in PackedGraphs
    check_reaches_output(model, params, t1, parameters is not None)
    if mode == "pntk":  # the NTK of f_sum = sum_c f_c / sqrt(k): one output
        model, params, k, mode = SumOfLogits(model, k), pntk_parameters(params), 1, "trace"
    n1 = t1.shape[0]
    n2 = n1 if t2 is None else t2.shape[0]
    engine = choose_engine(
        implementation, model, params, k, t1, n1, n2, mode, budget, sym=t2 is None, pairs=pairs == "diagonal"
    )
    with torch.no_grad():
        return tiled_kernel(
            engine, t1, t2, mode=mode, pairs=pairs, budget=budget, progress=progress, out=out, dtype=dtype
        )
