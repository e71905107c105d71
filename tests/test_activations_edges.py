"""Every activation at the edges of its inputs: zero, duplicated, tiny and huge rows, entry by entry.

Covered: every name of the registry (:func:`ntkit.activations.available_activations`: closed forms,
the Mehler / quadrature general path, aliases) and every torch activation module with a dual map
(:data:`ntkit.infinite.ops.activation_modules.ACTIVATION_MODULES`, with non-default parameters where it has some).
The inputs (d = 3) hold a generic row, its exact duplicate, the zero row, two tiny rows (unit
directions at 53 degrees), a huge row:

* the dual maps ``E[s(u) s(v)]`` and ``E[s'(u) s'(v)]`` on the layer-1 covariances of rows of norm
  1e-75 and 1e75: variances 1e-150 .. 1e150, the widest range whose pairwise products (which the
  closed forms formed before the fix) stay normal in float64; ``test_dual_maps_beyond_the_product_range``
  checks beyond;
* the NNGP and NTK of a depth-2 fully connected model (NTK parameterization, no bias) through
  :func:`ntkit.infinite_kernel` on rows of norm 1e-150 and 1e150 in float64, 1e-15 and 1e15 in
  float32, on every path that serves the activation: the compiled ABReLU loop, the fused torch
  recursion (``NTKIT_NATIVE=0``), the reference evaluator (other closed forms, the general path).
  Where the model cannot be evaluated at the huge row -- it is not positively homogeneous, or its
  exact kernel overflows the dtype -- the clear error it gives; the other rows are then evaluated.

Each check: agreement with the reference on the natural scale (:func:`tests.conftest.nat_err`,
tolerances ``TOL[dtype][path]``), never NaN (an overflowing exact value must come out as inf), exact
symmetry, the diagonal equal to the separately computed self-kernel, duplicated rows identical.

The reference (:func:`_expect`): the bivariate expectation as a nested composite Gauss-Legendre rule
in float64, written here independently of ntkit's rules: 20 nodes per panel, panels split at every
kink of the activation and its derivative in both variables (and where the inner mean becomes a
smoothed kink as the correlation tends to +-1); the conditional standard deviation by exact rational
arithmetic (duplicates exactly degenerate, no underflow for tiny rows). sin, cos and exp by their
characteristic functions (exact at any variance). ``test_reference_matches_mpmath`` holds it to the
20-digit mpmath reference of tests/activation_reference.py on these very inputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from fractions import Fraction
from functools import cache

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy.special import erf as _erf
from torch import nn

import ntkit
from ntkit.activations import Activation, available_activations, get_activation
from ntkit.infinite import describe_model
from ntkit.infinite.fused import fused_kind
from ntkit.infinite.ops.activation_modules import ACTIVATION_MODULES, activation_of
from tests.activation_reference import expect as mp_expect
from tests.activation_reference import reference_for
from tests.conftest import TOL, nat_err, nat_errors

F64, F32 = torch.float64, torch.float32
D = 3
A = (0.3, -1.2, 0.5)
T1 = (0.6, 0.8, 0.0)
T2 = (-0.28, 0.96, 0.0)  # cos(angle to T1) = 0.6
H = (0.6, -0.8, 0.0)


def _rows(lo: float, hi: float) -> list[tuple[float, ...]]:
    """A generic row, its duplicate, zero, two tiny rows (norm ``lo``), one huge row (norm ``hi``)."""
    return [A, A, (0.0, 0.0, 0.0), tuple(lo * t for t in T1), tuple(lo * t for t in T2), tuple(hi * t for t in H)]


HUGE = 5  # index of the huge row

# ----------------------------------------------------------------------------- scalar functions (numpy)

Fn = Callable[[np.ndarray], np.ndarray]
SL = 2.4020563531719796  # sigmoid_like: 0.5 erf(x / SL) + 0.5
SELU_L, SELU_A = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def _sig(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _softplus(beta: float) -> tuple[Fn, Fn]:
    return (lambda x: np.logaddexp(0.0, beta * x) / beta), (lambda x: _sig(beta * x))


def _elu(alpha: float, scale: float = 1.0) -> tuple[Fn, Fn]:
    return ((lambda x: scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))),
            (lambda x: scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))))


def _celu(alpha: float) -> tuple[Fn, Fn]:
    return ((lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0) / alpha))),
            (lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0) / alpha))))


def _abrelu(a: float, b: float) -> tuple[Fn, Fn]:
    return (lambda x: np.where(x > 0, b * x, a * x)), (lambda x: np.where(x > 0, b, a) + 0 * x)


def _clip(lo: float, hi: float) -> tuple[Fn, Fn]:
    return (lambda x: np.clip(x, lo, hi)), (lambda x: ((x > lo) & (x < hi)).astype(float))


def _mish() -> tuple[Fn, Fn]:
    def d(x: np.ndarray) -> np.ndarray:
        t = np.tanh(np.logaddexp(0.0, x))
        return t + x * (1 - t * t) * _sig(x)

    return (lambda x: x * np.tanh(np.logaddexp(0.0, x))), d


def _gelu_tanh() -> tuple[Fn, Fn]:
    k = math.sqrt(2 / math.pi)

    def d(x: np.ndarray) -> np.ndarray:
        t = np.tanh(k * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)

    return (lambda x: 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x**3)))), d


def _phi_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + _erf(x / math.sqrt(2)))


def _poly(coeffs: list[float]) -> tuple[Fn, Fn]:
    p = np.polynomial.Polynomial(coeffs)
    dp = p.deriv()
    return (lambda x: p(x) + 0 * x), (lambda x: dp(x) + 0 * x)


#: name -> (f, f', breakpoints); f' at a kink follows torch's autograd of the finite function.
SCALAR: dict[str, tuple[Fn, Fn | None, tuple[float, ...]]] = {
    "identity": (lambda x: x, lambda x: 1.0 + 0 * x, (0.0,)),
    "relu": (*_abrelu(0.0, 1.0), (0.0,)),
    "leaky_relu": (*_abrelu(0.01, 1.0), (0.0,)),
    "leaky_relu(0.2)": (*_abrelu(0.2, 1.0), (0.0,)),
    "abs": (*_abrelu(-1.0, 1.0), (0.0,)),  # f'(0) = -1: ntkit's ABReLU convention (a at 0)
    "ab_relu": (*_abrelu(-0.3, 1.2), (0.0,)),
    "erf": (_erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x), (0.0,)),
    "sigmoid_like": (lambda x: 0.5 * _erf(x / SL) + 0.5,
                     lambda x: 1 / (SL * math.sqrt(math.pi)) * np.exp(-((x / SL) ** 2)), (0.0,)),
    "step": (lambda x: (x > 0).astype(float), None, (0.0,)),
    "sign": (np.sign, None, (0.0,)),
    "gelu": (lambda x: x * _phi_cdf(x), lambda x: _phi_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi),
             (0.0,)),
    "gaussian": (lambda x: np.exp(-0.5 * x * x), lambda x: -x * np.exp(-0.5 * x * x), (0.0,)),
    "square": (*_poly([0, 0, 1]), (0.0,)),
    "cube": (*_poly([0, 0, 0, 1]), (0.0,)),
    "hermite2": (*_poly([-1 / math.sqrt(2), 0, 1 / math.sqrt(2)]), (0.0,)),
    "hermite3": (*_poly([0, -3 / math.sqrt(6), 0, 1 / math.sqrt(6)]), (0.0,)),
    "rectified_quadratic": (lambda x: np.maximum(x, 0.0) ** 2, lambda x: 2 * np.maximum(x, 0.0), (0.0,)),
    "rectified_cubic": (lambda x: np.maximum(x, 0.0) ** 3, lambda x: 3 * np.maximum(x, 0.0) ** 2, (0.0,)),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2, (0.0,)),
    "sigmoid": (_sig, lambda x: _sig(x) * _sig(-x), (0.0,)),
    "softplus": (*_softplus(1.0), (0.0,)),
    "softplus(beta=2)": (*_softplus(2.0), (0.0,)),
    "silu": (lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * _sig(-x)), (0.0,)),
    "elu": (*_elu(1.0), (0.0,)),
    "elu(alpha=0.5)": (*_elu(0.5), (0.0,)),
    "celu(alpha=0.7)": (*_celu(0.7), (0.0,)),
    "selu": (*_elu(SELU_A, SELU_L), (0.0,)),
    "mish": (*_mish(), (0.0,)),
    "gelu_tanh": (*_gelu_tanh(), (0.0,)),
    "relu6": (*_clip(0.0, 6.0), (0.0, 6.0)),
    "hardtanh(-2,1.5)": (*_clip(-2.0, 1.5), (-2.0, 1.5)),
    "hardsigmoid": (lambda x: np.clip(x / 6 + 0.5, 0.0, 1.0), lambda x: ((x > -3) & (x < 3)) / 6.0, (-3.0, 3.0)),
    "hardswish": (lambda x: x * np.clip(x + 3, 0.0, 6.0) / 6,
                  lambda x: np.where(x < -3, 0.0, np.where(x > 3, 1.0, (2 * x + 3) / 6)), (-3.0, 3.0)),
    "softsign": (lambda x: x / (1 + np.abs(x)), lambda x: 1 / (1 + np.abs(x)) ** 2, (0.0,)),
    "tanhshrink": (lambda x: x - np.tanh(x), lambda x: np.tanh(x) ** 2, (0.0,)),
    "logsigmoid": (lambda x: -np.logaddexp(0.0, -x), lambda x: _sig(-x), (0.0,)),
    "softshrink(0.3)": (lambda x: np.sign(x) * np.maximum(np.abs(x) - 0.3, 0.0),
                        lambda x: (np.abs(x) > 0.3).astype(float), (-0.3, 0.3)),
}
ALIASES = {"linear": "identity", "heaviside": "step", "rbf": "gaussian", "swish": "silu"}

#: sin, cos, exp: ``a e^{i w x}`` families, by their characteristic functions: name -> [(coef, w)] of
#: ``f(x) = Re sum coef e^{w x}`` for f and f' (w complex: i for sin / cos, 1 for exp).
CHAR: dict[str, tuple[list[tuple[complex, complex]], list[tuple[complex, complex]]]] = {
    "sin": ([(-0.5j, 1j), (0.5j, -1j)], [(0.5, 1j), (0.5, -1j)]),
    "cos": ([(0.5, 1j), (0.5, -1j)], [(-0.5j, 1j), (0.5j, -1j)]),
    "exp": ([(1.0, 1.0)], [(1.0, 1.0)]),
}


def _char_expect(terms: list[tuple[complex, complex]], v1: float, c: float, v2: float) -> float:
    """``E[f(u) f(v)]`` for real ``f = sum coef e^{w x}``: ``E[e^{a u + b v}] = e^{(a^2 v1 + 2ab c + b^2 v2) / 2}``.

    In mpmath, with enough digits that terms cancelling to ``|c| / max(v1, v2)`` keep 30 of them.
    """
    spread = max(abs(v1), abs(v2), 1.0) / abs(c) if c != 0 else 1.0
    with mp.workdps(40 + int(math.log10(spread))):
        fv1, fc, fv2 = mp.mpf(v1), mp.mpf(c), mp.mpf(v2)
        total = mp.mpc(0)
        for ca, wa in terms:
            for cb, wb in terms:
                total += mp.mpc(ca) * mp.mpc(cb) * mp.exp((mp.mpc(wa) ** 2 * fv1 + 2 * mp.mpc(wa) * mp.mpc(wb) * fc
                                                           + mp.mpc(wb) ** 2 * fv2) / 2)
        return float(mp.re(total))


# ----------------------------------------------------------------------------- the float64 reference

LIMIT = 12.0
BASE = np.array([-LIMIT, -8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, LIMIT])
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(20)
#: Layers ``b + k`` around each breakpoint ``b`` where ``f(s z)`` is steep (``s > 1``): resolves
#: derivatives that decay algebraically (softsign: ``(1 + |x|)^-2``) up to ``s = 1e3``.
STEEP = (-512.0, -64.0, -8.0, -1.0, 1.0, 8.0, 64.0, 512.0)


def _rule(extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre over ``BASE`` and the ``extra`` edges (last axis; leading axes batch)."""
    lead = extra.shape[:-1]
    edges = np.sort(np.concatenate([np.broadcast_to(BASE, (*lead, len(BASE))), np.clip(extra, -LIMIT, LIMIT)], -1), -1)
    lo, hi = edges[..., :-1, None], edges[..., 1:, None]
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    return (mid + half * _NODES).reshape(*lead, -1), (half * _WEIGHTS).reshape(*lead, -1)


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _steep(points: list[float], s: float) -> list[float]:
    """Kinks of ``f(s z)`` at ``b / s``, with layers at ``(b +- 1, 8) / s`` where ``f(s z)`` is steep."""
    out = [b / s for b in points]
    return out + ([(b + k) / s for b in points for k in STEEP] if s > 1 else [])


