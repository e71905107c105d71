"""The Dask backend: a LocalCluster of two worker processes gives the local result, even when a
worker is killed mid-run (ntkit.compute.distributed)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ntkit.compute import compute_kernel

distributed = pytest.importorskip("dask.distributed")  # in the test extra; skips only without it


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", scheduler_port=0,
        silence_logs=50,  # free ports: two xdist workers may each run a cluster
    ) as cl:
        yield cl


@pytest.fixture
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def test_dask_matches_local_tiled_and_one_shot(client: Any, cluster: Any, gen: torch.Generator,
                                              tmp_path: Path) -> None:
    x = torch.randn(400, 7, generator=gen, dtype=torch.float64)
    local = compute_kernel(None, x, depth=3, b_std=0.1, tile=128)
    one_shot = compute_kernel(None, x, depth=3, b_std=0.1, tile=1024)
    remote = compute_kernel(None, x, depth=3, b_std=0.1, tile=128, scheduler=client)
    assert torch.equal(remote.ntk, local.ntk) and torch.equal(remote.nngp, local.nngp)
    assert torch.equal(one_shot.ntk, local.ntk)
    by_address = compute_kernel(None, x, x[:150], depth=2, which="ntk", tile=128, scheduler=cluster.scheduler_address,
                                out=tmp_path / "k.zarr")
    ref = compute_kernel(None, x, x[:150], depth=2, which="ntk", tile=256)
    assert np.array_equal(by_address.ntk[:], ref.ntk.numpy())


def test_worker_killed_mid_run(client: Any, gen: torch.Generator, tmp_path: Path) -> None:
    x = torch.randn(1536, 50, generator=gen, dtype=torch.float64)  # 78 tiles: a kill lands mid-run
    out = tmp_path / "k.npy"
    ledger = Path(str(out) + ".ledger")
    pids = list(client.run(os.getpid).values())
    killed: list[float] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= 3:  # two tiles done, more running
                os.kill(pids[0], signal.SIGKILL)
                killed.append(time.monotonic())
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    res = compute_kernel(None, x, depth=3, which="ntk", tile=128, out=out, scheduler=client)
    finished = time.monotonic()
    thread.join()
    assert killed and killed[0] < finished, "the worker should have been killed during the run"
    assert res.tiles_computed == res.tiles_total == 78
    assert len(ledger.read_text().splitlines()) == 79
    ref = compute_kernel(None, x, depth=3, which="ntk", tile=128)
    assert np.array_equal(np.load(out), ref.ntk.numpy())


def test_unreachable_scheduler(tmp_path: Path) -> None:
    from ntkit.compute import distributed as dist_mod

    rng = torch.Generator().manual_seed(101)
    x = torch.randn(10, 3, dtype=torch.float64, generator=rng)
    old = dist_mod.CONNECT_TIMEOUT
    dist_mod.CONNECT_TIMEOUT = 1.0
    try:
        with pytest.raises(ConnectionError, match="expected a reachable Dask scheduler"):
            compute_kernel(None, x, depth=2, scheduler="tcp://127.0.0.1:9", out=tmp_path / "k.npy")
    finally:
        dist_mod.CONNECT_TIMEOUT = old
    assert not (tmp_path / "k.npy").exists()
    with pytest.raises(TypeError, match=r"scheduler: expected a dask.distributed.Client"):
        compute_kernel(None, x, depth=2, scheduler=3)
