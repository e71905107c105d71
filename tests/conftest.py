"""Shared test configuration: one tolerance table per dtype, seeded generators, data locations."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ntkit.compute.tile_task import single_threaded

#: Tolerances by dtype, keyed by the path that computed the kernel: ``TOL[dtype][path]``.
TOL: dict[torch.dtype, dict[str, float]] = {}

#: float64, set 10-100x above the largest error measured (in the comments) on the edge inputs of
#: tests/test_activations_edges.py: rows of norm 0, 1e-150, 1, 1e150 (the bare dual maps: 1e-75 ..
#: 1e75, the general path 1e-75 .. 1e3), duplicates included, by :func:`nat_err` against the float64
#: Gauss-Legendre / mpmath reference; known bugs (xfail there) excluded. Keys:
#:
#: * ``closed_form``: the dual maps of the closed forms (``DualActivation.expect`` / ``dual``);
#: * ``native`` / ``fused``: the fully connected ABReLU / erf / identity recursion, compiled loop / torch;
#: * ``reference``: the reference evaluator (other closed forms; any architecture);
#: * ``mehler``: the general path of smooth activations (Hermite expansion, quadrature fallback);
#: * ``quadrature_kinked``: split composite quadrature (ELU, SELU, ReLU6, hardtanh, hardswish, ...);
#: * ``quadrature_smooth``: quadrature of a smooth function (``method="quadrature"``): not measured here;
#: * ``exact``: one exact kernel by two routes (tiling, diagonals, operators): not measured here.
#:
#: Files outside tests/test_activations_edges.py use several of these keys with :func:`rel_err`
#: (max-normalised) on same-scale data; the values there were 1e-12 / 1e-10 / 1e-8 / 1e-6.
TOL64: dict[str, float] = {
    "exact": 1e-12,
    "closed_form": 1e-10,  # measured 2.4e-12 (erf derivative map, variances 3e149)
    "native": 1e-13,  # measured 1.5e-15 (ab_relu)
    "fused": 1e-13,  # measured 1.8e-15 (erf)
    "reference": 1e-13,  # measured 2.6e-15 (cube, NTK)
    "mehler": 1e-10,  # measured 4.1e-12 (sigmoid derivative map, variance 3e5); networks 1.9e-14
    "quadrature_smooth": 1e-8,
    "quadrature_kinked": 1e-5,  # measured 3.2e-7 (ELU derivative map, variance 3e5); networks 1.9e-9
}

#: float32 (same keys), against the exact kernel rounded to float32, rows of norm 0, 1e-15, 1, 1e15.
TOL32: dict[str, float] = {
    "exact": 1e-5,
    "closed_form": 1e-5,  # (the closed-form networks below)
    "native": 1e-5,  # measured 2.1e-7 (leaky_relu(0.2))
    "fused": 1e-5,  # measured 2.5e-7 (abs, NTK)
    "reference": 2e-5,  # measured 4.5e-7 (exp, NTK)
    "mehler": 1e-5,  # measured 1.1e-7 (softplus, NTK)
    "quadrature_smooth": 1e-4,
    "quadrature_kinked": 2e-5,  # measured 5.1e-7 (softshrink(0.3))
}
TOL[torch.float64] = TOL64
TOL[torch.float32] = TOL32

#: The shared data folder beside the checkout (may be absent: tests using it skip with a reason).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` (0 when both are 0).

    Only for data on one scale: one large entry of ``b`` hides every error of the small ones. Where
    the rows of the inputs have different norms use :func:`nat_err`.
    """
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


def nat_errors(a: torch.Tensor, b: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor) -> torch.Tensor:
    """Entrywise ``|a - b| / sqrt(diag1_i diag2_j)`` in float64: the error on the natural scale of each entry.

    For a positive semi-definite kernel ``|K(x, x')| <= sqrt(K(x, x) K(x', x'))`` (Cauchy-Schwarz), so
    this is the error relative to the largest value the entry could take, whatever the norms of
    ``x`` and ``x'`` (rows of norm 1e-3 and 1e3 weigh alike). ``diag1`` / ``diag2`` are the exact
    self-kernels ``K(x_i, x_i)`` and ``K(x'_j, x'_j)`` (the reference's, not the tested values).

    Zero diagonals: where ``diag1_i diag2_j == 0`` the exact value is 0 (Cauchy-Schwarz) and the
    error is absolute, ``|a - b|``. The scale is ``sqrt(diag1_i) sqrt(diag2_j)``, so that two tiny
    diagonals (1e-300 each) do not underflow to that rule.

    ``a`` and ``b`` of shape (N1, N2) with ``diag1`` (N1,), ``diag2`` (N2,); or all four of one
    (broadcastable) shape, paired entry by entry. NaN in ``a`` gives an infinite error.

    Raises
    ------
    ValueError
        A diagonal entry is negative or not finite.
    """
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    d1, d2 = diag1.detach().to(torch.float64), diag2.detach().to(torch.float64)
    for d in (d1, d2):
        if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
            raise ValueError("nat_errors: expected finite, non-negative diagonals")
    if a64.ndim == 2 and d1.ndim == 1 and d2.ndim == 1 and d1.shape[0] == a64.shape[0] and d2.shape[0] == a64.shape[1]:
        scale = d1.sqrt()[:, None] * d2.sqrt()[None, :]
    else:
        scale = d1.sqrt() * d2.sqrt()
    diff = (a64 - b64).abs()
    err = torch.where(scale > 0, diff / torch.where(scale > 0, scale, torch.ones_like(scale)), diff)
    return torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)


def nat_err(a: torch.Tensor, b: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor) -> float:
    """``max_ij |a_ij - b_ij| / sqrt(diag1_i diag2_j)`` (absolute where a diagonal is 0): see :func:`nat_errors`."""
    err = nat_errors(a, b, diag1, diag2)
    return float(err.max()) if err.numel() else 0.0


@pytest.fixture(autouse=True)
def _seed_global_generators(request: pytest.FixtureRequest) -> None:
    """Seed torch's, numpy's and Python's global generators per test, from the test's id.

    Tests should draw from their own seeded generators; this makes any remaining use of the global
    ones reproducible (the same numbers for a test whatever ran before it, with or without xdist).
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global generator is the point here
    random.seed(seed)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator (fresh per test)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for the module (restored after): the suite runs with ``pytest -n 2``
    on few cores, where each worker's default thread pool oversubscribes the CPUs and small
    matrix products of training loops slow down many times over. Use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    with single_threaded():
        yield


def reference_fc(
    x1: torch.Tensor, x2: torch.Tensor | None = None, *, depth: int, activation: object = "relu", beta: float = 0.0,
    w_std: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(nngp, ntk)`` of the fully connected network by the reference evaluator alone (no fast path)."""
    from ntkit.infinite.reference import reference_kernel
    from ntkit.infinite.walk import describe_model, fc_model

    arch = describe_model(fc_model(x1.shape[1], depth=depth, activation=activation, b_std=beta, w_std=w_std),
                          (x1.shape[1],))
    return reference_kernel(arch, x1, x2, ntk=arch.has_ntk)
