"""Parameter-free building blocks of :mod:`ntkit.nn`: activations, residual blocks, layer norm, global pooling.

* :class:`Activation` applies an :class:`ntkit.DualActivation` (a name such as ``"erf"``, an
  object such as ``RectifiedMonomial(2)``, or any elementwise callable) pointwise. Every torch
  activation module with a Gaussian dual map (``nn.ReLU``, ``nn.Tanh``, ``nn.GELU``, ...) can be used
  directly instead.
* :class:`Residual` computes ``x + scale * block(x)``.
* :class:`LayerNorm` normalises over the feature / channel axis (axis 1): per example and, for
  images, per pixel; or, with ``normalized_shape``, over the last axes as torch does (whole
  examples); no learned gain or bias.
* :class:`GlobalAvgPool` averages over every spatial axis: ``(N, C, *S) -> (N, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_float, check_int, describe
from ntkit.activations import DualActivation, get_activation

Tensor = torch.Tensor


class Activation(nn.Module):
    """Pointwise nonlinearity from an ntkit activation (name, object or callable): the torch module.

    It holds the dual-map object (:class:`ntkit.DualActivation`) as ``.activation`` and applies it in the
    forward pass; the kernels read the dual maps from there.

    Parameters
    ----------
    activation : str, ntkit.DualActivation or callable
        Resolved by :func:`ntkit.activations.get_activation`: closed-form dual maps for ~20 named
        activations, the general (Mehler / quadrature) path for any other callable.

    Examples
    --------
    >>> import torch
    >>> Activation("erf")(torch.zeros(2)).tolist()
    [0.0, 0.0]
    """

    def __init__(self, activation: str | DualActivation | Any = "relu") -> None:
        super().__init__()
        self.activation = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x)

    def extra_repr(self) -> str:
        return repr(self.activation)


class Residual(nn.Module):
    """``x + scale * block(x)``; the block must keep the shape of its input.

    In the infinite-width limit the two branches are independent when the block ends with a weight
    layer, so their kernels add: ``K = K_x + scale^2 K_block`` (NNGP and NTK alike).

    Parameters
    ----------
    *block : nn.Module
        One module, or several applied in sequence (wrapped in ``nn.Sequential``).
    scale : float
        Multiplies the block's output (``1``: the plain residual connection of He et al. 2016).

    Raises
    ------
    ValueError
        No module given; a ``scale`` that is not finite; at the call, a block whose output shape
        differs from its input's.
    TypeError
        A block argument that is not a ``torch.nn.Module``; a ``scale`` that is not a real number.

    Examples
    --------
    >>> import torch, ntkit
    >>> model = torch.nn.Sequential(ntkit.nn.Linear(2, 8, device="meta"),
    ...                             Residual(torch.nn.ReLU(), ntkit.nn.Linear(8, 8, device="meta")),
    ...                             ntkit.nn.Linear(8, 1, device="meta"))
    >>> x = torch.eye(2, dtype=torch.float64)
    >>> ntkit.infinite_kernel(model, x, which="nngp").diag().tolist()  # |x|^2 / 2 + E[relu(u)^2], u ~ N(0, 1/2)
    [0.75, 0.75]
    """

    def __init__(self, *block: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        if not block:
            raise ValueError("Residual: expected at least one module for the block, got none")
        for i, m in enumerate(block):
            if not isinstance(m, nn.Module):
                raise TypeError(f"Residual: expected torch.nn.Module blocks, got {describe(m)} at position {i}")
        self.block = block[0] if len(block) == 1 else nn.Sequential(*block)
        self.scale = check_float(scale, "scale")

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if out.shape != x.shape:
            raise ValueError(
                f"Residual: expected the block to keep the input's shape {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        return x + self.scale * out if self.scale != 1.0 else x + out

    def extra_repr(self) -> str:
        return f"scale={self.scale}" if self.scale != 1.0 else ""


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps)`` over the channels at each pixel, or over whole examples; no parameters.

    In the infinite-width limit the mean and variance over the channels become deterministic:
    the kernels of a centred Gaussian input are divided by ``sqrt((v1 + eps)(v2 + eps))``, ``v`` the
    variance at each pixel (``normalized_shape=None``) or its mean over the pixels (whole examples).

    Parameters
    ----------
    normalized_shape : None, int or sequence of int
        ``None`` (default): over axis 1 (the features of a vector, the channels at each pixel of an
        image). An int or a sequence: torch's ``nn.LayerNorm`` convention, the *last*
        ``len(normalized_shape)`` axes of the input, whose sizes must equal it; ``(C, H, W)`` for
        images ``(N, C, H, W)`` normalises each example over everything (neural-tangents'
        ``LayerNorm(axis=(1, 2, 3))`` on its channels-last images). :func:`ntkit.infinite_kernel`
        needs the channels among the axes: ``None`` or the whole example shape.
    eps : float
        Added to the (biased) variance over the axes.

    Raises
    ------
    ValueError
        ``eps < 0`` or not finite, a size in ``normalized_shape`` below 1; at the call, an input with
        fewer than 2 dimensions, or whose last axes differ from ``normalized_shape``.
    TypeError
        An ``eps`` that is not a real number, a ``normalized_shape`` that is not None, an integer or a
        sequence of integers.

    Examples
    --------
    >>> import torch
    >>> y = LayerNorm(eps=0.0)(torch.tensor([[1.0, 2.0, 3.0]]))
    >>> [round(v, 4) for v in y[0].tolist()]  # (x - 2) / sqrt(2 / 3)
    [-1.2247, 0.0, 1.2247]
    >>> z = LayerNorm((2, 3, 3))(torch.randn(4, 2, 3, 3))  # each image over its channels and pixels
    >>> bool(z[0].mean().abs() < 1e-6), round(float(z[0].pow(2).mean()), 3)
    (True, 1.0)
    """

    def __init__(self, normalized_shape: int | Sequence[int] | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = check_float(eps, "eps", minimum=0.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.normalized_shape is None:
            if x.ndim < 2:
                raise ValueError(f"LayerNorm: expected an input of shape (N, C, ...), got {describe(x)}")
            mean = x.mean(dim=1, keepdim=True)
            var = (x - mean).pow(2).mean(dim=1, keepdim=True)
            return (x - mean) / torch.sqrt(var + self.eps)
        k = len(self.normalized_shape)
        if x.ndim < k + 1 or tuple(x.shape[x.ndim - k :]) != self.normalized_shape:
            axes = ", ".join(map(str, self.normalized_shape))
            raise ValueError(f"LayerNorm: expected an input of shape (N, ..., {axes}) (normalized_shape "
                             f"{self.normalized_shape} as its last axes), got {describe(x)}")
        dims = tuple(range(x.ndim - k, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        if self.normalized_shape is None:
            return f"eps={self.eps}"
        return f"normalized_shape={self.normalized_shape}, eps={self.eps}"


def _normalized_shape(value: Any) -> tuple[int, ...] | None:
    """``None``, or ``value`` (an int or a sequence of ints >= 1) as a tuple."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value or any(
            not isinstance(v, int) or isinstance(v, bool) for v in value):
        hint = " (eps is the second argument: LayerNorm(eps=...))" if isinstance(value, float) else ""
        raise TypeError(f"normalized_shape: expected None, an integer or a non-empty sequence of integers, "
                        f"got {describe(value)}{hint}")
    return tuple(check_int(v, f"normalized_shape[{i}]", minimum=1) for i, v in enumerate(value))


class GlobalAvgPool(nn.Module):
    """Mean over every spatial axis: ``(N, C, *S) -> (N, C)``.

    Raises
    ------
    ValueError
        At the call, an input with fewer than 3 dimensions.

    Examples
    --------
    >>> import torch
    >>> GlobalAvgPool()(torch.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[1.5, 5.5]]
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 3:
            raise ValueError(f"GlobalAvgPool: expected an input of shape (N, C, *spatial), got {describe(x)}")
        return x.mean(dim=tuple(range(2, x.ndim)))


__all__ = ["Activation", "GlobalAvgPool", "LayerNorm", "Residual"]
