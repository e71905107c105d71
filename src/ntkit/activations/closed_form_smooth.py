"""Smooth activations with exact Gaussian dual maps: GELU, sin / cos, Gaussian and exp.

Notation as in :mod:`ntkit.activations.closed_form`: ``(u, v) ~ N(0, [[v1, c], [c, v2]])`` and
``det = v1 v2 - c^2`` (clipped at 0, taken from the covariance entries). Every formula below is
written in ``(v1, c, v2, det)`` only, so that duplicated inputs (``det = 0``) and zero-norm
inputs need no special case and no correlation ``c / sqrt(v1 v2)`` is ever rounded.

Derivations: Gaussian reweighting ``E[h(u, v) phi(u)] = (2 pi (1 + v1))^(-1/2) E'[h]`` under the
covariance ``(Sigma^-1 + e1 e1^T)^-1`` and Stein's lemma ``E[u h] = v1 E[d_u h] + c E[d_v h]``
(GELU: Tsuchida, Pearce, van der Heide, Roosta & Gallagher 2021); characteristic functions
(sin, cos, exp); Gaussian integrals of quadratic forms (Gaussian activation).

The polynomial activations (:class:`Polynomial`, :class:`Monomial`, :class:`Hermite` and
:func:`polynomial_dual`: the Hermite / Mehler expansion, Lee et al. 2018, Daniely et al. 2016) live in
:mod:`ntkit.activations.polynomial`; this module re-exports them.
"""

from __future__ import annotations

import math

import torch

from ntkit._validation import check_float
from ntkit.activations.base import DualActivation
from ntkit.activations.polynomial import Hermite, Monomial, Polynomial, polynomial_dual
from ntkit.activations.polynomial import _hermite_table as _hermite_table  # re-exported (moved there)
from ntkit.activations.quadrature import scaled_covariance, unscale

Tensor = torch.Tensor


def _det(v1: Tensor, c: Tensor, v2: Tensor) -> Tensor:
    return (v1 * v2 - c * c).clamp_min(0)


