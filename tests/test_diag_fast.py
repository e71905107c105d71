"""The lane-parallel loop of convolutional programs without pooling (ntkit.infinite.diag_fast).

Checked against the pair loop of ntkit.infinite.conv_fast (its reference here) and the reference evaluator:
float64 to 1e-13, float32 to float32 rounding; self values, duplicates, symmetry and tiling bitwise.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from ntkit.activations import ABReLU
from ntkit.infinite import diag_fast, native
from ntkit.infinite.conv_fast import evaluate_spatial, evaluate_spatial_diagonal, match_spatial
from ntkit.infinite.reference import reference_kernel
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import describe_model
from ntkit.nn.linear import Conv1d, Conv2d, Linear
from ntkit.nn.structure import Activation
from tests.conftest import rel_err
from tests.prerequisites import needs_c_compiler

F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True)
def _native_built() -> None:
    needs_c_compiler()
    assert native.library("diag") is not None, native.status("diag")


def _v(depth: int, shape: tuple[int, int], channels: int = 1) -> nn.Module:
    return ntkit.nn.cntk(channels, depth, readout="flatten", image_shape=shape, device="meta")


def _mixed() -> tuple[nn.Module, tuple[int, ...]]:
    """Two channels, bias, leaky ReLU, a 'valid' even filter, an odd image (7 x 5)."""
    meta = {"device": "meta"}
    model = nn.Sequential(Conv2d(2, 3, 3, b_std=0.3, **meta), Activation(ABReLU(0.2, 1.0)),
                          Conv2d(3, 4, 2, padding="valid", b_std=0.1, **meta), Activation(ABReLU(0.0, 1.0)),
                          Conv2d(4, 3, (1, 3), **meta), Activation(ABReLU(-1.0, 1.0)),
                          nn.Flatten(), Linear(3 * 6 * 4, 1, b_std=0.2, **meta))
    return model, (2, 7, 5)


def _one_d() -> tuple[nn.Module, tuple[int, ...]]:
    meta = {"device": "meta"}
    model = nn.Sequential(Conv1d(2, 3, 5, **meta), Activation(ABReLU(0.0, 1.0)), Conv1d(3, 3, 3, **meta),
                          Activation(ABReLU(0.0, 1.0)), nn.Flatten(), Linear(3 * 9, 1, **meta))
    return model, (2, 9)


CASES = {
    "v1-28x28": (_v(1, (28, 28)), (1, 28, 28)),
    "v3-9x11": (_v(3, (9, 11)), (1, 9, 11)),
    "v2-rgb-6x5": (_v(2, (6, 5), 3), (3, 6, 5)),
    "mixed": _mixed(),
    "1d": _one_d(),
}


def _inputs(shape: tuple[int, ...], n: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """Images with zero regions (as Fashion-MNIST's borders), one all-zero image, a negative one, a duplicate."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x[..., :1] = 0.0
    x[1] = 0.0
    x[2] = -x[2]
    x[n - 1] = x[0]
    return x.to(dtype)


def _ids(*xs: torch.Tensor) -> list[torch.Tensor]:
    both = torch.cat([x.reshape(x.shape[0], -1) for x in xs])
    ids = torch.unique(both, dim=0, return_inverse=True)[1]
    return list(torch.split(ids, [x.shape[0] for x in xs]))


def _setup(name: str) -> tuple:
    model, shape = CASES[name]
    arch = describe_model(model, shape)
    prog = match_spatial(arch)
    assert prog is not None and diag_fast.match_diag(prog)
    return arch, prog, shape


def test_match_diag_accepts_flatten_programs_and_declines_the_rest() -> None:
    for model, shape in CASES.values():
        assert diag_fast.match_diag(match_spatial(describe_model(model, shape)))
        assert KernelTiles(describe_model(model, shape)).lanes
    meta = {"device": "meta"}
    declined = [
        (ntkit.nn.cntk(1, 2, device="meta"), (1, 6, 6)),  # global pooling: the full layout
        (nn.Sequential(Conv2d(1, 2, 3, stride=2, **meta), nn.ReLU(), nn.Flatten(), Linear(2 * 3 * 3, 1, **meta)),
         (1, 6, 6)),  # a stride
    ]
    for model, shape in declined:
        prog = match_spatial(describe_model(model, shape))
        assert prog is not None and not diag_fast.match_diag(prog)
        assert not KernelTiles(describe_model(model, shape)).lanes
    assert not diag_fast.match_diag(None)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("symmetric", [False, True])
def test_float64_matches_the_pair_loop_and_the_reference(name: str, symmetric: bool) -> None:
    arch, prog, shape = _setup(name)
    x = _inputs(shape, 21, 1)
    ids = _ids(x)[0]
    new = diag_fast.evaluate_diag(arch, prog, x, x, ids, ids, ntk=True, symmetric=symmetric)
    old = evaluate_spatial(arch, prog, x, x, ids, ids, ntk=True, symmetric=symmetric)
    ref = reference_kernel(arch, x)
    for k in range(2):
        assert new[k] is not None and old[k] is not None and ref[k] is not None
        assert torch.isfinite(new[k]).all()
        assert rel_err(new[k], old[k]) < 1e-13
        assert rel_err(new[k], ref[k]) < 1e-12
        assert torch.equal(new[k], new[k].T)  # exactly symmetric, computed in full or not
    for k in (2, 3):  # the rows' self values: the pair loop's
        assert torch.equal(new[k], old[k])


@pytest.mark.parametrize("name", ["v1-28x28", "mixed"])
def test_float32_is_within_float32_rounding(name: str) -> None:
    arch, prog, shape = _setup(name)
    x = _inputs(shape, 18, 2)
    ids = _ids(x)[0]
    exact = evaluate_spatial(arch, prog, x, x, ids, ids, ntk=True)
    x32 = x.to(F32)
    new = diag_fast.evaluate_diag(arch, prog, x32, x32, ids, ids, ntk=True, symmetric=True)
    old = evaluate_spatial(arch, prog, x32, x32, ids, ids, ntk=True, symmetric=True)
    eps = torch.finfo(F32).eps
    for k in range(2):
        assert new[k].dtype == F32
        assert rel_err(new[k].double(), old[k].double()) < 8 * eps
        assert rel_err(new[k].double(), exact[k]) < 2 * rel_err(old[k].double(), exact[k]) + 4 * eps


@pytest.mark.parametrize("dtype", [F64, F32])
def test_diagonal_and_duplicates_are_the_self_values_bitwise(dtype: torch.dtype) -> None:
    arch, prog, shape = _setup("v3-9x11")
    x = _inputs(shape, 20, 3, dtype)
    x[7] = x[3]
    ids = _ids(x)[0]
    nngp, ntk, *_ = diag_fast.evaluate_diag(arch, prog, x, x, ids, ids, ntk=True, symmetric=True)
    d_n, d_t = evaluate_spatial_diagonal(prog, x, ids, ntk=True)
    assert ntk is not None and d_t is not None
    assert torch.equal(nngp.diagonal(), d_n) and torch.equal(ntk.diagonal(), d_t)
    for i, j in [(0, 19), (3, 7)]:
        assert torch.equal(nngp[i, j], d_n[i]) and torch.equal(ntk[i, j], d_t[i])
        assert torch.equal(nngp[i], nngp[j])


@pytest.mark.parametrize("name", ["v3-9x11", "mixed", "1d"])
def test_tiles_x2_and_threads_are_bitwise_consistent(name: str) -> None:
    arch, prog, shape = _setup(name)
    x = _inputs(shape, 23, 4)
    ids = _ids(x)[0]
    full = diag_fast.evaluate_diag(arch, prog, x, x, ids, ids, ntk=True, symmetric=True)
    rows = diag_fast.evaluate_diag(arch, prog, x[3:14], x, ids[3:14], ids, ntk=True)
    cols = diag_fast.evaluate_diag(arch, prog, x, x[5:22], ids, ids[5:22], ntk=False)
    assert torch.equal(rows[0], full[0][3:14]) and rows[1] is not None and full[1] is not None
    assert torch.equal(rows[1], full[1][3:14])
    assert torch.equal(cols[0], full[0][:, 5:22]) and cols[1] is None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = diag_fast.evaluate_diag(arch, prog, x, x, ids, ids, ntk=True, symmetric=True)
        torch.set_num_threads(1)
        one = diag_fast.evaluate_diag(arch, prog, x, x, ids, ids, ntk=True, symmetric=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(two[0], one[0]) and torch.equal(two[0], full[0])


def test_x2_differs_from_x1() -> None:
    arch, prog, shape = _setup("mixed")
    a, b = _inputs(shape, 9, 5), _inputs(shape, 17, 6)
    b[4] = a[2]  # a row shared by both inputs
    ids_a, ids_b = _ids(a, b)
    new = diag_fast.evaluate_diag(arch, prog, a, b, ids_a, ids_b, ntk=True)
    old = evaluate_spatial(arch, prog, a, b, ids_a, ids_b, ntk=True)
    assert new[0].shape == (9, 17)
    for k in range(2):
        assert rel_err(new[k], old[k]) < 1e-13
    d_n, _ = evaluate_spatial_diagonal(prog, a, ids_a, ntk=False)
    assert torch.equal(new[0][2, 4], d_n[2])


def test_compute_kernel_takes_the_lane_loop() -> None:
    model, shape = CASES["v3-9x11"]
    x = _inputs(shape, 30, 7)
    got = ntkit.compute_kernel(model, x, tile=8)
    ref = reference_kernel(describe_model(model, shape), x)
    assert rel_err(got.nngp, ref[0]) < 1e-12 and rel_err(got.ntk, ref[1]) < 1e-12
    assert torch.equal(got.nngp, got.nngp.T)


def test_declined_programs_and_bad_input_fall_back_or_fail_clearly() -> None:
    model, shape = CASES["v1-28x28"]
    arch = describe_model(model, shape)
    prog = match_spatial(arch)
    assert prog is not None
    assert not diag_fast.usable(torch.zeros(1, dtype=torch.float16))
    assert not diag_fast.usable(torch.zeros(1, dtype=torch.float64, device="meta"))
    assert diag_fast.usable(torch.zeros(1, dtype=torch.float64))
    x = torch.zeros(3, *shape, dtype=F64)
    v = torch.ones(3, prog.var_len, dtype=F64)
    none, some = torch.zeros(0, dtype=torch.int64), torch.arange(3)
    empty = diag_fast.diag_tile(prog, x, v, none, some, ntk=True)
    assert empty[0].shape == (0, 3) and empty[1] is not None and empty[1].shape == (0, 3)
    pooled = match_spatial(describe_model(ntkit.nn.cntk(1, 1, device="meta"), (1, 4, 4)))
    assert pooled is not None
    with pytest.raises(ValueError, match=r"diag_tile.*accepted by match_diag"):
        diag_fast.diag_tile(pooled, torch.zeros(2, 1, 4, 4), torch.zeros(2, 16), some[:2], some[:2], ntk=False)
    with pytest.raises(ValueError, match=r"variances of shape \(3, 784\)"):
        diag_fast.diag_tile(prog, x, v[:, :5], some, some, ntk=False)
    with pytest.raises(ValueError, match=r"images of shape \(n, 1, 28, 28\), got \(3, 1, 28, 27\)"):
        diag_fast.diag_tile(prog, x[..., :27], v, some, some, ntk=False)
    with pytest.raises(ValueError, match=r"cols in \[0, 3\), got values in \[0, 3\]"):
        diag_fast.diag_tile(prog, x, v, some, torch.arange(4), ntk=False)
    with pytest.raises(ValueError, match="float32 / float64 CPU images"):
        diag_fast.diag_tile(prog, x.half(), v.half(), some, some, ntk=False)


def test_columns_are_regrouped_by_lanes_block_by_block() -> None:
    t = torch.randn(41, 70_000, dtype=F64, generator=torch.Generator().manual_seed(8))  # 1 group per block
    index = torch.tensor([5, 3, 40, 0, 7, 7, 12, 39, 1, 2, 30])
    got = diag_fast._grouped(t, index, 4, -1.0)
    want = torch.full((12, 70_000), -1.0, dtype=F64)
    want[:11] = t[index]
    assert torch.equal(got, want.reshape(3, 4, 70_000).transpose(1, 2))
