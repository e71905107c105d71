"""The Mehler / Hermite fast path of the general path (:mod:`ntkit.activations.mehler`).

Checks: which method ``"auto"`` picks; agreement with the quadrature path, with exact closed forms
run through the expansion, and with high-precision references (mpmath; nested adaptive QUADPACK for
tanh / softplus / SiLU) at depths 1-5, near correlation +-1, with duplicates, zero vectors and input
norms 1e-3 .. 1e3; the truncation bound on random covariances; the fallback to quadrature (it
triggers, and returns the quadrature's own numbers); float32.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import ntkit
from ntkit.activations import CallableActivation, DualActivation, get_activation
from ntkit.activations.mehler import hermite_expansions, mehler_expectations
from ntkit.activations.quadrature import gaussian_expectation
from tests.activation_reference import fc_reference, scipy_expect
from tests.conftest import TOL, nat_err, rel_err

F64 = torch.float64
SMOOTH = ["tanh", "sigmoid", "softplus", "silu", "swish", "mish", "gelu_tanh"]


def _mehler_twin(act: DualActivation, method: str = "mehler") -> CallableActivation:
    """A closed-form activation's own function and derivative, on the general path."""
    return CallableActivation(act.forward, derivative=act.derivative, name=f"{act.name}_{method}", method=method)


