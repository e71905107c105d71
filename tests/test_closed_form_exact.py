"""The closed-form dual maps of ``ntkit.activations.closed_form`` against independent formulas, fast.

References (mpmath, 30 digits), written from the literature rather than from ntkit's code:

* arc-cosine kernels (Cho & Saul 2009) in their ``arccos`` form, ``J_n(theta)`` for ``n = 0..3``
  (``J_0 = pi - theta``, ``J_1 = sin + (pi - theta) cos``, ``J_2 = 3 sin cos + (pi - theta)(1 + 2 cos^2)``,
  ``J_3 = 4 sin^3 + 15 sin cos^2 + (pi - theta)(9 sin^2 cos + 15 cos^3)``), spot-checked against the 1-D
  quadrature reference of ``tests/activation_reference.py``;
* ``a min(x, 0) + b max(x, 0) = a x + (b - a) relu(x)`` expanded by bilinearity;
* erf (Williams 1997) in its ``arcsin`` form; sign ``1 - 2 theta / pi``; step ``(pi - theta) / 2 pi``;
* means ``E[sigma(u)]`` by 1-D quadrature; forward / derivative against explicit formulas and autograd.

Every map is evaluated at random covariances (general position), at ``c = +-sqrt(v1 v2)`` (angle 0 / pi),
and at zero variances, where ntkit's convention is ``sigma'(0) = 0`` (``a`` for ``ABReLU``) and
``step(0) = 0``.
"""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch

from ntkit.activations import (
    ABReLU,
    Abs,
    Erf,
    Identity,
    LeakyReLU,
    RectifiedMonomial,
    ReLU,
    Sign,
    Step,
    get_activation,
    sigmoid_like,
)
from ntkit.activations.closed_form import SIGMOID_LIKE_SCALE, arccos_angle
from tests.activation_reference import expect as quad_expect
from tests.activation_reference import reference_for

F64 = torch.float64
mp.mp.dps = 60  # products of two float64 (and determinants of scaled ones) are exact


def _points() -> list[tuple[float, float, float]]:
    """(v1, c, v2): general position, both signs, the angle-0 / angle-pi boundary, unequal scales."""
    g = torch.Generator().manual_seed(7)
    pts = []
    for _ in range(6):
        v1, v2 = (float(t) for t in 0.2 + 3 * torch.rand(2, generator=g, dtype=F64))
        rho = float(2 * torch.rand((), generator=g, dtype=F64) - 1)
        pts.append((v1, rho * math.sqrt(v1 * v2), v2))
    pts += [(1.0, 0.0, 1.0), (2.5, 0.3, 0.4), (0.7, -0.65, 4.0), (1.0, 1.0, 1.0), (1.0, -1.0, 1.0), (4.0, 6.0, 9.0)]
    return pts


POINTS = _points()
#: zero variances: u = 0 (and u = v = 0)
ZERO = [(0.0, 0.0, 1.3), (2.0, 0.0, 0.0), (0.0, 0.0, 0.0)]


def _theta(v1: float, c: float, v2: float) -> mp.mpf:
    rho = mp.mpf(c) / mp.sqrt(mp.mpf(v1) * mp.mpf(v2))
    return mp.acos(max(min(rho, mp.mpf(1)), mp.mpf(-1)))


def _J(n: int, t: mp.mpf) -> mp.mpf:
    s, c, r = mp.sin(t), mp.cos(t), mp.pi - t
    j3 = 4 * s**3 + 15 * s * c * c + r * (9 * s * s * c + 15 * c**3)
    return [r, s + r * c, 3 * s * c + r * (1 + 2 * c * c), j3][n]


def _arccos_kernel(n: int, v1: float, c: float, v2: float) -> mp.mpf:
    """``E[relu(u)^n relu(v)^n] = (v1 v2)^(n/2) J_n(theta) / 2 pi`` (0 for a zero variance)."""
    if v1 == 0 or v2 == 0:
        return mp.mpf(0)
    return (mp.mpf(v1) * mp.mpf(v2)) ** (mp.mpf(n) / 2) * _J(n, _theta(v1, c, v2)) / (2 * mp.pi)


