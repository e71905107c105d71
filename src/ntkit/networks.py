"""Finite fully connected networks in NTK or standard parameterization.

The network of Jacot et al. (2018), with ``L = depth + 1`` weight layers::

    a(0) = x
    z(l+1) = w_std * W(l) a(l) / sqrt(n_l) + beta * b(l)      ("ntk",       W, b ~ N(0, 1))
    z(l+1) = W(l) a(l) + b(l)                                  ("standard",  W ~ N(0, w_std^2 / n_l),
                                                                               b ~ N(0, beta^2))
    a(l) = sigma(z(l)),   f(x) = z(L)

Both parameterizations define the same function distribution at initialisation, hence the same
NNGP kernel. In NTK parameterization the empirical NTK converges to the deterministic
:func:`ntkit.fc_kernel` limit. ``init="orthogonal"`` draws each ``W(l)`` as a scaled random
(semi-)orthogonal matrix whose entries have the same variance as the Gaussian ones; its
infinite-width kernels coincide with the Gaussian ones (Huang et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_choice, check_dtype, check_float, check_int, describe
from ntkit.activations import Activation, get_activation
from ntkit.kernel import Kernel

Tensor = torch.Tensor

PARAMETERIZATIONS = ("ntk", "standard")
INITS = ("gaussian", "orthogonal")


def orthogonal_(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``weight`` (out, in) with a Haar-random semi-orthogonal matrix scaled to unit-variance entries.

    The rows (if ``out <= in``) or columns are orthonormal, multiplied by ``sqrt(max(out, in))`` so
    that ``E[W_ij^2] = 1`` as for the Gaussian draw. Sign-corrected QR of a Gaussian matrix gives the
    Haar measure (Mezzadri 2007).
    """
    rows, cols = weight.shape
    big, small = max(rows, cols), min(rows, cols)
    g = torch.randn(big, small, generator=generator, dtype=torch.float64, device=weight.device)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(1, dtype=q.dtype, device=q.device))
    if rows < cols:
        q = q.T
    with torch.no_grad():
        weight.copy_(q * math.sqrt(big))
    return weight


class ActivationLayer(nn.Module):
    """``nn.Module`` wrapper applying an :class:`~ntkit.activations.Activation` elementwise."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x)

    def extra_repr(self) -> str:
        return repr(self.activation)


class NTKLinear(nn.Module):
    """Affine layer ``z = w_std W a / sqrt(n_in) + beta b`` (ntk) or ``z = W a + b`` (standard).

    Parameters ``weight`` of shape (out_features, in_features) and ``bias`` of shape (out_features,).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        w_std: float = 1.0,
        beta: float = 0.0,
        parameterization: str = "ntk",
        init: str = "gaussian",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.w_std = w_std
        self.beta = beta
        self.parameterization = parameterization
        self.init = init
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.reset_parameters(generator)

    @property
    def weight_scale(self) -> float:
        """Factor applied to ``W a`` in the forward pass (``w_std / sqrt(n_in)`` in ntk, 1 otherwise)."""
        return self.w_std / math.sqrt(self.in_features) if self.parameterization == "ntk" else 1.0

    @property
    def bias_scale(self) -> float:
        """Factor applied to ``b`` in the forward pass (``beta`` in ntk, 1 otherwise)."""
        return self.beta if self.parameterization == "ntk" else 1.0

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw the parameters afresh (deterministic given ``generator``'s state)."""
        with torch.no_grad():
            if self.init == "orthogonal":
                orthogonal_(self.weight, generator)
            else:
                w = torch.randn(self.weight.shape, generator=generator, dtype=torch.float64, device=self.weight.device)
                self.weight.copy_(w)
            b = torch.randn(self.bias.shape, generator=generator, dtype=torch.float64, device=self.bias.device)
            self.bias.copy_(b)
            if self.parameterization == "standard":
                self.weight.mul_(self.w_std / math.sqrt(self.in_features))
                self.bias.mul_(self.beta)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.nn.functional.linear(x, self.weight) * self.weight_scale
        return out + self.bias_scale * self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, w_std={self.w_std}, "
            f"beta={self.beta}, parameterization={self.parameterization!r}, init={self.init!r}"
        )


