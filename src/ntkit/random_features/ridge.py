"""Kernel ridge regression on random features: ``O(N m^2)`` work and ``O(m^2)`` memory instead of ``O(N^2)``.

With features ``Phi`` of shape (N, m) such that ``Phi Phi^T ~ K`` (:func:`ntkit.features`), the kernel
ridge predictor ``K(x*, X) (K + diag_reg I)^{-1} Y`` becomes, by the push-through identity,

    f(x*) = phi(x*)^T (Phi^T Phi + diag_reg I)^{-1} Phi^T Y,

an ``m x m`` system: ``Phi^T Phi`` and ``Phi^T Y`` are accumulated over batches of training inputs
(streaming: the features of all N points are never stored), in float64, and solved by Cholesky
(with jitter retries, :func:`ntkit.solve.robust_cholesky`, from the leaf module ``ntkit._linalg``:
this subpackage does not import :mod:`ntkit.solve`, which uses it). ``diag_reg`` is the same absolute
ridge as in :class:`ntkit.solve.KernelSystem`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ntkit._linalg import cho_solve, robust_cholesky
from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_float, check_int
from ntkit.compute.storage import data_digest
from ntkit.random_features.api import feature_map
from ntkit.random_features.network import DEFAULT_WEIGHT_BUDGET

Tensor = torch.Tensor

#: Seconds between saves of the partial normal equations of :func:`fit_feature_ridge` (``checkpoint``).
CHECKPOINT_EVERY = 60.0


class FeatureBatches(Protocol):
    """What ridge regression needs of a feature map: :class:`~ntkit.random_features.network.FeatureMap`, or
    the sketched empirical-NTK features of :func:`ntkit.empirical.empirical_feature_map`."""

    m: int  # features per input

    def batch_size(self) -> int: ...

    def batches(self, x: Tensor, batch_size: int | None = None) -> Iterator[tuple[slice, Tensor]]: ...


@dataclass
class FeatureRidge:
    """A fitted ridge regression on random features.

    Attributes
    ----------
    fmap : FeatureMap or FeatureBatches
        The drawn feature map (apply it to new inputs).
    weights : Tensor of shape (m, k)
        ``(Phi^T Phi + diag_reg I)^{-1} Phi^T Y``.
    squeeze : bool
        Targets were given as a vector (predictions are then of shape (N*,)).
    jitter : float
        Extra diagonal the Cholesky factorisation needed.
    batch_size : int
        Inputs per batch of :meth:`project` and :meth:`predict`.
    chol : Tensor of shape (m, m)
        Cholesky factor of ``Phi^T Phi + (diag_reg + jitter) I`` (for further right-hand sides).

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> fit = ntkit.random_features.feature_ridge(ntkit.nn.fc(3, depth=1, device="meta"), x, torch.sin(x[:, 0]),
    ...                                           n_features=128, diag_reg=1e-2)
    >>> fit.weights.shape, fit.squeeze, fit.predict(x[:3]).shape
    (torch.Size([128, 1]), True, torch.Size([3]))
    """

    fmap: FeatureBatches
    weights: Tensor
    squeeze: bool
    jitter: float
    batch_size: int = 4096
    chol: Tensor | None = None

    def project(self, x: Any, rhs: Tensor) -> Tensor:
        """``Phi(x)^T rhs`` (m, k) by batches (the features of ``x`` are not stored)."""
        xt = as_tensor(x, "x", ndim=None)
        out = torch.zeros(self.weights.shape[0], rhs.shape[1], dtype=torch.float64)
        for rows, phi in self.fmap.batches(xt, self.batch_size):
            out += phi.double().cpu().T @ rhs[rows]
        return out

    def refit(self, x: Any, rhs: Tensor) -> Tensor:
        """Weights for new targets ``rhs`` (N, k) on the same inputs: one more pass, the factor reused."""
        assert self.chol is not None
        return cho_solve(self.chol, self.project(x, rhs))

    def predict(self, x_test: Any) -> Tensor:
        """``phi(x_test) weights``: shape (N*,) or (N*, k), float64."""
        xt = as_tensor(x_test, "x_test", ndim=None)
        out = torch.empty(xt.shape[0], self.weights.shape[1], dtype=torch.float64)
        for rows, phi in self.fmap.batches(xt, self.batch_size):
            out[rows] = phi.double().cpu() @ self.weights
        return out[:, 0] if self.squeeze else out


def feature_ridge(
    model: nn.Module,
    x_train: Any,
    y_train: Any,
    *,
    n_features: int,
    diag_reg: float,
    which: str = "ntk",
    method: str = "orthogonal",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    memory_budget: int | str = DEFAULT_WEIGHT_BUDGET,
    progress: bool = False,
) -> FeatureRidge:
    """Fit kernel ridge regression with the model's NTK / NNGP approximated by ``n_features`` random features.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (see :func:`ntkit.features`).
    x_train : array-like of shape (N, *input_shape)
    y_train : array-like of shape (N,) or (N, k)
    n_features : int
        ``m``; cost ``O(N m^2 + m^3)`` (plus the features' own cost), memory ``O(m^2)``.
    diag_reg : float
        Absolute ridge ``> 0``.
    which, method, generator, seed, dtype, device, memory_budget
        As in :func:`ntkit.features` (float32 features; the normal equations are accumulated in float64).
    batch_size : int, optional
        Training inputs per batch (default: as many as fit the memory budget, at most 4096).

    Returns
    -------
    FeatureRidge
        ``.predict(x_test)``.

    Raises
    ------
    ValueError
        ``y_train`` not of shape (N,) or (N, k) for the N rows of ``x_train``; ``diag_reg <= 0``;
        inputs that are empty or not finite; a ``batch_size`` below 1; the errors of
        :func:`ntkit.random_features.feature_map` (bad ``which``, ``method`` or ``n_features``, an
        architecture without a feature map, weights beyond ``memory_budget``).
    TypeError
        Non-numeric inputs; a ``diag_reg`` that is not a real number; a non-integer ``seed`` or
        ``batch_size``; a ``dtype`` that is not floating; a ``generator`` that is not a
        ``torch.Generator``.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.random_features import feature_ridge
    >>> x = torch.randn(200, 3, dtype=torch.float64)
    >>> y = torch.sin(x[:, 0])
    >>> fit = feature_ridge(ntkit.nn.fc(3, depth=2, device="meta"), x, y, n_features=512, diag_reg=1e-2)
    >>> fit.predict(x[:5]).shape
    torch.Size([5])
    """
    x = as_tensor(x_train, "x_train", ndim=None)
    y = as_tensor(y_train, "y_train", dtype=torch.float64, ndim=None)
    if y.ndim > 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y_train: expected shape ({x.shape[0]},) or ({x.shape[0]}, k), got {tuple(y.shape)}")
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0, strict=True)
    fmap = feature_map(model, tuple(x.shape[1:]), n_features=n_features, which=which, method=method,
                       generator=generator, seed=seed, dtype=dtype, device=device, memory_budget=memory_budget)
    batch_size = fmap.batch_size() if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    return fit_feature_ridge(fmap, x, y, diag_reg=diag_reg, batch_size=batch_size, progress=progress)


def fit_feature_ridge(
    fmap: FeatureBatches,
    x: Any,
    y: Any,
    *,
    diag_reg: float,
    batch_size: int | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    identity: dict[str, Any] | None = None,
    checkpoint_every: float | None = None,
) -> FeatureRidge:
    """Ridge regression on the features of a drawn map ``fmap``, streamed over the training inputs.

    With ``Phi = fmap(x)`` of shape (N, m), the weights are

        W = (Phi^T Phi + diag_reg I)^{-1} Phi^T Y,    f(x*) = phi(x*)^T W,

    the push-through form of kernel ridge regression with ``K ~ Phi Phi^T`` (see the module notes).
    ``Phi^T Phi`` (m, m) and ``Phi^T Y`` (m, k) are accumulated in float64 batch by batch: one batch of
    features exists at a time, memory ``O(m^2 + batch m)``. ``fmap`` is a
    :class:`~ntkit.random_features.FeatureMap` (:func:`feature_ridge` draws one) or any
    :class:`~ntkit.random_features.ridge.FeatureBatches`, e.g. the sketched empirical-NTK features of
    :func:`ntkit.empirical.empirical_feature_map` (modes ``"trace"`` and ``"pntk"``), which
    :class:`ntkit.empirical.EmpiricalTiles` fits through ``solver="features"``.

    With ``checkpoint``, the partial sums are saved to that file (at most every ``checkpoint_every``
    seconds, and at the end) together with the number of rows done: a run interrupted and started
    again with the same arguments continues after the last saved batch and gives the same weights,
    bit for bit (the same batches, summed in the same order). A finished file makes a refit with
    another ``diag_reg`` cost one ``m x m`` factorisation.

    Parameters
    ----------
    fmap : FeatureBatches
        The drawn features: ``fmap.m``, ``fmap.batch_size()``, ``fmap.batches(x, batch_size)``.
    x : array-like of shape (N, *input_shape)
        Training inputs (as ``fmap`` takes them).
    y : array-like of shape (N,) or (N, k)
        Targets (float64).
    diag_reg : float
        Absolute ridge ``> 0``.
    batch_size : int, optional
        Training inputs per batch (default ``fmap.batch_size()``).
    progress : bool
        A progress bar over the training inputs (on stderr).
    checkpoint : str or path, optional
        File of the partial normal equations (``8 m^2`` bytes), for resuming (see above).
    identity : dict, optional
        With ``checkpoint``: a JSON-serialisable description of the map (its draw, its model's weights),
        which must match for a saved file to be resumed; N, m, the batch size and digests of ``x`` and
        ``y`` are added to it.
    checkpoint_every : float, optional
        Seconds between saves of ``checkpoint`` (default :data:`CHECKPOINT_EVERY`, 60; 0: after every batch).

    Returns
    -------
    FeatureRidge
        ``.predict(x_test)``; ``.weights`` of shape (m, k).

    Raises
    ------
    ValueError
        ``y`` not of shape (N,) or (N, k) for the N rows of ``x``; ``diag_reg <= 0``; a ``batch_size``
        below 1; ``checkpoint`` without ``identity``; a ``checkpoint`` file that holds another fit or
        cannot be read.
    TypeError
        Non-numeric inputs, a ``diag_reg`` that is not a real number, a non-integer ``batch_size``.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.random_features import feature_map, fit_feature_ridge
    >>> x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> fmap = feature_map(ntkit.nn.fc(3, depth=1, device="meta"), (3,), n_features=64, seed=0)
    >>> fit = fit_feature_ridge(fmap, x, torch.sin(x[:, 0]), diag_reg=1e-2)
    >>> fit.weights.shape, fit.predict(x[:4]).shape
    (torch.Size([64, 1]), torch.Size([4]))
    """
    x = x if isinstance(x, torch.Tensor) else as_tensor(x, "x", ndim=None)  # a tensor as it is (its dtype for fmap)
    y = as_tensor(y, "y", dtype=torch.float64, ndim=None)
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected shape ({x.shape[0]},) or ({x.shape[0]}, k) like x, got {tuple(y.shape)}")
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0, strict=True)
    batch_size = fmap.batch_size() if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    every = CHECKPOINT_EVERY if checkpoint_every is None else check_float(checkpoint_every, "checkpoint_every",
                                                                          minimum=0.0)
    squeeze = y.ndim == 1
    yy = y[:, None] if squeeze else y
    m, n = fmap.m, int(x.shape[0])
    gram = torch.zeros(m, m, dtype=torch.float64)
    rhs = torch.zeros(m, yy.shape[1], dtype=torch.float64)
    start, key = 0, ""
    if checkpoint is not None:
        if identity is None:
            raise ValueError("identity: expected a description of the feature map with checkpoint, got None")
        key = json.dumps({"what": "fit_feature_ridge", "map": identity, "n": n, "m": m, "k": int(yy.shape[1]),
                          "batch_size": batch_size, "x": data_digest(x), "y": data_digest(yy)}, sort_keys=True)
        start = _resume(checkpoint, key, gram, rhs)
    bar = Progress(n, "feature ridge", enabled=progress)
    bar.update(start)
    saved, last = start, time.monotonic()
    for rows, batch in fmap.batches(x if start == 0 else x[start:], batch_size) if start < n else ():
        if start:
            rows = slice(rows.start + start, rows.stop + start)
        phi = batch.double().cpu()
        gram += phi.T @ phi
        rhs += phi.T @ yy[rows]
        bar.update(phi.shape[0])
        if checkpoint is not None and time.monotonic() - last >= every:
            _save(checkpoint, key, rows.stop, gram, rhs)
            saved, last = rows.stop, time.monotonic()
    bar.close()
    if checkpoint is not None and saved < n:
        _save(checkpoint, key, n, gram, rhs)
    chol, jitter = robust_cholesky(gram, diag_reg=diag_reg)
    return FeatureRidge(fmap, cho_solve(chol, rhs), squeeze, float(jitter), batch_size, chol)


def _resume(path: str | os.PathLike[str], key: str, gram: Tensor, rhs: Tensor) -> int:
    """Load the partial sums of ``path`` into ``gram`` and ``rhs`` when it holds the fit ``key``; rows done."""
    if not os.path.exists(path):
        return 0
    try:
        state = torch.load(path, weights_only=True)
        saved, rows = str(state["key"]), int(state["rows"])
        gram_s, rhs_s = state["gram"], state["rhs"]
    except Exception as err:
        raise ValueError(f"checkpoint: expected a checkpoint of fit_feature_ridge at {str(path)!r}, got a file that "
                         f"cannot be read ({err}); delete it or pass another path") from err
    if saved != key:
        old, new = json.loads(saved), json.loads(key)
        diff = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        raise ValueError(f"checkpoint: {str(path)!r} holds another fit (it differs in {', '.join(diff)}); delete it "
                         "or pass another path")
    gram.copy_(gram_s)
    rhs.copy_(rhs_s)
    return rows


def _save(path: str | os.PathLike[str], key: str, rows: int, gram: Tensor, rhs: Tensor) -> None:
    """Write the partial sums after ``rows`` rows (to a temporary file, then renamed: never half written)."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save({"key": key, "rows": rows, "gram": gram, "rhs": rhs}, tmp)
    os.replace(tmp, path)


__all__ = ["CHECKPOINT_EVERY", "FeatureBatches", "FeatureRidge", "feature_ridge", "fit_feature_ridge"]
