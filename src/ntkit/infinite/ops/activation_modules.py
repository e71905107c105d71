"""Which torch activation modules have a Gaussian dual map, and the ntkit activation each applies.

:data:`ACTIVATION_MODULES` maps a torch module type to a factory of the
:class:`ntkit.activations.Activation` of its (finite) function, its parameters read from the
module; :func:`activation_of` also understands :class:`ntkit.nn.Activation`. The pointwise op
(:mod:`ntkit.infinite.ops.pointwise`) registers every type listed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.activations import Activation as ActivationFn
from ntkit.activations import CallableActivation, Gelu, LeakyReLU, ReLU, get_activation
from ntkit.nn.structure import Activation as ActivationModule

Tensor = torch.Tensor


def _softplus(beta: float) -> ActivationFn:
    if beta == 1.0:
        return get_activation("softplus")

    def fn(x: Tensor) -> Tensor:
        return torch.logaddexp(beta * x, torch.zeros_like(x)) / beta

    return CallableActivation(fn, name=f"softplus(beta={beta})", smooth=True)


def _clamp(lo: float, hi: float, name: str) -> ActivationFn:
    """``clamp(x, lo, hi)`` by ``F.hardtanh``: derivative 0 at ``lo`` and ``hi`` like nn.ReLU6 / nn.Hardtanh
    (``x.clamp`` has derivative 1 there, which a zero-variance input of the kernel sees)."""
    return CallableActivation(lambda x: F.hardtanh(x, lo, hi), name=name, breakpoints=(lo, hi), smooth=False)


def _elu(alpha: float) -> ActivationFn:
    if alpha == 1.0:
        return get_activation("elu")
    return CallableActivation(lambda x: F.elu(x, alpha), name=f"elu(alpha={alpha})", smooth=False)


#: torch activation module type -> the ntkit activation of its (finite) function.
ACTIVATION_MODULES: dict[type[nn.Module], Callable[[Any], ActivationFn]] = {
    nn.ReLU: lambda m: ReLU(),
    nn.LeakyReLU: lambda m: LeakyReLU(alpha=float(m.negative_slope)),
    nn.Tanh: lambda m: get_activation("tanh"),
    nn.Sigmoid: lambda m: get_activation("sigmoid"),
    nn.GELU: lambda m: Gelu() if m.approximate == "none" else get_activation("gelu_tanh"),
    nn.SiLU: lambda m: get_activation("silu"),
    nn.Softplus: lambda m: _softplus(float(m.beta)),
    nn.ELU: lambda m: _elu(float(m.alpha)),
    # derivative: autograd of F.celu uses 1 / alpha in float32 (its derivative errs ~2e-8 in float64)
    nn.CELU: lambda m: CallableActivation(lambda x: F.celu(x, float(m.alpha)), name=f"celu(alpha={m.alpha})",
                                          derivative=lambda x: torch.exp(x.clamp(max=0) / float(m.alpha))),
    nn.SELU: lambda m: get_activation("selu"),
    nn.Mish: lambda m: get_activation("mish"),
    nn.ReLU6: lambda m: _clamp(0.0, 6.0, "relu6"),
    nn.Hardtanh: lambda m: _clamp(float(m.min_val), float(m.max_val), "hardtanh"),
    nn.Hardsigmoid: lambda m: CallableActivation(F.hardsigmoid, name="hardsigmoid", breakpoints=(-3.0, 3.0),
                                                 smooth=False),
    nn.Hardswish: lambda m: CallableActivation(F.hardswish, name="hardswish", breakpoints=(-3.0, 3.0), smooth=False),
    nn.Softsign: lambda m: CallableActivation(F.softsign, name="softsign"),
    # derivative tanh(x)^2: autograd of x - tanh(x) gives 1 - (1 - tanh^2) = 0 for |x| < 1e-8
    nn.Tanhshrink: lambda m: CallableActivation(F.tanhshrink, name="tanhshrink", smooth=True,
                                                derivative=lambda x: torch.tanh(x) ** 2),
    nn.LogSigmoid: lambda m: CallableActivation(F.logsigmoid, name="logsigmoid", smooth=True),
    nn.Softshrink: lambda m: CallableActivation(lambda x: F.softshrink(x, float(m.lambd)), name="softshrink",
                                                breakpoints=(-float(m.lambd), float(m.lambd)), smooth=False),
}


def activation_of(module: nn.Module) -> ActivationFn | None:
    """The ntkit activation a pointwise module applies, or None if ``module`` is not one."""
    if isinstance(module, ActivationModule):
        return module.activation
    factory = ACTIVATION_MODULES.get(type(module))
    return None if factory is None else factory(module)


__all__ = ["ACTIVATION_MODULES", "activation_of"]
