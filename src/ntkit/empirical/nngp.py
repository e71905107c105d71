"""Empirical NNGP of one network: inner products of its outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ntkit._validation import check_choice, check_pair, describe
from ntkit.empirical._common import MODES, Tensor, model_output


def empirical_nngp(model: nn.Module, x1: Any, x2: Any | None = None, *, mode: str = "trace") -> Tensor:
    """Empirical NNGP of one network: inner products of its outputs.

    ``mode="trace"`` gives ``f(x1) . f(x2) / k`` of shape (N1, N2) — an unbiased one-network estimate
    of the NNGP kernel ``Sigma(L)`` when the outputs are i.i.d.; ``"diagonal"`` gives
    ``f_i(x1) f_i(x2)`` of shape (N1, N2, k); ``"full"`` gives ``f_i(x1) f_j(x2)`` of shape
    (N1, N2, k, k).

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch (N, ...) to outputs (N, k).
    x1 : Tensor of shape (N1, ...)
    x2 : Tensor of shape (N2, ...), optional
        Defaults to ``x1``.
    mode : {"trace", "diagonal", "full"}

    Returns
    -------
    Tensor
        (N1, N2), (N1, N2, k) or (N1, N2, k, k) by ``mode``.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ValueError
        An unknown ``mode``, inputs of different trailing shapes.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(3, [256], 4, seed=0)
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> ntkit.empirical_nngp(net, x).shape, ntkit.empirical_nngp(net, x, mode="full").shape
    (torch.Size([5, 5]), torch.Size([5, 5, 4, 4]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    check_choice(mode, "mode", MODES)
    ref = next(model.parameters(), None)
    t1, t2 = check_pair(
        x1, x2, dtype=None if ref is None else ref.dtype, device=None if ref is None else ref.device, ndim=None
    )
    model_output(model, t1, "x1")
    with torch.no_grad():
        f1 = model(t1)
        f2 = f1 if t2 is None else model(t2)
    if mode == "full":
        return f1[:, None, :, None] * f2[None, :, None, :]
    if mode == "diagonal":
        return f1[:, None, :] * f2[None, :, :]
    return f1 @ f2.T / f1.shape[1]