def _ab_expect(a: float, b: float, v1: float, c: float, v2: float) -> mp.mpf:
    """``E[s(u) s(v)]`` for ``s = a x + (b - a) relu(x)``, expanded by bilinearity."""
    d = mp.mpf(b) - a
    # E[u relu(v)] = E[u v 1{v > 0}] = c / 2 (0 when v = 0)
    e_u_relu_v = mp.mpf(c) / 2 if v2 > 0 else mp.mpf(0)
    e_relu_u_v = mp.mpf(c) / 2 if v1 > 0 else mp.mpf(0)
    return a * a * mp.mpf(c) + a * d * (e_u_relu_v + e_relu_u_v) + d * d * _arccos_kernel(1, v1, c, v2)


def _ab_expect_derivative(a: float, b: float, v1: float, c: float, v2: float) -> mp.mpf:
    """``E[s'(u) s'(v)]`` with ``s' = a + (b - a) 1{x > 0}`` (``1{0 > 0} = 0``)."""
    d = mp.mpf(b) - a
    p1 = mp.mpf(1) / 2 if v1 > 0 else mp.mpf(0)
    p2 = mp.mpf(1) / 2 if v2 > 0 else mp.mpf(0)
    p12 = _arccos_kernel(0, v1, c, v2)
    return a * a + a * d * (p1 + p2) + d * d * p12


def _close(got: torch.Tensor, want: mp.mpf, what: object, rtol: float = 1e-12, atol: float = 1e-14) -> None:
    w = float(want)
    assert abs(float(got) - w) <= rtol * abs(w) + atol, (what, float(got), w)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


AB_PARAMS = [(0.0, 1.0), (0.2, 1.0), (-1.0, 1.0), (-0.3, 1.2), (0.5, -0.7), (1.5, 0.25)]


@pytest.mark.parametrize(("a", "b"), AB_PARAMS)
def test_ab_relu_maps(a: float, b: float) -> None:
    act = ABReLU(a, b)
    for v1, c, v2 in POINTS + ZERO:
        _close(act.expect(_t(v1), _t(c), _t(v2)), _ab_expect(a, b, v1, c, v2), (a, b, v1, c, v2))
        _close(act.expect_derivative(_t(v1), _t(c), _t(v2)), _ab_expect_derivative(a, b, v1, c, v2),
               ("d", a, b, v1, c, v2))
    for v in (0.0, 0.3, 2.7):
        _close(act.mean(_t(v)), (b - a) * mp.sqrt(mp.mpf(v) / (2 * mp.pi)), ("mean", v))
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0], dtype=F64)
    assert torch.equal(act(x), torch.where(x > 0, b * x, a * x))
    assert torch.equal(act.derivative(x), torch.tensor([a, a, a, b, b], dtype=F64))


def test_named_piecewise_linear() -> None:
    """ReLU, leaky ReLU and abs are ``ABReLU`` with the documented slopes; maps agree with the formulas."""
    for act, (a, b), name in [(ReLU(), (0.0, 1.0), "relu"), (LeakyReLU(0.1), (0.1, 1.0), "leaky_relu"),
                              (LeakyReLU(), (0.01, 1.0), "leaky_relu"), (Abs(), (-1.0, 1.0), "abs")]:
        assert (act.a, act.b, act.name) == (a, b, name)
        assert act.closed_form and act.homogeneous_degree == 1 and act.has_derivative_map
        v1, c, v2 = POINTS[1]
        _close(act.expect(_t(v1), _t(c), _t(v2)), _ab_expect(a, b, v1, c, v2), name)
        _close(act.expect_derivative(_t(v1), _t(c), _t(v2)), _ab_expect_derivative(a, b, v1, c, v2), name)
        assert get_activation(name).name == name
    assert LeakyReLU(0.3).alpha == 0.3


def test_identity() -> None:
    act = Identity()
    assert act.closed_form and act.homogeneous_degree == 1 and act.name == "identity"
    v1 = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
    c = torch.tensor([[0.5], [-0.25]], dtype=F64)
    out = act.expect(v1, c, _t(3.0))
    assert out.shape == (2, 3)
    assert torch.equal(out, c.expand(2, 3))
    out[0, 0] = 9.0  # a fresh tensor, not a view of the input
    assert float(c[0, 0]) == 0.5
    assert torch.equal(act.expect_derivative(v1, c, _t(3.0)), torch.ones(2, 3, dtype=F64))
    assert torch.equal(act.mean(v1), torch.zeros(3, dtype=F64))
    x = torch.tensor([-1.5, 0.0, 2.0], dtype=F64)
    assert torch.equal(act(x), x) and torch.equal(act.derivative(x), torch.ones(3, dtype=F64))


