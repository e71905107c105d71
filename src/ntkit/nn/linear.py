"""Weight layers in NTK (or standard) parameterization: :class:`Linear`, :class:`Conv1d`, :class:`Conv2d`.

NTK parameterization (Jacot et al. 2018), with every entry of ``W`` and ``b`` i.i.d. N(0, 1)::

    z = w_std / sqrt(fan_in) * (W * a) + b_std * b

where ``*`` is a matrix product (``fan_in = in_features``) or a convolution (``fan_in =
in_channels * prod(kernel_size)``). In standard parameterization the scales live in the
parameters (``W ~ N(0, w_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``) and ``z = W * a + b``.

Convolution padding, per spatial axis of size ``n`` with filter size ``f`` and stride ``s``:

* ``"valid"``: no padding, ``(n - f) // s + 1`` outputs;
* ``"same"``: ``ceil(n / s)`` outputs, zero padding ``max((out - 1) s + f - n, 0)`` split with the odd
  pixel at the end (TensorFlow's and neural-tangents' SAME);
* ``"circular"``: the same sizes, the padding wrapped around (periodic images).

These modules are ordinary ``torch.nn.Module``s (train them, move them, build them on
``device="meta"``); :func:`ntkit.infinite_kernel` reads their hyperparameters to compute the
infinite-width kernels of the model they are part of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit._validation import check_choice, check_int, describe
from ntkit.nn._init import check_layer_options, draw_

Tensor = torch.Tensor

PADDINGS = ("same", "valid", "circular")


def conv_output_size(n: int, f: int, s: int, padding: str) -> tuple[int, int, int]:
    """``(out, pad_before, pad_after)`` of one spatial axis (see the module notes). ``out`` may be < 1."""
    if padding == "valid":
        return (n - f) // s + 1, 0, 0
    out = -(-n // s)
    total = max((out - 1) * s + f - n, 0)
    return out, total // 2, total - total // 2


class _WeightLayer(nn.Module):
    """What every weight layer shares: the scales of its forward pass and its initialisation.

    Subclasses set ``w_std``, ``b_std``, ``parameterization``, ``init``, ``weight`` and ``bias`` and
    define :attr:`fan_in`.
    """

    w_std: float
    b_std: float
    parameterization: str
    init: str
    weight: nn.Parameter
    bias: nn.Parameter | None

    @property
    def fan_in(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def weight_scale(self) -> float:
        """Factor applied to ``W * a`` in the forward pass (``w_std / sqrt(fan_in)`` in ntk, 1 otherwise)."""
        return self.w_std / math.sqrt(self.fan_in) if self.parameterization == "ntk" else 1.0

    @property
    def bias_scale(self) -> float:
        """Factor applied to ``b`` in the forward pass (``b_std`` in ntk, 1 otherwise)."""
        return self.b_std if self.parameterization == "ntk" else 1.0

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw the parameters afresh (deterministic given ``generator``'s state; nothing on ``meta``)."""
        draw_(self.weight, self.bias, fan_in=self.fan_in, w_std=self.w_std, b_std=self.b_std,
              parameterization=self.parameterization, init=self.init, generator=generator)