class Gelu(DualActivation):
    """Exact GELU ``sigma(x) = x Phi(x)`` (Hendrycks & Gimpel 2016), ``Phi`` the normal CDF.

    With ``D = (1 + v1)(1 + v2) - c^2 = 1 + v1 + v2 + det`` and
    ``P = (pi - atan2(sqrt(D), c)) / (2 pi) = E[Phi(u) Phi(v)]``:

    * ``E[sigma(u) sigma(v)] = c P + (det + c^2 / (1 + v1) + c^2 / (1 + v2)) / (2 pi sqrt(D))``
    * ``E[sigma'(u) sigma'(v)] = P + c (1 / (1 + v1) + 1 / (1 + v2)) / (2 pi sqrt(D)) + c / (2 pi D^(3/2))``

    (``sigma' = Phi(x) + x phi(x)``); Tsuchida et al. (2021).

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Gelu
    >>> x = torch.tensor([-1.0, 0.0, 1.0])
    >>> torch.allclose(Gelu()(x), torch.nn.functional.gelu(x))
    True
    >>> one = torch.ones((), dtype=torch.float64)
    >>> round(float(Gelu().expect(one, one, one)), 6)  # E[(u Phi(u))^2]
    0.425221
    """

    name = "gelu"
    closed_form = True

    def forward(self, x: Tensor) -> Tensor:
        return x * 0.5 * torch.erfc(-x / math.sqrt(2))

    def derivative(self, x: Tensor) -> Tensor:
        return 0.5 * torch.erfc(-x / math.sqrt(2)) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def _parts(self, var1: Tensor, cov: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                        Tensor, Tensor, Tensor | None]:
        """``(c, v1', c', v2', det', D', sqrt(D'), P, s^2)`` on the covariance scaled by ``s^2 = 2^(-2j)``
        (:func:`~ntkit.activations.quadrature.scaled_covariance`, ``j >= 0``): ``D' = s^4 D = s^4 +
        (v1' + v2') s^2 + det'``, ``1 + v_i = (s^2 + v_i') / s^2``. ``D`` overflows from variances ~1e154
        on; with every variance below ~1e77 nothing is scaled (``s^2`` None: the unscaled formulas)."""
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        v1, c, v2, s = scaled_covariance(var1, cov, var2, upward_only=True)
        det = _det(v1, c, v2)
        s2 = None if s is None else s * s
        d = 1 + v1 + v2 + det if s2 is None else s2 * s2 + v1 * s2 + v2 * s2 + det
        root = d.sqrt()
        p = (math.pi - torch.atan2(root, c)) / (2 * math.pi)
        return cov, v1, c, v2, det, d, root, p, s2

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        cov, v1, c, v2, det, _, root, p, s2 = self._parts(var1, cov, var2)
        if s2 is None:
            return c * p + (det + c * c / (1 + v1) + c * c / (1 + v2)) / (2 * math.pi * root)
        # c^2 / (1 + v_i) / sqrt(D) = c'^2 s^2 / (s^2 + v_i') / sqrt(D') / s^2, det / sqrt(D) = det' / sqrt(D') / s^2
        return cov * p + (det + c * c / (s2 + v1) * s2 + c * c / (s2 + v2) * s2) / (2 * math.pi * root) / s2

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        _, v1, c, v2, _, d, root, p, s2 = self._parts(var1, cov, var2)
        if s2 is None:
            return p + c * (1 / (1 + v1) + 1 / (1 + v2)) / (2 * math.pi * root) + c / (2 * math.pi * d * root)
        # c / (1 + v_i) / sqrt(D) = c' s^2 / (s^2 + v_i') / sqrt(D'), c / D^(3/2) = c' s^4 / D'^(3/2)
        return (p + c * (1 / (s2 + v1) + 1 / (s2 + v2)) / (2 * math.pi * root) * s2
                + c / (2 * math.pi * d * root) * s2 * s2)

    def mean(self, var: Tensor) -> Tensor:
        v = var.clamp_min(0)
        return v / (2 * math.pi * (1 + v)).sqrt()  # E[u Phi(u)] = v E[phi(u)] (Stein)

    def __repr__(self) -> str:
        return "Gelu()"


