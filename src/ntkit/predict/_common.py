"""Shared by the predictors of :mod:`ntkit.predict`: their result types and the validation and layout
of kernels, targets, initial outputs and times.

A kernel of shape (N, N) is shared by the ``k`` outputs; one of shape (N, N, k, k) couples them and
is handled as the (N k, N k) matrix of its blocks (:class:`Layout` converts targets to and from it).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ntkit._validation import as_tensor, check_dtype, describe

Tensor = torch.Tensor


class Prediction(NamedTuple):
    """Outputs at time ``t``: ``train`` of the shape of ``y_train``; ``test`` (M, k) or None.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gradient_descent_mse
    >>> k = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> pred = gradient_descent_mse(k, torch.tensor([[1.0], [-1.0]]))(None)  # t = inf from f_0 = 0
    >>> pred.train.round(decimals=10).tolist(), pred.test is None
    ([[1.0], [-1.0]], True)
    """

    train: Tensor
    test: Tensor | None


class GaussianPrediction(NamedTuple):
    """A Gaussian over outputs: ``mean`` of shape (M, k) (or (M,)), ``cov`` of shape (M, M) shared by
    the ``k`` outputs (or the variances (M,) when only a diagonal was asked for, or None).

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gp_inference
    >>> post = gp_inference(torch.eye(3, dtype=torch.float64), torch.ones(3, 1), diag_reg=1.0)()
    >>> post.mean.shape, post.cov.shape
    (torch.Size([3, 1]), torch.Size([3, 3]))
    """

    mean: Tensor
    cov: Tensor | None


class Layout(NamedTuple):
    """How targets of shape (N, k) (or (N,)) map onto the training kernel as a matrix: unchanged for a
    shared (N, N) kernel, a column (N k, 1) for a block kernel (N, N, k, k) seen as (N k, N k)."""

    n: int  # training points N
    k: int  # outputs
    block: bool  # kernel of shape (N, N, k, k)
    vector: bool  # y_train given as (N,)

    @property
    def size(self) -> int:
        """``N k``: the number of scalar targets."""
        return self.n * self.k

    def y_to_matrix(self, y: Tensor) -> Tensor:
        """(N, k) -> (N, k) for a shared kernel, (N k, 1) for block kernels."""
        return y.reshape(-1, 1) if self.block else y

    def matrix_to_y(self, m: Tensor, rows: int) -> Tensor:
        """The inverse of :meth:`y_to_matrix` for ``rows`` inputs: (rows, k), or (rows,) for vector targets."""
        out = m.reshape(rows, self.k)
        return out[:, 0] if self.vector else out


def kernel_as_matrix(k: Tensor, name: str) -> tuple[Tensor, bool]:
    """A kernel of shape (A, B) or (A, B, k, k) as a matrix ((A, B) or (A k, B k)) and whether blocked."""
    if k.ndim == 2:
        return k, False
    if k.ndim == 4 and k.shape[2] == k.shape[3]:
        a, b, kk, _ = k.shape
        return k.permute(0, 2, 1, 3).reshape(a * kk, b * kk), True
    raise ValueError(f"{name}: expected a kernel of shape (N1, N2) or (N1, N2, k, k), got {describe(k)}")


def train_inputs(
    k_train_train: Any, y_train: Any, dtype: torch.dtype, name: str = "k_train_train"
) -> tuple[Tensor, Tensor, Layout]:
    """Validate a training kernel (N, N) or (N, N, k, k) and targets (N, k) or (N,).

    Returns the kernel as a matrix (:func:`kernel_as_matrix`), the targets as (N, k) and their
    :class:`Layout`.
    """
    check_dtype(dtype)
    kt = as_tensor(k_train_train, name, dtype=dtype, ndim=None)
    y = as_tensor(y_train, "y_train", dtype=dtype, device=kt.device, ndim=None)
    if y.ndim not in (1, 2):
        raise ValueError(f"y_train: expected shape (N,) or (N, k), got {describe(y)}")
    vector = y.ndim == 1
    y2 = y[:, None] if vector else y
    n, k = y2.shape
    mat, block = kernel_as_matrix(kt, name)
    expected = (n, n, k, k) if block else (n, n)
    if tuple(kt.shape) != expected:
        raise ValueError(
            f"{name} and y_train: expected a kernel of shape {expected} for y_train of shape "
            f"{tuple(y.shape)}, got {tuple(kt.shape)}"
        )
    return mat, y2, Layout(n=n, k=k, block=block, vector=vector)


def initial_outputs(value: Any, name: str, rows: int, layout: Layout, like: Tensor) -> Tensor:
    """Validate initial outputs (``None`` means zeros) and return them as (rows, k)."""
    if value is None:
        return torch.zeros(rows, layout.k, dtype=like.dtype, device=like.device)
    t = as_tensor(value, name, dtype=like.dtype, device=like.device, ndim=None)
    expected = (rows,) if layout.vector else (rows, layout.k)
    if tuple(t.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(t.shape)}")
    return t.reshape(rows, layout.k)


def cross_kernel(k_test_train: Any, layout: Layout, like: Tensor, name: str = "k_test_train") -> tuple[Tensor, int]:
    """``k_test_train`` as a matrix (M, N) or (M k, N k); returns it and M."""
    t = as_tensor(k_test_train, name, dtype=like.dtype, device=like.device, ndim=None)
    if layout.block:
        if t.ndim != 4 or tuple(t.shape[1:]) != (layout.n, layout.k, layout.k):
            raise ValueError(
                f"{name}: expected shape (M, {layout.n}, {layout.k}, {layout.k}) like k_train_train, got {describe(t)}"
            )
    elif t.ndim != 2 or t.shape[1] != layout.n:
        raise ValueError(f"{name}: expected shape (M, {layout.n}) like k_train_train, got {describe(t)}")
    mat, _ = kernel_as_matrix(t, name)
    return mat, int(t.shape[0])


def check_time(t: Any, *, discrete: bool) -> float:
    """A time ``t >= 0`` as a float (``None`` is ``inf``); a whole number of steps when ``discrete``."""
    if t is None:
        return math.inf
    if isinstance(t, torch.Tensor) and t.numel() == 1:
        t = t.item()
    if isinstance(t, bool) or (not isinstance(t, (int, float)) and not hasattr(t, "__float__")):
        raise TypeError(f"t: expected a number >= 0 or None / math.inf, got {describe(t)}")
    v = float(t)
    if math.isnan(v):
        raise ValueError("t: expected a number >= 0 or None / math.inf, got nan")
    if v < 0:
        raise ValueError(f"t: expected a time >= 0, got {v}")
    if discrete and math.isfinite(v) and v != round(v):
        raise ValueError(f"t: expected a whole number of gradient-descent steps (discrete=True), got {v}")
    return v