def _expect1(g: Fn, v: float, breaks: tuple[float, ...]) -> float:
    """``E[g(v)]``, ``v ~ N(0, v)``."""
    if v == 0.0:
        return float(g(np.array(0.0)))
    s = math.sqrt(v)
    z, w = _rule(np.array(_steep(list(breaks), s)))
    return float(np.sum(w * _phi(z) * g(s * z)))


def _expect(f: Fn, g: Fn, v1: float, c: float, v2: float, breaks: tuple[float, ...]) -> float:
    """``E[f(u) g(v)]`` for ``(u, v) ~ N(0, [[v1, c], [c, v2]])``: ``u = s1 z1``, ``v = l21 z1 + l22 z2``."""
    if v1 == 0.0:
        return float(f(np.array(0.0))) * _expect1(g, v2, breaks)
    if v2 == 0.0:
        return _expect1(f, v1, breaks) * float(g(np.array(0.0)))
    s1 = math.sqrt(v1)
    l21 = c / s1
    l22 = math.sqrt(max(float(Fraction(v2) - Fraction(c) ** 2 / Fraction(v1)), 0.0))
    outer = _steep(list(breaks), s1)
    if l21 != 0 and l22 < abs(l21):  # the inner mean: a kink smoothed over l22 / |l21|
        width = l22 / abs(l21)
        outer += [b / l21 + k * width for b in breaks for k in (-8, -1, 1, 8)]
    z1, w1 = _rule(np.array(outer))
    if l22 == 0.0:
        return float(np.sum(w1 * _phi(z1) * f(s1 * z1) * g(l21 * z1)))
    m = l21 * z1
    inner = [(b - m) / l22 for b in breaks]
    if l22 > 1:
        inner += [(b + k - m) / l22 for b in breaks for k in STEEP]
    z2, w2 = _rule(np.stack(inner, -1))
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.sum(w2 * _phi(z2) * g(m[:, None] + l22 * z2), -1)
        return float(np.sum(w1 * _phi(z1) * f(s1 * z1) * h))


