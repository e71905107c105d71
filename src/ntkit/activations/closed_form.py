"""Activations whose Gaussian dual maps have exact closed forms.

Notation: ``(u, v) ~ N(0, [[v1, c], [c, v2]])``, ``det = v1 v2 - c^2 >= 0`` and the angle
``theta = atan2(sqrt(det), c)`` in ``[0, pi]`` (``cos theta = c / sqrt(v1 v2)``). The angle is
computed from the covariance entries directly, never as ``arccos`` of a rounded correlation, so
duplicated inputs (``det = 0``) give ``theta = 0`` exactly and zero-norm inputs give no NaN. The
products ``v1 v2`` and ``c^2`` are formed on the covariance scaled by an exact power of two
(:func:`ntkit.activations.quadrature.scaled_covariance`), so the maps are right across the float64
range (variances 1e-300 .. 1e300), not only where ``v1 v2`` is a normal number.

References: Cho & Saul (2009) for the arc-cosine kernels; Williams (1997) for erf;
Lee et al. (2018), Arora et al. (2019) for their use in NNGP / NTK recursions.
"""

from __future__ import annotations

import math

import torch

from ntkit._validation import check_float
from ntkit.activations.arccos import abrelu_closed_form, abrelu_constants
from ntkit.activations.base import DualActivation
from ntkit.activations.quadrature import scaled_covariance, unscale

Tensor = torch.Tensor


def arccos_angle(v1: Tensor, c: Tensor, v2: Tensor) -> Tensor:
    """``theta = arccos(c / sqrt(v1 v2))`` computed stably as ``atan2(sqrt(det), c)``.

    Both arguments of ``atan2`` are taken from the scaled covariance (the angle is scale-free), so
    the angle of two rows of variance 1e-300, or of a row of variance 1e300, is right.
    """
    v1s, cs, v2s, _ = scaled_covariance(v1, c, v2)
    return torch.atan2((v1s * v2s - cs * cs).clamp_min(0).sqrt(), cs)


class Identity(DualActivation):
    """``sigma(x) = x``: ``E[uv] = c``, ``E[sigma' sigma'] = 1``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Identity
    >>> v, c = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    >>> float(Identity().expect(v, c, v)), float(Identity().expect_derivative(v, c, v))
    (0.5, 1.0)
    """

    name = "identity"
    closed_form = True
    homogeneous_degree = 1

    def forward(self, x: Tensor) -> Tensor:
        return x

    def derivative(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return torch.broadcast_tensors(cov, var1, var2)[0].clone()

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return torch.ones_like(torch.broadcast_tensors(cov, var1, var2)[0])

    def mean(self, var: Tensor) -> Tensor:
        return torch.zeros_like(var)


class ABReLU(DualActivation):
    """``sigma(x) = a min(x, 0) + b max(x, 0)``: ReLU (a=0, b=1), leaky ReLU (a=alpha, b=1), abs (a=-1, b=1).

    With ``J1 = (sqrt(det) + (pi - theta) c) / (2 pi) = E[relu(u) relu(v)]`` (Cho & Saul 2009; evaluated by
    :func:`~ntkit.activations.arccos.abrelu_closed_form`, the one definition, also used by the fast paths):

    * ``E[sigma(u) sigma(v)] = a b c + (b - a)^2 J1``
    * ``E[sigma'(u) sigma'(v)] = a^2 + a (b - a) (p1 + p2) + (b - a)^2 p12`` where
      ``p = P(u > 0) = 1/2`` (0 for a zero variance) and ``p12 = P(u > 0, v > 0) = (pi - theta) / (2 pi)``.

    The zero-variance convention (``step(0) = 0``) matches PyTorch's derivative at 0. Mean:
    ``E[sigma(u)] = (b - a) sqrt(v / (2 pi))``.

    Parameters
    ----------
    a : float
        Slope for ``x < 0``.
    b : float
        Slope for ``x > 0``.

    Raises
    ------
    TypeError, ValueError
        ``a`` or ``b`` is not a finite real number.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import ABReLU
    >>> act = ABReLU(a=-0.3, b=1.2)
    >>> act(torch.tensor([-1.0, 2.0]))
    tensor([0.3000, 2.4000])
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> round(float(act.expect(one, one, one)), 6)  # E[sigma(u)^2] = (a^2 + b^2) / 2
    0.765
    """

    closed_form = True
    homogeneous_degree = 1

    def __init__(self, a: float = 0.0, b: float = 1.0) -> None:
        self.a = check_float(a, "a")
        self.b = check_float(b, "b")
        self.name = "ab_relu"

    def forward(self, x: Tensor) -> Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.full_like(x, self.b), torch.full_like(x, self.a))

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        v1s, cs, v2s, p = scaled_covariance(var1, cov, var2)  # homogeneous of degree 1: E = E' / p^2
        out, _ = abrelu_closed_form(v1s, v2s, cs, abrelu_constants(self.a, self.b), derivative=False)
        assert out is not None
        return unscale(out, p, 2)

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        v1s, cs, v2s, _ = scaled_covariance(var1, cov, var2)  # homogeneous of degree 0
        _, out = abrelu_closed_form(v1s, v2s, cs, abrelu_constants(self.a, self.b), nngp=False)  # ks = 1
        assert out is not None
        return out

    def mean(self, var: Tensor) -> Tensor:
        return (self.b - self.a) * (var.clamp_min(0) / (2 * math.pi)).sqrt()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b})"


