"""How far training moves a network: the relative change of its empirical NTK and the distance between two
models' outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ntkit._validation import as_tensor


def kernel_movement(theta_0: Any, theta_t: Any) -> float:
    """``||Theta_t - Theta_0||_F / ||Theta_0||_F`` for two empirical NTKs of the same shape.

    Parameters
    ----------
    theta_0, theta_t : Tensor
        The kernels before and after training, of the same shape.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Different shapes, or ``theta_0`` all zeros.

    Examples
    --------
    >>> import torch
    >>> from ntkit.train import kernel_movement
    >>> kernel_movement(torch.eye(2), 1.1 * torch.eye(2))  # doctest: +ELLIPSIS
    0.100000...
    """
    a = as_tensor(theta_0, "theta_0", ndim=None)
    b = as_tensor(theta_t, "theta_t", dtype=a.dtype, device=a.device, ndim=None)
    if a.shape != b.shape:
        raise ValueError(f"theta_t: expected the shape of theta_0 {tuple(a.shape)}, got {tuple(b.shape)}")
    norm = float(torch.linalg.vector_norm(a))
    if norm == 0:
        raise ValueError("theta_0: expected a non-zero kernel, got all zeros")
    return float(torch.linalg.vector_norm(b - a)) / norm


def function_distance(model_a: nn.Module, model_b: nn.Module, x: Any) -> float:
    """Root-mean-square difference ``sqrt(mean (f_a(x) - f_b(x))^2)`` of two models' outputs on ``x``.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Models with outputs of the same shape.
    x : Tensor of shape (N, ...)
        Inputs (converted to ``model_a``'s dtype and device).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        The outputs have different shapes.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [16], 1, seed=0)
    >>> ntkit.train.function_distance(net, ntkit.linearize(net), torch.randn(4, 2))  # equal at theta_0
    0.0
    """
    ref = next(model_a.parameters())
    xt = as_tensor(x, "x", dtype=ref.dtype, device=ref.device, ndim=None)
    with torch.no_grad():
        fa, fb = model_a(xt), model_b(xt)
    if fa.shape != fb.shape:
        raise ValueError(f"model_b: expected outputs of shape {tuple(fa.shape)}, got {tuple(fb.shape)}")
    return float(torch.sqrt(((fa - fb) ** 2).mean()))


__all__ = ["function_distance", "kernel_movement"]