def _pair(key: str, v1: float, c: float, v2: float, derivative: bool) -> float:
    if not all(math.isfinite(t) for t in (v1, c, v2)):
        return math.inf  # a previous layer overflowed: so does this one (tested only as an overflow)
    if key in CHAR:
        return _char_expect(CHAR[key][derivative], v1, c, v2)
    f, df, breaks = SCALAR[key]
    fn = df if derivative else f
    assert fn is not None
    with np.errstate(over="ignore", invalid="ignore"):
        out = _expect(fn, fn, v1, c, v2, breaks)
    return out if not math.isnan(out) else math.inf  # inf * 0 of an overflowing integrand


@cache
def _pair_cached(key: str, v1: float, c: float, v2: float, derivative: bool) -> float:
    if v1 > v2:  # symmetric in (v1, v2)
        v1, v2 = v2, v1
    return _pair(key, v1, c, v2, derivative)


def _ref_maps(key: str, var: list[float], cov: list[list[float]], derivative: bool) -> list[list[float]]:
    return [[_pair_cached(key, var[i], cov[i][j], var[j], derivative) for j in range(len(var))]
            for i in range(len(var))]


def _layer1(rows: list[tuple[float, ...]], w2: float) -> list[list[float]]:
    """``w^2 x_i . x_j / d`` rounded once from exact rational arithmetic (duplicates: the same number)."""
    fr = [[Fraction(t) for t in r] for r in rows]
    return [[float(Fraction(w2) * sum((p * q for p, q in zip(a, b, strict=True)), Fraction(0)) / D) for b in fr]
            for a in fr]


