"""The native spatial path of convolutional kernels (ntkit.infinite.conv_fast) against the reference evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import native
from ntkit.infinite.conv_fast import match_spatial
from ntkit.infinite.reference import reference_kernel
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import describe_model
from tests.arch_cases import CONV_CASES, make_inputs
from tests.arch_models import build
from tests.conftest import rel_err
from tests.prerequisites import needs_c_compiler

F64 = torch.float64


@pytest.fixture(autouse=True)
def _native_built() -> None:
    needs_c_compiler()
    assert native.library("spatial") is not None, native.status("spatial")


def _spatial_cases() -> list[tuple]:
    out = []
    for case in CONV_CASES:
        model, _ = build(case[1], case[2])
        if match_spatial(describe_model(model, tuple(case[2]))) is not None:
            out.append(case)
    return out


SPATIAL = _spatial_cases()


def test_the_fast_path_covers_the_cntk_and_myrtle_patterns() -> None:
    assert len(SPATIAL) >= 6
    for model, shape in [(ntkit.nn.cntk(3, 5, device="meta"), (3, 8, 8)),
                         (ntkit.nn.cntk(1, 3, readout="flatten", image_shape=(6, 7), device="meta"), (1, 6, 7)),
                         (ntkit.nn.myrtle(5, 1, device="meta"), (1, 8, 8)),
                         (ntkit.nn.myrtle(10, 3, device="meta"), (3, 16, 16))]:
        assert KernelTiles(describe_model(model, shape)).path == "spatial"
    # layer norm, residual blocks, smooth activations, circular padding: the reference evaluator
    ln = nn.Sequential(ntkit.nn.Conv2d(1, 4, 3), ntkit.nn.LayerNorm(), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                       ntkit.nn.Linear(4, 1))
    assert KernelTiles(describe_model(ln, (1, 5, 5))).path == "reference"


@pytest.mark.parametrize("case", SPATIAL, ids=[c[0] for c in SPATIAL])
def test_native_matches_the_reference(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    a, b = torch.from_numpy(x1), torch.from_numpy(x2)
    model, _ = build(spec, shape)
    arch = describe_model(model, tuple(shape))
    for rhs in (b, None):
        got = ntkit.infinite_kernel(model, a, rhs)
        ref = reference_kernel(arch, a, rhs)
        assert rel_err(got.nngp, ref[0]) < 1e-13 and rel_err(got.ntk, ref[1]) < 1e-13
        got32 = ntkit.infinite_kernel(model, a.float(), None if rhs is None else rhs.float(), dtype=torch.float32)
        assert got32.ntk.dtype == torch.float32
        assert rel_err(got32.ntk.double(), ref[1]) < 1e-5 and rel_err(got32.nngp.double(), ref[0]) < 1e-5
    # identical images: exactly the diagonal value
    k = ntkit.infinite_kernel(model, a, b)
    assert k.ntk[0, -1] == k.var1.new_tensor(float(ntkit.infinite_kernel(model, a).ntk[0, 0]))


def test_tiles_threads_and_native_switch_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(23, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    x[20] = x[3]
    model = ntkit.nn.myrtle(5, 2, device="meta")
    whole = ntkit.compute_kernel(model, x, tile=64)
    tiled = ntkit.compute_kernel(model, x, tile=5, threads=2)
    assert torch.equal(whole.ntk, tiled.ntk) and torch.equal(whole.nngp, tiled.nngp)  # bitwise
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = ntkit.compute_kernel(model, x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.ntk, whole.ntk)
    assert whole.ntk[3, 20] == whole.ntk[3, 3] and torch.equal(whole.ntk, whole.ntk.T)
    monkeypatch.setenv("NTKIT_NATIVE", "0")
    ref = ntkit.compute_kernel(model, x)
    assert rel_err(ref.ntk, whole.ntk) < 1e-13


def test_a_tile_of_pairs_costs_only_its_outputs() -> None:
    """With the native path a 32x32 pooled CNN's tiles are not limited by pixels^2 per pair."""
    model = ntkit.nn.cntk(3, 2, device="meta")
    x = torch.randn(40, 3, 32, 32, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    res = ntkit.compute_kernel(model, x[:6], dtype=torch.float32, memory_budget="64M", which="ntk")
    assert res.tiles_total == 1  # the reference would need tiles of a single pair (8 x 4 MB each)
    arch = describe_model(model, (3, 32, 32))
    assert arch.pair_entries == 1024**2 and KernelTiles(arch).pair_entries(x) == 1
    assert bool(torch.isfinite(res.ntk).all())


def test_diagonal_and_cross_blocks() -> None:
    x = torch.randn(9, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    model = ntkit.nn.cntk(1, 4, device="meta")
    full = ntkit.infinite_kernel(model, x)
    diag = ntkit.compute_kernel(model, x, pairs="diagonal")
    assert torch.equal(diag.ntk, full.ntk.diagonal()) and torch.equal(diag.nngp, full.var1)
    cross = ntkit.infinite_kernel(model, x[:4], x[2:])
    assert rel_err(cross.ntk, full.ntk[:4, 2:]) < 1e-14
    arch = describe_model(model, (1, 8, 8))
    ref = reference_kernel(arch, x[:4], x[2:])
    assert rel_err(cross.nngp, ref[0]) < 1e-13
    assert np.isfinite(cross.ntk.numpy()).all()


def test_the_budget_holds_whatever_the_image_size() -> None:
    x = torch.randn(3, 3, 64, 64, dtype=torch.float32, generator=torch.Generator().manual_seed(3))
    model = ntkit.nn.cntk(3, 2, device="meta")
    with pytest.raises(ValueError, match=r"budget: expected at least \d+ bytes: one pair of these images needs"):
        ntkit.compute_kernel(model, x, dtype=torch.float32, memory_budget="256M")
    with pytest.raises(ValueError, match="budget"):  # the reference path: a tile of one pair is 8 x 64 MB
        ntkit.compute_kernel(nn.Sequential(*model[:2], ntkit.nn.LayerNorm(), *model[2:]), x.double(),
                             memory_budget="256M")
