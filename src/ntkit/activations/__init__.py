"""Activations: finite functions with their Gaussian dual maps, and a registry by name.

>>> from ntkit.activations import get_activation
>>> get_activation("relu")
ReLU()
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ntkit.activations.base import CallableActivation, DualActivation
from ntkit.activations.closed_form import (
    ABReLU,
    Abs,
    Erf,
    Identity,
    LeakyReLU,
    RectifiedMonomial,
    ReLU,
    Sign,
    Step,
    sigmoid_like,
)
from ntkit.activations.closed_form_smooth import Cos, Exp, Gaussian, Gelu, Hermite, Monomial, Polynomial, Sin

#: The former name of :class:`DualActivation`; internal modules still import it (no warning here, unlike
#: the top-level ``ntkit.Activation``). Not in ``__all__``: the documented name is ``DualActivation``.
Activation = DualActivation

__all__ = [
    "ABReLU",
    "Abs",
    "CallableActivation",
    "Cos",
    "DualActivation",
    "Erf",
    "Exp",
    "Gaussian",
    "Gelu",
    "Hermite",
    "Identity",
    "LeakyReLU",
    "Monomial",
    "Polynomial",
    "ReLU",
    "RectifiedMonomial",
    "Sign",
    "Sin",
    "Step",
    "available_activations",
    "get_activation",
    "register_activation",
    "sigmoid_like",
]


def _mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` exactly (``F.softplus`` returns ``x`` above 20: a jump of 2e-9 that a kernel
    accurate to 1e-13 would have to resolve at large variances)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")

_REGISTRY: dict[str, Callable[[], DualActivation]] = {
    "identity": Identity,
    "linear": Identity,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "abs": Abs,
    "erf": Erf,
    # Closed forms added with the conformance suite (docs/user_guide/activations_accuracy.md).
    "ab_relu": lambda: ABReLU(a=-0.3, b=1.2),
    "step": Step,
    "heaviside": Step,
    "sign": Sign,
    "sigmoid_like": sigmoid_like,
    "gelu": Gelu,
    "sin": Sin,
    "cos": Cos,
    "gaussian": Gaussian,
    "rbf": Gaussian,
    "exp": Exp,
    "square": lambda: Monomial(2),
    "cube": lambda: Monomial(3),
    "rectified_quadratic": lambda: RectifiedMonomial(2),
    "rectified_cubic": lambda: RectifiedMonomial(3),
    "hermite2": lambda: Hermite(2, normalized=True),
    "hermite3": lambda: Hermite(3, normalized=True),
    # General path for activations without a closed form: the Mehler expansion for smooth ones
    # (falling back to quadrature entry by entry), split composite quadrature for kinked ones.
    "tanh": lambda: CallableActivation(torch.tanh, name="tanh", smooth=True),
    "sigmoid": lambda: CallableActivation(torch.sigmoid, name="sigmoid", smooth=True),
    "softplus": lambda: CallableActivation(_softplus, name="softplus", smooth=True),
    "silu": lambda: CallableActivation(F.silu, name="silu", smooth=True),
    "swish": lambda: CallableActivation(F.silu, name="swish", smooth=True),
    "elu": lambda: CallableActivation(F.elu, name="elu", smooth=False),
    "selu": lambda: CallableActivation(F.selu, name="selu", smooth=False),
    "mish": lambda: CallableActivation(_mish, name="mish", smooth=True),
    "gelu_tanh": lambda: CallableActivation(_gelu_tanh, name="gelu_tanh", smooth=True),
}


def register_activation(name: str, factory: Callable[[], DualActivation]) -> None:
    """Register ``factory`` (a zero-argument callable returning a :class:`DualActivation`) under ``name``.

    Parameters
    ----------
    name : str
        The name (stored lower-case); an existing name is replaced.
    factory : callable
        ``factory() -> DualActivation``, called by each :func:`get_activation` of the name.

    Raises
    ------
    TypeError
        ``name`` is not a non-empty string.

    Examples
    --------
    >>> from ntkit.activations import ABReLU, get_activation, register_activation
    >>> register_activation("half_relu", lambda: ABReLU(a=0.0, b=0.5))
    >>> get_activation("half_relu").b
    0.5
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")
    _REGISTRY[name.lower()] = factory


def available_activations() -> list[str]:
    """The names accepted by :func:`get_activation`, sorted.

    Examples
    --------
    >>> from ntkit.activations import available_activations
    >>> {"relu", "erf", "gelu", "tanh"} <= set(available_activations())
    True
    """
    return sorted(_REGISTRY)


def get_activation(activation: str | DualActivation | Callable[[torch.Tensor], torch.Tensor]) -> DualActivation:
    """Resolve a name, a :class:`DualActivation`, or any elementwise callable to a DualActivation.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    TypeError
        For anything that is neither a string, a DualActivation nor a callable.

    Parameters
    ----------
    activation : str, DualActivation or callable
        A registered name (case-insensitive, :func:`available_activations`), a DualActivation (returned
        as it is), or an elementwise callable / torch module (wrapped in a
        :class:`CallableActivation`).

    Returns
    -------
    DualActivation

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import get_activation
    >>> get_activation("relu")
    ReLU()
    >>> get_activation(torch.tanh).name
    'tanh'
    """
    if isinstance(activation, DualActivation):
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key not in _REGISTRY:
            raise ValueError(
                f"activation: expected one of {available_activations()} or a DualActivation / callable, "
                f"got {activation!r}"
            )
        return _REGISTRY[key]()
    if isinstance(activation, torch.nn.Module) or callable(activation):
        return CallableActivation(activation)
    raise TypeError(
        f"activation: expected a name, an ntkit DualActivation or a callable, got {type(activation).__name__}"
    )