def test_step_and_sign() -> None:
    step, sign = Step(), Sign()
    assert (step.name, sign.name) == ("step", "sign")
    assert step.closed_form and sign.closed_form
    assert not step.has_derivative_map and not sign.has_derivative_map
    for v1, c, v2 in POINTS + ZERO:
        positive = v1 > 0 and v2 > 0
        theta = _theta(v1, c, v2) if positive else mp.mpf(0)
        _close(step.expect(_t(v1), _t(c), _t(v2)), (mp.pi - theta) / (2 * mp.pi) if positive else 0, (v1, c, v2))
        _close(sign.expect(_t(v1), _t(c), _t(v2)), 1 - 2 * theta / mp.pi if positive else 0, (v1, c, v2))
    for act in (step, sign):
        with pytest.raises(ValueError, match="Dirac"):
            act.expect_derivative(_t(1.0), _t(0.5), _t(1.0))
        with pytest.raises(ValueError, match="Dirac"):
            act.derivative(_t(1.0))
    v = torch.tensor([0.0, 0.25, 1.5], dtype=F64)
    assert torch.equal(step.mean(v), torch.tensor([0.0, 0.5, 0.5], dtype=F64))
    assert torch.equal(sign.mean(v), torch.zeros(3, dtype=F64))
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)
    assert torch.equal(step(x), torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert torch.equal(sign(x), torch.tensor([-1.0, 0.0, 1.0], dtype=F64))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_rectified_monomial(n: int) -> None:
    act = RectifiedMonomial(n)
    assert act.degree == n and act.homogeneous_degree == n and act.closed_form
    assert act.name == f"rectified_monomial{n}"
    for v1, c, v2 in POINTS + ZERO:
        t1, tc, t2 = _t(v1), _t(c), _t(v2)
        if n <= 3:
            _close(act.expect(t1, tc, t2), _arccos_kernel(n, v1, c, v2), (n, v1, c, v2))
        dwant = n * n * _arccos_kernel(n - 1, v1, c, v2)
        _close(act.expect_derivative(t1, tc, t2), dwant, ("d", n, v1, c, v2))
    # n = 4 (beyond the tabulated J_n) against the 1-D quadrature reference, a few points
    ref = reference_for(act)
    for v1, c, v2 in POINTS[:2] + POINTS[-3:-1]:
        _close(act.expect(_t(v1), _t(c), _t(v2)), quad_expect(ref, v1, c, v2), ("quad", n, v1, c, v2), rtol=1e-10)
    # the mean E[relu(u)^n] = M_n v^(n/2), M_n = E[z^n 1{z > 0}]
    for v in (0.0, 0.6, 2.0):
        want = mp.quad(lambda z: z**n * mp.npdf(z), [0, mp.inf]) * mp.mpf(v) ** (mp.mpf(n) / 2)
        _close(act.mean(_t(v)), want, ("mean", n, v))
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=F64, requires_grad=True)  # autograd's clamp passes 1 at 0
    y = act(x)
    assert torch.equal(y.detach(), torch.clamp(x.detach(), min=0) ** n)
    grad = torch.autograd.grad(y.sum(), x)[0]
    assert torch.allclose(act.derivative(x.detach()), grad, rtol=1e-15, atol=0)
    assert float(act.derivative(torch.zeros((), dtype=F64))) == 0.0


def test_rectified_monomial_rejects_bad_degree() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="degree"):
            RectifiedMonomial(bad)  # type: ignore[arg-type]


def test_arc_cosine_against_quadrature() -> None:
    """The tabulated ``J_n`` used above against the 1-D quadrature reference (validates the test's formulas)."""
    for n in (1, 2, 3):
        ref = reference_for(RectifiedMonomial(n))
        for v1, c, v2 in (POINTS[0], POINTS[7], POINTS[8]):
            w = quad_expect(ref, v1, c, v2)
            assert abs(_arccos_kernel(n, v1, c, v2) - w) <= 1e-12 * abs(w)
    ref = reference_for(ABReLU(-0.3, 1.2))
    v1, c, v2 = POINTS[2]
    w = quad_expect(ref, v1, c, v2)
    assert abs(_ab_expect(-0.3, 1.2, v1, c, v2) - w) <= 1e-12 * abs(w)


