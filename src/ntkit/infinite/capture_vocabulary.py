"""What a captured forward may contain (:mod:`ntkit.infinite.capture`): the calls it lifts, by kind.

The functional activations and poolings map to the torch / ntkit modules applying the same function
(built from the call's other arguments); the arithmetic and merge calls are recognised by these
targets (``operator.add``, ``torch.add``, ``x.add(...)`` alike); max pooling is refused by name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.nn.structure import Activation

#: What a forward may contain, for the error messages.
SUPPORTED_FORWARD = (
    "calls of the supported modules; F.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, F.leaky_relu, torch.erf "
    "(and the other activations with a module); F.avg_pool1d/2d, F.adaptive_avg_pool1d/2d; torch.flatten(x, 1), "
    "x.view(x.size(0), -1); x.mean / x.sum over the spatial axes (the token axes of tokens (N, L, C)); "
    "residual sums x + c * f(x) with f ending in a weight layer; "
    "series-parallel branches merged by a + b, torch.cat([a, b], 1) or a * b; sums, products and compositions of "
    "activations and constant factors of one value (u + relu(u), relu(2 * u) * tanh(u)): one activation"
)

#: Functional activations -> the module applying the same function (built from the call's other arguments).
ACTIVATIONS: dict[Any, Callable[..., nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, torch.relu_: nn.ReLU, F.relu_: nn.ReLU, torch.tanh: nn.Tanh,
    torch.sigmoid: nn.Sigmoid, F.gelu: nn.GELU, F.silu: nn.SiLU, F.leaky_relu: nn.LeakyReLU, F.elu: nn.ELU,
    F.selu: nn.SELU, F.softplus: nn.Softplus, F.mish: nn.Mish, F.relu6: nn.ReLU6, F.hardtanh: nn.Hardtanh,
    torch.erf: lambda: Activation("erf"), torch.special.erf: lambda: Activation("erf"),
}
#: Tensor methods (and their in-place forms ``name_``) -> the module.
METHOD_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "erf": lambda: Activation("erf"),
}
POOLS: dict[Any, Callable[..., nn.Module]] = {
    F.avg_pool2d: nn.AvgPool2d, F.avg_pool1d: nn.AvgPool1d,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d, F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d,
}
GLOBAL_AXES = {F.adaptive_avg_pool2d: (2, 3), F.adaptive_avg_pool1d: (2,)}
INPLACE = (torch.relu_, F.relu_)
DROPOUTS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, torch.dropout)
ADDS = (operator.add, operator.iadd, torch.add)
SUBS = (operator.sub, operator.isub, torch.sub)
MULS = (operator.mul, operator.imul, torch.mul)
DIVS = (operator.truediv, operator.itruediv, torch.div)
CATS = (torch.cat, torch.concat, torch.concatenate)
STACKS = (torch.stack, torch.hstack, torch.vstack, torch.dstack)
MAX_POOLS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d)

__all__ = ["ACTIVATIONS", "ADDS", "CATS", "DIVS", "DROPOUTS", "GLOBAL_AXES", "INPLACE", "MAX_POOLS",
           "METHOD_ACTIVATIONS", "MULS", "POOLS", "STACKS", "SUBS", "SUPPORTED_FORWARD"]
