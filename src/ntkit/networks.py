"""The fully connected network of Jacot et al. (2018) as a ready-made model of :mod:`ntkit.nn` layers.

:class:`FCNetwork` builds ``[NTKLinear, Activation] * depth + [NTKLinear]`` (an ``nn.Sequential`` in
``net.layers``) from the four parameters of the theory; the model is the description:
``ntkit.empirical_ntk(net, x)`` and ``ntkit.infinite_kernel(net, x)`` (or ``net.infinite_kernel(x)``)
both read it.

The network of Jacot et al. (2018), with ``L = depth + 1`` weight layers::

    a(0) = x
    z(l+1) = w_std * W(l) a(l) / sqrt(n_l) + b_std * b(l)     ("ntk",       W, b ~ N(0, 1))
    z(l+1) = W(l) a(l) + b(l)                                  ("standard",  W ~ N(0, w_std^2 / n_l),
                                                                               b ~ N(0, b_std^2))
    a(l) = sigma(z(l)),   f(x) = z(L)

Both parameterizations define the same function distribution at initialisation, hence the same
NNGP kernel. In NTK parameterization the empirical NTK converges to the deterministic
:func:`ntkit.infinite_kernel` limit (:func:`ntkit.fc_kernel` for short). ``init="orthogonal"`` draws
each ``W(l)`` as a scaled random (semi-)orthogonal matrix whose entries have the same variance as the Gaussian ones; its
infinite-width kernels coincide with the Gaussian ones (Huang et al. 2020).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ntkit._validation import check_choice, check_dtype, check_float, check_int, describe, renamed_keyword
from ntkit.activations import DualActivation, get_activation
from ntkit.compute.model_kernels import infinite_kernel
from ntkit.nn import Activation, Linear, orthogonal_
from ntkit.nn._init import INITS, PARAMETERIZATIONS

Tensor = torch.Tensor

class NTKLinear(Linear):
    """:class:`ntkit.nn.Linear` with float64 parameters by default.

    ``z = w_std W a / sqrt(n_in) + b_std b`` (ntk) or ``z = W a + b`` (standard). Parameters ``weight``
    of shape (out_features, in_features) and ``bias`` of shape (out_features,).

    Parameters
    ----------
    in_features, out_features : int
    w_std : float
        Weight scale (``> 0``).
    b_std : float
        Bias scale (``>= 0``).
    parameterization : {"ntk", "standard"}
    init : {"gaussian", "orthogonal"}
    generator : torch.Generator, optional
    device : torch.device or str, optional
    dtype : torch.dtype
        float64 by default.
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``); so is the attribute ``beta``.

    Raises
    ------
    ValueError
        ``b_std < 0``, and whatever :class:`ntkit.nn.Linear` refuses.

    Examples
    --------
    >>> import torch, ntkit
    >>> layer = ntkit.NTKLinear(3, 4, b_std=0.5, generator=torch.Generator().manual_seed(0))
    >>> layer.weight.shape, layer.b_std, layer.weight.dtype
    (torch.Size([4, 3]), 0.5, torch.float64)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        w_std: float = 1.0,
        b_std: float = 0.0,
        parameterization: str = "ntk",
        init: str = "gaussian",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        beta: float | None = None,
    ) -> None:
        b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
        if isinstance(b_std, (int, float)) and not isinstance(b_std, bool) and b_std < 0:
            raise ValueError(f"b_std: expected a number >= 0, got {b_std}")
        super().__init__(in_features, out_features, w_std=w_std, b_std=b_std, parameterization=parameterization,
                         init=init, generator=generator, device=device, dtype=dtype)

    @property
    def beta(self) -> float:
        """Deprecated: the bias scale :attr:`b_std`."""
        warnings.warn("beta is deprecated; use b_std", DeprecationWarning, stacklevel=2)
        return float(self.b_std)


#: The activation module of :class:`FCNetwork` (an alias of :class:`ntkit.nn.Activation`).
ActivationLayer = Activation


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
    activation : str, DualActivation or callable
        The nonlinearity ``sigma`` (see :func:`ntkit.activations.get_activation`).
    b_std : float
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
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``); so is the attribute ``beta``.

    Raises
    ------
    TypeError
        ``hidden`` is not a sequence of widths, or a parameter has the wrong type.
    ValueError
        A width below 1, ``b_std < 0``, ``w_std <= 0``, an unknown activation, parameterization or init.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [512, 512], 1, activation="relu", b_std=0.1, seed=0)
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
        activation: str | DualActivation | Any = "relu",
        b_std: float = 0.0,
        w_std: float = 1.0,
        parameterization: str = "ntk",
        init: str = "gaussian",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        beta: float | None = None,
    ) -> None:
        super().__init__()
        b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
        self.in_features = check_int(in_features, "in_features", minimum=1)
        if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden: expected a sequence of widths such as [512, 512], got {describe(hidden)}")
        self.hidden = tuple(check_int(h, f"hidden[{i}]", minimum=1) for i, h in enumerate(hidden))
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.activation = get_activation(activation)
        self.b_std = check_float(b_std, "b_std", minimum=0.0)
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
        self.layers = _fc_layers(self, generator, device, dtype)

    @property
    def beta(self) -> float:
        """Deprecated: the bias scale :attr:`b_std`."""
        warnings.warn("beta is deprecated; use b_std", DeprecationWarning, stacklevel=2)
        return self.b_std

    @property
    def depth(self) -> int:
        """Number of hidden layers (``L - 1``)."""
        return len(self.hidden)

    @property
    def linears(self) -> list[Linear]:
        """The affine layers, input to output."""
        return [m for m in self.layers if isinstance(m, Linear)]

    def kernel_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """The layers in order, for :func:`ntkit.infinite_kernel` (the model is ``self.layers``)."""
        yield "layers", self.layers

    def forward(self, x: Tensor) -> Tensor:
        """``f(x)`` for ``x`` of shape (N, in_features); returns (N, out_features)."""
        return self.layers(x)

    def infinite_kernel(
        self, x1: Any, x2: Any | None = None, *, which: str = "both", dtype: torch.dtype = torch.float64
    ) -> Any:
        """The infinite-width NNGP / NTK of this architecture: :func:`ntkit.infinite_kernel` of ``self``.

        In ``"standard"`` parameterization the NTK depends on the hidden widths (see
        :func:`ntkit.infinite_kernel`); the NNGP does not.
        """
        return infinite_kernel(self, x1, x2, which=which, dtype=dtype)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, activation={self.activation!r}"


def _fc_layers(net: FCNetwork, generator: torch.Generator | None, device: torch.device | str | None,
               dtype: torch.dtype) -> nn.Sequential:
    """The layers of :class:`FCNetwork` (``NTKLinear`` weight layers) as :func:`ntkit.nn.fc` builds them."""
    widths = (net.in_features, *net.hidden, net.out_features)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(NTKLinear(widths[i], widths[i + 1], w_std=net.w_std, b_std=net.b_std,
                                parameterization=net.parameterization, init=net.init, generator=generator,
                                device=device, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(Activation(net.activation))
    return nn.Sequential(*layers)


__all__ = ["ActivationLayer", "FCNetwork", "NTKLinear", "orthogonal_"]
