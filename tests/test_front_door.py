"""The front door describes and validates once per call (issue 20, item 2).

``ntkit.infinite_kernel`` describes the model once, validates the pair once, hashes nothing for an
in-memory result, and takes the diagonals of ``which="both"`` from the kernel where the evaluator
already computed them; its results equal, bit for bit, the composition it replaced (one
``compute_kernel`` for the kernel, one per diagonal). ``KernelOperator`` sizes its tiles with the same
pair-cost model as ``compute_kernel``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import ntkit
from ntkit import graphs
from ntkit.compute import api, model_kernels
from ntkit.compute.sizing import fit_tile_shape, pair_bytes, size_tiles
from ntkit.compute.tiling import DEFAULT_BUDGET, WORK_ARRAYS
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import describe_model
from ntkit.solve import KernelOperator
from tests.conftest import rel_err

F64 = torch.float64
META: dict[str, Any] = {"device": "meta"}


def _fc() -> nn.Module:
    return ntkit.nn.fc(10, depth=3, **META)


def _cntk_gap() -> nn.Module:
    return ntkit.nn.cntk(3, depth=5, **META)


def _conv_reference(channels: int = 3) -> nn.Module:
    """A pooled CNN with a layer norm: no fast path, the reference evaluator (pixels^2 entries a pair)."""
    return nn.Sequential(
        ntkit.nn.Conv2d(channels, 8, 3, padding="same", **META), ntkit.nn.LayerNorm(), nn.ReLU(),
        ntkit.nn.Conv2d(8, 8, 3, padding="same", **META), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
        ntkit.nn.Linear(8, 1, **META),
    )


def _vector_reference() -> nn.Module:
    """A pre-activation residual MLP: vectors on the reference evaluator."""
    return nn.Sequential(
        ntkit.nn.Linear(10, 16, **META), ntkit.nn.Residual(nn.Sequential(nn.ReLU(), ntkit.nn.Linear(16, 16, **META))),
        nn.ReLU(), ntkit.nn.Linear(16, 1, **META),
    )


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shape = (10,) if kind == "vector" else (3, 6, 6)
    x1 = torch.randn(12, *shape, dtype=F64, generator=g)
    x2 = torch.randn(5, *shape, dtype=F64, generator=g)
    x1[7] = x1[2]  # a duplicated row
    x2[1] = x1[4]  # a row shared by x1 and x2
    return x1, x2


MODELS: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    "fc": (_fc, "vector", "fused"),
    "cntk-gap": (_cntk_gap, "image", "spatial"),
    "conv-reference": (_conv_reference, "image", "reference"),
    "vector-reference": (_vector_reference, "vector", "reference"),
}


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls of describe_model, check_pair and data_digest made by the compute front (api, model_kernels)."""
    seen = {"describe_model": 0, "check_pair": 0, "data_digest": 0}

    def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    for module in (api, model_kernels, graphs):  # graphs: the inputs' validation (ntkit.Graphs or arrays)
        for name in seen:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    return seen


@pytest.mark.parametrize("name", ["fc", "cntk-gap"])
@pytest.mark.parametrize("which", ["both", "nngp", "ntk"])
@pytest.mark.parametrize("pair", ["x1", "x1 x2"])
def test_one_description_one_validation_no_hash(name: str, which: str, pair: str, counts: dict[str, int]) -> None:
    build, kind, _ = MODELS[name]
    x1, x2 = _inputs(kind)
    out = ntkit.infinite_kernel(build(), x1, x2 if pair == "x1 x2" else None, which=which)
    assert counts == {"describe_model": 1, "check_pair": 1, "data_digest": 0}
    assert out is not None


def test_an_output_on_disk_is_still_keyed_by_the_inputs(tmp_path: Any, counts: dict[str, int]) -> None:
    x1, x2 = _inputs("vector")
    res = ntkit.compute_kernel(_fc(), x1, x2, out=tmp_path / "k.npy")
    assert counts["data_digest"] == 2 and counts["describe_model"] == 1
    assert len(res.params["x1"]) == 64 and len(res.params["x2"]) == 64  # SHA-256 hex digests
    memory = ntkit.compute_kernel(_fc(), x1, x2)
    assert counts["data_digest"] == 2 and "x1" not in memory.params  # in memory: nothing hashed