class Sin(DualActivation):
    """``sigma(x) = a sin(b x + c0)``; :class:`Cos` is the same with a quarter-period phase.

    With ``x = b^2 c``, ``m = exp(-b^2 (v1 + v2) / 2)`` and ``sin(s) sin(t) = (cos(s - t) - cos(s + t)) / 2``,
    ``E[cos(b (u - v))] = m e^x``, ``E[cos(b (u + v) + 2 c0)] = cos(2 c0) m e^(-x)``, ``cos(2 c0) = 1 - 2 sin(c0)^2``:

    * ``E[sigma(u) sigma(v)] = a^2 m (sinh(x) + sin(c0)^2 e^(-x))``
    * ``E[sigma'(u) sigma'(v)] = a^2 b^2 m (sinh(x) + cos(c0)^2 e^(-x))``

    (for ``c0 = 0``: ``a^2 m sinh(b^2 c)`` and ``a^2 b^2 m cosh(b^2 c)``). Never formed as the difference
    ``m (e^x - cos(2 c0) e^(-x)) / 2``, which loses all digits of a small ``sinh(x) ~ x`` once
    ``|c| << v1 + v2``. Evaluated as ``m sinh(x) = sign(c) E_- (1 - e^(-2|x|)) / 2`` (``expm1``) with
    ``E_- = exp(-b^2 (v1 + v2 - 2|c|) / 2) <= 1`` and ``m e^(-x) = E_+ = exp(-b^2 (v1 + v2 + 2c) / 2)``: no
    overflow of ``sinh`` against an underflow of ``m`` at large variances, and every term is formed
    to relative accuracy (the sum has a cancellation only where ``sinh(x) < 0`` meets a phase term of the
    same size, at most ``eps (|sinh x| + sin(c0)^2 e^(-x)) m``: the natural scale of the entry).

    Parameters
    ----------
    a, b, c : float
        Amplitude, frequency and phase (``c0`` above).

    Raises
    ------
    TypeError, ValueError
        A parameter is not a finite real number.

    Examples
    --------
    >>> import math, torch
    >>> from ntkit.activations import Sin
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> math.isclose(float(Sin().expect(one, one, one)), (1 - math.exp(-2)) / 2)  # E[sin(u)^2]
    True
    >>> tiny = torch.tensor(1e-30, dtype=torch.float64)  # E[sin u sin v] = e^(-1/2) sinh(1e-30): not 0
    >>> math.isclose(float(Sin().expect(one, tiny, one)), math.exp(-1) * 1e-30, rel_tol=1e-15)
    True
    """

    closed_form = True

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a = check_float(a, "a")
        self.b = check_float(b, "b")
        self.c = check_float(c, "c")
        self.name = type(self).__name__.lower()

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def derivative(self, x: Tensor) -> Tensor:
        return self.a * self.b * torch.cos(self.b * x + self.c)

    def _phases(self) -> tuple[float, float]:
        """``(P, P')``: the weights of ``E_+`` in the value and derivative maps (``sin(c0)^2``, ``cos(c0)^2``)."""
        return math.sin(self.c) ** 2, math.cos(self.c) ** 2

    def _terms(self, var1: Tensor, cov: Tensor, var2: Tensor) -> tuple[Tensor, Tensor]:
        """``(m sinh(b^2 c), m e^(-b^2 c))`` with ``m = exp(-b^2 (v1 + v2) / 2)``, both to relative accuracy."""
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        b2 = self.b * self.b
        total = var1 + var2
        near = torch.exp(-0.5 * b2 * (total - 2 * cov.abs()).clamp_min(0))  # E_-(|c|) = m e^|x|
        half_sinh = -0.5 * torch.expm1(-2 * b2 * cov.abs())  # (1 - e^(-2|x|)) / 2
        sinh = torch.copysign(near * half_sinh, cov)
        plus = torch.exp(-0.5 * b2 * (total + 2 * cov).clamp_min(0))  # E_+ = m e^(-x)
        return sinh, plus

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        sinh, plus = self._terms(var1, cov, var2)
        return self.a**2 * (sinh + self._phases()[0] * plus)

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        sinh, plus = self._terms(var1, cov, var2)
        return (self.a * self.b) ** 2 * (sinh + self._phases()[1] * plus)

    def mean(self, var: Tensor) -> Tensor:
        damp = torch.exp(-0.5 * self.b * self.b * var.clamp_min(0))  # E[e^{i b u}]
        return self.a * math.sin(self.c) * damp

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b}, c={self.c})"


