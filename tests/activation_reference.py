"""An independent high-precision (mpmath) reference for the Gaussian dual maps and the FC recursion.

Independent of ``ntkit.activations``' formulas: a bivariate expectation is reduced to ONE outer
integral, computed in mpmath arithmetic by composite Gauss-Legendre split at the kinks, of the inner
*conditional* expectation, which is known in closed form for each family

    E[f(u) g(v)] = int phi(z) f(s1 z) G(l21 z, l22) dz,     G(m, tau) = E[g(m + tau Z)],

with ``s1 = sqrt(v1)``, ``l21 = c / s1``, ``l22 = sqrt(v2 - c^2 / v1)`` evaluated at 40 digits.
The conditional means are textbook one-dimensional Gaussian integrals (truncated moments, Gaussian
products, characteristic functions). For activations without such a mean (tanh, softplus, ...)
:func:`scipy_expect` integrates both dimensions adaptively with QUADPACK.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import mpmath as mp

from ntkit.activations import (
    ABReLU,
    Cos,
    DualActivation,
    Erf,
    Exp,
    Gaussian,
    Gelu,
    Identity,
    Polynomial,
    RectifiedMonomial,
    Sign,
    Sin,
    Step,
)

DPS = 20
LIM = 13  # |z| > 13 carries Gaussian mass < 1e-38
NODES = 24  # Gauss-Legendre nodes per panel: agrees with 64 nodes to ~2e-15 on every family


@lru_cache(maxsize=4)
def _legendre(n: int) -> tuple[list[mp.mpf], list[mp.mpf]]:
    import numpy as np

    t, w = np.polynomial.legendre.leggauss(n)
    return [mp.mpf(v) for v in t], [mp.mpf(v) for v in w]


def _quad(fn: Callable[[mp.mpf], mp.mpf], points: list) -> mp.mpf:
    """Composite Gauss-Legendre (``NODES`` per panel) over the sorted ``points``, in mpmath arithmetic."""
    t, w = _legendre(NODES)
    edges = sorted(mp.mpf(p) for p in points)
    total = []
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        half, mid = (hi - lo) / 2, (hi + lo) / 2
        total.append(half * mp.fsum(wi * fn(mid + half * ti) for ti, wi in zip(t, w, strict=True)))
    return mp.fsum(total)
Scalar = Callable[..., mp.mpf]


def _phi(x: mp.mpf) -> mp.mpf:
    return mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)


def _cdf(x: mp.mpf) -> mp.mpf:
    return mp.ncdf(x)


def _ratio(m: mp.mpf, tau: mp.mpf) -> mp.mpf:
    """``m / tau`` with the limits of a zero ``tau``."""
    if tau == 0:
        return mp.inf if m > 0 else (-mp.inf if m < 0 else mp.mpf(0))
    return m / tau


def _std_moment(j: int) -> int:
    return 0 if j % 2 else math.prod(range(j - 1, 0, -2))


def _poly_mean(coeffs: tuple[float, ...], m: mp.mpf, tau: mp.mpf) -> mp.mpf:
    """``E[p(m + tau Z)]`` by the binomial theorem and ``E[Z^j] = (j - 1)!!``."""
    total = mp.mpf(0)
    for k, a in enumerate(coeffs):
        if a == 0:
            continue
        total += a * mp.fsum(math.comb(k, j) * _std_moment(j) * m ** (k - j) * tau**j for j in range(0, k + 1, 2))
    return total


def _rect_mean(n: int, m: mp.mpf, tau: mp.mpf) -> mp.mpf:
    """``E[(m + tau Z)^n 1[m + tau Z > 0]]`` via truncated moments ``T_j = E[Z^j 1[Z > t]]``."""
    if tau == 0:
        return m**n if m > 0 else mp.mpf(0)
    t = -m / tau
    moments = [1 - _cdf(t), _phi(t)]
    for j in range(2, n + 1):
        moments.append(t ** (j - 1) * _phi(t) + (j - 1) * moments[j - 2])
    return mp.fsum(math.comb(n, j) * m ** (n - j) * tau**j * moments[j] for j in range(n + 1))


@dataclass(frozen=True)
class Reference:
    """``f`` and ``f'`` in mpmath with their conditional means ``G(m, tau) = E[g(m + tau Z)]``."""

    f: Scalar
    df: Scalar
    mean: Scalar
    dmean: Scalar
    kinks: bool = False