def _ref_network(key: str, rows: list[tuple[float, ...]], depth: int, w_std: float, ntk: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """NNGP and NTK of the bias-free fully connected network (NTK parameterization) by the reference."""
    w2 = w_std * w_std
    cov = _layer1(rows, w2)
    theta = [row[:] for row in cov] if ntk else None
    for _ in range(depth):
        var = [cov[i][i] for i in range(len(rows))]
        new = [[w2 * e for e in row] for row in _ref_maps(key, var, cov, False)]
        if theta is not None:
            dot = _ref_maps(key, var, cov, True)
            theta = [[theta[i][j] * w2 * dot[i][j] + new[i][j] for j in range(len(rows))] for i in range(len(rows))]
        cov = new
    return np.array(cov), None if theta is None else np.array(theta)


# ----------------------------------------------------------------------------- the cases

#: The module-only activations and non-default parameters (modules mapped to a registry name are
#: checked against it in test_modules_map_to_the_registry).
MODULE_CASES: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu(0.2)": lambda: nn.LeakyReLU(0.2),
    "softplus(beta=2)": lambda: nn.Softplus(beta=2.0),
    "elu(alpha=0.5)": lambda: nn.ELU(alpha=0.5),
    "celu(alpha=0.7)": lambda: nn.CELU(alpha=0.7),
    "relu6": nn.ReLU6,
    "hardtanh(-2,1.5)": lambda: nn.Hardtanh(-2.0, 1.5),
    "hardsigmoid": nn.Hardsigmoid,
    "hardswish": nn.Hardswish,
    "softsign": nn.Softsign,
    "tanhshrink": nn.Tanhshrink,
    "logsigmoid": nn.LogSigmoid,
    "softshrink(0.3)": lambda: nn.Softshrink(0.3),
}
REGISTRY = [n for n in available_activations() if n not in ALIASES]
CASES = REGISTRY + list(MODULE_CASES)


