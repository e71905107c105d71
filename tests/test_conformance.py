"""Conformance: every supported layer through the same checks, finite networks against their limit.

Each architecture (dense with several activations, residual blocks, layer norm — also after an
activation —, convolutions with every padding and stride, 1-D convolutions, average and global
pooling, flatten, NTK and standard parameterization, torch activation modules) is built as a finite
``ntkit.nn`` model at several widths and seeds, and

* the limit is the mean of the finite networks: over 16 random networks of moderate width, the mean
  empirical NTK (one output) and empirical NNGP (``f(x).f(x')/k`` over ``k = width`` outputs) equal
  ``ntkit.infinite_kernel`` of the same model within 5 Monte-Carlo standard errors, entry by entry
  (a wrong kernel transform biases the mean; the finite-width bias, O(1/n), is far below the error);
* single networks converge: the relative Frobenius distance to the limit falls like ``n^-1/2``. For
  dense models the log-log slope fitted to every (width, seed) sample over widths 128-2048 must lie
  within 4 standard errors (and 0.12) of -1/2; convolutional models approach the ``n^-1/2`` regime
  only at larger widths (measured: ``benchmarks/conformance_sweep.py``,
  ``benchmarks/results/conformance.md``), so here their distance must fall by 40% from 32 to 512
  channels;
* the infinite-width kernels are exactly symmetric and positive semi-definite, and float32 agrees
  with float64 to 1e-5 of the largest entry (the diagonal included).

In standard parameterization the NTK grows with the widths, so each width is compared with the
limit formula at that width.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from tests.arch_cases import case_by_name, make_inputs
from tests.arch_models import build

pytestmark = pytest.mark.usefixtures("single_thread")

DENSE_WIDTHS = (128, 512, 2048)
CONV_WIDTHS = (32, 512)
SEEDS = 6
MC_NETS = 16

CASES = [
    "fc_relu_d2_bias", "fc_leaky_d3", "fc_erf_d3", "fc_gelu_d3", "fc_sin_d2", "fc_relu_standard",
    "residual_preact_relu", "residual_relu", "layernorm_relu", "layernorm_residual_gelu",
    "conv_same_gap", "conv_same_flatten", "conv_valid_even", "conv_same_stride2", "conv_circular",
    "conv_circular_stride", "conv_avgpool", "conv_residual_layernorm", "conv_standard", "conv1d_same",
    "conv1d_circular_flatten",
]


def _check_rate(widths: tuple[int, ...], dist: list[list[float]], what: str) -> None:
    """Fit log(distance) = a + s log(width) to every sample; s must be -1/2 within its error."""
    lx = np.repeat(np.log(widths), len(dist[0]))
    ly = np.log(np.asarray(dist)).reshape(-1)
    slope, icpt = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + icpt)
    se = float(np.sqrt((resid**2).sum() / (len(ly) - 2) / ((lx - lx.mean()) ** 2).sum()))
    means = [float(np.mean(d)) for d in dist]
    assert se < 0.1, (what, "too noisy to test", se)
    assert abs(slope + 0.5) <= max(4 * se, 0.12), (what, float(slope), se, means)
    assert means[-1] < 0.25, (what, means)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _sweep(make: object, x: torch.Tensor, widths: tuple[int, ...], standard: bool, seeds: int = SEEDS
           ) -> tuple[list[list[float]], list[list[float]]]:
    """Relative distances (NTK, NNGP) to the limit of every seed at each width."""
    ntk_dist, nngp_dist = [], []
    limit = None
    for width in widths:
        d_ntk, d_nngp = [], []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(1000 * width + seed)
            model = make(width, 1, g)  # type: ignore[operator]
            wide = make(width, width, torch.Generator().manual_seed(1000 * width + seed))  # type: ignore[operator]
            if limit is None or standard:  # standard parameterization: the limit at these widths
                limit = ntkit.infinite_kernel(model, x)
            theta = ntkit.empirical_ntk(model, x, mode="trace")
            d_ntk.append(_rel(theta, limit.ntk))
            d_nngp.append(_rel(ntkit.empirical_nngp(wide, x), limit.nngp))
        ntk_dist.append(d_ntk)
        nngp_dist.append(d_nngp)
    return ntk_dist, nngp_dist


def _case(name: str) -> tuple[torch.Tensor, object, bool, bool]:
    _, spec, shape, n1, _ = case_by_name(name)
    x1, _ = make_inputs(name, shape, n1, 1)
    standard = any(layer.get("parameterization") == "standard" for layer in spec)

    def make(width: int, out: int, g: torch.Generator) -> nn.Module:
        return build(spec, shape, width=width, last=out, generator=g, device=None)[0]

    return torch.from_numpy(x1), make, standard, len(shape) > 1


@pytest.mark.parametrize("name", CASES)
def test_limit_is_the_mean_of_finite_networks(name: str) -> None:
    x, make, _, conv = _case(name)
    width = 64 if conv else 256
    thetas, nngps = [], []
    limit = None
    for seed in range(MC_NETS):
        model = make(width, 1, torch.Generator().manual_seed(seed))  # type: ignore[operator]
        limit = ntkit.infinite_kernel(model, x) if limit is None else limit
        thetas.append(ntkit.empirical_ntk(model, x, mode="trace"))
        nngps.append(ntkit.empirical_nngp(make(width, width, torch.Generator().manual_seed(seed)), x))  # type: ignore[operator]
    assert limit is not None
    for what, samples, ref in (("ntk", thetas, limit.ntk), ("nngp", nngps, limit.nngp)):
        s = torch.stack(samples)
        se = (s.std(0) / math.sqrt(MC_NETS)).clamp_min(1e-3 * float(ref.abs().max()))
        z = float(((s.mean(0) - ref).abs() / se).max())
        assert z < 5.0, (name, what, z)


@pytest.mark.slow  # width sweeps: ~4 min of CPU in all; run by CI (.ci/run: ./test.sh -m slow)
@pytest.mark.parametrize("name", CASES)
def test_single_networks_converge_with_width(name: str) -> None:
    x, make, standard, conv = _case(name)
    if conv:
        ntk_dist, nngp_dist = _sweep(make, x, CONV_WIDTHS, standard, seeds=4)
        for what, dist in (("ntk", ntk_dist), ("nngp", nngp_dist)):
            small, large = float(np.mean(dist[0])), float(np.mean(dist[-1]))
            assert large < 0.6 * small and large < 0.25, (name, what, small, large)
        return
    ntk_dist, nngp_dist = _sweep(make, x, DENSE_WIDTHS, standard)
    _check_rate(DENSE_WIDTHS, ntk_dist, f"{name} ntk")
    _check_rate(DENSE_WIDTHS, nngp_dist, f"{name} nngp")


TORCH_ACTIVATIONS = [nn.Tanh(), nn.SiLU(), nn.GELU(approximate="tanh"), nn.ELU(), nn.Softplus(), nn.LeakyReLU(0.1)]


@pytest.mark.slow
@pytest.mark.parametrize("act", TORCH_ACTIVATIONS, ids=lambda m: type(m).__name__)
def test_torch_activation_modules_converge(act: nn.Module) -> None:
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[4] = x[0]

    def make(width: int, out: int, g: torch.Generator) -> nn.Module:
        opts = {"b_std": 0.2, "generator": g, "dtype": torch.float64}
        return nn.Sequential(ntkit.nn.Linear(4, width, **opts), act, ntkit.nn.Linear(width, width, **opts), act,
                             ntkit.nn.Linear(width, out, **opts))

    ntk_dist, nngp_dist = _sweep(make, x, DENSE_WIDTHS, False, seeds=12)
    _check_rate(DENSE_WIDTHS, ntk_dist, "ntk")
    _check_rate(DENSE_WIDTHS, nngp_dist, "nngp")


@pytest.mark.parametrize("name", CASES)
def test_limit_is_symmetric_psd_and_float32_agrees(name: str) -> None:
    _, spec, shape, n1, _ = case_by_name(name)
    x1, _ = make_inputs(name, shape, max(n1, 6), 1)
    x = torch.from_numpy(x1)
    model, _ = build(spec, shape)
    k64 = ntkit.infinite_kernel(model, x)
    k32 = ntkit.infinite_kernel(model, x.float(), dtype=torch.float32)
    for which in ("nngp", "ntk"):
        m = k64.get(which)
        assert torch.equal(m, m.T), which
        eig = torch.linalg.eigvalsh(m)
        assert float(eig.min()) >= -1e-12 * float(eig.max()), (which, eig)
        m32 = k32.get(which)
        assert m32.dtype == torch.float32
        err = float((m32.double() - m).abs().max() / m.abs().max())
        assert err < 1e-5, (which, err)
        assert float((m32.double().diagonal() - m.diagonal()).abs().max() / m.abs().max()) < 1e-5
    assert math.isfinite(float(k64.ntk.sum()))
