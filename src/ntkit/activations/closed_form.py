"""Activations whose Gaussian dual maps have exact closed forms.

Notation: ``(u, v) ~ N(0, [[v1, c], [c, v2]])``, ``det = v1 v2 - c^2 >= 0`` and the angle
``theta = atan2(sqrt(det), c)`` in ``[0, pi]`` (``cos theta = c / sqrt(v1 v2)``). The angle is
computed from the covariance entries directly, never as ``arccos`` of a rounded correlation, so
duplicated inputs (``det = 0``) give ``theta = 0`` exactly and zero-norm inputs give no NaN.

References: Cho & Saul (2009) for the arc-cosine kernels; Williams (1997) for erf;
Lee et al. (2018), Arora et al. (2019) for their use in NNGP / NTK recursions.
"""

from __future__ import annotations

import math

import torch

from ntkit._validation import check_float
from ntkit.activations.base import Activation

Tensor = torch.Tensor


def _sqrt_det(v1: Tensor, c: Tensor, v2: Tensor) -> Tensor:
    """``sqrt(max(v1 v2 - c^2, 0))``: the clipped square root of the covariance determinant."""
    return (v1 * v2 - c * c).clamp_min(0).sqrt()


def arccos_angle(v1: Tensor, c: Tensor, v2: Tensor) -> Tensor:
    """``theta = arccos(c / sqrt(v1 v2))`` computed stably as ``atan2(sqrt(det), c)``."""
    return torch.atan2(_sqrt_det(v1, c, v2), c)


class Identity(Activation):
    """``sigma(x) = x``: ``E[uv] = c``, ``E[sigma' sigma'] = 1``."""

    name = "identity"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def derivative(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return torch.broadcast_tensors(cov, var1, var2)[0].clone()

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return torch.ones_like(torch.broadcast_tensors(cov, var1, var2)[0])


class ABReLU(Activation):
    """``sigma(x) = a min(x, 0) + b max(x, 0)``: ReLU (a=0, b=1), leaky ReLU (a=alpha, b=1), abs (a=-1, b=1).

    With ``J1 = (sqrt(det) + (pi - theta) c) / (2 pi) = E[relu(u) relu(v)]`` (Cho & Saul 2009):

    * ``E[sigma(u) sigma(v)] = a b c + (b - a)^2 J1``
    * ``E[sigma'(u) sigma'(v)] = a^2 + a (b - a) (p1 + p2) + (b - a)^2 p12`` where
      ``p = P(u > 0) = 1/2`` (0 for a zero variance) and ``p12 = P(u > 0, v > 0) = (pi - theta) / (2 pi)``.

    The zero-variance convention (``step(0) = 0``) matches PyTorch's derivative at 0.
    """

    def __init__(self, a: float = 0.0, b: float = 1.0) -> None:
        self.a = check_float(a, "a")
        self.b = check_float(b, "b")
        self.name = "ab_relu"

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.full_like(x, self.b), torch.full_like(x, self.a))

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        theta = arccos_angle(var1, cov, var2)
        j1 = (_sqrt_det(var1, cov, var2) + (math.pi - theta) * cov) / (2 * math.pi)
        return self.a * self.b * cov + (self.b - self.a) ** 2 * j1

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        pos1 = (var1 > 0).to(var1.dtype)
        pos2 = (var2 > 0).to(var1.dtype)
        p12 = (math.pi - arccos_angle(var1, cov, var2)) / (2 * math.pi) * pos1 * pos2
        a, d = self.a, self.b - self.a
        return a * a + a * d * 0.5 * (pos1 + pos2) + d * d * p12

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b})"


class ReLU(ABReLU):
    """``sigma(x) = max(x, 0)`` (arc-cosine kernel of order 1)."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)
        self.name = "relu"

    def __repr__(self) -> str:
        return "ReLU()"


class LeakyReLU(ABReLU):
    """``sigma(x) = max(x, 0) + alpha min(x, 0)``."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__(alpha, 1.0)
        self.alpha = self.a
        self.name = "leaky_relu"

    def __repr__(self) -> str:
        return f"LeakyReLU(alpha={self.alpha})"


class Abs(ABReLU):
    """``sigma(x) = |x|``."""

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)
        self.name = "abs"

    def __repr__(self) -> str:
        return "Abs()"


class Erf(Activation):
    """``sigma(x) = a erf(b x) + c`` (Williams 1997).

    With ``D_i = 1 + 2 b^2 v_i``:

    * ``E[sigma(u) sigma(v)] = a^2 (2/pi) arcsin(2 b^2 c / sqrt(D_1 D_2)) + c0^2``
    * ``E[sigma'(u) sigma'(v)] = (4 a^2 b^2 / pi) / sqrt(1 + 2 b^2 (v1 + v2) + 4 b^4 det)``
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a = check_float(a, "a")
        self.b = check_float(b, "b")
        self.c = check_float(c, "c")
        self.name = "erf"

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def derivative(self, x: Tensor) -> Tensor:
        return self.a * self.b * (2 / math.sqrt(math.pi)) * torch.exp(-((self.b * x) ** 2))

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        b2 = self.b * self.b
        denom = ((1 + 2 * b2 * var1) * (1 + 2 * b2 * var2)).sqrt()
        arg = (2 * b2 * cov / denom).clamp(-1, 1)
        return self.a**2 * (2 / math.pi) * torch.asin(arg) + self.c**2

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        b2 = self.b * self.b
        det = (var1 * var2 - cov * cov).clamp_min(0)
        q = 1 + 2 * b2 * (var1 + var2) + 4 * b2 * b2 * det
        return (4 * self.a**2 * b2 / math.pi) / q.sqrt()

    def __repr__(self) -> str:
        return f"Erf(a={self.a}, b={self.b}, c={self.c})"
