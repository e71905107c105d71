"""The empirical NTK of a finite model as a kernel operator's tiles, and its sketched features for ridge regression.

:class:`EmpiricalTiles` puts a trained (or freshly initialised) torch model into the solvers of
:mod:`ntkit.solve` and :mod:`ntkit.predict`, the same path as the infinite-width kernels:
``KernelOperator(x, tile_fn=EmpiricalTiles(model))`` (or ``kernel_regression(..., model=model,
kernel="empirical")``) is the operator of the empirical NTK

    Theta(x, x') = (1/k) sum_c J_c(x) . J_c(x')        (mode "trace"; J_c = d f_c / d theta),

or of the pseudo-NTK (mode ``"pntk"``). Its tiles are exact (:func:`ntkit.empirical_ntk`), for the
``"cholesky"``, ``"cg"`` and ``"nystrom"`` solvers. For ``solver="features"`` it gives the sketched
features ``phi(x) = S J(x)`` of :func:`ntkit.empirical.empirical_feature_map`, with
``E[phi(x) . phi(x')] = Theta(x, x')``, and kernel ridge regression becomes ridge regression on them
(:func:`ntkit.random_features.fit_feature_ridge`):

    f(x*) = phi(x*)^T (Phi^T Phi + diag_reg I)^{-1} Phi^T Y,

an ``M x M`` system (``M = k m`` features per input in mode ``"trace"``, ``m`` in mode ``"pntk"``),
accumulated over batches of training inputs: ``O(M^2)`` memory and about one forward and ``k`` backward
passes per input (one in mode ``"pntk"``); the N x N kernel and the N x M features are never stored.
A ``checkpoint`` file keeps the partial sums, so an interrupted fit resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ntkit._validation import as_tensor, check_choice, check_int, describe, parse_memory_budget
from ntkit.empirical._common import DEFAULT_MEMORY_BUDGET, model_output
from ntkit.empirical._sketch_layers import SKETCHES
from ntkit.empirical._sketch_map import EmpiricalFeatureMap
from ntkit.empirical.api import empirical_ntk
from ntkit.empirical.sketch import empirical_feature_map, model_digest

Tensor = torch.Tensor

#: The kernels of :class:`EmpiricalTiles`: the trace NTK and the pseudo-NTK (one scalar kernel each).
TILE_MODES = ("trace", "pntk")
#: Default size of the ridge system (features per input): ``m = max(1, min(N, 4096) // k)`` in mode trace.
DEFAULT_RIDGE_FEATURES = 4096


class EmpiricalTiles:
    """The empirical NTK of ``model`` as a tile function: ``tiles(a, b) = empirical_ntk(model, a, b, mode=mode)``.

    Pass it as ``tile_fn`` of :class:`ntkit.solve.KernelOperator` (or use
    ``ntkit.solve.kernel_regression(..., model=model, kernel="empirical")``): every solver of
    :class:`ntkit.solve.KernelSystem` then runs on the empirical kernel -- the exact ones on its tiles,
    ``solver="features"`` on ``n_features`` sketched features per output (see the module notes).

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch (N, ...) to outputs (N, k), row by row, in eval mode (as for :func:`ntkit.empirical_ntk`).
    mode : {"trace", "pntk"}
        ``"trace"``: ``(1/k) sum_c Theta_cc`` (the NTK itself for a scalar output), features (N, k m);
        ``"pntk"``: the pseudo-NTK, features (N, m), one backward pass per input.
    sketch : {"auto", "count", "tensor"}
        The sketch of dense and convolutional weights (:func:`ntkit.empirical_features`).
    parameters : str or sequence of str, optional
        The parameters differentiated (names of ``model.named_parameters()``; default all trainable).
    memory_budget : int or str, optional
        Working memory of a tile or of a pass of the features (default 1 GiB).
    batch_size : int, optional
        Training inputs per batch of the ridge fit (default: what the memory budget allows).
    checkpoint : str or path, optional
        ``solver="features"``: a file for the partial normal equations (``8 (k m)^2`` bytes), saved at
        most every minute and at the end; a fit started again with the same model weights, inputs,
        targets, ``n_features``, seed and batch size resumes from it (and a finished one is not
        recomputed). Another fit in the same file is a ``ValueError``.

    Raises
    ------
    TypeError
        ``model`` not a ``torch.nn.Module``; a non-integer ``batch_size``; a ``checkpoint`` that is not a
        path.
    ValueError
        An unknown ``mode`` or ``sketch``; ``batch_size < 1``; an unreadable ``memory_budget``. When the
        first inputs arrive: the errors of :func:`ntkit.empirical_ntk` /
        :func:`ntkit.empirical.empirical_feature_map` (an output not of shape (N, k), BatchNorm or
        Dropout in training mode, rows that depend on each other, ``n_features < 1``).

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.empirical import EmpiricalTiles
    >>> from ntkit.solve import KernelOperator, KernelSystem
    >>> net = ntkit.FCNetwork(3, [64], 1, seed=0)
    >>> g = torch.Generator().manual_seed(0)
    >>> x, xt = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    >>> op = KernelOperator(x, tile_fn=EmpiricalTiles(net))
    >>> exact = KernelSystem(op, x[:, 0], diag_reg=1e-1, solver="cholesky").predict(x_test=xt)
    >>> sketched = KernelSystem(op, x[:, 0], diag_reg=1e-1, solver="features", n_features=1024).predict(x_test=xt)
    >>> bool(torch.linalg.norm(sketched - exact) < 0.1 * torch.linalg.norm(exact))
    True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str = "trace",
        sketch: str = "auto",
        parameters: Sequence[str] | str | None = None,
        memory_budget: int | str | None = None,
        batch_size: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
        self.model = model
        self.mode = check_choice(mode, "mode", TILE_MODES)
        self.sketch = check_choice(sketch, "sketch", SKETCHES)
        self.parameters = parameters
        self.memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_memory_budget(memory_budget)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint: expected a path (str or os.PathLike), got {describe(checkpoint)}")
        self.checkpoint = checkpoint

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """The kernel tile ``Theta(a, b)`` of shape (len(a), len(b)), computed in the model's dtype, returned in
        the dtype of ``a`` (the operator's tile dtype)."""
        tile = empirical_ntk(self.model, a, b, mode=self.mode, parameters=self.parameters,
                             memory_budget=self.memory_budget, progress=False)
        return tile.to(a.dtype) if a.is_floating_point() else tile

    def feature_map(self, x: Tensor, n_features: int | None, generator: torch.Generator) -> EmpiricalFeatureMap:
        """The sketch of ``n_features`` buckets per output drawn from ``generator``, checked on the inputs ``x``.

        ``n_features=None``: ``m = max(1, min(N, 4096) // k)`` in mode ``"trace"`` (a ridge system of at
        most 4096 features), ``min(N, 4096)`` in mode ``"pntk"``.
        """
        if n_features is None:
            k = 1 if self.mode == "pntk" else self._outputs(x)
            n_features = max(1, min(int(x.shape[0]), DEFAULT_RIDGE_FEATURES) // k)
        self._draw = hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()  # S, before drawing it
        return empirical_feature_map(self.model, x, n_features, mode=self.mode, sketch=self.sketch,
                                     generator=generator, parameters=self.parameters,
                                     memory_budget=self.memory_budget)

    def ridge_options(self, fmap: EmpiricalFeatureMap) -> dict[str, Any]:
        """The keyword arguments of :func:`ntkit.random_features.fit_feature_ridge` for the map ``fmap``:
        the batch size and, with a checkpoint, its file and the map's identity (weights, draw, sketch)."""
        options: dict[str, Any] = {"batch_size": self.batch_size}
        if self.checkpoint is not None:
            options["checkpoint"] = self.checkpoint
            options["identity"] = {
                "what": "empirical_features", "model": model_digest(self.model), "draw": self._draw,
                "mode": self.mode, "sketch": self.sketch, "m": fmap.sketch_size, "memory_budget": fmap.budget,
                "parameters": sorted(fmap.methods),
            }  # fmt: skip
        return options

    def _outputs(self, x: Tensor) -> int:
        ref = next(self.model.parameters(), None)
        t = as_tensor(x[:1], "x", dtype=None if ref is None else ref.dtype, device=None if ref is None else ref.device,
                      ndim=None)
        return int(model_output(self.model, t, "x").shape[1])

    def __repr__(self) -> str:
        return f"EmpiricalTiles({type(self.model).__name__}, mode={self.mode!r}, sketch={self.sketch!r})"


__all__ = ["DEFAULT_RIDGE_FEATURES", "TILE_MODES", "EmpiricalTiles"]
