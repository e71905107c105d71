"""Polynomial activations with exact Gaussian dual maps: any polynomial, monomials ``x^n``, Hermite ``He_n``.

Notation as in :mod:`ntkit.activations.closed_form`: ``(u, v) ~ N(0, [[v1, c], [c, v2]])``. The dual maps
come from the Hermite / Mehler expansion (Lee et al. 2018, Daniely et al. 2016): a polynomial ``p`` of degree
``n`` gives ``E[p(u) p(v)]`` as a finite polynomial in ``(v1, c, v2)`` (:func:`polynomial_dual`), with no
square root and no correlation ``c / sqrt(v1 v2)``, so duplicated and zero-norm inputs need no special case.

Split from :mod:`ntkit.activations.closed_form_smooth` (which re-exports these names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ntkit.activations.base import DualActivation

Tensor = torch.Tensor


def _hermite_table(degree: int) -> np.ndarray:
    """``T[m, k]``: coefficient of ``He_k(z)`` in ``z^m`` (``m! / (k! 2^j j!)`` for ``m - k = 2 j``)."""
    table = np.zeros((degree + 1, degree + 1))
    for m in range(degree + 1):
        for j in range(m // 2 + 1):
            k = m - 2 * j
            table[m, k] = math.factorial(m) / (math.factorial(k) * 2**j * math.factorial(j))
    return table


def polynomial_dual(coeffs: Sequence[float], var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
    """``E[p(u) p(v)]`` for ``p(x) = sum_m coeffs[m] x^m`` (Hermite / Mehler expansion).

    Writing ``p(s z) = sum_k s^k beta_k(s^2) He_k(z)`` with
    ``beta_k(v) = sum_{m = k + 2j} coeffs[m] m! / (k! 2^j j!) v^j`` and
    ``E[He_j(z1) He_k(z2)] = delta_jk k! rho^k`` gives

        E[p(u) p(v)] = sum_k k! beta_k(v1) beta_k(v2) c^k,

    a finite sum in ``v1, v2, c`` (no square roots, no correlation).
    """
    var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
    degree = len(coeffs) - 1
    table = _hermite_table(degree)
    out = torch.zeros_like(cov)
    for k in range(degree + 1):
        b1 = torch.zeros_like(var1)
        b2 = torch.zeros_like(var2)
        for m in range(degree, k - 1, -1):  # Horner in v over m = k, k + 2, ...
            if (m - k) % 2:
                continue
            coef = coeffs[m] * table[m, k]
            b1 = b1 * var1 + coef
            b2 = b2 * var2 + coef
        out = out + math.factorial(k) * b1 * b2 * cov**k
    return out


class Polynomial(DualActivation):
    """``sigma(x) = sum_m coeffs[m] x^m``: exact maps by :func:`polynomial_dual` (NNGP and derivative).

    Parameters
    ----------
    coeffs : sequence of float
        Coefficients in increasing degree (``[0, 0, 1]`` is ``x^2``).

    Raises
    ------
    TypeError
        ``coeffs`` is not a sequence of numbers.
    ValueError
        ``coeffs`` is empty or holds a non-finite number.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Polynomial
    >>> act = Polynomial([1, 0, 2])  # 1 + 2 x^2
    >>> act(torch.tensor([0.0, 1.0]))
    tensor([1., 3.])
    >>> one = torch.ones((), dtype=torch.float64)
    >>> float(act.expect(one, one, one))  # E[(1 + 2u^2)^2] = 1 + 4 + 12
    17.0
    """

    closed_form = True

    def __init__(self, coeffs: Sequence[float], name: str = "polynomial") -> None:
        try:
            values = [float(c) for c in coeffs]
        except (TypeError, ValueError):
            raise TypeError(f"coeffs: expected a sequence of floats, got {coeffs!r}") from None
        if not values or not all(math.isfinite(c) for c in values):
            raise ValueError(f"coeffs: expected a non-empty sequence of finite floats, got {coeffs!r}")
        self.coeffs = tuple(values)
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        out = torch.full_like(x, self.coeffs[-1])
        for c in reversed(self.coeffs[:-1]):
            out = out * x + c
        return out

    @property
    def derivative_coeffs(self) -> tuple[float, ...]:
        """Coefficients of ``sigma'``."""
        return tuple(m * c for m, c in enumerate(self.coeffs))[1:] or (0.0,)

    def derivative(self, x: Tensor) -> Tensor:
        coeffs = self.derivative_coeffs
        out = torch.full_like(x, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            out = out * x + c
        return out

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return polynomial_dual(self.coeffs, var1, cov, var2)

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return polynomial_dual(self.derivative_coeffs, var1, cov, var2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.coeffs)})"


class Monomial(Polynomial):
    """``sigma(x) = x^n``.

    Parameters
    ----------
    degree : int
        ``n >= 0``.

    Raises
    ------
    ValueError
        ``degree`` is not an integer >= 0.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Monomial
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> float(Monomial(2).expect(one, zero, one))  # E[u^2] E[v^2]
    1.0
    """

    def __init__(self, degree: int = 2) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree: expected an integer >= 0, got {degree!r}")
        super().__init__([0.0] * degree + [1.0], name=f"monomial{degree}")
        self.degree = degree
        self.homogeneous_degree = degree

    def __repr__(self) -> str:
        return f"Monomial(degree={self.degree})"


class Hermite(Polynomial):
    """Probabilists' Hermite polynomial ``He_n(x)`` (divided by ``sqrt(n!)`` if ``normalized``).

    For unit-variance inputs ``E[He_n(u) He_n(v)] = n! rho^n``: the normalised ``He_n / sqrt(n!)``
    has the dual ``rho^n`` (Daniely, Frostig & Singer 2016).

    Parameters
    ----------
    degree : int
        ``n >= 0``.
    normalized : bool
        Divide by ``sqrt(n!)`` (then the dual map of unit-variance inputs is ``rho^n``).

    Raises
    ------
    ValueError
        ``degree`` is not an integer >= 0.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Hermite
    >>> one, half = torch.ones((), dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    >>> round(float(Hermite(3, normalized=True).expect(one, half, one)), 12)  # rho^3
    0.125
    """

    def __init__(self, degree: int = 2, *, normalized: bool = False) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree: expected an integer >= 0, got {degree!r}")
        coeffs = np.polynomial.hermite_e.herme2poly([0.0] * degree + [1.0])
        if normalized:
            coeffs = coeffs / math.sqrt(math.factorial(degree))
        super().__init__([float(c) for c in coeffs], name=f"hermite{degree}")
        self.degree = degree
        self.normalized = normalized

    def __repr__(self) -> str:
        return f"Hermite(degree={self.degree}, normalized={self.normalized})"


__all__ = ["Hermite", "Monomial", "Polynomial", "polynomial_dual"]
