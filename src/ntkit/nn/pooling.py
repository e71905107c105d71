"""Sum pooling: :class:`SumPool1d` / :class:`SumPool2d`, the sum over a window (neural-tangents' ``SumPool``).

For an input ``x`` of shape ``(N, C, *S)``, a window ``W`` (``|W|`` taps), stride ``s`` and
symmetric zero padding ``p``::

    y[n, c, q] = sum_{delta in W} x[n, c, s q + delta - p]      (entries outside the input are 0),

with ``floor((n + 2 p - w) / s) + 1`` outputs per axis of size ``n``: the average pooling of torch
(``nn.AvgPool1d/2d`` with ``count_include_pad=True``) times ``|W|``. Torch's padding rule applies:
``p <= w / 2`` on every axis. Unlike an average, a sum pooling scales the features (and the
kernels, by ``|W|^2`` for unpadded windows); its infinite-width transform lives in
:mod:`ntkit.infinite.ops.sum_pool`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit._validation import check_int, describe

Tensor = torch.Tensor


def _ints(value: Any, n: int, name: str, minimum: int) -> tuple[int, ...]:
    """An integer or a sequence of ``n`` integers ``>= minimum``, as a tuple of ``n``."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value,) * n
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != n:
        raise ValueError(f"{name}: expected an integer or a sequence of {n} integers, got {describe(value)}")
    return tuple(check_int(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(value))


def sum_pool(x: Tensor, window: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """The window sums of ``x`` of shape ``(N, C, *S)`` (1 or 2 spatial axes), zero-padded; no checks.

    Torch's average pooling with a divisor of 1 (an exact sum; only the 2-D pooling takes
    ``divisor_override``, so a 1-D signal is pooled as an ``(N, C, 1, L)`` image with a ``(1, w)`` window).
    """
    if len(window) == 2:
        return F.avg_pool2d(x, tuple(window), tuple(stride), tuple(padding), divisor_override=1)
    out = F.avg_pool2d(x.unsqueeze(2), (1, *window), (1, *stride), (0, *padding), divisor_override=1)
    return out.squeeze(2)


class _SumPoolNd(nn.Module):
    """Sum over a window of ``ndim`` spatial axes (see the module notes)."""

    ndim: int = 2

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__()
        self.kernel_size = _ints(kernel_size, self.ndim, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _ints(stride, self.ndim, "stride", 1)
        self.padding = _ints(padding, self.ndim, "padding", 0)
        for axis, (k, p) in enumerate(zip(self.kernel_size, self.padding, strict=True)):
            if 2 * p > k:
                raise ValueError(f"padding: expected at most half the window (padding <= kernel_size / 2, as torch's "
                                 f"pooling), got padding {p} for kernel_size {k} on axis {axis}")

    @property
    def window(self) -> int:
        """``|W|``: the number of taps of the window."""
        return math.prod(self.kernel_size)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for an input of spatial shape ``spatial``.

        Raises
        ------
        ValueError
            When a padded axis is shorter than the window.
        """
        out = []
        for n, k, s, p in zip(spatial, self.kernel_size, self.stride, self.padding, strict=True):
            if n + 2 * p < k:
                raise ValueError(f"{type(self).__name__}: expected spatial sizes >= the window {self.kernel_size} "
                                 f"(with padding {self.padding}), got an input of spatial shape {tuple(spatial)}")
            out.append((n + 2 * p - k) // s + 1)
        return tuple(out)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.ndim + 2:
            axes = "L" if self.ndim == 1 else "H, W"
            raise ValueError(f"{type(self).__name__}: expected an input of shape (N, C, {axes}), got {describe(x)}")
        self.output_shape(x.shape[2:])
        return sum_pool(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class SumPool1d(_SumPoolNd):
    """Sum over windows of a 1-D signal: ``(N, C, L) -> (N, C, L')`` (neural-tangents' ``SumPool``).

    Parameters
    ----------
    kernel_size : int or (int,)
        The window ``w``.
    stride : int or (int,), optional
        Defaults to ``kernel_size`` (non-overlapping windows), as torch's pooling.
    padding : int or (int,)
        Zeros added on both sides (at most ``kernel_size / 2``); ``L' = (L + 2 padding - w) // stride + 1``.

    Raises
    ------
    ValueError
        A size below 1 (padding below 0), a padding above half the window; at the call, an input that
        is not 3-D or shorter than the window.
    TypeError
        A size that is not an integer.

    Examples
    --------
    >>> import torch
    >>> SumPool1d(2)(torch.arange(6.0).reshape(1, 1, 6)).tolist()
    [[[1.0, 5.0, 9.0]]]
    """

    ndim = 1


class SumPool2d(_SumPoolNd):
    """Sum over windows of an image: ``(N, C, H, W) -> (N, C, H', W')`` (neural-tangents' ``SumPool``).

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window ``(wh, ww)``.
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (non-overlapping windows), as torch's pooling.
    padding : int or (int, int)
        Zeros added on both sides of each axis (at most half the window).

    Raises
    ------
    ValueError
        A size below 1 (padding below 0), a padding above half the window; at the call, an input that
        is not 4-D or smaller than the window.
    TypeError
        A size that is not an integer.

    Examples
    --------
    >>> import torch
    >>> SumPool2d(2)(torch.ones(1, 1, 4, 4)).tolist()  # 4 = the window's taps
    [[[[4.0, 4.0], [4.0, 4.0]]]]
    """

    ndim = 2


__all__ = ["SumPool1d", "SumPool2d", "sum_pool"]