class Cos(Sin):
    """``sigma(x) = a cos(b x + c0) = a sin(b x + c0 + pi / 2)``: :class:`Sin` with ``sin(c0)^2 <-> cos(c0)^2``.

    ``E = a^2 m (sinh(x) + cos(c0)^2 e^(-x))`` and ``E' = a^2 b^2 m (sinh(x) + sin(c0)^2 e^(-x))`` (``x = b^2 c``,
    ``m = exp(-b^2 (v1 + v2) / 2)``; for ``c0 = 0``: ``a^2 m cosh(b^2 c)`` and ``a^2 b^2 m sinh(b^2 c)``).

    Examples
    --------
    >>> import math, torch
    >>> from ntkit.activations import Cos
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> math.isclose(float(Cos().expect(one, zero, one)), math.exp(-1))  # E[cos u] E[cos v]
    True
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.cos(self.b * x + self.c)

    def derivative(self, x: Tensor) -> Tensor:
        return -self.a * self.b * torch.sin(self.b * x + self.c)

    def _phases(self) -> tuple[float, float]:
        return math.cos(self.c) ** 2, math.sin(self.c) ** 2

    def mean(self, var: Tensor) -> Tensor:
        damp = torch.exp(-0.5 * self.b * self.b * var.clamp_min(0))
        return self.a * math.cos(self.c) * damp


class Gaussian(DualActivation):
    """Gaussian (RBF) activation ``sigma(x) = a exp(-b x^2)`` with ``b >= 0``.

    With ``Q = det(I + 2 b Sigma) = 1 + 2 b (v1 + v2) + 4 b^2 det``:
    ``E[sigma(u) sigma(v)] = a^2 / sqrt(Q)`` and ``E[sigma'(u) sigma'(v)] = 4 a^2 b^2 c / Q^(3/2)``.

    Parameters
    ----------
    a : float
        Amplitude.
    b : float
        Inverse width, ``>= 0``.

    Raises
    ------
    TypeError, ValueError
        A parameter is not a finite real number, or ``b < 0``.

    Examples
    --------
    >>> import math, torch
    >>> from ntkit.activations import Gaussian
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> math.isclose(float(Gaussian().expect(one, zero, one)), 1 / 2)  # a^2 / sqrt((1 + 2b)^2)
    True
    """

    closed_form = True

    def __init__(self, a: float = 1.0, b: float = 0.5) -> None:
        self.a = check_float(a, "a")
        self.b = check_float(b, "b", minimum=0.0)
        self.name = "gaussian"

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.exp(-self.b * x * x)

    def derivative(self, x: Tensor) -> Tensor:
        return -2 * self.a * self.b * x * torch.exp(-self.b * x * x)

    def _q(self, var1: Tensor, cov: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(Q', c', s)`` on the covariance scaled by ``s^2`` (``j >= 0``, see :class:`Gelu`):
        ``Q' = s^4 Q = s^4 + 2 b (v1' + v2') s^2 + 4 b^2 det'`` (``s`` None: nothing scaled)."""
        v1, c, v2, s = scaled_covariance(var1, cov, var2, upward_only=True)
        if s is None:
            return 1 + 2 * self.b * (v1 + v2) + 4 * self.b**2 * _det(v1, c, v2), c, s
        s2 = s * s
        return s2 * s2 + 2 * self.b * (v1 + v2) * s2 + 4 * self.b**2 * _det(v1, c, v2), c, s

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        q, _, s = self._q(var1, cov, var2)
        return unscale(self.a**2 / q.sqrt(), s, -2)  # 1 / sqrt(Q) = s^2 / sqrt(Q')

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        q, c, s = self._q(var1, cov, var2)
        return unscale(4 * (self.a * self.b) ** 2 * c / (q * q.sqrt()), s, -4)  # c / Q^(3/2) = c' s^4 / Q'^(3/2)

    def __repr__(self) -> str:
        return f"Gaussian(a={self.a}, b={self.b})"


class Exp(DualActivation):
    """``sigma(x) = a exp(b x)``: ``E = a^2 exp(b^2 (v1 + v2 + 2 c) / 2)``, ``E' = b^2 E``.

    The kernel grows like ``exp(variance)``: deep or large-norm recursions overflow exactly where
    the true value exceeds the floating-point range (a property of the function, not the method).

    Parameters
    ----------
    a, b : float
        Amplitude and rate.

    Raises
    ------
    TypeError, ValueError
        A parameter is not a finite real number.

    Examples
    --------
    >>> import math, torch
    >>> from ntkit.activations import Exp
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> math.isclose(float(Exp().expect(one, zero, one)), math.e)  # E[e^u] E[e^v] = e^(1/2) e^(1/2)
    True
    """

    closed_form = True

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        self.a = check_float(a, "a")
        self.b = check_float(b, "b")
        self.name = "exp"

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.exp(self.b * x)

    def derivative(self, x: Tensor) -> Tensor:
        return self.a * self.b * torch.exp(self.b * x)

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        return self.a**2 * torch.exp(0.5 * self.b**2 * (var1 + var2 + 2 * cov))

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return self.b**2 * self.expect(var1, cov, var2)

    def __repr__(self) -> str:
        return f"Exp(a={self.a}, b={self.b})"


__all__ = ["Cos", "Exp", "Gaussian", "Gelu", "Hermite", "Monomial", "Polynomial", "Sin", "polynomial_dual"]