#: Reported bugs (strict: these tests start passing, and fail as XPASS, when they are fixed): case -> reason.
KNOWN_DUAL: dict[str, str] = {}
KNOWN_NETWORK: dict[str, str] = {}
KNOWN_FLOAT32: dict[str, str] = {}


def _params(known: dict[str, str]) -> list:
    return [pytest.param(c, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=known[c]))
            if c in known else c for c in CASES]


def _activation(case: str) -> Activation:
    if case in MODULE_CASES:
        act = activation_of(MODULE_CASES[case]())
        assert act is not None
        return act
    return get_activation(case)


def _dual_path(act: Activation) -> str:
    if act.closed_form:
        return "closed_form"
    return "mehler" if act.general_method() == "mehler" else "quadrature_kinked"


def _network_paths(act: Activation) -> list[str]:
    if not act.closed_form:
        return [_dual_path(act)]
    kind = fused_kind(act)
    return {"abrelu": ["native", "fused"], "erf": ["fused"], "identity": ["fused"]}.get(kind, ["reference"])


def _model(case: str, depth: int, w_std: float) -> nn.Module:
    if case not in MODULE_CASES:
        return ntkit.nn.fc(D, 8, depth=depth, activation=case, w_std=w_std, device="meta")
    layers: list[nn.Module] = [ntkit.nn.Linear(D, 8, w_std=w_std, device="meta")]
    for i in range(depth):
        layers += [MODULE_CASES[case](), ntkit.nn.Linear(8, 8 if i < depth - 1 else 1, w_std=w_std, device="meta")]
    return nn.Sequential(*layers)


