"""The fused fully connected fast path (ntkit.infinite.fused, native loop) against the reference evaluator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import ntkit
from ntkit import kernel_tile_fn
from ntkit.activations import ABReLU, Erf
from ntkit.infinite import fused, native
from ntkit.infinite.fused import GRAM_BLOCK, FCSpec, block_gram, fc_diag, fc_tile, fused_kind
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import describe_model, fc_model
from tests.conftest import TOL, reference_fc, rel_err
from tests.prerequisites import needs_c_compiler

ACTIVATIONS = ["relu", "leaky_relu", "abs", ABReLU(0.3, -0.7), "erf", Erf(1.3, 0.7, 0.2), "identity"]


def native_only(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test that compares the compiled kernel with the torch path itself: it runs once, under
    the ``native`` parameter only (a ``torch`` instance would have nothing to check)."""
    test.native_only = True  # type: ignore[attr-defined]
    return test


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test here runs on both ABReLU layer loops (the compiled kernel and the torch code),
    except those marked :func:`native_only`."""
    paths = ["native"] if getattr(metafunc.function, "native_only", False) else ["native", "torch"]
    metafunc.parametrize("kernel_path", paths, indirect=True)


@pytest.fixture(autouse=True)
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The layer loop of this test instance: ``native`` (the compiled kernel) or ``torch``."""
    if request.param == "torch":
        monkeypatch.setenv("NTKIT_NATIVE", "0")
    else:
        require_native()
    return str(request.param)


def require_native() -> None:
    """The compiled kernel must load wherever a C compiler exists (it does in CI; a missing compiler
    skips locally and fails under CI=true)."""
    needs_c_compiler()
    assert native.library() is not None, native.status()


def _scaled_error(got: torch.Tensor, want: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor) -> torch.Tensor:
    """``|got - want|`` over each entry's natural scale ``sqrt(K(x,x) K(x',x'))`` (as tests/test_infinite.py);
    an entry whose scale is 0 (the zero input without bias) must be exactly right."""
    scale = torch.sqrt(diag1.abs()[:, None] * diag2.abs()[None, :])
    err = (got - want).abs()
    return torch.where(scale > 0, err / scale.clamp_min(1e-300), torch.where(err > 0, torch.inf, 0.0))


