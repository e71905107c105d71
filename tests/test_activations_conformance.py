"""Conformance suite: every registered activation through the same checks.

Symmetry, PSD, ``k(x) == k(x, x)``, finiteness (float64 and float32, depth 100, norms 1e-3..1e3),
float32 vs float64, closed form vs general path, analytic vs Monte Carlo over a finite network,
and clear errors for activations the general path cannot integrate.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

import ntkit
from ntkit.activations import (
    CallableActivation,
    DualActivation,
    available_activations,
    get_activation,
)
from ntkit.activations.quadrature import gaussian_expectation
from tests.conftest import TOL, rel_err

ALIASES = {"linear", "heaviside", "rbf", "swish"}
NAMES = [n for n in available_activations() if n not in ALIASES]
CLOSED = [n for n in NAMES if get_activation(n).closed_form]
KINKED = {
    "relu", "leaky_relu", "ab_relu", "abs", "step", "sign", "rectified_quadratic", "rectified_cubic", "elu", "selu"
}
#: Kernels growing like a power / exponential of the variance: run with w_std < 1 and bounded inputs.
GROWING = {"exp", "square", "cube", "hermite2", "hermite3", "rectified_quadratic", "rectified_cubic"}
#: Oscillating activations: the general path resolves them for variances up to ~1e2.
OSCILLATING = {"sin", "cos"}


def _w_std(name: str) -> float:
    return 0.3 if name == "exp" else (0.6 if name in GROWING else 1.3)


def _points(small: bool = False) -> torch.Tensor:
    """Six points (four with ``small``, for the slower general path): a duplicate, zero, antipodal."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x[3] = x[0]  # duplicate
    x[4] = 0.0  # zero vector
    x[5] = -x[1]  # antipodal
    return x[[0, 3, 4, 5]] if small else x


@pytest.mark.parametrize("name", NAMES)
def test_symmetric_psd_and_diagonal(name: str) -> None:
    act = get_activation(name)
    x = _points(small=not act.closed_form)
    depth = 3 if act.closed_form else 2
    k = ntkit.fc_kernel(x, depth=depth, activation=act, b_std=0.2, w_std=_w_std(name))
    k12 = ntkit.fc_kernel(x, x.clone(), depth=depth, activation=act, b_std=0.2, w_std=_w_std(name))
    # the general path integrates (v1, c, v2) and (v2, c, v1) with different (equally accurate) rules
    tol = 1e-12 if act.closed_form else TOL[torch.float64]["quadrature_smooth"]
    dup = 3 if act.closed_form else 1
    mats = [k.nngp] + ([k.ntk] if k.ntk is not None else [])
    assert (k.ntk is None) == (not act.has_derivative_map)
    for m in mats:
        assert bool(torch.isfinite(m).all())
        assert torch.equal(m, m.T)
        eig = torch.linalg.eigvalsh(m)
        assert float(eig.min()) >= -1e-10 * float(eig.abs().max())
    assert rel_err(k12.nngp, k.nngp) < tol
    if k.ntk is not None:
        assert k12.ntk is not None and rel_err(k12.ntk, k.ntk) < tol
    # k(x) == k(x, x): the diagonal of the matrix is the separately recursed variance
    assert rel_err(torch.diagonal(k.nngp), k.var1) < 1e-12
    assert rel_err(k.nngp[0], k.nngp[dup]) < tol  # duplicates give duplicate rows


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name: str) -> None:
    act = get_activation(name)
    x = _points(small=not act.closed_form)
    kw = {"depth": 3 if act.closed_form else 2, "activation": act, "b_std": 0.2, "w_std": _w_std(name)}
    k64 = ntkit.fc_kernel(x, **kw)
    k32 = ntkit.fc_kernel(x.float(), dtype=torch.float32, **kw)
    assert k32.nngp.dtype == torch.float32
    # documented in docs/user_guide/activations_accuracy.md: 2e-5 for closed forms, 1e-4 for the general path and for
    # sign / step (whose maps are steep near correlation 1)
    tol = 2e-5 if act.closed_form and name not in {"sign", "step"} else TOL[torch.float32]["quadrature_smooth"]
    assert rel_err(k32.nngp.double(), k64.nngp) < tol
    if k64.ntk is not None:
        assert k32.ntk is not None and rel_err(k32.ntk.double(), k64.ntk) < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_no_nan_deep_and_extreme_norms(name: str, dtype: torch.dtype) -> None:
    act = get_activation(name)
    # kernels growing like a power / exponential of the variance overflow for large norms at any
    # method (the true value exceeds the range): they run with norms <= 1 and w_std < 1
    big = 1.0 if name in GROWING else (3.0 if name in OSCILLATING else 1e3)
    x = torch.tensor([[1e-3, 0.0, 0.0], [0.0, 0.0, 0.0], [big, -big, big], [big, -big, big], [0.5, 1.0, -0.2]])
    x = x.to(dtype) if act.closed_form else x[1:4].to(dtype)
    depth = 100 if act.closed_form else 4
    one = torch.ones((), dtype=torch.float64)
    # the variance-preserving scale (critical for homogeneous activations), capped at 1.5
    w_std = _w_std(name) if name in GROWING else min(1.5, float(act.expect_diag(one)) ** -0.5)
    k = ntkit.fc_kernel(x, depth=depth, activation=act, b_std=0.1, w_std=w_std, dtype=dtype)
    assert bool(torch.isfinite(k.nngp).all())
    if k.ntk is not None:
        assert bool(torch.isfinite(k.ntk).all())


