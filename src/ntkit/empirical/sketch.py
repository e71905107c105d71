"""Sketched empirical-NTK features: ``phi(x) = S d f(x) / d theta`` with ``phi phi^T ~ Theta`` in ``O(N m)``.

The empirical NTK of ``N`` inputs costs ``N^2`` kernel entries; its features ``J(x) = d f(x) / d theta``
take ``N k P`` numbers (``P`` parameters: 11 million for a ResNet-18). A random linear map ``S`` of
``m`` rows with ``E[S^T S] = I`` gives features ``phi(x) = S J(x)`` of ``k m`` numbers per input whose
inner products estimate the kernel without bias,

    E[ phi_c(x) . phi_d(x') ] = Theta(x, x')_{cd},

with a relative error of order ``1 / sqrt(m)`` (:mod:`ntkit.empirical._sketch_map` states the
variance). ``S`` is never formed: it is a sum of independent per-layer count sketches (Charikar,
Chen, Farach-Colton 2002), applied to each layer's per-example gradient as the streamed engine's
backward passes deliver its cotangents, or — for wide layers at few positions — a tensor sketch
(Pham & Pagh 2013) of the gradient's factors ``sum_p g_p a_p^T`` that never forms it
(:mod:`ntkit.empirical._sketch_layers`). Memory is ``O(N k m)`` for the result and one batch's
forward pass; the work is about one forward and ``k`` backward passes per input, plus the sketches.
This is the random projection of per-example gradients of TRAK (Park et al. 2023), with sparse
structured maps instead of a dense Gaussian one.

:func:`empirical_features` computes the features (in memory, or streamed to a ``.npy`` / ``.zarr``
file that an interrupted run resumes); :func:`empirical_feature_map` draws a map to apply to batches,
e.g. for ridge regression on the features (:func:`ntkit.random_features.fit_feature_ridge`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_choice, check_int, describe, parse_memory_budget
from ntkit.compute.storage import data_digest, open_output
from ntkit.empirical._checks import check_eval_mode, check_reaches_output, check_rows_independent
from ntkit.empirical._common import DEFAULT_MEMORY_BUDGET, model_output, select_parameters
from ntkit.empirical._sketch_layers import SKETCHES
from ntkit.empirical._sketch_map import FEATURE_MODES, EmpiricalFeatureMap
from ntkit.empirical.pntk import SumOfLogits, pntk_parameters


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {describe(generator)}")
        if seed is not None:
            raise ValueError("seed, generator: expected one of them, got both")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else check_int(seed, "seed"))


def empirical_feature_map(
    model: nn.Module,
    x: Any,
    m: int,
    *,
    mode: str = "full",
    sketch: str = "auto",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    parameters: Sequence[str] | str | None = None,
    memory_budget: int | str | None = None,
) -> EmpiricalFeatureMap:
    """A drawn sketch of ``model``'s per-example gradients, to apply to batches: ``fmap(x)``.

    Parameters
    ----------
    model : nn.Module
        Maps a batch (N, ...) to outputs (N, k), row by row, as for :func:`ntkit.empirical_ntk`:
        BatchNorm and Dropout in eval mode (a ValueError says so), buffers constant.
    x : Tensor of shape (N, ...)
        Example inputs: their first rows check the model (rows independent, parameters reaching the
        output) and give the layers' shapes. Later batches must have the same trailing shape.
    m : int
        Buckets of the sketch: features per output. The relative error falls like ``1 / sqrt(m)``.
    mode, sketch, seed, generator, parameters, memory_budget
        As in :func:`empirical_features`.

    Returns
    -------
    EmpiricalFeatureMap
        ``fmap(x)`` of shape ``(N, *fmap.shape)``; ``fmap.batches(x)`` yields ``(rows, phi)`` with
        ``phi`` of shape ``(len(rows), fmap.m)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`empirical_features`.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.empirical import empirical_feature_map
    >>> net = ntkit.FCNetwork(3, [64], 2, seed=0)
    >>> x = torch.randn(10, 3, dtype=torch.float64)
    >>> fmap = empirical_feature_map(net, x, 256, mode="trace", seed=0)
    >>> fmap(x[:4]).shape, fmap.m
    (torch.Size([4, 512]), 512)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    m = check_int(m, "m", minimum=1)
    check_choice(mode, "mode", FEATURE_MODES)
    check_choice(sketch, "sketch", SKETCHES)
    gen = _generator(generator, seed)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_memory_budget(memory_budget)
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None else None
    device = ref.device if ref is not None else None
    t = as_tensor(x, "x", dtype=dtype, device=device, ndim=None)
    check_eval_mode(model)
    k = model_output(model, t, "x").shape[1]
    check_rows_independent(model, t, None)
    params = select_parameters(model, parameters)
    check_reaches_output(model, params, t, parameters is not None)
    if mode == "pntk":
        model, params, k = SumOfLogits(model, k), pntk_parameters(params), 1
    return EmpiricalFeatureMap(model, params, k, t[:1], m, mode, sketch, gen, budget)