def _input_kernel(x: torch.Tensor, *, beta: float, w_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-1 variances (N,) and covariances (N, N), the diagonal set to the variances exactly."""
    scale = w_std**2 / x.shape[1]
    var = scale * (x * x).sum(-1) + beta**2
    cov = scale * (x @ x.T) + beta**2
    cov[torch.arange(len(x)), torch.arange(len(x))] = var
    return var, cov


def _by_depth(act: DualActivation, x: torch.Tensor, depth: int, *, beta: float, w_std: float) -> list[tuple]:
    """``[(nngp, ntk)]`` after 1..depth layers (the recursion of ``fc_kernel``, upper triangle only)."""
    var, cov = _input_kernel(x, beta=beta, w_std=w_std)
    n = x.shape[0]
    iu = torch.triu_indices(n, n)
    c, ntk = cov[iu[0], iu[1]], cov[iu[0], iu[1]]
    out = []
    for _ in range(depth):
        m, d = act.dual(var[iu[0]], c, var[iu[1]])
        assert d is not None
        c = w_std**2 * m + beta**2
        ntk = ntk * (w_std**2 * d) + c
        var = w_std**2 * act.expect_diag(var) + beta**2
        full = []
        for t in (c, ntk):
            mat = torch.empty(n, n, dtype=t.dtype)
            mat[iu[0], iu[1]] = t
            mat[iu[1], iu[0]] = t
            full.append(mat)
        out.append(tuple(full))
    return out


def _nat(a: torch.Tensor, b: torch.Tensor) -> float:
    """Error of the square kernel ``a`` against the exact ``b`` on the natural scale of each entry
    (the rows span norms 1e-3 .. 1e3: an error relative to ``max |b|`` would hide the small rows)."""
    return nat_err(a, b, b.diagonal(), b.diagonal())


def _points(big: list[float]) -> torch.Tensor:
    """A point, its duplicate, the zero vector, ``big``, a norm-1e-3 point, a near-parallel and an antipodal point."""
    a = [0.3, -1.2, 0.5]
    rows = [a, a, [0.0, 0.0, 0.0], big, [-1e-3, 2e-4, 0.0], [0.3, -1.2, 0.5000001], [-0.3, 1.2, -0.5]]
    return torch.tensor(rows, dtype=F64)


# ----------------------------------------------------------------------------- choice of method


def test_auto_uses_mehler_for_smooth_activations_and_quadrature_for_kinked_ones() -> None:
    for name in SMOOTH:
        assert get_activation(name).general_method() == "mehler", name
    for name in ("elu", "selu"):
        assert get_activation(name).general_method() == "quadrature", name
    assert CallableActivation(lambda x: x * torch.sigmoid(x)).general_method() == "mehler"  # a user callable
    assert CallableActivation(torch.tanh, method="quadrature").general_method() == "quadrature"
    relu6 = CallableActivation(lambda x: x.clamp(0, 6), breakpoints=(0.0, 6.0))
    assert relu6.general_method() == "quadrature"  # the fixed grid has its kink only at 0
    with pytest.raises(ValueError, match="breakpoints"):
        CallableActivation(lambda x: x.clamp(0, 6), breakpoints=(0.0, 6.0), method="mehler")
    with pytest.raises(ValueError, match="method"):
        CallableActivation(torch.tanh, method="fast")
    with pytest.raises(TypeError, match="smooth"):
        CallableActivation(torch.tanh, smooth="yes")  # type: ignore[arg-type]


def test_method_quadrature_is_the_old_path() -> None:
    v1, c, v2 = (torch.tensor(t, dtype=F64) for t in ([1.0, 4.0], [0.3, -3.9], [2.0, 4.0]))
    forced = CallableActivation(torch.tanh, method="quadrature")
    assert torch.equal(forced.expect(v1, c, v2), gaussian_expectation(torch.tanh, v1, c, v2))


def test_fast_path_needs_no_quadrature_on_ordinary_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("quadrature called")

    monkeypatch.setattr(DualActivation, "_quadrature", refuse)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    for name in ("tanh", "softplus", "silu"):
        k = ntkit.fc_kernel(x, depth=3, activation=name, b_std=0.1)
        assert k.ntk is not None and bool(torch.isfinite(k.ntk).all())


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("name", ["erf", "sigmoid_like", "gelu", "gaussian", "sin", "cos", "exp", "cube", "hermite3"])
def test_closed_forms_through_the_expansion(name: str) -> None:
    """The expansion of a closed-form activation's function reproduces its exact kernels, depths 1-5."""
    act = get_activation(name)
    bounded = name in {"sin", "cos", "exp", "cube", "hermite3"}  # growing / oscillating: bounded inputs
    growing = bounded and name not in {"sin", "cos"}
    w_std, beta = (0.3, 0.2) if name == "exp" else ((0.6, 0.4) if growing else (1.3, 0.4))
    for big in ([1.5, -2.0, 0.5], [600.0, -800.0, 0.0])[: 1 if bounded else 2]:
        x = _points(big)
        exact = _by_depth(act, x, 5, beta=beta, w_std=w_std)
        ours = _by_depth(_mehler_twin(act), x, 5, beta=beta, w_std=w_std)
        for depth, ((n1, t1), (n2, t2)) in enumerate(zip(ours, exact, strict=True), start=1):
            assert _nat(n1, n2) < 1e-11, (name, big[0], depth, _nat(n1, n2))
            assert _nat(t1, t2) < 1e-11, (name, big[0], depth, _nat(t1, t2))


@pytest.mark.parametrize(("name", "big"), [("erf", [600.0, -800.0, 0.0]), ("gaussian", [-1e-3, 2e-4, 0.0])])
def test_matches_mpmath_reference(name: str, big: list[float]) -> None:
    act = get_activation(name)
    x = [[0.3, -1.2, 0.5], [0.3, -1.2, 0.5], [0.0, 0.0, 0.0], big, [-0.3, 1.2, -0.5000001]]
    ref = fc_reference(act, x, x, depth=5, beta=0.6, w_std=1.3)
    ours = _by_depth(_mehler_twin(act), torch.tensor(x, dtype=F64), 5, beta=0.6, w_std=1.3)
    for depth, ((nngp, ntk), (r_nngp, r_ntk)) in enumerate(zip(ours, ref, strict=True), start=1):
        r = torch.tensor([[float(v) for v in row] for row in r_nngp], dtype=F64)
        t = torch.tensor([[float(v) for v in row] for row in r_ntk], dtype=F64)
        assert _nat(nngp, r) < TOL[F64]["closed_form"], (depth, _nat(nngp, r))
        assert _nat(ntk, t) < TOL[F64]["closed_form"], (depth, _nat(ntk, t))


@pytest.mark.parametrize("name", ["tanh", "softplus", "silu", "sigmoid", "mish", "gelu_tanh"])
def test_matches_quadrature_path_depths_1_to_5(name: str) -> None:
    """Against the (independent) split composite quadrature, where it is accurate (variances <= ~10)."""
    act = get_activation(name)
    assert isinstance(act, CallableActivation)
    quad = CallableActivation(act.fn, name=name, method="quadrature")
    x = _points([1.8, -2.4, 0.0])
    depth = 5 if name in {"tanh", "softplus", "silu"} else 2
    ours = _by_depth(act, x, depth, beta=0.2, w_std=1.3)
    theirs = _by_depth(quad, x, depth, beta=0.2, w_std=1.3)
    for d, ((n1, t1), (n2, t2)) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert _nat(n1, n2) < TOL[F64]["closed_form"], (name, d, _nat(n1, n2))
        assert _nat(t1, t2) < TOL[F64]["closed_form"], (name, d, _nat(t1, t2))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


SCALARS = {  # (s, s') in double precision for the adaptive reference
    "tanh": (math.tanh, lambda x: 1.0 - math.tanh(x) ** 2),
    "softplus": (lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))), _sigmoid),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x)))),
}
TRIPLES = [
    (1.0, 0.6, 2.0),
    (0.5, -0.49, 0.5),
    (9.0, 8.99, 9.0),
    (1.0, 1.0 - 1e-9, 1.0),  # correlation 1 - 1e-9
    (2.0, -2.0 + 2e-6, 2.0),  # correlation -1 + 1e-6
    (0.0, 0.0, 1.0),  # zero variance
    (1e-6, 5e-7, 1e-6),
    (56.0, 40.0, 30.0),
    (1.04, 642.0, 5.63e5),  # an input of norm 1e3 against one of norm 1
    (1e4, -3e3, 1e4),
]