def _check_matrix(got: torch.Tensor, ref: np.ndarray, tol: float, what: str) -> None:
    """No NaN; inf exactly where the exact value overflows; nat_err < tol on the rows whose self-kernel is
    finite, relative error on the finite entries of the others."""
    ref_t = torch.from_numpy(ref).to(got.dtype).to(F64)  # the exact value rounded to the tested dtype
    g = got.to(F64)
    assert not bool(torch.isnan(g).any()), (what, "NaN", g)
    over = ~torch.isfinite(ref_t)
    assert torch.equal(~torch.isfinite(g), over), (what, "inf where the exact value overflows", g, ref_t)
    assert torch.equal(g[over], ref_t[over]), (what, "sign of the overflow")
    diag = ref_t.diagonal()
    ok = torch.isfinite(diag)
    sub = torch.nonzero(ok).flatten()
    err = nat_err(g[sub][:, sub], ref_t[sub][:, sub], diag[sub], diag[sub])
    assert err < tol, (what, err, nat_errors(g[sub][:, sub], ref_t[sub][:, sub], diag[sub], diag[sub]))
    rest = ~(ok[:, None] & ok[None, :]) & ~over  # finite entries beside an overflowing self-kernel
    if bool(rest.any()):
        rel = ((g[rest] - ref_t[rest]).abs() / ref_t[rest].abs().clamp_min(1e-300)).max()
        assert float(rel) < tol, (what, "finite entries of overflowing rows", float(rel))


def _check_structure(k: torch.Tensor, diag: torch.Tensor | None, what: str) -> None:
    assert diag is not None
    assert torch.equal(k, k.T), (what, "symmetry")
    assert torch.equal(k[0], k[1]) and torch.equal(k[:, 0], k[:, 1]), (what, "duplicated rows")
    assert torch.equal(k.diagonal(), diag), (what, "diagonal vs self-kernel", k.diagonal(), diag)


# ----------------------------------------------------------------------------- dual maps

#: The huge row of the general path's dual maps: norm 1e3 (variance 3e5), what the float64 reference
#: resolves for activations with algebraic tails. (ntkit itself at huge variances, where E[s'(u)^2] of
#: steep activations is ~1 / sqrt(var): see test_general_path_ntk_at_huge_norms.)
GENERAL_HUGE = 1e3


def _check_dual_structure(k: torch.Tensor, tol: float) -> None:
    """Duplicated rows identical; symmetric to ``tol`` on the natural scale (the general path integrates
    ``(v1, c, v2)`` and ``(v2, c, v1)`` by different, equally accurate rules: not bit for bit)."""
    assert torch.equal(k[0], k[1]) and torch.equal(k[:, 0], k[:, 1])
    d = k.diagonal().to(F64)
    ok = torch.nonzero(torch.isfinite(d)).flatten()
    assert nat_err(k[ok][:, ok], k.T[ok][:, ok], d[ok], d[ok]) < tol


@pytest.mark.parametrize("case", _params(KNOWN_DUAL))
def test_dual_maps_on_zero_duplicate_tiny_and_huge_rows(case: str) -> None:
    act = _activation(case)
    x = torch.tensor(_rows(1e-75, 1e75 if act.closed_form else GENERAL_HUGE), dtype=F64)
    cov = x @ x.T / D
    var = cov.diagonal().clone()
    v1, v2 = var[:, None].expand_as(cov), var[None, :].expand_as(cov)
    nngp, dot = act.dual(v1, cov, v2, derivative=act.has_derivative_map)
    v, c = var.tolist(), cov.tolist()
    tol = TOL[F64][_dual_path(act)]
    _check_matrix(nngp, np.array(_ref_maps(case, v, c, False)), tol, f"{case} nngp")
    _check_dual_structure(nngp, tol)
    diag = act.expect_diag(var)
    assert not bool(torch.isnan(diag).any())
    ok = torch.isfinite(diag)
    assert float(((diag - nngp.diagonal()).abs() / diag.abs().clamp_min(1e-300))[ok].max()) < tol, "expect_diag"
    if not act.has_derivative_map:
        assert dot is None
        with pytest.raises(ValueError, match=r"Dirac delta|derivative map is undefined"):
            act.expect_derivative(var, var, var)
        return
    assert dot is not None
    _check_matrix(dot, np.array(_ref_maps(case, v, c, True)), tol, f"{case} derivative")
    _check_dual_structure(dot, tol)


# ----------------------------------------------------------------------------- the infinite kernel