@pytest.mark.parametrize(("a", "b", "c0"), [(1.0, 1.0, 0.0), (0.7, 1.3, 0.2), (-1.4, 0.4, -0.6)])
def test_erf(a: float, b: float, c0: float) -> None:
    act = Erf(a, b, c0)
    assert (act.a, act.b, act.c, act.name) == (a, b, c0, "erf") and act.closed_form
    a_, b2, c2 = mp.mpf(a), mp.mpf(b) ** 2, mp.mpf(c0) ** 2
    for v1, c, v2 in POINTS + ZERO:
        d1, d2 = 1 + 2 * b2 * v1, 1 + 2 * b2 * v2
        want = a_**2 * 2 / mp.pi * mp.asin(2 * b2 * c / mp.sqrt(d1 * d2)) + c2
        dwant = 4 * a_**2 * b2 / mp.pi / mp.sqrt(d1 * d2 - 4 * b2 * b2 * mp.mpf(c) ** 2)
        _close(act.expect(_t(v1), _t(c), _t(v2)), want, (v1, c, v2))
        _close(act.expect_derivative(_t(v1), _t(c), _t(v2)), dwant, ("d", v1, c, v2))
    ref = reference_for(act)
    v1, c, v2 = POINTS[3]
    _close(act.expect(_t(v1), _t(c), _t(v2)), quad_expect(ref, v1, c, v2), "quad", rtol=1e-10)
    assert torch.equal(act.mean(torch.tensor([0.0, 2.0], dtype=F64)), torch.full((2,), c0, dtype=F64))
    x = torch.tensor([-1.2, 0.0, 0.4, 2.0], dtype=F64, requires_grad=True)
    y = act(x)
    want_y = torch.tensor([a * math.erf(b * float(t)) + c0 for t in x.detach()], dtype=F64)
    assert torch.allclose(y.detach(), want_y, rtol=1e-15, atol=1e-16)
    grad = torch.autograd.grad(y.sum(), x)[0]
    assert torch.allclose(act.derivative(x.detach()), grad, rtol=1e-14, atol=0)


def test_erf_defaults() -> None:
    """``Erf()`` is ``erf(x)``: ``E[erf(u)^2] = (2/pi) asin(2/3)`` at unit variance (the docstring's example)."""
    act = Erf()
    assert (act.a, act.b, act.c) == (1.0, 1.0, 0.0)
    one = _t(1.0)
    _close(act.expect(one, one, one), 2 / mp.pi * mp.asin(mp.mpf(2) / 3), "erf default")


def test_sigmoid_like() -> None:
    act = sigmoid_like()
    assert act.name == "sigmoid_like"
    assert (act.a, act.b, act.c) == (0.5, 1 / SIGMOID_LIKE_SCALE, 0.5)
    assert SIGMOID_LIKE_SCALE == 2.4020563531719796
    x = torch.linspace(-5, 5, 101, dtype=F64)
    assert float((act(x) - torch.sigmoid(x)).abs().max()) < 0.02  # an erf stand-in for the logistic sigmoid


def test_broadcasting_and_angle() -> None:
    """Maps broadcast ``(var1, cov, var2)``; the angle is exact 0 / pi on the boundary and ``atan2`` elsewhere."""
    v = torch.tensor([1.0, 4.0], dtype=F64)
    c = torch.tensor([[1.0], [-2.0], [0.5]], dtype=F64)
    for act in (ReLU(), ABReLU(-0.3, 1.2), Step(), Sign(), RectifiedMonomial(2), Erf(0.7, 1.3, 0.2)):
        out = act.expect(v, c, _t(1.0))
        assert out.shape == (3, 2)
        for i in range(3):
            for j in range(2):
                assert out[i, j] == act.expect(v[j], c[i, 0], _t(1.0))
    assert float(arccos_angle(_t(2.0), _t(2.0), _t(2.0))) == 0.0
    assert float(arccos_angle(_t(2.0), _t(-2.0), _t(2.0))) == math.pi
    assert float(arccos_angle(_t(2.0), _t(3.0), _t(2.0))) == 0.0  # det < 0 is clipped
    _close(arccos_angle(_t(2.0), _t(0.7), _t(3.0)), _theta(2.0, 0.7, 3.0), "angle")
    assert float(arccos_angle(_t(0.0), _t(0.0), _t(0.0))) == 0.0


