"""Tiled evaluation: any tiling, the one-shot tile and fc_kernel agree (ntkit.compute)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import ntkit
from ntkit.compute import compute_kernel
from ntkit.compute.tiling import TilePlan, choose_tile, parse_budget
from tests.conftest import TOL, rel_err


@pytest.fixture
def x(gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(333, 8, generator=gen, dtype=torch.float64)
    x[3] = x[300]
    x[7] = 0.0
    return x


@pytest.mark.parametrize("activation", ["relu", "erf", "identity", "abs"])
def test_tilings_identical_and_match_fc_kernel(x: torch.Tensor, activation: str) -> None:
    one_shot = compute_kernel(None, x, depth=3, activation=activation, b_std=0.2, tile=1024)
    assert one_shot.tiles_total == 1
    ref = ntkit.fc_kernel(x, depth=3, activation=activation, b_std=0.2)
    assert rel_err(one_shot.ntk, ref.ntk) < TOL[torch.float64]["exact"]
    assert rel_err(one_shot.nngp, ref.nngp) < TOL[torch.float64]["exact"]
    for tile in (128, 256):
        tiled = compute_kernel(None, x, depth=3, activation=activation, b_std=0.2, tile=tile)
        assert torch.equal(tiled.ntk, one_shot.ntk) and torch.equal(tiled.nngp, one_shot.nngp)
    assert torch.equal(one_shot.ntk, one_shot.ntk.T)


def test_rectangular_block_and_single_kernel(x: torch.Tensor) -> None:
    ref = ntkit.fc_kernel(x[:200], x[150:], depth=2)
    a = compute_kernel(None, x[:200], x[150:], depth=2, which="ntk", tile=128)
    b = compute_kernel(None, x[:200], x[150:], depth=2, which="ntk", tile=256)
    assert a.nngp is None and a.ntk.shape == (200, 183)
    assert torch.equal(a.ntk, b.ntk)
    assert rel_err(a.ntk, ref.ntk) < TOL[torch.float64]["exact"]
    nngp = compute_kernel(None, x[:200], x[150:], depth=2, which="nngp", tile=128).nngp
    assert rel_err(nngp, ref.nngp) < TOL[torch.float64]["exact"]


def test_diagonal_only(x: torch.Tensor) -> None:
    full = compute_kernel(None, x, depth=3, b_std=0.1)
    d = compute_kernel(None, x, depth=3, b_std=0.1, pairs="diagonal", tile=128)
    assert d.ntk.shape == (333,) and d.tiles_total > 1
    assert torch.equal(d.ntk, full.ntk.diagonal()) and torch.equal(d.nngp, full.nngp.diagonal())


def test_float32(x: torch.Tensor) -> None:
    res = compute_kernel(None, x, depth=3, dtype=torch.float32, tile=128)
    ref = ntkit.fc_kernel(x, depth=3)
    assert res.ntk.dtype == torch.float32
    assert rel_err(res.ntk.double(), ref.ntk) < TOL[torch.float32]["closed_form"]


def test_plan_counts_and_ragged_tiles() -> None:
    plan = TilePlan(n1=300, n2=300, tile=128, symmetric=True, diag=False)
    assert list(plan.tiles()) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)] and len(plan) == 6
    assert plan.rows(2) == slice(256, 300)
    rect = TilePlan(n1=130, n2=300, tile=128, symmetric=False, diag=False)
    assert len(rect) == len(list(rect.tiles())) == 6


def test_budget_and_tile_errors(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"budget: expected at least .* one tile row"):
        compute_kernel(None, x, depth=2, memory_budget=10_000)
    with pytest.raises(ValueError, match="budget: expected a positive number of bytes"):
        compute_kernel(None, x, depth=2, memory_budget="lots")
    with pytest.raises(ValueError, match="tile: expected a multiple of 128"):
        compute_kernel(None, x, depth=2, tile=100)
    with pytest.raises(ValueError, match="fits the budget"):
        compute_kernel(None, x, depth=2, tile=256, memory_budget="1M")
    with pytest.raises(ValueError, match="which: expected one of"):
        compute_kernel(None, x, depth=2, which="all")
    with pytest.raises(ValueError, match="pairs: expected x2 = None"):
        compute_kernel(None, x, x, depth=2, pairs="diagonal")
    assert parse_budget("512M") == 512 * 2**20 and parse_budget(1000) == 1000
    assert choose_tile(10_000, 10_000, itemsize=4, budget=2**30) == 1024
    assert choose_tile(10_000, 10_000, itemsize=8, budget=8 * 8 * 300**2) == 256


def test_import_does_not_load_extras() -> None:
    code = "import sys, ntkit, ntkit.compute; print(any(m in sys.modules for m in ('dask', 'zarr', 'distributed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