def reference_for(act: DualActivation) -> Reference:
    """The mpmath reference of a closed-form activation, built from its parameters only."""
    if isinstance(act, Identity):
        return Reference(lambda x: x, lambda x: mp.mpf(1), lambda m, t: m, lambda m, t: mp.mpf(1))
    if isinstance(act, ABReLU):
        a, b = mp.mpf(act.a), mp.mpf(act.b)
        return Reference(
            lambda x: a * min(x, 0) + b * max(x, 0),
            lambda x: b if x > 0 else a,
            lambda m, t: a * m + (b - a) * _rect_mean(1, m, t),
            lambda m, t: a + (b - a) * _rect_mean(0, m, t),
            kinks=True,
        )
    if isinstance(act, Sign):
        return Reference(mp.sign, _none, lambda m, t: 2 * _cdf(_ratio(m, t)) - 1 if m != 0 else mp.mpf(0), _none, True)
    if isinstance(act, Step):
        return Reference(lambda x: mp.mpf(x > 0), _none, lambda m, t: _rect_mean(0, m, t), _none, True)
    if isinstance(act, RectifiedMonomial):
        n = act.degree
        return Reference(
            lambda x: max(x, 0) ** n,
            lambda x: n * max(x, 0) ** (n - 1) if x > 0 else mp.mpf(0),
            lambda m, t: _rect_mean(n, m, t),
            lambda m, t: n * _rect_mean(n - 1, m, t),
            kinks=True,
        )
    if isinstance(act, Erf):
        a, b, c = mp.mpf(act.a), mp.mpf(act.b), mp.mpf(act.c)
        return Reference(
            lambda x: a * mp.erf(b * x) + c,
            lambda x: a * b * 2 / mp.sqrt(mp.pi) * mp.exp(-((b * x) ** 2)),
            lambda m, t: a * mp.erf(b * m / mp.sqrt(1 + 2 * b * b * t * t)) + c,
            lambda m, t: a * b * 2 / mp.sqrt(mp.pi) / mp.sqrt(1 + 2 * b * b * t * t)
            * mp.exp(-b * b * m * m / (1 + 2 * b * b * t * t)),
        )
    if isinstance(act, Gelu):

        def gelu_mean(m: mp.mpf, t: mp.mpf) -> mp.mpf:
            r = mp.sqrt(1 + t * t)
            return m * _cdf(m / r) + t * t / r * _phi(m / r)

        def gelu_dmean(m: mp.mpf, t: mp.mpf) -> mp.mpf:
            r = mp.sqrt(1 + t * t)
            return _cdf(m / r) + _phi(m / r) / r * m / (1 + t * t)

        return Reference(lambda x: x * _cdf(x), lambda x: _cdf(x) + x * _phi(x), gelu_mean, gelu_dmean)
    if isinstance(act, Sin):
        a, b, c = mp.mpf(act.a), mp.mpf(act.b), mp.mpf(act.c)
        if isinstance(act, Cos):
            return Reference(
                lambda x: a * mp.cos(b * x + c),
                lambda x: -a * b * mp.sin(b * x + c),
                lambda m, t: a * mp.cos(b * m + c) * mp.exp(-b * b * t * t / 2),
                lambda m, t: -a * b * mp.sin(b * m + c) * mp.exp(-b * b * t * t / 2),
            )
        return Reference(
            lambda x: a * mp.sin(b * x + c),
            lambda x: a * b * mp.cos(b * x + c),
            lambda m, t: a * mp.sin(b * m + c) * mp.exp(-b * b * t * t / 2),
            lambda m, t: a * b * mp.cos(b * m + c) * mp.exp(-b * b * t * t / 2),
        )
    if isinstance(act, Gaussian):
        a, b = mp.mpf(act.a), mp.mpf(act.b)

        def g_mean(m: mp.mpf, t: mp.mpf) -> mp.mpf:
            q = 1 + 2 * b * t * t
            return a / mp.sqrt(q) * mp.exp(-b * m * m / q)

        return Reference(
            lambda x: a * mp.exp(-b * x * x),
            lambda x: -2 * a * b * x * mp.exp(-b * x * x),
            g_mean,
            lambda m, t: -2 * b * m / (1 + 2 * b * t * t) * g_mean(m, t),
        )
    if isinstance(act, Exp):
        a, b = mp.mpf(act.a), mp.mpf(act.b)
        return Reference(
            lambda x: a * mp.exp(b * x),
            lambda x: a * b * mp.exp(b * x),
            lambda m, t: a * mp.exp(b * m + b * b * t * t / 2),
            lambda m, t: a * b * mp.exp(b * m + b * b * t * t / 2),
        )
    if isinstance(act, Polynomial):
        co = tuple(act.coeffs)
        dco = tuple(k * a for k, a in enumerate(co))[1:] or (0.0,)
        return Reference(
            lambda x: _poly_mean(co, x, mp.mpf(0)),
            lambda x: _poly_mean(dco, x, mp.mpf(0)),
            lambda m, t: _poly_mean(co, m, t),
            lambda m, t: _poly_mean(dco, m, t),
        )
    raise TypeError(f"no mpmath reference for {act!r}")


