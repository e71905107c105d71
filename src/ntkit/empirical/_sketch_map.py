"""A drawn sketch of a model's per-example parameter gradients: ``phi(x) = S d f(x) / d theta``.

``S`` (``m`` rows, one column per selected parameter) is never formed. It is the sum of independent
per-layer sketches (:mod:`ntkit.empirical._sketch_layers`), each mapping its layer's gradient into the
same ``m`` buckets; the parameters of modules the streamed engine does not differentiate itself
(shared modules, custom ones) are count-sketched from their per-example Jacobians. The layers'
gradients come from the streamed engine's passes (:mod:`ntkit.empirical.streamed`): one forward pass
over a batch of rows and one plain backward pass per output, whose cotangents are sketched at each
layer as they arrive — the features of a batch take ``N k m`` numbers, never ``N P``.

Unbiasedness and variance: the per-layer sketches are independent and every bucket sign has zero mean,
so the cross terms between layers vanish in expectation and

    E[ phi_c(x) . phi_d(x') ] = sum_layers < J_c(x), J_d(x') > = Theta(x, x')_{cd}

(a single ``m`` shared by all layers, no split of the budget). With count sketches everywhere the map
is one count sketch of the whole gradient, and for gradients ``a = J_c(x)``, ``b = J_d(x')``

    Var[ phi_c(x) . phi_d(x') ] = ( |a|^2 |b|^2 + sum_l (a_l . b_l)^2 - 2 sum_f a_f^2 b_f^2 ) / m

(``l`` over layers, ``f`` over parameters): the relative error of each kernel entry, and of the
kernel in Frobenius norm, falls like ``1 / sqrt(m)``. A tensor-sketched layer replaces its term
``(a_l . b_l)^2 - 2 sum a_f^2 b_f^2`` by one at most ``10 |a_l|^2 |b_l|^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ntkit.empirical._common import Tensor
from ntkit.empirical._cotangents import Recorder
from ntkit.empirical._sketch_layers import (
    UNSUPPORTED_KINDS,
    WEIGHT_KINDS,
    CountHash,
    LayerSketch,
    choose_method,
    sketch_jacobian,
)
from ntkit.empirical._streamed_layers import StreamLayer, Workspace
from ntkit.empirical._streamed_pass import backward_passes
from ntkit.empirical.streamed import StreamedEngine

#: The feature layouts: per output (N, k, m), the trace kernel's (N, k m), the pseudo-NTK's (N, m).
FEATURE_MODES = ("full", "trace", "pntk")
#: Most rows of one pass.
MAX_ROWS = 1024


class EmpiricalFeatureMap:
    """A drawn sketch ``phi(x) = S d f(x) / d theta`` of a model's empirical NTK (see the module notes).

    Built by :func:`ntkit.empirical.empirical_feature_map`, which validates the model; apply it to
    batches: ``fmap(x)``. It also serves :func:`ntkit.random_features.fit_feature_ridge` (ridge
    regression on the features, the ``solver="features"`` path) in the modes ``"trace"`` and
    ``"pntk"``, through :attr:`m`, :meth:`batch_size` and :meth:`batches`.

    Parameters
    ----------
    model : nn.Module
        In eval mode; for ``mode="pntk"`` already the one-output :class:`~ntkit.empirical.pntk.SumOfLogits`.
    params : dict of str to Tensor
        The selected parameters.
    k : int
        Outputs of ``model`` (1 for the pseudo-NTK).
    probe : Tensor of shape (1, ...)
        One input row (shapes of the layers).
    sketch_size : int
        ``m``: buckets of the sketch (features per output).
    mode : {"full", "trace", "pntk"}
    sketch : {"auto", "count", "tensor"}
        The sketch of the dense and convolutional layers' weights
        (:func:`~ntkit.empirical._sketch_layers.choose_method`).
    generator : torch.Generator
        The draw (all hashes are drawn here, once).
    budget : int
        Working memory of a pass in bytes (rows per pass, per-layer blocks).

    Attributes
    ----------
    m : int
        Features per row as :meth:`batches` yields them: ``k m`` (``"full"``, ``"trace"``) or ``m``.
    shape : tuple of int
        Shape of one row's features from :meth:`__call__`: ``(k, m)``, ``(k m,)`` or ``(m,)``.
    methods : dict of str to str
        The sketch of each recognised layer's parameters (by their names), and ``"count"`` for the
        parameters left to per-example Jacobians.
    """

    def __init__(self, model: nn.Module, params: dict[str, Tensor], k: int, probe: Tensor, sketch_size: int,
                 mode: str, sketch: str, generator: torch.Generator, budget: int) -> None:
        self.engine = StreamedEngine(model, params, k, probe, budget)
        self.k, self.sketch_size, self.mode, self.budget = k, sketch_size, mode, budget
        self.dtype, self.device = probe.dtype, probe.device
        self.itemsize = probe.element_size()
        self.sketches: dict[int, LayerSketch] = {}
        self.methods: dict[str, str] = {}
        for layer in self.engine.layers:
            if layer.kind in UNSUPPORTED_KINDS:
                raise ValueError(
                    f"model: expected layers the sketch supports (dense, convolutions, batch and layer norms), got "
                    f"{type(layer.module).__name__} {layer.names} (kind {layer.kind!r}); pass parameters= without it"
                )
            method = choose_method(layer, sketch_size, sketch)
            self.sketches[id(layer)] = LayerSketch.draw(layer, sketch_size, method, generator, probe.dtype,
                                                            probe.device)
            for name in layer.names:
                self.methods[name] = method if name.endswith("weight") and layer.kind in WEIGHT_KINDS else "count"
        self.rest: dict[str, CountHash] = {}
        for name in self.engine.fallback_names:
            self.rest[name] = CountHash(params[name].numel(), sketch_size, generator, probe.dtype, probe.device)
            self.methods[name] = "count"
        width = k * sketch_size
        self.shape: tuple[int, ...] = {"full": (k, sketch_size), "trace": (width,), "pntk": (sketch_size,)}[mode]
        self.m = math.prod(self.shape)

    # ------------------------------------------------------------------ sizing
    def row_bytes(self) -> float:
        """Working memory per row of a pass: the saved forward tensors and backward temporaries, the
        features, and the fallback's per-example Jacobians."""
        total = self.engine.pass_row_bytes() + 2.0 * self.k * self.sketch_size * self.itemsize
        if self.engine.fallback is not None:
            total += self.engine.fallback.row_bytes()
        for ls in self.sketches.values():
            if ls.layer.kind == "conv" and ls.method == "count":
                total += ls.layer.positions * ls.layer.d_in * self.itemsize  # the unfolded patches of a slice
        return total

    def batch_size(self) -> int:
        """Rows per pass within the memory budget (beside three per-layer working blocks), at least 1."""
        free = self.budget - 3.0 * self.engine.limit
        return int(max(1, min(MAX_ROWS, free // max(1.0, self.row_bytes()))))

    # ---------------------------------------------------------------- applying
    def __call__(self, x: Tensor) -> Tensor:
        """Features of the rows ``x`` (N, ...): shape ``(N, *self.shape)`` in the model's dtype and device."""
        x = x.to(dtype=self.dtype, device=self.device)
        step = self.batch_size()
        out = torch.empty((x.shape[0], *self.shape), dtype=self.dtype, device=self.device)
        for r0 in range(0, x.shape[0], step):
            out[r0 : r0 + step] = self._pass(x[r0 : r0 + step])
        return out

    def batches(self, x: Tensor, batch_size: int | None = None) -> Iterator[tuple[slice, Tensor]]:
        """The features of ``x`` (N, ...) batch by batch: pairs ``(rows, phi)`` with ``phi`` of shape
        ``(len(rows), self.m)`` (the rows of :meth:`__call__` flattened)."""
        step = self.batch_size() if batch_size is None else batch_size
        for r0 in range(0, x.shape[0], step):
            rows = slice(r0, min(x.shape[0], r0 + step))
            phi = self(x[rows])
            yield rows, phi.reshape(phi.shape[0], -1)

    def _pass(self, x: Tensor) -> Tensor:
        """One forward and ``k`` backward passes over the rows ``x`` (n, ...), sketched as they go."""
        n, k, m = x.shape[0], self.k, self.sketch_size
        engine = self.engine
        phi = torch.zeros((n, k, m), dtype=self.dtype, device=self.device)
        ws = Workspace(self.dtype, self.device)

        def sink_for(layer: StreamLayer, rec: Recorder) -> Callable[[Tensor, int], None]:
            ls = self.sketches[id(layer)]

            def sink(g: Tensor, c0: int) -> None:
                assert rec.inp is not None
                ls.add(phi[:, c0 : c0 + g.shape[0]], rec.inp, g, ws, engine.limit)

            return sink

        with torch.no_grad():
            recs = backward_passes(engine.model, engine.detached, engine.layers, k, x, sink_for)
            recs.clear()
            ws.buffers.clear()
            if engine.fallback is not None:
                sketch_jacobian(self.rest, engine.fallback.features(x), phi)
        if self.mode == "full":
            return phi
        if self.mode == "pntk":
            return phi[:, 0]
        return phi.view(n, k * m).div_(math.sqrt(k))


def describe_methods(fmap: Any) -> str:
    """A one-line summary of the per-parameter sketches of a map (for benchmarks and logs)."""
    counts: dict[str, int] = {}
    for method in fmap.methods.values():
        counts[method] = counts.get(method, 0) + 1
    return ", ".join(f"{n} {m}" for m, n in sorted(counts.items()))


__all__ = ["FEATURE_MODES", "EmpiricalFeatureMap", "describe_methods"]