def _triples(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale = 4.0 if name in OSCILLATING or name in GROWING else 1e2
    rows = [
        (1.0, 0.3, 1.0),
        (1.0, 1.0, 1.0),  # duplicate
        (1.0, -1.0, 1.0),  # antipodal
        (1.0, 0.999999, 1.0),
        (2.0, -1.999998, 2.0),
        (0.0, 0.0, 1.0),  # zero variance
        (0.0, 0.0, 0.0),
        (1e-6, 5e-7, 1e-6),
        (scale, 0.5 * scale, 0.7 * scale),
        (0.5, 0.1, scale),
    ]
    v1, c, v2 = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows, strict=True))
    return v1, c, v2


@pytest.mark.parametrize("name", CLOSED)
def test_closed_form_matches_general_path(name: str) -> None:
    act = get_activation(name)
    v1, c, v2 = _triples(name)
    tol = TOL[torch.float64]["quadrature_kinked" if name in KINKED else "quadrature_smooth"]
    general = gaussian_expectation(act.forward, v1, c, v2)
    assert rel_err(general, act.expect(v1, c, v2)) < tol
    if act.has_derivative_map:
        general_d = gaussian_expectation(act.derivative, v1, c, v2)
        assert rel_err(general_d, act.expect_derivative(v1, c, v2)) < tol
        # the whole recursion through the general path (derivative supplied) agrees as well
        as_callable = CallableActivation(act.forward, derivative=act.derivative, name=f"{name}_general")
        x = _points()
        kw = {"depth": 2, "b_std": 0.3, "w_std": _w_std(name)}
        kc = ntkit.fc_kernel(x, activation=act, **kw)
        kg = ntkit.fc_kernel(x, activation=as_callable, **kw)
        assert kc.ntk is not None and kg.ntk is not None
        assert rel_err(kg.nngp, kc.nngp) < tol
        assert rel_err(kg.ntk, kc.ntk) < tol


def _finite_layer_terms(act: DualActivation, x: torch.Tensor, *, width: int, beta: float, w_std: float, seed: int):
    """Per-hidden-unit terms of a one-hidden-layer FCNetwork's NNGP and NTK, and the network."""
    net = ntkit.FCNetwork(x.shape[1], [width], 1, activation=act, b_std=beta, w_std=w_std, seed=seed)
    lin1, lin2 = net.linears
    with torch.no_grad():
        h = lin1(x)  # (N, width)
        a = act(h)
        sigma1 = w_std**2 * (x @ x.T) / x.shape[1] + beta**2
        nngp_terms = w_std**2 * a[:, None, :] * a[None, :, :] + beta**2  # (N, N, width)
        ntk_terms = None
        if act.has_derivative_map:
            d = act.derivative(h)
            w2 = lin2.weight[0] ** 2  # (width,)
            ntk_terms = nngp_terms + w_std**2 * w2 * d[:, None, :] * d[None, :, :] * sigma1[:, :, None]
    return net, nngp_terms, ntk_terms


@pytest.mark.parametrize("name", NAMES)
def test_analytic_matches_monte_carlo(name: str) -> None:
    """The analytic depth-1 kernels are the mean of i.i.d. per-unit terms of a finite network.

    The tolerance is 6 standard errors of that mean (estimated from the same terms), so the test
    is deterministic (fixed seed) and could only fail by a 6-sigma event if the maps were right.
    """
    act = get_activation(name)
    x = _points()[:5]
    beta, w_std = 0.3, _w_std(name)
    net, nngp_terms, ntk_terms = _finite_layer_terms(act, x, width=20000, beta=beta, w_std=w_std, seed=11)
    k = ntkit.fc_kernel(x, depth=1, activation=act, b_std=beta, w_std=w_std)
    n = nngp_terms.shape[-1]
    for terms, analytic in ((nngp_terms, k.nngp), (ntk_terms, k.ntk)):
        if terms is None:
            assert analytic is None
            continue
        assert analytic is not None
        mean = terms.mean(-1)
        se = terms.std(-1) / math.sqrt(n)
        assert bool(((mean - analytic).abs() <= 6 * se + 1e-12 * analytic.abs().max()).all()), name
    if ntk_terms is not None:
        # the per-unit decomposition is exactly the finite network's empirical NTK
        emp = ntkit.empirical_ntk(net, x, mode="trace")
        assert rel_err(emp, ntk_terms.mean(-1)) < 1e-10