def _none(*args: object) -> mp.mpf:
    raise AssertionError("derivative map requested for an NNGP-only activation")


def expect(ref: Reference, v1: mp.mpf, c: mp.mpf, v2: mp.mpf, *, derivative: bool = False) -> mp.mpf:
    """``E[f(u) f(v)]`` (or of ``f'``) for ``(u, v) ~ N(0, [[v1, c], [c, v2]])``, at ``DPS`` digits."""
    f, mean = (ref.df, ref.dmean) if derivative else (ref.f, ref.mean)
    with mp.workdps(DPS):
        v1, c, v2 = mp.mpf(v1), mp.mpf(c), mp.mpf(v2)
        if v1 == 0:
            return f(mp.mpf(0)) * mean(mp.mpf(0), mp.sqrt(max(v2, 0)))
        s1 = mp.sqrt(v1)
        l21 = c / s1
        l22 = mp.sqrt(max(v2 - c * c / v1, 0))
        points = [-LIM, -4, mp.mpf(0), 4, LIM]
        if s1 > 1:  # resolve f(s1 z) near its centre
            points += [-8 / s1, -1 / s1, 1 / s1, 8 / s1]
        if l21 != 0 and l22 != 0:
            w = l22 / abs(l21)
            if w < 1:
                points = [*points, -8 * w, -w, w, 8 * w]
        return _quad(lambda z: _phi(z) * f(s1 * z) * mean(l21 * z, l22), points)


def expect_diag(ref: Reference, v: mp.mpf) -> mp.mpf:
    """``E[f(u)^2]`` for ``u ~ N(0, v)``."""
    with mp.workdps(DPS):
        v = mp.mpf(v)
        if v == 0:
            return ref.f(mp.mpf(0)) ** 2
        s = mp.sqrt(v)
        points = [-LIM, -4, 0, 4, LIM] + ([-8 / s, -1 / s, 1 / s, 8 / s] if s > 1 else [])
        return _quad(lambda z: _phi(z) * ref.f(s * z) ** 2, points)