def _network_case(case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    act = _activation(case)
    depth, w_std = 2, 1.0
    lo, hi = (1e-150, 1e150) if dtype == F64 else (1e-15, 1e15)
    rows = _rows(lo, hi)
    x = torch.tensor(rows, dtype=F64).to(dtype)
    rows = [tuple(float(t) for t in r) for r in x.double()]  # what the dtype holds
    model = _model(case, depth, w_std)
    arch = describe_model(model, (D,))
    ref_nngp, ref_ntk = _ref_network(case, rows, depth, w_std, act.has_derivative_map)
    overflow = not math.isfinite(float(torch.tensor(ref_nngp[HUGE, HUGE]).to(dtype)))
    if arch.degree is None:
        with pytest.raises(ValueError, match=r"not positively homogeneous \(at 1 \("):
            ntkit.infinite_kernel(model, x, dtype=dtype)
    elif overflow:
        with pytest.raises(ValueError, match="exceed its range"):
            ntkit.infinite_kernel(model, x, dtype=dtype)
    if arch.degree is None or overflow:  # the other rows
        keep = [i for i in range(len(rows)) if i != HUGE]
        x = x[keep]
        ref_nngp = ref_nngp[np.ix_(keep, keep)]
        ref_ntk = None if ref_ntk is None else ref_ntk[np.ix_(keep, keep)]
    for path in _network_paths(act):
        if path == "fused":
            monkeypatch.setenv("NTKIT_NATIVE", "0")
        k = ntkit.infinite_kernel(model, x, dtype=dtype)
        ntk_diag = None if k.ntk is None else ntkit.compute_kernel(model, x, which="ntk", pairs="diagonal",
                                                                   dtype=dtype).ntk
        monkeypatch.delenv("NTKIT_NATIVE", raising=False)
        assert k.nngp.dtype == dtype
        tol = TOL[dtype][path]
        _check_matrix(k.nngp, ref_nngp, tol, f"{case} {path} nngp")
        _check_structure(k.nngp, k.var1, f"{case} {path} nngp")
        if ref_ntk is None:
            assert k.ntk is None
        else:
            _check_matrix(k.ntk, ref_ntk, tol, f"{case} {path} ntk")
            assert ntk_diag is not None
            _check_structure(k.ntk, ntk_diag, f"{case} {path} ntk")


@pytest.mark.parametrize("case", _params(KNOWN_NETWORK))
def test_infinite_kernel_on_zero_duplicate_tiny_and_huge_rows(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _network_case(case, F64, monkeypatch)


#: float32: every closed form, and the general path through one activation per kind (time).
FLOAT32_GENERAL = {"tanh", "softplus", "elu", "hardswish", "softsign", "relu6", "selu", "elu(alpha=0.5)"}


FLOAT32_CASES = [c for c in _params(KNOWN_FLOAT32)
                 if not isinstance(c, str) or _activation(c).closed_form or c in FLOAT32_GENERAL]


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_infinite_kernel_float32_edges(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _network_case(case, F32, monkeypatch)


# ----------------------------------------------------------------------------- the registry and the modules


def test_every_activation_is_covered() -> None:
    assert set(REGISTRY) <= set(SCALAR) | set(CHAR)
    x = torch.tensor(_rows(1e-75, 1e75)[:5], dtype=F64)
    cov = x @ x.T / D
    var = cov.diagonal().clone()
    for alias, target in ALIASES.items():
        a, b = get_activation(alias), get_activation(target)
        assert type(a) is type(b)
        assert torch.equal(a.expect(var[:, None], cov, var[None, :]), b.expect(var[:, None], cov, var[None, :]))
    assert set(ALIASES) == set(available_activations()) - set(REGISTRY)
    mapped = {t for t in ACTIVATION_MODULES if t not in {type(MODULE_CASES[c]()) for c in MODULE_CASES}}
    assert mapped == {nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.SELU, nn.Mish}


@pytest.mark.parametrize(
    ("module", "name"),
    [(nn.ReLU(), "relu"), (nn.LeakyReLU(), "leaky_relu"), (nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid"),
     (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.SiLU(), "silu"), (nn.Softplus(), "softplus"),
     (nn.ELU(), "elu"), (nn.SELU(), "selu"), (nn.Mish(), "mish")],
)
def test_modules_map_to_the_registry(module: nn.Module, name: str) -> None:
    """A module whose function is a registry activation gets that activation's dual maps, bit for bit."""
    act, want = activation_of(module), get_activation(name)
    assert act is not None
    x = torch.tensor(_rows(1e-75, 1e75)[:5], dtype=F64)
    cov = x @ x.T / D
    var = cov.diagonal().clone()
    got = act.dual(var[:, None].expand_as(cov), cov, var[None, :].expand_as(cov))
    ref = want.dual(var[:, None].expand_as(cov), cov, var[None, :].expand_as(cov))
    assert got[1] is not None and ref[1] is not None
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    z = torch.linspace(-4, 4, 17, dtype=F64)
    assert torch.equal(act.derivative(z), want.derivative(z)) and torch.equal(act(z), want(z))
    assert float((act(z) - module(z)).abs().max()) < 1e-15  # the module's own function, up to rounding


# ----------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("name", ["relu", "gelu", "rectified_quadratic"])
def test_reference_matches_mpmath(name: str) -> None:
    """The float64 reference against the 20-digit mpmath reference on the edge triples (natural scale)."""
    x = _rows(1e-75, 1e75)
    cov = _layer1(x, 1.0)
    var = [cov[i][i] for i in range(len(x))]
    ref = reference_for(get_activation(name))
    for derivative in (False, True):
        ours = np.array(_ref_maps(name, var, cov, derivative))
        exact = np.array([[float(mp_expect(ref, var[i], cov[i][j], var[j], derivative=derivative))
                           for j in range(len(x))] for i in range(len(x))])
        d = torch.from_numpy(exact.diagonal().copy())
        err = nat_err(torch.from_numpy(ours), torch.from_numpy(exact), d, d)
        assert err < 1e-14, (name, derivative, err)


# ----------------------------------------------------------------------------- beyond the product range


@pytest.mark.parametrize("case", ["relu", "erf", "step"])
def test_dual_maps_beyond_the_product_range(case: str) -> None:
    """Variances 3e-301 (tiny rows at 53 degrees) and 3e299 (a huge row): the exact values are finite.

    (``infinite_kernel`` rescales such rows for positively homogeneous models; the bare maps do not.)
    """
    act = get_activation(case)
    x = torch.tensor(_rows(1e-150, 1e150), dtype=F64)
    cov = x @ x.T / D
    var = cov.diagonal().clone()
    nngp, _ = act.dual(var[:, None].expand_as(cov), cov, var[None, :].expand_as(cov), derivative=False)
    _check_matrix(nngp, np.array(_ref_maps(case, var.tolist(), cov.tolist(), False)), TOL[F64]["closed_form"], case)


def test_nat_err_zero_diagonal_rule() -> None:
    """Where a self-kernel is 0 the exact entry is 0 and the error absolute; tiny diagonals do not underflow."""
    ref = torch.tensor([[1e-300, 0.0], [0.0, 0.0]], dtype=F64)
    d = torch.tensor([1e-300, 0.0], dtype=F64)
    assert nat_err(ref * (1 + 1e-12), ref, d, d) == pytest.approx(1e-12, rel=1e-3)
    assert nat_err(ref + torch.tensor([[0.0, 1e-20], [0.0, 0.0]], dtype=F64), ref, d, d) == 1e-20
    assert nat_err(ref + float("nan"), ref, d, d) == math.inf
    with pytest.raises(ValueError, match="non-negative"):
        nat_err(ref, ref, -d, d)
    assert copy.copy(TOL[F64]) == TOL[torch.float64] and set(TOL[F32]) == set(TOL[F64])


def test_general_path_ntk_at_huge_norms() -> None:
    """A tanh network accepts inputs of norm 1e20 (their squares fit float64): its NTK must be right there.

    ``Theta(x, x) = Sigma1 E[tanh'(u)^2] + E[tanh(u)^2]`` with ``Sigma1 = |x|^2 / d`` and, for
    ``u ~ N(0, v)`` with ``v`` large, ``E[tanh'(u)^2] = (4/3) / sqrt(2 pi v) (1 + O(1/v))``.
    """
    x = torch.tensor([H], dtype=F64) * 1e20
    v = float((x * x).sum()) / D
    k = ntkit.fc_kernel(x, depth=1, activation="tanh")
    exact = v * (4 / 3) / math.sqrt(2 * math.pi * v) + 1.0
    assert abs(float(k.ntk[0, 0]) / exact - 1) < 1e-8, (float(k.ntk[0, 0]), exact)