class FCNetwork(nn.Module):
    """A fully connected network whose description also drives its infinite-width kernels.

    Parameters
    ----------
    in_features : int
        Input dimension ``n_0``.
    hidden : sequence of int
        Hidden widths ``n_1 .. n_{L-1}`` (``depth = len(hidden)``; empty for a linear model).
    out_features : int
        Output dimension ``n_L``.
    activation : str, Activation or callable
        The nonlinearity ``sigma`` (see :func:`ntkit.activations.get_activation`).
    beta : float
        Bias scale (``>= 0``).
    w_std : float
        Weight scale (``> 0``); multiplies every ``W`` including the first layer's.
    parameterization : {"ntk", "standard"}
    init : {"gaussian", "orthogonal"}
    generator : torch.Generator, optional
        Source of randomness; with ``seed`` instead, a fresh CPU generator is seeded with it.
    seed : int, optional
    device, dtype
        Where and in what precision the parameters live (float64 by default).

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [512, 512], 1, activation="relu", beta=0.1, seed=0)
    >>> x = torch.randn(5, 2, dtype=torch.float64)
    >>> net(x).shape
    torch.Size([5, 1])
    >>> net.infinite_kernel(x).ntk.shape
    torch.Size([5, 5])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int = 1,
        *,
        activation: str | Activation | Any = "relu",
        beta: float = 0.0,
        w_std: float = 1.0,
        parameterization: str = "ntk",
        init: str = "gaussian",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden: expected a sequence of widths such as [512, 512], got {describe(hidden)}")
        self.hidden = tuple(check_int(h, f"hidden[{i}]", minimum=1) for i, h in enumerate(hidden))
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.activation = get_activation(activation)
        self.beta = check_float(beta, "beta", minimum=0.0)
        self.w_std = check_float(w_std, "w_std", minimum=0.0, strict=True)
        self.parameterization = check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
        self.init = check_choice(init, "init", INITS)
        check_dtype(dtype)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {describe(generator)}")
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu" if device is None else device).manual_seed(
                check_int(seed, "seed")
            )
        widths = (self.in_features, *self.hidden, self.out_features)
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(
                NTKLinear(
                    widths[i],
                    widths[i + 1],
                    w_std=self.w_std,
                    beta=self.beta,
                    parameterization=self.parameterization,
                    init=self.init,
                    generator=generator,
                    device=device,
                    dtype=dtype,
                )
            )
            if i < len(widths) - 2:
                layers.append(ActivationLayer(self.activation))
        self.layers = nn.Sequential(*layers)

    @property
    def depth(self) -> int:
        """Number of hidden layers (``L - 1``)."""
        return len(self.hidden)

    @property
    def linears(self) -> list[NTKLinear]:
        """The affine layers, input to output."""
        return [m for m in self.layers if isinstance(m, NTKLinear)]

    def forward(self, x: Tensor) -> Tensor:
        """``f(x)`` for ``x`` of shape (N, in_features); returns (N, out_features)."""
        return self.layers(x)

    def infinite_kernel(self, x1: Any, x2: Any | None = None, *, dtype: torch.dtype = torch.float64) -> Kernel:
        """The infinite-width NNGP / NTK of this architecture (see :func:`ntkit.fc_kernel`)."""
        from ntkit.infinite import fc_kernel

        if self.parameterization != "ntk":
            raise ValueError(
                "parameterization: the infinite-width NTK is defined here for 'ntk'; got "
                f"{self.parameterization!r} (its NNGP equals the 'ntk' one: use fc_kernel(...).nngp)"
            )
        return fc_kernel(
            x1, x2, depth=self.depth, activation=self.activation, beta=self.beta, w_std=self.w_std, dtype=dtype
        )

    def extra_repr(self) -> str:
        return f"depth={self.depth}, activation={self.activation!r}"