class ReLU(ABReLU):
    """``sigma(x) = max(x, 0)`` (arc-cosine kernel of order 1).

    Examples
    --------
    >>> import math, torch
    >>> from ntkit.activations import ReLU
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> math.isclose(float(ReLU().expect(one, zero, one)), 1 / (2 * math.pi))  # orthogonal unit inputs
    True
    >>> float(ReLU().expect_derivative(one, zero, one))
    0.25
    """

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)
        self.name = "relu"

    def __repr__(self) -> str:
        return "ReLU()"


class LeakyReLU(ABReLU):
    """``sigma(x) = max(x, 0) + alpha min(x, 0)``.

    Parameters
    ----------
    alpha : float
        Slope for ``x < 0``.

    Raises
    ------
    TypeError, ValueError
        ``alpha`` is not a finite real number.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import LeakyReLU
    >>> LeakyReLU(0.1)(torch.tensor([-2.0, 3.0]))
    tensor([-0.2000,  3.0000])
    """

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__(alpha, 1.0)
        self.alpha = self.a
        self.name = "leaky_relu"

    def __repr__(self) -> str:
        return f"LeakyReLU(alpha={self.alpha})"


class Abs(ABReLU):
    """``sigma(x) = |x|``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Abs
    >>> one = torch.ones((), dtype=torch.float64)
    >>> float(Abs().expect(one, -one, one))  # E[|u| |v|] for v = -u: E[u^2]
    1.0
    """

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)
        self.name = "abs"

    def __repr__(self) -> str:
        return "Abs()"


class Step(DualActivation):
    """Heaviside step ``sigma(x) = 1[x > 0]``: ``E = P(u > 0, v > 0) = (pi - theta) / (2 pi)``.

    The derivative is a Dirac delta, so only the NNGP map exists (``has_derivative_map = False``).
    A zero variance gives 0 (``step(0) = 0``). Arc-cosine kernel of order 0 (Cho & Saul 2009).

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Step
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> float(Step().expect(one, zero, one))  # P(u > 0, v > 0) for independent u, v
    0.25
    >>> Step().has_derivative_map
    False
    """

    name = "step"
    has_derivative_map = False
    homogeneous_degree = 0  # step(s x) = step(x): inputs of any norm are evaluated by rescaling
    closed_form = True

    def forward(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    def derivative(self, x: Tensor) -> Tensor:
        raise ValueError(f"activation {self.name!r}: its derivative is a Dirac delta (no NTK map)")

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        pos = ((var1 > 0) & (var2 > 0)).to(var1.dtype)
        return (math.pi - arccos_angle(var1, cov, var2)) / (2 * math.pi) * pos

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        raise ValueError(f"activation {self.name!r}: its derivative is a Dirac delta (no NTK map)")

    def mean(self, var: Tensor) -> Tensor:
        return 0.5 * (var > 0).to(var.dtype)


class Sign(Step):
    """``sigma(x) = sign(x)``: ``E[sign(u) sign(v)] = 1 - 2 theta / pi`` (0 for a zero variance); NNGP only.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import Sign
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> float(Sign().expect(one, zero, one)), float(Sign().expect(one, one, one))
    (0.0, 1.0)
    """

    name = "sign"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x)

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        pos = ((var1 > 0) & (var2 > 0)).to(var1.dtype)
        return (1 - 2 * arccos_angle(var1, cov, var2) / math.pi) * pos

    def mean(self, var: Tensor) -> Tensor:
        return torch.zeros_like(var)