def empirical_features(
    model: nn.Module,
    x: Any,
    m: int,
    *,
    mode: str = "full",
    sketch: str = "auto",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    parameters: Sequence[str] | str | None = None,
    memory_budget: int | str | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Any:
    """Sketched empirical-NTK features ``phi(x) = S d f(x) / d theta`` with ``phi phi^T ~ Theta``.

    ``S`` is a random map of ``m`` rows, drawn once from ``seed`` and never formed (see the module
    notes): ``E[phi_c(x) . phi_d(x')] = Theta(x, x')_{cd}`` exactly, with variance
    ``(|a|^2 |b|^2 + sum_l (a_l . b_l)^2 - 2 sum_f a_f^2 b_f^2) / m`` for the gradients ``a = J_c(x)``,
    ``b = J_d(x')`` (``l`` over layers, ``f`` over parameters) when every layer is count-sketched, so
    the relative Frobenius error of ``phi phi^T`` falls like ``1 / sqrt(m)``.

    Parameters
    ----------
    model : nn.Module
        Maps a batch (N, ...) to outputs (N, k), row by row, in eval mode (see :func:`ntkit.empirical_ntk`).
    x : Tensor of shape (N, ...)
    m : int
        Buckets of the sketch (features per output), ``>= 1``.
    mode : {"full", "trace", "pntk"}
        ``"full"``: (N, k, m), ``phi[i, c] . phi[j, d] ~ Theta(x_i, x_j)_{cd}``; ``"trace"``: (N, k m),
        the ``k`` blocks side by side scaled by ``1 / sqrt(k)``, so that ``phi phi^T`` estimates the
        trace kernel ``(1/k) sum_c Theta_cc`` (for a scalar output: (N, m) and the NTK itself);
        ``"pntk"``: (N, m) for the pseudo-NTK (one backward pass per input instead of ``k``).
    sketch : {"auto", "count", "tensor"}
        How dense and convolutional weights are sketched: count sketches of the per-example gradients,
        tensor sketches of their factors (wide layers at few positions), or the cheaper per layer
        (default). Biases, batch norms, grouped convolutions and other parameters are count-sketched.
    seed : int, optional
        The draw of ``S`` (default 0). The same seed gives the same ``S`` for any rows, batch size or
        memory budget, so features of different calls (training and test inputs) are consistent.
    generator : torch.Generator, optional
        Instead of ``seed``.
    parameters : str or sequence of str, optional
        Names as in ``model.named_parameters()``; default all trainable parameters.
    memory_budget : int or str, optional
        Working memory of a pass (default 1 GiB): rows per pass and per-layer blocks. The result is
        not counted.
    batch_size : int, optional
        Rows per pass (default: as many as the budget allows); also the block of rows written to
        ``out`` at a time.
    progress : bool, optional
        Progress on stderr; default: shown for 4 passes or more.
    out : str or path, optional
        A ``.npy`` or ``.zarr`` file to stream the features to, block of rows by block of rows, with a
        ledger ``out + ".ledger"`` of the finished blocks: a run interrupted and started again with
        the same arguments (model weights, inputs, ``m``, seed, ...) computes only the missing blocks.
        The file holds (N, k m) in mode ``"full"``.
    overwrite : bool
        Replace an existing ``out`` computed with other arguments.

    Returns
    -------
    Tensor in the model's dtype and device, of shape (N, k, m), (N, k m) or (N, m) by ``mode``; with
    ``out``, a read-only numpy memory map of the file (of that shape).

    Raises
    ------
    TypeError
        ``model`` not a ``torch.nn.Module``; a non-integer ``m``, ``seed`` or ``batch_size``; a
        ``generator`` that is not a ``torch.Generator``; a ``progress`` that is not a bool or None.
    ValueError
        ``m < 1``; an unknown ``mode`` or ``sketch``; both ``seed`` and ``generator``; BatchNorm or
        Dropout in training mode; a model whose output rows depend on other rows of the batch; an
        unknown parameter name or a selection that does not reach the output; an ``out`` that exists
        with other arguments (and not ``overwrite``) or does not end in ``.npy`` / ``.zarr``.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(3, [256], 2, seed=0)
    >>> x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> phi = ntkit.empirical.empirical_features(net, x, 4096, mode="trace", seed=0)
    >>> phi.shape
    torch.Size([20, 8192])
    >>> exact = ntkit.empirical_ntk(net, x, mode="trace")
    >>> bool(torch.linalg.norm(phi @ phi.T - exact) / torch.linalg.norm(exact) < 0.1)
    True
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool or None, got {describe(progress)}")
    step = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    gen = _generator(generator, seed)
    draw = hashlib.sha256(gen.get_state().numpy().tobytes()).hexdigest()  # identifies S, before drawing it
    fmap = empirical_feature_map(model, x, m, mode=mode, sketch=sketch, generator=gen, parameters=parameters,
                                 memory_budget=memory_budget)
    t = as_tensor(x, "x", dtype=fmap.dtype, device=fmap.device, ndim=None)
    n = t.shape[0]
    step = fmap.batch_size() if step is None else step
    shape = (n, *fmap.shape)
    if out is None:
        result = torch.empty(shape, dtype=fmap.dtype, device=fmap.device)
        blocks = range(0, n, step)
        bar = Progress(n, "empirical features", enabled=len(blocks) >= 4 if progress is None else progress)
        for r0 in blocks:
            result[r0 : r0 + step] = fmap(t[r0 : r0 + step])
            bar.update(min(n, r0 + step) - r0)
        bar.close()
        return result
    params = {
        "what": "empirical_features", "m": m, "mode": mode, "sketch": sketch, "draw": draw, "n": n,
        "shape": list(shape), "dtype": str(fmap.dtype), "inputs": data_digest(t), "model": model_digest(model),
        "parameters": sorted(fmap.methods),
    }  # fmt: skip
    width = fmap.m
    output, ledger, step = open_output(out, shape=(n, width), dtype=fmap.dtype, device=fmap.device,
                                       chunks=(step, width), params=params, tile=step, overwrite=overwrite)
    done = set() if ledger is None else ledger.done
    todo = [i for i in range(-(-n // step)) if (i, 0) not in done]
    bar = Progress(n, "empirical features", enabled=len(todo) >= 4 if progress is None else progress)
    bar.update(n - sum(min(n, (i + 1) * step) - i * step for i in todo))
    try:
        for i in todo:
            r0, r1 = i * step, min(n, (i + 1) * step)
            phi = fmap(t[r0:r1]).reshape(r1 - r0, width)
            output.write(None, slice(r0, r1), slice(0, width), phi.cpu())
            output.flush()
            if ledger is not None:
                ledger.mark((i, 0))  # only once the block is written
            bar.update(r1 - r0)
    finally:
        bar.close()
        output.close()
    result = output.result()
    return result.reshape(shape) if isinstance(result, np.ndarray) else result


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["empirical_feature_map", "empirical_features", "model_digest"]