def fc_reference(
    act: DualActivation,
    x1: list[list[float]],
    x2: list[list[float]],
    *,
    depth: int,
    beta: float,
    w_std: float,
) -> list[tuple[list[list[mp.mpf]], list[list[mp.mpf]] | None]]:
    """``[(nngp, ntk)]`` after 1..depth hidden layers of the FC recursion (Jacot et al. 2018), in mpmath."""
    ref = reference_for(act)
    with mp.workdps(DPS):
        w2, b2 = mp.mpf(w_std) ** 2, mp.mpf(beta) ** 2
        n0 = len(x1[0])

        def dot(a: list[float], b: list[float]) -> mp.mpf:
            return w2 * mp.fsum(mp.mpf(p) * mp.mpf(q) for p, q in zip(a, b, strict=True)) / n0 + b2

        var1 = [dot(a, a) for a in x1]
        var2 = [dot(b, b) for b in x2]
        cov = [[var1[i] if x1[i] == x2[j] else dot(x1[i], x2[j]) for j in range(len(x2))] for i in range(len(x1))]
        ntk: list[list[mp.mpf]] | None = [row[:] for row in cov] if act.has_derivative_map else None
        out = []
        memo: dict[tuple[mp.mpf, mp.mpf, mp.mpf, bool], mp.mpf] = {}

        def pair(v1: mp.mpf, c: mp.mpf, v2: mp.mpf, derivative: bool) -> mp.mpf:
            key = (v1, c, v2, derivative) if v1 <= v2 else (v2, c, v1, derivative)
            if key not in memo:
                memo[key] = w2 * expect(ref, key[0], c, key[2], derivative=derivative)
            return memo[key]

        for _ in range(depth):
            new = [[pair(var1[i], cov[i][j], var2[j], False) + b2 for j in range(len(x2))] for i in range(len(x1))]
            if ntk is not None:
                ntk = [
                    [ntk[i][j] * pair(var1[i], cov[i][j], var2[j], True) + new[i][j] for j in range(len(x2))]
                    for i in range(len(x1))
                ]
            cov = new
            # the diagonal through the same map, so that duplicates stay exactly duplicates (sign and
            # step amplify a correlation error e near 1 to sqrt(e) per layer)
            var1 = [pair(v, v, v, False) + b2 for v in var1]
            var2 = [pair(v, v, v, False) + b2 for v in var2]
            out.append(([row[:] for row in cov], None if ntk is None else [row[:] for row in ntk]))
        return out


def scipy_expect(
    fn: Callable[[float], float], v1: float, c: float, v2: float, *, breakpoints: tuple[float, ...] = (0.0,)
) -> float:
    """``E[fn(u) fn(v)]`` by nested adaptive QUADPACK (``epsabs = 1e-14``), split at the kinks."""
    from scipy import integrate

    lim = 12.0
    if v1 == 0:  # u = 0: E[fn(0) fn(v)]
        v1, c, v2 = v2, 0.0, 0.0
        if v1 == 0:
            return fn(0.0) ** 2
    s1 = math.sqrt(v1)
    l21 = c / s1
    l22 = math.sqrt(max(v2 - c * c / v1, 0.0))
    phi = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1: float) -> float:
        m = l21 * z1
        if l22 == 0:
            return fn(m)
        pts = [(b - m) / l22 for b in breakpoints if abs((b - m) / l22) < lim]
        val, _ = integrate.quad(
            lambda z2: phi(z2) * fn(m + l22 * z2), -lim, lim, points=pts or None, epsabs=1e-14, epsrel=1e-12,
            limit=200,
        )
        return float(val)

    outer = {b / s1 for b in breakpoints}
    if l21 != 0 and l22 < abs(l21):  # the inner mean is a kink smoothed over l22 / |l21|
        width = l22 / abs(l21)
        outer |= {b / l21 + k * width for b in breakpoints for k in (-8.0, -1.0, 1.0, 8.0)}
    outer_pts = sorted(p for p in outer if abs(p) < lim)
    val, _ = integrate.quad(
        lambda z1: phi(z1) * fn(s1 * z1) * inner(z1), -lim, lim, points=outer_pts or None, epsabs=1e-14, epsrel=1e-12,
        limit=200,
    )
    return float(val)