def _half_moment(k: int) -> float:
    """``M_k = E[z^k 1[z > 0]]`` for ``z ~ N(0, 1)``: ``M_0 = 1/2``, ``M_1 = 1/sqrt(2 pi)``, ``M_k = (k-1) M_{k-2}``."""
    if k == 0:
        return 0.5
    if k == 1:
        return 1 / math.sqrt(2 * math.pi)
    return (k - 1) * _half_moment(k - 2)


def rectified_moment(n: int, cos_t: Tensor, sin_t: Tensor, theta: Tensor) -> Tensor:
    """``I(n, n) = E[x^n y^n 1[x > 0] 1[y > 0]]`` for unit-variance ``(x, y)`` with correlation ``cos(theta)``.

    Equal to ``J_n(theta) / (2 pi)`` of Cho & Saul (2009). Computed by Stein's lemma,

        I(m, k) = (m - 1) I(m-2, k) + rho k I(m-1, k-1) + [m = 1] B(k) + rho [k = 0] B(m - 1),

    with ``I(0, 0) = (pi - theta) / (2 pi)``, ``I(0, k) = I(k, 0)`` and the boundary terms
    ``B(k) = E[y^k 1[y > 0] delta(x)] = sin(theta)^k M_k / sqrt(2 pi)``.
    """
    memo: dict[tuple[int, int], Tensor] = {}
    inv = 1 / math.sqrt(2 * math.pi)

    def boundary(k: int) -> Tensor:
        return sin_t**k * (_half_moment(k) * inv)

    def moment(m: int, k: int) -> Tensor:
        if m < k:
            m, k = k, m
        key = (m, k)
        if key in memo:
            return memo[key]
        if m == 0:
            val = (math.pi - theta) / (2 * math.pi)
        else:
            val = torch.zeros_like(theta)
            if m >= 2:
                val = val + (m - 1) * moment(m - 2, k)
            if k >= 1:
                val = val + k * cos_t * moment(m - 1, k - 1)
            if m == 1:
                val = val + boundary(k)
            if k == 0:
                val = val + cos_t * boundary(m - 1)
        memo[key] = val
        return val

    return moment(n, n)