@pytest.mark.parametrize("name", sorted(SCALARS))
def test_single_layer_matches_adaptive_reference(name: str) -> None:
    act = get_activation(name)
    f, df = SCALARS[name]
    v1, c, v2 = (torch.tensor(col, dtype=F64) for col in zip(*TRIPLES, strict=True))
    (nngp, deriv), info = act.mehler(v1, c, v2)
    assert info.fallback <= 3  # (9, 8.99, 9) and the +-1 cases may need the quadrature
    for got, fn, which in ((nngp, f, "value"), (deriv, df, "derivative")):
        with warnings.catch_warnings():  # QUADPACK's roundoff notes near its 1e-14 target
            warnings.simplefilter("ignore")
            ref = torch.tensor([scipy_expect(fn, *t) for t in TRIPLES], dtype=F64)
        n1 = act.mehler(v1, v1, v1, which=which)[0][0]  # duplicates: the Parseval norms
        n2 = act.mehler(v2, v2, v2, which=which)[0][0]
        scale = (n1 * n2).sqrt().clamp_min(1e-300)
        assert float(((got - ref).abs() / scale).max()) < TOL[F64]["closed_form"], (name, which)


def test_truncation_bound_holds_on_random_covariances() -> None:
    """Every entry the expansion certifies is within ``tol * ||s||_q1 ||s||_q2`` of the exact value."""
    act = get_activation("erf")
    g = torch.Generator().manual_seed(5)
    n = 3000
    v1 = 10 ** (8 * torch.rand(n, generator=g, dtype=F64) - 4)
    v2 = 10 ** (8 * torch.rand(n, generator=g, dtype=F64) - 4)
    r = 2 * torch.rand(n, generator=g, dtype=F64) - 1
    r = torch.where(torch.rand(n, generator=g, dtype=F64) < 0.3, torch.sign(r) * (1 - 10 ** (-12 * r.abs())), r)
    c = r * (v1 * v2).sqrt()
    for which, exact in (("value", act.expect), ("derivative", act.expect_derivative)):

        def nan_fallback(a: torch.Tensor, cc: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
            return (torch.full_like(cc, math.nan),)

        fn = act.forward if which == "value" else act.derivative
        (got,), info = mehler_expectations(lambda t, fn=fn: (fn(t),), 1, v1, c, v2, fallback=nan_fallback)
        certified = torch.isfinite(got)
        assert int((~certified).sum()) == info.fallback > 0  # near +-1 at large variance: not certified
        assert int(certified.sum()) > 0.7 * n
        scale = (exact(v1, v1, v1) * exact(v2, v2, v2)).sqrt()
        err = ((got - exact(v1, c, v2)).abs() / scale)[certified]
        assert float(err.max()) < 1e-12, which


# ----------------------------------------------------------------------------- fallback, duplicates, float32


def test_fallback_triggers_and_returns_the_quadrature() -> None:
    act = get_activation("tanh")
    v1 = torch.tensor([1e4, 1.0, 1.0, 0.7], dtype=F64)
    c = torch.tensor([1e4 * (1 - 1e-6), 0.5, -0.999999, 0.0007], dtype=F64)
    v2 = torch.tensor([1e4, 2.0, 1.0, 0.7], dtype=F64)
    quad = act._quadrature(v1, c, v2, "both")
    (nngp, deriv), info = act.mehler(v1, c, v2)
    assert info.fallback == 1  # tanh of a variance-1e4 input is nearly a step: no K certifies rho = 1 - 1e-6
    assert float(nngp[0]) == float(quad[0][0]) and float(deriv[0]) == float(quad[1][0])
    # few terms: everything but rho = 0.001 falls back, and the rest still agrees with the quadrature
    (nngp, deriv), info = act.mehler(v1, c, v2, max_terms=8)
    assert info.fallback == 3 and info.terms <= 8
    assert rel_err(nngp, quad[0]) < 1e-10 and rel_err(deriv, quad[1]) < 1e-10
    assert torch.equal(nngp[:3], quad[0][:3]) and torch.equal(deriv[:3], quad[1][:3])
    # an activation the 1-D rule cannot resolve (sin of a variance-1e6 input): detected, not trusted
    fast_sin = CallableActivation(torch.sin, name="fast_sin")
    big = torch.tensor([1e6, 1e6], dtype=F64)
    cc = torch.tensor([0.3e6, 1e5], dtype=F64)
    (val,), info = fast_sin.mehler(big, cc, big, which="value")
    assert info.fallback == 2
    assert torch.equal(val, fast_sin._quadrature(big, cc, big, "value")[0])


def test_duplicates_zero_vectors_and_the_diagonal_are_exact() -> None:
    x = _points([600.0, -800.0, 0.0])
    for name in ("tanh", "softplus", "silu"):
        k = ntkit.fc_kernel(x, depth=4, activation=name, b_std=0.0, w_std=1.3)
        assert k.ntk is not None
        assert torch.equal(torch.diagonal(k.nngp), k.var1)  # dual(q, q, q) is the Parseval norm
        assert torch.equal(k.nngp[0], k.nngp[1]) and torch.equal(k.ntk[0], k.ntk[1])  # duplicated input
        assert torch.equal(k.nngp, k.nngp.T) and bool(torch.isfinite(k.ntk).all())
    zero = torch.zeros(3, dtype=F64)
    one = torch.ones(3, dtype=F64)
    assert torch.equal(get_activation("tanh").expect(zero, zero, one), zero)  # tanh(0) = 0
    from scipy import integrate

    softplus, f = get_activation("softplus"), SCALARS["softplus"][0]
    mean, _ = integrate.quad(lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * f(z), -40, 40, epsabs=1e-15)
    want = torch.full((3,), math.log(2) * mean, dtype=F64)  # E[s(0) s(v)] = log(2) E[s(v)], v ~ N(0, 1)
    assert rel_err(softplus.expect(zero, zero, one), want) < 1e-13


def test_hermite_coefficients_of_a_polynomial_are_exact() -> None:
    q = torch.tensor([0.0, 0.25, 1.0, 9.0], dtype=F64)
    (exp,) = hermite_expansions(lambda t: (t**3 - 2 * t,), q, terms=8)
    s = q.sqrt()
    # x^3 - 2x at x = s z: s^3 (sqrt(6) h_3 + 3 h_1) - 2 s h_1
    want = torch.zeros(4, 8, dtype=F64)
    want[:, 1] = 3 * s**3 - 2 * s
    want[:, 3] = math.sqrt(6) * s**3
    assert float((exp.coeffs - want).abs().max()) < 1e-13 * 27
    assert rel_err(exp.norm2, want.pow(2).sum(-1)) < 1e-14
    assert bool((exp.log_tail[1:, 4:].exp() ** 2 < 1e-13).all())  # nothing beyond degree 3


def test_float32_path() -> None:
    x = _points([600.0, -800.0, 0.0])
    for name in ("tanh", "softplus", "silu"):
        k64 = ntkit.fc_kernel(x, depth=3, activation=name, b_std=0.1, w_std=1.2)
        k32 = ntkit.fc_kernel(x.float(), depth=3, activation=name, b_std=0.1, w_std=1.2, dtype=torch.float32)
        assert k32.nngp.dtype == torch.float32 and k32.ntk is not None and k64.ntk is not None
        assert rel_err(k32.nngp.double(), k64.nngp) < TOL[torch.float32]["closed_form"]
        assert rel_err(k32.ntk.double(), k64.ntk) < TOL[torch.float32]["closed_form"]
        deep = ntkit.fc_kernel(x.float(), depth=20, activation=name, b_std=0.1, w_std=1.0, dtype=torch.float32)
        assert deep.ntk is not None and bool(torch.isfinite(deep.nngp).all() and torch.isfinite(deep.ntk).all())


def test_bad_arguments() -> None:
    act = get_activation("tanh")
    one = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="max_terms"):
        act.mehler(one, one, one, max_terms=0)
    with pytest.raises(ValueError, match="tol"):
        act.mehler(one, one, one, tol=2.0)
    with pytest.raises(ValueError, match="which"):
        act.mehler(one, one, one, which="nngp")
    with pytest.raises(ValueError, match=r"my_log.*NaN/inf"):  # unresolvable coefficients -> quadrature's error
        CallableActivation(torch.log, name="my_log").expect(one, 0.5 * one, one)