def _previous(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, dtype: torch.dtype) -> ntkit.Kernel:
    """What ``infinite_kernel(model, x1, x2)`` returned before: compute_kernel for the kernel and each diagonal."""
    res = ntkit.compute_kernel(model, x1, x2, dtype=dtype)
    var1 = ntkit.compute_kernel(model, x1, which="nngp", pairs="diagonal", dtype=dtype).nngp
    var2 = var1 if x2 is None else ntkit.compute_kernel(model, x2, which="nngp", pairs="diagonal", dtype=dtype).nngp
    return ntkit.Kernel(nngp=res.nngp, ntk=res.ntk, var1=var1, var2=var2)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("pair", ["x1", "x1 x2", "x1 x1"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_results_equal_the_previous_path_bitwise(name: str, pair: str, dtype: torch.dtype) -> None:
    build, kind, path = MODELS[name]
    model = build()
    x1, x2 = _inputs(kind)
    other = {"x1": None, "x1 x2": x2, "x1 x1": x1.clone()}[pair]
    assert KernelTiles(describe_model(model, tuple(x1.shape[1:]))).path_for(x1.to(dtype)) == path
    got = ntkit.infinite_kernel(model, x1, other, dtype=dtype)
    want = _previous(model, x1, other, dtype)
    for field in ("nngp", "ntk", "var1", "var2"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype == dtype and torch.equal(a, b), (name, pair, field)
    assert ntkit.infinite_kernel(model, x1, other, which="ntk", dtype=dtype).equal(want.ntk)
    assert ntkit.infinite_kernel(model, x1, other, which="nngp", dtype=dtype).equal(want.nngp)


@pytest.mark.parametrize("name", ["cntk-gap", "conv-reference", "vector-reference"])
def test_symmetric_diagonal_comes_from_the_kernel(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the reference evaluator (and the spatial path) K(X) already holds K(x_i, x_i): no diagonal pass."""
    build, kind, _ = MODELS[name]
    x1, _ = _inputs(kind)
    calls = []
    real = KernelTiles.diag

    def diag(self: KernelTiles, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KernelTiles, "diag", diag)
    k = ntkit.infinite_kernel(build(), x1)
    assert calls == [] and k.var2 is k.var1
    assert k.var1.data_ptr() != k.nngp.data_ptr()  # a copy, not a view of the kernel
    monkeypatch.setattr(KernelTiles, "diag", real)
    assert torch.equal(k.var1, ntkit.compute_kernel(build(), x1, which="nngp", pairs="diagonal").nngp)


def test_fused_diagonal_is_one_pass_over_prepared_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fully connected path evaluates each diagonal once, from the rows prepared for the kernel."""
    x1, x2 = _inputs("vector")
    prepared = []
    real = KernelTiles.prepare

    def prepare(self: KernelTiles, x: torch.Tensor) -> Any:
        prepared.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(KernelTiles, "prepare", prepare)
    ntkit.infinite_kernel(_fc(), x1, x2)
    assert prepared == [12, 5]  # before: 12, 5 for the kernel, then 12 and 5 again for the diagonals


def test_size_tiles_is_the_rule_of_compute_kernel() -> None:
    x = torch.zeros(5000, 3, 6, 6, dtype=F64)
    tiles = KernelTiles(describe_model(_conv_reference(), (3, 6, 6)))
    per_pair = pair_bytes(tiles, x)
    assert per_pair == WORK_ARRAYS * 36**2 * 8
    edge, threads = size_tiles(tiles, x, 5000, 5000, budget=DEFAULT_BUDGET, threads=1)
    assert edge * edge * per_pair <= DEFAULT_BUDGET < (edge + 1) ** 2 * per_pair and threads == 1
    res = ntkit.compute_kernel(_conv_reference(), x[:40] + 1.0, which="nngp", threads=1)
    assert res.tile == min(edge, 40)
    small = ntkit.compute_kernel(_conv_reference(), x[:40] + 1.0, which="nngp", threads=1,
                                 memory_budget=100 * per_pair)
    assert small.tile == 10 and small.tiles_total == 10


def test_operator_tiles_fit_the_budget() -> None:
    """A convolutional operator on the reference path shrinks its tiles to the budget; products are unchanged."""
    model = _conv_reference(1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 1, 4, 4, dtype=F64, generator=g)
    v = torch.randn(16, 2, dtype=F64, generator=g)
    per_pair = WORK_ARRAYS * 16**2 * 8  # 16 pixels, squared
    dense = ntkit.infinite_kernel(model, x, which="ntk")
    big = KernelOperator(x, model=model)
    small = KernelOperator(x, model=model)
    small.budget = 12 * per_pair
    assert big.tile_shape == (90, 182)  # 16384 pairs in 256 MiB, the aspect of 1024 x 2048 kept
    assert small.tile_shape == (2, 6)
    assert rel_err(small @ v, dense @ v) < 1e-14 and rel_err(small @ v, big @ v) < 1e-14
    rect = KernelOperator(x, x[:7], model=model)
    rect.budget = "256K"
    rows, cols = rect.tile_shape
    assert rows * cols * per_pair <= 2**18 < (rows + 1) * (cols + 1) * per_pair
    assert rel_err(rect @ v[:7, 0], dense[:, :7] @ v[:7, 0]) < 1e-14
    fc = KernelOperator(torch.randn(8, 10, dtype=F64, generator=g), model=_fc())
    fc.budget = 2**20  # one entry a pair, but 1024 x 2048 of them (128 MiB) do not fit 1 MiB
    assert fc.tile_shape == (90, 182)  # 16384 pairs of 64 bytes
    fc.budget = DEFAULT_BUDGET
    assert fc.tile_shape == (1024, 2048)  # the default tiles of a fully connected model are unchanged


def test_fit_tile_shape_keeps_tiles_that_fit() -> None:
    tiles = KernelTiles(describe_model(_fc(), (10,)))
    x = torch.zeros(1, 10, dtype=F64)
    assert fit_tile_shape(tiles, x, 1024, 2048, budget=DEFAULT_BUDGET) == (1024, 2048)  # 128 MiB of pairs
    assert fit_tile_shape(tiles, x, 1024, 2048, budget=2**20) == (90, 182)
    assert fit_tile_shape(tiles, x, 1024, 2048, budget=10) == (1, 1)  # never below one pair