class RectifiedMonomial(DualActivation):
    """``sigma(x) = max(x, 0)^n``: the arc-cosine kernel of order ``n`` (Cho & Saul 2009).

    ``E[sigma(u) sigma(v)] = (v1 v2)^(n/2) J_n(theta) / (2 pi)`` (:func:`rectified_moment`) and
    ``E[sigma'(u) sigma'(v)] = n^2 (v1 v2)^((n-1)/2) J_{n-1}(theta) / (2 pi)``; ``n = 1`` is ReLU.
    The angle comes from ``atan2(sqrt(det), c)``; zero variances give 0 (``step(0) = 0``).

    Parameters
    ----------
    degree : int
        ``n >= 1``.

    Raises
    ------
    ValueError
        ``degree`` is not an integer >= 1.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import RectifiedMonomial
    >>> one = torch.ones((), dtype=torch.float64)
    >>> round(float(RectifiedMonomial(2).expect(one, one, one)), 12)  # E[max(u, 0)^4] = 3 / 2
    1.5
    """

    closed_form = True

    def __init__(self, degree: int = 2) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree: expected an integer >= 1, got {degree!r}")
        self.degree = degree
        self.homogeneous_degree = degree
        self.name = f"rectified_monomial{degree}"

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=0) ** self.degree

    def derivative(self, x: Tensor) -> Tensor:
        if self.degree == 1:
            return (x > 0).to(x.dtype)
        return self.degree * torch.clamp(x, min=0) ** (self.degree - 1)

    def _map(self, var1: Tensor, cov: Tensor, var2: Tensor, n: int) -> Tensor:
        var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
        v1s, cs, v2s, p = scaled_covariance(var1, cov, var2)  # sqrt(v1 v2) = sqrt(v1' v2') / p^2
        root = (v1s * v2s - cs * cs).clamp_min(0).sqrt()
        theta = torch.atan2(root, cs)
        scale = (v1s * v2s).clamp_min(0).sqrt()
        pos = scale > 0
        safe = torch.where(pos, scale, torch.ones_like(scale))
        cos_t = torch.where(pos, cs / safe, torch.ones_like(scale)).clamp(-1, 1)
        sin_t = torch.where(pos, root / safe, torch.zeros_like(scale)).clamp(0, 1)
        val = rectified_moment(n, cos_t, sin_t, theta)
        if n == 0:
            return val * pos.to(val.dtype)
        return unscale(val * scale**n, p, 2 * n)  # (v1 v2)^(n/2) = (v1' v2')^(n/2) / p^(2n)

    def expect(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return self._map(var1, cov, var2, self.degree)

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        return self.degree**2 * self._map(var1, cov, var2, self.degree - 1)

    def mean(self, var: Tensor) -> Tensor:
        return _half_moment(self.degree) * var.clamp_min(0) ** (self.degree / 2)

    def __repr__(self) -> str:
        return f"RectifiedMonomial(degree={self.degree})"


class Erf(DualActivation):
    """``sigma(x) = a erf(b x) + c`` (Williams 1997).

    With ``D_i = 1 + 2 b^2 v_i`` and ``Q = D_1 D_2 - 4 b^4 c^2 = 1 + 2 b^2 (v1 + v2) + 4 b^4 det``:

    * ``E[sigma(u) sigma(v)] = a^2 (2/pi) arcsin(2 b^2 c / sqrt(D_1 D_2)) + c0^2``, evaluated as
      ``a^2 (2/pi) atan2(2 b^2 c, sqrt(Q)) + c0^2`` (no cancellation near correlation +-1)
    * ``E[sigma'(u) sigma'(v)] = (4 a^2 b^2 / pi) / sqrt(Q)``

    Parameters
    ----------
    a, b, c : float
        Amplitude, input scale and offset.

    Raises
    ------
    TypeError, ValueError
        A parameter is not a finite real number.

    Examples
    --------
    >>> import math, torch
    >>> from ntkit.activations import Erf
    >>> one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    >>> math.isclose(float(Erf().expect(one, one, one)), 2 / math.pi * math.asin(2 / 3))
    True
    >>> float(Erf(c=0.5).expect(one, zero, one))  # independent inputs: only the offset remains
    0.25
    """

    closed_form = True

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
        cs, q, _ = self._q(var1, cov, var2)  # atan2(2 b^2 c, sqrt(Q)) = atan2(2 b^2 c', sqrt(Q'))
        b2 = self.b * self.b
        return self.a**2 * (2 / math.pi) * torch.atan2(2 * b2 * cs, q.sqrt()) + self.c**2

    def expect_derivative(self, var1: Tensor, cov: Tensor, var2: Tensor) -> Tensor:
        _, q, p = self._q(var1, cov, var2)
        b2 = self.b * self.b
        return unscale((4 * self.a**2 * b2 / math.pi) / q.sqrt(), p, -2)

    def _q(self, var1: Tensor, cov: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(c', Q', p)``: ``Q' = p^4 Q = p^4 + 2 b^2 (v1' + v2') p^2 + 4 b^4 det'`` on the covariance scaled
        by ``p^2`` (:func:`~ntkit.activations.quadrature.scaled_covariance`, ``p <= 1``: ``Q`` overflows
        from variances ~1e154 on; ``p^4`` underflowing there is negligible beside the other terms)."""
        v1s, cs, v2s, p = scaled_covariance(var1, cov, var2, upward_only=True)
        b2 = self.b * self.b
        det = (v1s * v2s - cs * cs).clamp_min(0)
        if p is None:
            return cs, 1 + 2 * b2 * (v1s + v2s) + 4 * b2 * b2 * det, p
        p2 = p * p
        return cs, p2 * p2 + 2 * b2 * (v1s + v2s) * p2 + 4 * b2 * b2 * det, p

    def mean(self, var: Tensor) -> Tensor:
        return torch.full_like(var, self.c)  # erf is odd

    def __repr__(self) -> str:
        return f"Erf(a={self.a}, b={self.b}, c={self.c})"


#: Scale of the erf-based sigmoid-like function (neural-tangents' ``Sigmoid_like``): the ``b`` of
#: ``0.5 erf(x / 2.4020563531719796) + 0.5`` that best fits the logistic sigmoid on [-5, 5].
SIGMOID_LIKE_SCALE = 2.4020563531719796


def sigmoid_like() -> Erf:
    """``sigma(x) = 0.5 erf(x / 2.4020563531719796) + 0.5``, an erf-based stand-in for the logistic sigmoid.

    Returns
    -------
    Erf
        Named ``"sigmoid_like"``.

    Examples
    --------
    >>> import torch
    >>> from ntkit.activations import sigmoid_like
    >>> act = sigmoid_like()
    >>> act(torch.tensor([0.0])), act.name
    (tensor([0.5000]), 'sigmoid_like')
    """
    act = Erf(a=0.5, b=1 / SIGMOID_LIKE_SCALE, c=0.5)
    act.name = "sigmoid_like"
    return act
