"""Which torch modules have an infinite-width kernel transform, and the activation each one applies.

The table below is the single place that maps a module *type* to what :mod:`ntkit.infinite.walk`
does with it: a weight layer of :mod:`ntkit.nn`, a pointwise activation (with the
:class:`ntkit.activations.Activation` whose Gaussian dual maps it uses), a pooling / reshaping
layer, or a module that does nothing at inference (``nn.Identity``, ``nn.Dropout`` in eval mode).
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

#: Modules that are the identity at inference.
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)

#: Why some common modules have no transform (shown in the error).
UNSUPPORTED_REASONS: dict[type[nn.Module], str] = {
    nn.Linear: "torch.nn.Linear is standard-parameterized with uniform init; use ntkit.nn.Linear "
    "(parameterization='ntk' or 'standard')",
    nn.Conv1d: "use ntkit.nn.Conv1d (NTK or standard parameterization)",
    nn.Conv2d: "use ntkit.nn.Conv2d (NTK or standard parameterization)",
    nn.LayerNorm: "use ntkit.nn.LayerNorm (over the channel axis, without learned gain and bias)",
    nn.MaxPool1d: "max pooling has no closed-form Gaussian kernel; use nn.AvgPool1d",
    nn.MaxPool2d: "max pooling has no closed-form Gaussian kernel; use nn.AvgPool2d",
    nn.BatchNorm1d: "batch norm couples the examples of a batch; it has no per-pair kernel",
    nn.BatchNorm2d: "batch norm couples the examples of a batch; it has no per-pair kernel",
    nn.PReLU: "its slope is a trained parameter; use nn.LeakyReLU",
    nn.RReLU: "its slope is random per forward pass; use nn.LeakyReLU",
}

SUPPORTED = (
    "ntkit.nn.Linear, ntkit.nn.Conv1d, ntkit.nn.Conv2d, ntkit.nn.Activation, ntkit.nn.Residual, "
    "ntkit.nn.LayerNorm, ntkit.nn.GlobalAvgPool, nn.Sequential, nn.Flatten, nn.AvgPool1d/2d, "
    "nn.AdaptiveAvgPool1d/2d, nn.Identity, nn.Dropout (eval mode) and the activation modules "
    + ", ".join(f"nn.{t.__name__}" for t in ACTIVATION_MODULES)
)


def activation_of(module: nn.Module) -> ActivationFn | None:
    """The ntkit activation a pointwise module applies, or None if ``module`` is not one."""
    if isinstance(module, ActivationModule):
        return module.activation
    factory = ACTIVATION_MODULES.get(type(module))
    return None if factory is None else factory(module)


def is_pass_through(module: nn.Module) -> bool:
    """True for modules that are the identity at inference (dropout must be in eval mode or have p = 0)."""
    if not isinstance(module, PASS_THROUGH):
        return False
    if isinstance(module, nn.Identity):
        return True
    return not module.training or float(getattr(module, "p", 0.0)) == 0.0


__all__ = ["ACTIVATION_MODULES", "SUPPORTED", "UNSUPPORTED_REASONS", "activation_of", "is_pass_through"]
