"""Every closed form against an independent high-precision (mpmath) reference, through depths 1-5.

The reference (tests/activation_reference.py) shares no formula with ntkit.activations: it
integrates closed-form conditional means in 20-digit arithmetic. Inputs hold a generic point, its
exact duplicate, the zero vector and a point of norm 1e3 or 1e-3 (alternating over activations);
``beta`` runs over {0, 0.6, 1} and ``w_std != 1``.
"""

from __future__ import annotations

import math

import pytest
import torch

import ntkit
from ntkit.activations import available_activations, get_activation
from ntkit.activations.quadrature import gaussian_expectation
from tests.activation_reference import fc_reference, scipy_expect
from tests.conftest import TOL, nat_err

ALIASES = {"linear", "heaviside", "rbf", "swish"}
CLOSED = [n for n in available_activations() if n not in ALIASES and get_activation(n).closed_form]
#: Activations whose kernel grows like a power or an exponential of the variance (or, for sin and
#: cos, that the fixed-panel reference cannot resolve at large variance) run with bounded inputs.
BOUNDED = {"exp", "square", "cube", "hermite2", "hermite3", "rectified_quadratic", "rectified_cubic", "sin", "cos"}


def _inputs(i: int, name: str) -> list[list[float]]:
    a = [0.3, -1.2, 0.5]
    big = [600.0, -800.0, 0.0] if name not in BOUNDED else [1.5, -2.0, 0.5]
    small = [-1e-3, 2e-4, 0.0]
    return [a, list(a), [0.0, 0.0, 0.0], big if i % 2 == 0 else small]


@pytest.mark.parametrize("name", CLOSED)
def test_closed_form_recursion_matches_mpmath(name: str) -> None:
    i = CLOSED.index(name)
    act = get_activation(name)
    beta = (0.0, 0.6, 1.0)[i % 3]
    w_std = 0.6 if name in BOUNDED and name not in {"sin", "cos"} else 1.3
    if name == "exp":  # v -> w^2 exp(2 v) + beta^2 has a finite fixed point only for small w_std, beta
        beta, w_std = 0.2, 0.3
    x = _inputs(i, name)
    ref = fc_reference(act, x, x, depth=5, beta=beta, w_std=w_std)
    tol = TOL[torch.float64]["closed_form"]
    for depth in range(1, 6):
        k = ntkit.fc_kernel(torch.tensor(x, dtype=torch.float64), depth=depth, activation=act, b_std=beta, w_std=w_std)
        nngp_ref, ntk_ref = ref[depth - 1]
        r = torch.tensor([[float(v) for v in row] for row in nngp_ref], dtype=torch.float64)
        # entry by entry on the natural scale: the rows have norms 0, 1e-3 or 1e3 and 1
        err = nat_err(k.nngp, r, r.diagonal(), r.diagonal())
        assert err < tol, (name, depth, err)
        if ntk_ref is not None:
            assert k.ntk is not None
            t = torch.tensor([[float(v) for v in row] for row in ntk_ref], dtype=torch.float64)
            err = nat_err(k.ntk, t, t.diagonal(), t.diagonal())
            assert err < tol, (name, depth, err)
        else:
            assert k.ntk is None


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x)) if x > -700 else 0.0


SMOOTH_GENERAL = {
    "tanh": (torch.tanh, math.tanh),
    "softplus": (torch.nn.functional.softplus, _softplus),
    "silu": (torch.nn.functional.silu, _silu),
}


@pytest.mark.parametrize("name", sorted(SMOOTH_GENERAL))
def test_general_path_reaches_1e8_against_adaptive_reference(name: str) -> None:
    fn, scalar = SMOOTH_GENERAL[name]
    triples = [(1.0, 0.6, 2.0), (0.5, -0.49, 0.5), (9.0, 8.99, 9.0)]
    v1, c, v2 = (torch.tensor(t, dtype=torch.float64) for t in zip(*triples, strict=True))
    act = get_activation(name)
    got = act.expect(v1, c, v2)
    value, err = gaussian_expectation(fn, v1, c, v2, return_error=True)
    ref = torch.tensor([scipy_expect(scalar, *t) for t in triples], dtype=torch.float64)
    assert float(((got - ref).abs() / ref.abs()).max()) < TOL[torch.float64]["quadrature_smooth"]
    # the error estimate bounds the actual error (up to the reference's own ~1e-13)
    assert bool(((value - ref).abs() <= err + 1e-13 * ref.abs()).all())