# ----------------------------------------------------------------------------- bad input


def _ones() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    one = torch.ones(3, dtype=torch.float64)
    return one, 0.5 * one, one


def test_nan_activation_is_named() -> None:
    act = CallableActivation(lambda x: torch.log(x), name="my_log")
    with pytest.raises(ValueError, match=r"my_log.*NaN/inf"):
        act.expect(*_ones())
    with pytest.raises(ValueError, match="my_log"):
        ntkit.fc_kernel(_points(), depth=1, activation=act)


def test_overflowing_activation_is_named() -> None:
    act = CallableActivation(lambda x: torch.exp(x**4), name="blowup")
    with pytest.raises(ValueError, match=r"blowup.*NaN/inf"):
        act.expect(*_ones())


def test_wrong_shape_is_named() -> None:
    act = CallableActivation(lambda x: x.sum(-1), name="reducer")
    with pytest.raises(ValueError, match=r"reducer.*elementwise"):
        act.expect(*_ones())


def test_non_tensor_output_is_named() -> None:
    act = CallableActivation(lambda x: np.tanh(x.numpy()), name="numpy_tanh")
    with pytest.raises(TypeError, match=r"numpy_tanh.*expected a tensor"):
        act.expect(*_ones())


def test_non_differentiable_is_named() -> None:
    act = CallableActivation(lambda x: torch.from_numpy(np.tanh(x.detach().numpy())), name="detached")
    assert bool(torch.isfinite(act.expect(*_ones())).all())  # the NNGP map needs no derivative
    with pytest.raises(ValueError, match=r"detached.*not differentiable"):
        act.expect_derivative(*_ones())
    with pytest.raises(ValueError, match=r"detached.*not differentiable"):
        ntkit.fc_kernel(_points(), depth=1, activation=act)
    # with a user-supplied derivative it works
    ok = CallableActivation(
        lambda x: torch.from_numpy(np.tanh(x.detach().numpy())), derivative=lambda x: 1 - torch.tanh(x) ** 2
    )
    ref = get_activation("tanh")
    assert rel_err(ok.expect_derivative(*_ones()), ref.expect_derivative(*_ones())) < 1e-12


def test_raising_activation_is_named() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match=r"broken.*boom"):
        CallableActivation(broken).expect(*_ones())


def test_nngp_only_activations_refuse_the_derivative_map() -> None:
    for name in ("step", "sign"):
        act = get_activation(name)
        assert not act.has_derivative_map
        with pytest.raises(ValueError, match=name):
            act.expect_derivative(*_ones())


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="degree"):
        ntkit.activations.RectifiedMonomial(0)
    with pytest.raises(ValueError, match="nodes"):
        CallableActivation(torch.tanh, nodes=1)
    with pytest.raises(TypeError, match="breakpoints"):
        CallableActivation(torch.tanh, breakpoints="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected one of"):
        get_activation("no_such_activation")


