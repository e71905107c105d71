"""Finite networks against their infinite-width limits: Monte Carlo over networks and width sweeps."""

from __future__ import annotations

import math

import pytest
import torch

import ntkit
from ntkit.data import circle_inputs
from ntkit.experiments.converge import run_convergence


def _z_scores(samples: list[torch.Tensor], limit: torch.Tensor) -> torch.Tensor:
    s = torch.stack(samples)
    stderr = s.std(0) / math.sqrt(s.shape[0])
    return ((s.mean(0) - limit) / stderr).abs()


@pytest.mark.slow  # 40 networks of width 1024 per case (the per-op moment tests are the fast check)
@pytest.mark.parametrize(
    ("activation", "init", "w_std", "n_nets"),
    [("relu", "gaussian", 1.0, 40), ("erf", "gaussian", 1.3, 40), ("relu", "orthogonal", 1.0, 30)],
)
def test_recursion_matches_monte_carlo_over_networks(activation: str, init: str, w_std: float, n_nets: int) -> None:
    """Mean over random width-1024 networks of (a) f(x).f(x')/k and (b) the empirical NTK equals the
    NNGP / NTK recursion within the Monte-Carlo error (|z| < 5 on every entry; finite-width bias is
    O(1/n) and far below the standard error here)."""
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[4] = x[1]  # a duplicate
    limit = ntkit.fc_kernel(x, depth=2, activation=activation, b_std=0.2, w_std=w_std)
    nngps, ntks = [], []
    for s in range(n_nets):
        net = ntkit.FCNetwork(3, [1024, 1024], 256, activation=activation, b_std=0.2, w_std=w_std, init=init, seed=s)
        nngps.append(ntkit.empirical_nngp(net, x))
        ntks.append(ntkit.empirical_ntk(net, x, mode="trace"))
    z_nngp, z_ntk = _z_scores(nngps, limit.nngp), _z_scores(ntks, limit.ntk)
    assert float(z_nngp.max()) < 5.0, z_nngp
    assert float(z_ntk.max()) < 5.0, z_ntk
    # and the estimate is sharp enough for that to mean something: relative standard error < 2%
    assert float(torch.stack(ntks).std(0).max()) / math.sqrt(n_nets) < 0.02 * float(limit.ntk.abs().max())


@pytest.mark.slow
def test_empirical_ntk_converges_with_width() -> None:
    """Relative distance to Theta_inf (x) I falls like n^(-1/2) (deterministic seeds)."""
    x, _ = circle_inputs(16)
    result = run_convergence(x, widths=[128, 512, 2048], n_seeds=10, depth=3, b_std=0.1, progress=False)
    assert result.complete
    assert result.mean[0] > result.mean[1] > result.mean[2]
    assert -0.7 <= result.slope <= -0.35, result.slope
    assert result.mean[-1] < 0.1


def test_off_diagonal_output_blocks_vanish_with_width() -> None:
    """The limit is diagonal over outputs: the cross-output NTK shrinks relative to the diagonal."""
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ratios = []
    for width in (64, 4096):
        net = ntkit.FCNetwork(2, [width, width], 3, b_std=0.1, seed=3)
        theta = ntkit.empirical_ntk(net, x)
        off = theta - torch.diag_embed(torch.diagonal(theta, dim1=2, dim2=3))
        ratios.append(float(off.norm() / theta.norm()))
    assert ratios[1] < 0.25 * ratios[0]