def _data(gen: torch.Generator, n: int = 150, d: int = 6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    x[5] = x[17]  # a duplicated input
    x[9] = 0.0  # a zero input (zero variance without bias)
    x[11] = -x[12]  # an antipodal pair (theta = pi)
    return x


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_fused_tile_matches_fc_kernel_float64(gen: torch.Generator, activation: object, beta: float) -> None:
    x = _data(gen)
    spec = FCSpec.make(3, activation, beta, 1.3)
    assert fused_kind(spec.activation) != "generic"
    ref_nngp, ref_ntk = reference_fc(x, x[:100], depth=3, activation=activation, beta=beta, w_std=1.3)
    nngp, ntk = fc_tile(x, x[:100], spec)
    assert ntk is not None and ref_ntk is not None
    full_nngp, full_ntk = reference_fc(x, depth=3, activation=activation, beta=beta, w_std=1.3)
    assert full_ntk is not None
    # entrywise, on each entry's natural scale sqrt(K(x,x) K(x',x')) (not relative to the largest entry):
    # at most 2.3e-15 measured over these 14 cases on both loops (relative to each entry instead, the
    # near-zero entries of identity with beta=0.4 reach 2.9e-12: a cancellation, not an error of the path)
    for got, want, full in ((nngp, ref_nngp, full_nngp), (ntk, ref_ntk, full_ntk)):
        worst = float(_scaled_error(got, want, full.diagonal(), full.diagonal()[:100]).max())
        assert worst < 1e-14, f"scaled error {worst:.3g}"
    dn, dt = fc_diag(x, spec)
    assert dt is not None
    assert rel_err(dn, full_nngp.diagonal()) < TOL[torch.float64]["exact"]
    assert rel_err(dt, full_ntk.diagonal()) < TOL[torch.float64]["exact"]


def test_duplicates_keep_angle_zero(gen: torch.Generator) -> None:
    """A duplicated row gives exactly the diagonal value (cov == var bit for bit through the layers)."""
    x = _data(gen)
    nngp, ntk = fc_tile(x, x, FCSpec.make(4, "relu", 0.1, 1.0))
    assert ntk is not None
    assert nngp[5, 17] == nngp[5, 5] and ntk[5, 17] == ntk[5, 5]
    assert torch.isfinite(ntk).all() and torch.isfinite(nngp).all()


def test_float32_matches_fc_kernel(gen: torch.Generator) -> None:
    x = _data(gen, dtype=torch.float32)
    ref_nngp, ref_ntk = reference_fc(x, depth=3)
    nngp, ntk = fc_tile(x, x, FCSpec.make(3, "relu"))
    assert nngp.dtype == torch.float32 and ntk is not None and ref_ntk is not None
    assert rel_err(ntk, ref_ntk) < TOL[torch.float32]["closed_form"]
    assert rel_err(nngp, ref_nngp) < TOL[torch.float32]["closed_form"]


def test_generic_activation_runs_on_the_reference_path(gen: torch.Generator) -> None:
    x = _data(gen, n=40, d=3)
    spec = FCSpec.make(2, "tanh", 0.2)
    assert spec.fused_kind == "generic"
    with pytest.raises(ValueError, match="no fused recursion"):
        fc_tile(x, x, spec)
    arch = describe_model(fc_model(3, depth=2, activation="tanh", b_std=0.2), (3,))
    assert KernelTiles(arch).path == "reference"
    assert KernelTiles(describe_model(fc_model(3, depth=2, activation="erf"), (3,))).path == "fused"
    ref_nngp, ref_ntk = reference_fc(x, depth=2, activation="tanh", beta=0.2)
    k = ntkit.fc_kernel(x, depth=2, activation="tanh", b_std=0.2)
    assert ref_ntk is not None and k.ntk is not None
    assert rel_err(k.nngp, ref_nngp) < 1e-14 and rel_err(k.ntk, ref_ntk) < 1e-14


def test_block_gram_is_tiling_invariant(gen: torch.Generator) -> None:
    x = torch.randn(3 * GRAM_BLOCK + 17, 30, generator=gen, dtype=torch.float64)
    full = block_gram(x, x)
    part = block_gram(x[GRAM_BLOCK:], x[2 * GRAM_BLOCK :])
    assert torch.equal(part, full[GRAM_BLOCK:, 2 * GRAM_BLOCK :])


def test_kernel_tile_fn(gen: torch.Generator) -> None:
    x = _data(gen)
    tile_fn = kernel_tile_fn(depth=3, activation="erf", b_std=0.1, which="ntk")
    _, ref_ntk = reference_fc(x, depth=3, activation="erf", beta=0.1)
    out = tile_fn(x[:30], x[40:])
    assert out.shape == (30, x.shape[0] - 40) and ref_ntk is not None
    assert rel_err(out, ref_ntk[:30, 40:]) < TOL[torch.float64]["exact"]
    nngp_fn = kernel_tile_fn(depth=3, which="nngp", dtype=torch.float32)
    assert nngp_fn(x[:4].numpy(), x[:5].numpy()).dtype == torch.float32


def test_kernel_tile_fn_bad_input() -> None:
    with pytest.raises(ValueError, match="which: expected one of"):
        kernel_tile_fn(depth=2, which="both")
    with pytest.raises(ValueError, match="depth: expected"):
        kernel_tile_fn(depth=-1)
    tile_fn = kernel_tile_fn(depth=2)
    with pytest.raises(ValueError, match="same feature shape"):
        tile_fn(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", "erf", ABReLU(0.3, -0.7)], ids=repr)
def test_cache_strips_do_not_change_a_bit(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, activation: object
) -> None:
    """The CPU layer loop runs over row strips; the strip height must not change any entry."""
    x = _data(gen, n=150, dtype=dtype)
    spec = FCSpec.make(3, activation, 0.2, 1.1)
    results = []
    for chunk_bytes in (1, 7 * 150 * x.element_size(), 1 << 30):  # 1 row, 7 rows, the whole tile
        monkeypatch.setattr(fused, "CHUNK_BYTES", chunk_bytes)
        results.append(fc_tile(x, x[:120], spec))
    for nngp, ntk in results[1:]:
        assert ntk is not None and results[0][1] is not None
        assert torch.equal(nngp, results[0][0]) and torch.equal(ntk, results[0][1])


def test_upper_only_diagonal_tile_matches_the_full_tile(gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "CHUNK_BYTES", 5 * 150 * 8)  # strips of 5 rows
    x = _data(gen, n=150)
    spec = FCSpec.make(3, "relu", 0.1, 1.0)
    full_nngp, full_ntk = fc_tile(x, x, spec)
    nngp, ntk = fc_tile(x, x, spec, upper=True)
    assert ntk is not None and full_ntk is not None
    assert torch.equal(nngp.triu(), full_nngp.triu()) and torch.equal(ntk.triu(), full_ntk.triu())


# --- the compiled kernel on its own ---------------------------------------------------------------


@native_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", ABReLU(0.3, -0.7)], ids=repr)
def test_native_agrees_with_the_torch_path(gen: torch.Generator, kernel_path: str, dtype: torch.dtype,
                                           activation: object) -> None:
    assert kernel_path == "native" and native.status() == "native C kernel"
    x = _data(gen, n=150, dtype=dtype)
    spec = FCSpec.make(4, activation, 0.3, 1.2)
    tol = 1e-13 if dtype == torch.float64 else 3e-6
    for a, b in zip(fc_tile(x, x[:70], spec, native=True), fc_tile(x, x[:70], spec, native=False), strict=True):
        assert a is not None and b is not None
        assert rel_err(a, b) < tol
    for a, b in zip(fc_diag(x, spec, native=True), fc_diag(x, spec, native=False), strict=True):
        assert a is not None and b is not None
        assert rel_err(a, b) < tol


@native_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_entries_do_not_depend_on_their_place(
    gen: torch.Generator, kernel_path: str, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """Blocks of 64 entries with padded tails, row ranges on threads: no entry changes by a bit."""
    assert kernel_path == "native" and native.status() == "native C kernel"
    # inputs on a grid of 1/8: every Gram entry is exact whatever BLAS kernel computes it, so any
    # difference below would come from the layer loop
    x = (_data(gen, n=300, dtype=dtype) * 8).round() / 8
    spec = FCSpec.make(3, "relu", 0.2, 1.1)
    full = fc_tile(x, x[:200], spec, native=True)
    shifted = fc_tile(x[7:], x[37:200], spec, native=True)  # other lanes, other tails
    monkeypatch.setattr(fused, "NATIVE_SPLIT", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = fc_tile(x, x[:200], spec, native=True)  # row ranges over two threads
    finally:
        torch.set_num_threads(before)
    upper = fc_tile(x[:200], x[:200], spec, native=True, upper=True)
    diag = fc_diag(x, spec, native=True)
    for k in range(2):
        a, b, c, u, d = full[k], shifted[k], split[k], upper[k], diag[k]
        assert a is not None and b is not None and c is not None and u is not None and d is not None
        assert torch.equal(a[7:, 37:], b)
        assert torch.equal(a, c)
        assert torch.equal(u.triu(), a[:200].triu())
        assert torch.equal(a[:200].diagonal(), d[:200])  # the diagonal path gives the tile's diagonal entries
        assert a[5, 17] == a[5, 5]  # the duplicate keeps angle 0


def test_native_falls_back_where_it_cannot_run(gen: torch.Generator, kernel_path: str) -> None:
    x = _data(gen, n=40)
    spec = FCSpec.make(2, "relu")
    strided = torch.empty(40, 80, dtype=torch.float64)[:, ::2]  # column stride 2: the torch path
    nngp, _ = fc_tile(x, x, spec, out=(strided, None), ntk=False)
    assert rel_err(nngp, fc_tile(x, x, spec, native=False)[0]) < 1e-13
    if kernel_path == "native":
        with pytest.raises(RuntimeError, match="native=True"):
            fc_tile(x, x, spec, out=(strided, None), ntk=False, native=True)
        assert native.status() == "native C kernel"
    else:
        assert native.status() == "torch path (NTKIT_NATIVE=0)"
        with pytest.raises(RuntimeError, match="NTKIT_NATIVE=0"):
            fc_tile(x, x, spec, native=True)
