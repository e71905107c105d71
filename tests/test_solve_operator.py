"""KernelOperator: tiled products equal the dense fc_kernel products; diagonal; float32 tiles; errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ntkit
from ntkit.solve import FCTiles, KernelOperator, fc_kernel_diag
from tests.conftest import TOL, rel_err

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # these problems are tiny: intra-op threads only add synchronisation (badly so on a loaded machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _x(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("activation", ["relu", "erf", "abs", "leaky_relu"])
@pytest.mark.parametrize("which", ["ntk", "nngp"])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_dense_equals_fc_kernel(activation: str, which: str, beta: float) -> None:
    x1, x2 = _x(37), _x(23, seed=1)
    ref = ntkit.fc_kernel(x1, x2, depth=3, activation=activation, b_std=beta, w_std=1.3).get(which)
    op = KernelOperator(x1, x2, depth=3, activation=activation, b_std=beta, w_std=1.3, which=which)
    assert rel_err(op.dense(), ref) < TOL[F64]["closed_form"]


@pytest.mark.parametrize("which", ["ntk", "nngp"])
def test_symmetric_matvec_and_diag(which: str) -> None:
    x = torch.cat([_x(61), _x(5)])  # with duplicated rows
    k = ntkit.fc_kernel(x, depth=3, b_std=0.1).get(which)
    op = KernelOperator(x, depth=3, b_std=0.1, which=which, tile_rows=16, tile_cols=7)  # ragged, non-square tiles
    v = torch.randn(66, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert rel_err(op @ v, k @ v) < TOL[F64]["closed_form"]
    assert rel_err(op @ v[:, 0], k @ v[:, 0]) < TOL[F64]["closed_form"]
    assert rel_err(op.diag(), torch.diagonal(k)) < TOL[F64]["closed_form"]
    assert rel_err(op.dense(), k) < TOL[F64]["closed_form"]  # duplicates: exact angle 0 as in fc_kernel
    assert rel_err(fc_kernel_diag(x, depth=3, b_std=0.1, which=which), torch.diagonal(k)) < 1e-14


@settings(max_examples=15, deadline=None)
@given(n1=st.integers(1, 30), n2=st.integers(1, 30), rows=st.integers(1, 12), cols=st.integers(1, 12))
def test_tiled_equals_dense_any_tiles(n1: int, n2: int, rows: int, cols: int) -> None:
    x1, x2 = _x(n1, seed=n1), _x(n2, seed=100 + n2)
    k = ntkit.fc_kernel(x1, x2, depth=2).ntk
    assert k is not None
    v = torch.linspace(-1, 1, n2, dtype=F64)
    op = KernelOperator(x1, x2, depth=2, tile_rows=rows, tile_cols=cols)
    assert rel_err(op @ v, k @ v) < TOL[F64]["closed_form"]
    sym = KernelOperator(x1, depth=2, tile_rows=rows, tile_cols=cols)
    ks = ntkit.fc_kernel(x1, depth=2).ntk
    assert ks is not None
    u = torch.linspace(-1, 2, n1, dtype=F64)
    assert rel_err(sym @ u, ks @ u) < TOL[F64]["closed_form"]


def test_float32_tiles_accumulate_in_float64() -> None:
    x = _x(300, d=20)
    k = ntkit.fc_kernel(x, depth=3).ntk
    assert k is not None
    v = torch.randn(300, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    op = KernelOperator(x, depth=3, tile_dtype=torch.float32, tile_rows=64, tile_cols=128)
    out = op @ v
    assert out.dtype == F64
    # single-precision tiles: not exact (3.8e-7 measured; float64 tiles reach ~1e-16), within float32 rounding
    assert 1e-8 < rel_err(out, k @ v) < 4e-6


@pytest.mark.parametrize("symmetric", [True, False])
def test_tile_products_are_summed_in_float64(symmetric: bool) -> None:
    """Each tile's product is exact here (integer kernel entries and targets, 1 x 1 tiles) but
    their sum is not representable in float32: 2^24 + 1 + ... + 1 - 2^24. Summed in float64 the result is
    exact; summed in float32 every +1 after 2^24 is lost (2^24 + 1 rounds to 2^24) and the result is 0."""
    n = 40
    x = torch.ones(n, 1, dtype=F64)

    def linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.dtype == b.dtype == torch.float32  # the tiles are evaluated in single precision
        return a @ b.T

    v = torch.ones(n, dtype=F64)
    v[0], v[-1] = 2.0**24, -(2.0**24)
    op = KernelOperator(x, None if symmetric else x.clone(), tile_fn=linear, tile_dtype=torch.float32, tile_rows=1,
                        tile_cols=1)
    assert op.symmetric == symmetric
    out = op @ v
    assert out.dtype == F64
    assert torch.equal(out, torch.full((n,), n - 2.0, dtype=F64))


def test_pluggable_tile_fn() -> None:
    x = _x(50)

    def tile_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ntkit.fc_kernel(a, b, depth=2, activation="erf").nngp

    op = KernelOperator(x, tile_fn=tile_fn, tile_rows=8, tile_cols=8)
    k = ntkit.fc_kernel(x, depth=2, activation="erf").nngp
    v = torch.ones(50, dtype=F64)
    assert rel_err(op @ v, k @ v) < TOL[F64]["closed_form"]
    assert rel_err(op.diag(), torch.diagonal(k)) < TOL[F64]["closed_form"]
    assert rel_err(FCTiles(depth=2, activation="erf", which="nngp")(x, x), k) < TOL[F64]["closed_form"]


def test_bad_input() -> None:
    x = _x(10)
    op = KernelOperator(x, depth=1)
    with pytest.raises(ValueError, match="expected shape"):
        op @ torch.ones(9, dtype=F64)
    with pytest.raises(ValueError, match="finite"):
        op @ torch.full((10,), float("nan"), dtype=F64)
    with pytest.raises(ValueError, match="same feature shape"):
        KernelOperator(x, _x(3, d=5), depth=1)
    with pytest.raises(TypeError, match="callable"):
        KernelOperator(x, tile_fn=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="symmetric"):
        KernelOperator(x, _x(3), depth=1).diag()
    with pytest.raises(ValueError, match="which"):
        KernelOperator(x, which="gram")
