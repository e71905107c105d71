"""Transposed convolutions in NTK (or standard) parameterization: :class:`ConvTranspose1d`, :class:`ConvTranspose2d`.

neural-tangents' ``stax.ConvTranspose`` (``lax.conv_transpose``): the input is *upsampled* — ``s - 1``
zeros inserted between neighbouring pixels, then zero padding ``(pad_a, pad_b)`` — and a stride-1
convolution reads it. Per spatial axis of size ``n`` with filter size ``k`` and stride ``s``::

    u(pad_a + s i) = x(i)  (i < n),   0 elsewhere     (length (n - 1) s + 1 + pad_a + pad_b)
    y_o(q) = w_std / sqrt(fan_in) * sum_{c, delta} W[o, c, delta] u_c(q + delta) + b_std b_o

with every entry of ``W`` and ``b`` i.i.d. N(0, 1), ``fan_in = in_channels * prod(kernel_size)``
(standard parameterization: the scales in the parameters, as :class:`ntkit.nn.Conv2d`), and

* ``"same"``: ``n s`` outputs; ``pad_a = k - 1`` if ``s >= k``, else ``ceil((k + s - 2) / 2)``;
  ``pad_a + pad_b = k + s - 2``;
* ``"valid"``: ``n s + max(k - s, 0)`` outputs; ``pad_a = k - 1``, ``pad_b = s - 1 + max(k - s, 0)``

(``lax``'s padding of a transposed convolution; with ``s = 1``, ``"valid"`` is the full convolution,
``n + k - 1`` outputs). ``weight[o, c, delta]`` is neural-tangents' ``W[delta, c, o]``: the same
parameters give the same function. Torch's ``conv_transpose`` computes it (its filter flipped, its
output cropped or zero-extended to these pads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ntkit._validation import describe
from ntkit.nn.linear import _FilterLayer

Tensor = torch.Tensor

TRANSPOSE_PADDINGS = ("same", "valid")


def conv_transpose_size(n: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """``(out, pad_a, pad_b)`` of one spatial axis of a transposed convolution (see the module notes)."""
    if padding == "same":
        pad_a = k - 1 if s >= k else -(-(k + s - 2) // 2)
        return n * s, pad_a, k + s - 2 - pad_a
    return n * s + max(k - s, 0), k - 1, s - 1 + max(k - s, 0)


class _ConvTransposeNd(_FilterLayer):
    """Transposed convolution over ``ndim`` spatial axes in NTK or standard parameterization (module notes)."""

    ndim: int = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str = "same",
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
        self._init_filter(in_channels, out_channels, kernel_size, stride, padding, TRANSPOSE_PADDINGS, w_std, b_std,
                          bias, parameterization, init, generator, device, dtype)

    def geometry(self, spatial: Sequence[int]) -> list[tuple[int, int, int]]:
        """Per spatial axis of an input of spatial shape ``spatial``: ``(out, pad_a, pad_b)``."""
        if len(spatial) != self.ndim:
            raise ValueError(f"{type(self).__name__}: expected {self.ndim} spatial axes, got the spatial shape "
                             f"{tuple(spatial)}")
        return [conv_transpose_size(int(n), k, s, self.padding)
                for n, k, s in zip(spatial, self.kernel_size, self.stride, strict=True)]

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for an input of spatial shape ``spatial`` (``n s``, or ``n s + max(k - s, 0)``)."""
        return tuple(out for out, _, _ in self.geometry(spatial))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected an input of shape (N, {self.in_channels}, "
                f"{', '.join('L' if self.ndim == 1 else 'HW'[i] for i in range(self.ndim))}), got {describe(x)}"
            )
        spatial = tuple(x.shape[2:])
        conv = F.conv_transpose1d if self.ndim == 1 else F.conv_transpose2d
        axes = tuple(range(2, 2 + self.ndim))
        # torch's y[j] = sum_delta w[delta] u0(j - delta) over the input upsampled without padding: flipped,
        # its output j = q + k - 1 - pad_a is ours at q (then cropped / zero-extended to our length)
        out = conv(x, self.weight.flip(axes).transpose(0, 1), stride=self.stride) * self.weight_scale
        geometry = self.geometry(spatial)
        pads: list[int] = []
        for axis in reversed(range(self.ndim)):  # F.pad lists the last axis first
            size, pad_a, _ = geometry[axis]
            shift = self.kernel_size[axis] - 1 - pad_a
            pads += [-shift, size + shift - out.shape[2 + axis]]
        if any(pads):
            out = F.pad(out, pads)
        if self.bias is None:
            return out
        return out + (self.bias_scale * self.bias).view(-1, *([1] * self.ndim))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, w_std={self.w_std}, b_std={self.b_std}, bias={self.bias is not None}, "
            f"parameterization={self.parameterization!r}, init={self.init!r}"
        )


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution ``(N, C_in, L) -> (N, C_out, L_out)`` (neural-tangents' ``ConvTranspose``).

    Parameters as :class:`ConvTranspose2d` with one spatial axis.

    Examples
    --------
    >>> import torch
    >>> up = ConvTranspose1d(2, 4, 3, stride=2, padding="valid", generator=torch.Generator().manual_seed(0))
    >>> up(torch.ones(1, 2, 5)).shape  # 5 * 2 + max(3 - 2, 0) outputs
    torch.Size([1, 4, 11])
    """

    ndim = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` in NTK or standard parameterization.

    The input upsampled by the stride (zeros between its pixels), zero-padded, then convolved with
    stride 1 (see the module notes): neural-tangents' ``stax.ConvTranspose(out_channels, kernel_size,
    stride, padding, W_std, b_std, parameterization=...)``, the same output sizes and the same function
    of the same parameters.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int)
        The upsampling factor.
    padding : {"same", "valid"}
        ``"same"``: ``n * stride`` outputs per axis; ``"valid"``: ``n * stride + max(k - stride, 0)``.
    w_std, b_std, bias, parameterization, init, generator, device, dtype
        As in :class:`Linear` (``fan_in = in_channels * prod(kernel_size)``, as neural-tangents counts it).

    Attributes
    ----------
    weight : Parameter of shape (out_channels, in_channels, *kernel_size)
        ``weight[o, c, delta]`` multiplies the upsampled input ``u_c(q + delta)`` (neural-tangents'
        ``W[delta, c, o]``; torch's ``nn.ConvTranspose2d`` stores the flipped filter as (in, out, ...)).
    bias : Parameter of shape (out_channels,) or None

    Raises
    ------
    ValueError
        Sizes below 1, a ``padding`` other than ``"same"`` / ``"valid"``, bad scales or options (as
        :class:`Linear`); at the call, an input of the wrong rank or number of channels.
    TypeError
        Sizes that are not integers, scales that are not real numbers.

    Examples
    --------
    >>> import torch
    >>> up = ConvTranspose2d(3, 8, 3, stride=2, generator=torch.Generator().manual_seed(0))
    >>> up(torch.ones(1, 3, 4, 5)).shape  # "same": upsampled by the stride
    torch.Size([1, 8, 8, 10])
    """

    ndim = 2


__all__ = ["TRANSPOSE_PADDINGS", "ConvTranspose1d", "ConvTranspose2d", "conv_transpose_size"]