def _j1(v1: torch.Tensor, c: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``E[relu(u) relu(v)] = (sqrt(v1 v2 - c^2) + (pi - theta) c) / (2 pi)``, the arc-cosine kernel of degree 1."""
    det = (v1 * v2 - c * c).clamp_min(0).sqrt()
    return (det + (math.pi - torch.atan2(det, c)) * c) / (2 * math.pi)


def _j0(v1: torch.Tensor, c: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``P(u > 0, v > 0) = (pi - theta) / (2 pi)``, the arc-cosine kernel of degree 0."""
    return (math.pi - torch.atan2((v1 * v2 - c * c).clamp_min(0).sqrt(), c)) / (2 * math.pi)


def _relu_mean(m: mpmath.mpf, tau: mpmath.mpf) -> mpmath.mpf:
    """``E[relu(m + tau Z)] = m Phi(m / tau) + tau phi(m / tau)``, Z standard normal."""
    if tau == 0:
        return max(m, mpmath.mpf(0))
    return m * mpmath.ncdf(m / tau) + tau * mpmath.npdf(m / tau)


def _relu6_reference(v1: float, c: float, v2: float) -> float:
    """``E[relu6(u) relu6(v)]`` from the ReLU's closed form: relu6(x) = relu(x) - relu(x - 6), so given u,
    ``E[relu6(v) | u] = R(m) - R(m - 6)`` with ``R`` the Gaussian mean of a ReLU (``v | u ~ N(m, tau^2)``,
    ``m = c u / v1``, ``tau^2 = v2 - c^2 / v1``); the outer integral over u (zero for u < 0) by mpmath in
    20 digits, split at the kink u = 6. Independent of ntkit's quadrature."""
    with mpmath.workdps(20):
        v1m, cm, v2m = mpmath.mpf(v1), mpmath.mpf(c), mpmath.mpf(v2)
        tau = mpmath.sqrt(max(v2m - cm * cm / v1m, mpmath.mpf(0)))

        s1 = mpmath.sqrt(v1m)

        def outer(u: mpmath.mpf) -> mpmath.mpf:
            m = cm * u / v1m
            return min(u, mpmath.mpf(6)) * (_relu_mean(m, tau) - _relu_mean(m - 6, tau)) * mpmath.npdf(u, 0, s1)

        return float(mpmath.quad(outer, [0, 6, mpmath.inf]))


# (var1, cov, var2): moderate and high correlation, negative covariance, independent, identical
V1, C, V2 = (torch.tensor(v, dtype=torch.float64) for v in ([9.0, 25.0, 4.0, 1.0, 36.0], [5.0, 24.0, -3.0, 0.0, 36.0],
                                                            [16.0, 25.0, 9.0, 0.5, 36.0]))


def test_user_breakpoints_make_kinks_exact() -> None:
    """ReLU6 kinks at 0 and 6: with both breakpoints it matches a closed form built from ReLU
    (relu6(x) = relu(x) - relu(x - 6), see _relu6_reference); with either one left out it does not."""
    want = torch.tensor([_relu6_reference(*map(float, t)) for t in zip(V1, C, V2, strict=True)], dtype=torch.float64)
    relu6 = CallableActivation(lambda x: x.clamp(0, 6), name="relu6", breakpoints=(0.0, 6.0))
    err = ((relu6.expect(V1, C, V2) - want).abs() / want.abs()).max()
    assert err < 1e-14  # entrywise; 3.7e-16 measured
    for one in ((0.0,), (6.0,)):  # a kink off the panel edges: 3.0e-4 (kink at 6 left out) and 1.0e-5 measured
        partial = CallableActivation(lambda x: x.clamp(0, 6), name="relu6", breakpoints=one)
        assert rel_err(partial.expect(V1, C, V2), want) > 1e-6


@pytest.mark.parametrize("method", ["quadrature", "auto"])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (1.0, -1.0), (1.0, -0.2), (1.5, 0.7)],
                         ids=["abs", "identity", "leaky_relu", "general"])
def test_relu_combinations_match_the_arc_cosine_closed_form(alpha: float, beta: float, method: str) -> None:
    """sigma(x) = alpha relu(x) + beta relu(-x) (abs, identity, leaky ReLU, ...) as a plain callable with
    its kink at 0. Since (-u, -v) has the covariance of (u, v) and (u, -v) that of (u, v) with c negated:
    E[sigma(u) sigma(v)] = (alpha^2 + beta^2) J1(c) + 2 alpha beta J1(-c) and, with
    sigma' = alpha 1[x > 0] - beta 1[x < 0], E[sigma'(u) sigma'(v)] = (alpha^2 + beta^2) J0(c) - 2 alpha beta J0(-c)."""
    act = CallableActivation(lambda x: alpha * x.clamp_min(0) + beta * (-x).clamp_min(0), name="relu_combination",
                             breakpoints=(0.0,), method=method)
    nngp = (alpha**2 + beta**2) * _j1(V1, C, V2) + 2 * alpha * beta * _j1(V1, -C, V2)
    ntk = (alpha**2 + beta**2) * _j0(V1, C, V2) - 2 * alpha * beta * _j0(V1, -C, V2)
    # measured: at most 4.9e-16 by split quadrature, 2.3e-15 by the Mehler expansion ("auto")
    assert rel_err(act.expect(V1, C, V2), nngp) < 2e-14
    assert rel_err(act.expect_derivative(V1, C, V2), ntk) < 2e-14


def test_gelu_forward_is_torch_exact_gelu() -> None:
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    gelu = get_activation("gelu")
    assert torch.allclose(gelu(x), torch.nn.functional.gelu(x), rtol=0, atol=1e-15)
    assert torch.allclose(gelu.derivative(x), CallableActivation(torch.nn.functional.gelu).derivative(x), atol=1e-14)
