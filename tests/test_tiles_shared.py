"""Row ids by hashing, KernelTiles shared per architecture, tile functions that see a changed model, and the
chunked threads of the native pair loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import KernelTiles, describe_model
from ntkit.infinite.row_ids import row_ids


def _same_ids(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[:, None] == b[None, :]


def _equal_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.reshape(len(x), 1, -1) == y.reshape(1, len(y), -1)).all(dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_ids_equal_exactly_for_equal_rows(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 5, generator=gen, dtype=dtype)
    x[7], x[30] = x[2], x[2]  # duplicates within x1
    x[11] = 0.0
    x[12] = -0.0  # equal values, other bits: the same row
    y = torch.randn(9, 3, 5, generator=gen, dtype=dtype)
    y[4] = x[5]  # a duplicate across x1 and x2
    for ids1, ids2, a, b in [(*row_ids(x), x, x), (*row_ids(x, y), x, y)]:
        assert torch.equal(_same_ids(ids1, ids2), _equal_rows(a, b))
    i1, i2 = row_ids(x, y)
    assert torch.equal(_same_ids(i1, i2), _equal_rows(x, y))
    assert torch.equal(_same_ids(i2, i2), _equal_rows(y, y))


def test_row_ids_distinct_rows_and_a_hash_collision() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    assert torch.equal(row_ids(x)[0], torch.arange(50))  # all distinct: the fast answer
    # (a, b) and (-a, -b) differ in two sign bits (2^63 each): their hashes collide for any odd multipliers,
    # so the exact path must decide -- and keep them apart
    z = torch.tensor([[1.5, -2.0], [-1.5, 2.0], [1.5, -2.0]], dtype=torch.float64)
    ids = row_ids(z)[0]
    assert ids[0] == ids[2] and ids[0] != ids[1]


def test_kernel_tiles_shared_per_architecture() -> None:
    model = ntkit.nn.fc(3, depth=2, device="meta")
    arch = describe_model(model, (3,))
    assert KernelTiles.of(arch) is KernelTiles.of(arch)
    other = describe_model(ntkit.nn.fc(3, depth=3, device="meta"), (3,))
    assert KernelTiles.of(other) is not KernelTiles.of(arch)
    assert KernelTiles.of(other).arch is other


def test_tile_fn_sees_a_model_changed_between_tiles() -> None:
    model = nn.Sequential(ntkit.nn.Linear(3, 16, b_std=0.1, device="meta"), nn.ReLU(),
                          ntkit.nn.Linear(16, 1, b_std=0.1, device="meta"))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tile_fn = ntkit.kernel_tile_fn(model, which="ntk")
    before = tile_fn(x[:2], x)
    torch.testing.assert_close(before, ntkit.infinite_kernel(model, x).ntk[:2], rtol=1e-13, atol=0)
    model[2].b_std = 0.7  # a hyper-parameter changed between two tiles
    after = tile_fn(x[:2], x)
    torch.testing.assert_close(after, ntkit.infinite_kernel(model, x).ntk[:2], rtol=1e-13, atol=0)
    assert not torch.allclose(before, after)


def test_run_chunks_covers_every_pair_once_and_raises() -> None:
    from ntkit.infinite.pair_threads import run_chunks

    for threads in (1, 2, 3):
        seen = torch.zeros(103, dtype=torch.int64)

        def run(p0: int, p1: int, seen: torch.Tensor = seen) -> None:
            seen[p0:p1] += 1

        run_chunks(run, 103, threads, name="test")
        assert bool((seen == 1).all())

    def fail(p0: int, p1: int) -> None:
        if p0 > 0:
            raise MemoryError("chunk failed")

    with pytest.raises(MemoryError, match="chunk failed"):
        run_chunks(fail, 50, 2, name="test")