class Linear(_WeightLayer):
    """Affine layer ``z = w_std W a / sqrt(in_features) + b_std b`` (``"ntk"``) or ``z = W a + b`` (``"standard"``).

    Parameters
    ----------
    in_features, out_features : int
    w_std : float
        Weight scale (``> 0``).
    b_std : float
        Bias scale (``>= 0``; ``0`` keeps a bias parameter that contributes nothing in NTK
        parameterization).
    bias : bool
        ``False``: no bias parameter at all.
    parameterization : {"ntk", "standard"}
    init : {"gaussian", "orthogonal"}
    generator : torch.Generator, optional
    device, dtype
        Where and in what precision the parameters live (torch's defaults when omitted).

    Attributes
    ----------
    weight : Parameter of shape (out_features, in_features)
    bias : Parameter of shape (out_features,) or None

    Raises
    ------
    ValueError
        ``in_features`` or ``out_features`` below 1, ``w_std <= 0``, ``b_std < 0`` (or not finite), an
        unknown ``parameterization`` or ``init``.
    TypeError
        Sizes that are not integers, scales that are not real numbers, a ``generator`` that is not a
        ``torch.Generator``.

    Examples
    --------
    >>> import torch
    >>> layer = Linear(3, 5, w_std=1.5, b_std=0.1, generator=torch.Generator().manual_seed(0))
    >>> layer(torch.ones(2, 3)).shape
    torch.Size([2, 5])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        w_std: float = 1.0,
        b_std: float = 0.0,
        bias: bool = True,
        parameterization: str = "ntk",
        init: str = "gaussian",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.w_std, self.b_std, self.parameterization, self.init = check_layer_options(
            w_std, b_std, parameterization, init, generator
        )
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters(generator)

    @property
    def fan_in(self) -> int:
        """Inputs per output unit (``in_features``)."""
        return self.in_features

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight) * self.weight_scale
        return out if self.bias is None else out + self.bias_scale * self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, w_std={self.w_std}, "
            f"b_std={self.b_std}, bias={self.bias is not None}, parameterization={self.parameterization!r}, "
            f"init={self.init!r}"
        )


def _tuple(value: Any, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value,) * n
    if not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(f"{name}: expected an integer or a sequence of {n} integers, got {describe(value)}")
    return tuple(check_int(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(value))


class _FilterLayer(_WeightLayer):
    """What the convolutions and the transposed convolutions share: the filter's parameters, parsed once.

    ``weight`` has shape ``(out_channels, in_channels, *kernel_size)``; ``paddings`` are the padding
    names the subclass accepts. The two kinds stay distinct types (a transposed convolution is not a
    :class:`_ConvNd`: the empirical NTK's structured rules dispatch on the latter).
    """

    ndim: int = 2

    def _init_filter(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: str,
        paddings: Sequence[str],
        w_std: float,
        b_std: float,
        bias: bool,
        parameterization: str,
        init: str,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.out_channels = check_int(out_channels, "out_channels", minimum=1)
        self.kernel_size = _tuple(kernel_size, self.ndim, "kernel_size")
        self.stride = _tuple(stride, self.ndim, "stride")
        self.padding = check_choice(padding, "padding", tuple(paddings))
        self.w_std, self.b_std, self.parameterization, self.init = check_layer_options(
            w_std, b_std, parameterization, init, generator
        )
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(self.out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters(generator)

    @property
    def fan_in(self) -> int:
        """Inputs per output unit (as neural-tangents counts them): ``in_channels * prod(kernel_size)``."""
        return self.in_channels * math.prod(self.kernel_size)


class _ConvNd(_FilterLayer):
    """Convolution over ``ndim`` spatial axes in NTK or standard parameterization (see the module notes)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        padding: str = "same",
        w_std: float = 1.0,
        b_std: float = 0.0,
        bias: bool = True,
        parameterization: str = "ntk",
        init: str = "gaussian",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._init_filter(in_channels, out_channels, kernel_size, stride, padding, PADDINGS, w_std, b_std, bias,
                          parameterization, init, generator, device, dtype)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for an input of spatial shape ``spatial``.

        Raises
        ------
        ValueError
            When the input is too small for the filter (``valid``) or the stride leaves no output.
        """
        out = []
        for n, f, s in zip(spatial, self.kernel_size, self.stride, strict=True):
            size = conv_output_size(n, f, s, self.padding)[0]
            if size < 1:
                raise ValueError(
                    f"{type(self).__name__}: expected a spatial size >= {f} (the filter, padding 'valid'), "
                    f"got an input of spatial shape {tuple(spatial)}"
                )
            out.append(size)
        return tuple(out)

    def pad(self, x: Tensor) -> Tensor:
        """``x`` (N, C, *spatial) padded for a 'valid' convolution with this layer's filter and stride."""
        if self.padding == "valid":
            return x
        pads: list[int] = []
        for axis in reversed(range(self.ndim)):  # F.pad lists the last axis first
            n = x.shape[2 + axis]
            _, before, after = conv_output_size(n, self.kernel_size[axis], self.stride[axis], self.padding)
            pads += [before, after]
        if not any(pads):
            return x
        if self.padding == "circular":
            return _wrap(x, pads, self.ndim)
        return F.pad(x, pads)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected an input of shape (N, {self.in_channels}, "
                f"{', '.join('L' if self.ndim == 1 else 'HW'[i] for i in range(self.ndim))}), got {describe(x)}"
            )
        self.output_shape(x.shape[2:])
        conv = F.conv1d if self.ndim == 1 else F.conv2d
        out = conv(self.pad(x), self.weight, stride=self.stride) * self.weight_scale
        if self.bias is None:
            return out
        return out + (self.bias_scale * self.bias).view(-1, *([1] * self.ndim))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, w_std={self.w_std}, b_std={self.b_std}, bias={self.bias is not None}, "
            f"parameterization={self.parameterization!r}, init={self.init!r}"
        )


def _wrap(x: Tensor, pads: list[int], ndim: int) -> Tensor:
    """Circular padding by index wrapping (any pad size, also larger than the axis)."""
    for axis in range(ndim):
        before, after = pads[2 * (ndim - 1 - axis)], pads[2 * (ndim - 1 - axis) + 1]
        n = x.shape[2 + axis]
        idx = torch.arange(-before, n + after, device=x.device) % n
        x = x.index_select(2 + axis, idx)
    return x


class Conv1d(_ConvNd):
    """1-D convolution ``(N, C_in, L) -> (N, C_out, L_out)`` in NTK or standard parameterization.

    Parameters as :class:`Conv2d` with one spatial axis.

    Examples
    --------
    >>> import torch
    >>> conv = Conv1d(2, 4, 3, padding="valid", generator=torch.Generator().manual_seed(0))
    >>> conv(torch.ones(1, 2, 10)).shape  # (10 - 3) // 1 + 1 outputs
    torch.Size([1, 4, 8])
    """

    ndim = 1


class Conv2d(_ConvNd):
    """2-D convolution ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` in NTK or standard parameterization.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
        Filter size (odd or even).
    stride : int or (int, int)
    padding : {"same", "valid", "circular"}
        See the module notes (``"same"`` with a stride > 1 gives ``ceil(n / stride)`` outputs).
    w_std, b_std, bias, parameterization, init, generator, device, dtype
        As in :class:`Linear` (``fan_in = in_channels * prod(kernel_size)``).

    Examples
    --------
    >>> import torch
    >>> conv = Conv2d(3, 8, 3, stride=2, padding="same", generator=torch.Generator().manual_seed(0))
    >>> conv(torch.ones(1, 3, 7, 6)).shape
    torch.Size([1, 8, 4, 3])
    """

    ndim = 2


__all__ = ["PADDINGS", "Conv1d", "Conv2d", "Linear", "conv_output_size"]