def test_homogeneity() -> None:
    """``E[s(a u) s(b v)] = (a b)^k E[s(u) s(v)]`` for the declared degree ``k``."""
    s, t = 1.6, 0.7
    v1, c, v2 = POINTS[0]
    assert Step().homogeneous_degree == 0 and Sign().homogeneous_degree == 0
    for act in (Identity(), ReLU(), Abs(), LeakyReLU(0.2), RectifiedMonomial(2), RectifiedMonomial(3), Step(), Sign()):
        k = act.homogeneous_degree
        scaled = act.expect(_t(s * s * v1), _t(s * t * c), _t(t * t * v2))
        assert torch.allclose(scaled, (s * t) ** k * act.expect(_t(v1), _t(c), _t(v2)), rtol=1e-13, atol=0)


@pytest.mark.parametrize("scale", [1e-250, 1e-100, 1e100, 1e250])
def test_extreme_variances(scale: float) -> None:
    """The maps stay right where ``v1 v2`` leaves the float64 range (the covariance is rescaled internally)."""
    mono_ok = 1e-100 <= scale <= 1e100  # (v1 v2)^(3/2) itself must be a float64
    for v1, c, v2 in [POINTS[0], POINTS[2], POINTS[9], (1.0, 1.0, 1.0)]:
        s1, sc, s2 = v1 * scale, c * scale, v2 * scale
        args = (_t(s1), _t(sc), _t(s2))
        for a, b in ((0.0, 1.0), (-0.3, 1.2)):
            act = ABReLU(a, b)
            _close(act.expect(*args), _ab_expect(a, b, s1, sc, s2), ("ab", scale, v1, c, v2), atol=0)
            _close(act.expect_derivative(*args), _ab_expect_derivative(a, b, s1, sc, s2), ("dab", scale), atol=0)
        theta = _theta(s1, sc, s2)
        _close(Step().expect(*args), (mp.pi - theta) / (2 * mp.pi), ("step", scale), atol=0)
        _close(Sign().expect(*args), 1 - 2 * theta / mp.pi, ("sign", scale), atol=1e-15)
        for n in (1, 2, 3):
            if mono_ok or n == 1:
                act = RectifiedMonomial(n)
                _close(act.expect(*args), _arccos_kernel(n, s1, sc, s2), ("mono", n, scale), atol=0)
                _close(act.expect_derivative(*args), n * n * _arccos_kernel(n - 1, s1, sc, s2), ("dmono", n, scale),
                       atol=0)
        erf = Erf(0.7, 1.3, 0.2)
        b2 = mp.mpf(1.3) ** 2
        d1, d2 = 1 + 2 * b2 * s1, 1 + 2 * b2 * s2
        dq = 1 + 2 * b2 * (mp.mpf(s1) + s2) + 4 * b2 * b2 * (mp.mpf(s1) * s2 - mp.mpf(sc) ** 2)  # d1 d2 - 4 b^4 c^2
        want = mp.mpf(0.7) ** 2 * 2 / mp.pi * mp.atan2(2 * b2 * sc, mp.sqrt(dq)) + mp.mpf(0.2) ** 2
        assert abs(want - (mp.mpf(0.7) ** 2 * 2 / mp.pi * mp.asin(2 * b2 * sc / mp.sqrt(d1 * d2)) + mp.mpf(0.2) ** 2)
                   ) <= 1e-20
        _close(erf.expect(*args), want, ("erf", scale), atol=0)
        _close(erf.expect_derivative(*args), 4 * mp.mpf(0.7) ** 2 * b2 / mp.pi / mp.sqrt(dq), ("derf", scale), atol=0)


def test_rectified_monomial_clips_a_rounding_overshoot_of_the_correlation() -> None:
    """``|c|`` a few ulps beyond ``sqrt(v1 v2)`` (rounding in a duplicated pair) gives the angle-0 value bit for bit."""
    assert RectifiedMonomial().degree == 2  # the default: max(x, 0)^2
    one = _t(1.0)
    for n in (2, 3):
        act = RectifiedMonomial(n)
        for c in (1.0 + 1e-13, 1.0 + 4e-16):
            assert torch.equal(act.expect(one, _t(c), one), act.expect(one, one, one)), (n, c)
            assert torch.equal(act.expect_derivative(one, _t(c), one), act.expect_derivative(one, one, one)), (n, c)
        _close(act.expect(one, one, one), _arccos_kernel(n, 1.0, 1.0, 1.0), n)
