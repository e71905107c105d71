"""Spreading kernel tiles over a Dask cluster (``dask.distributed``; the ``dask`` extra).

The data and the tile recipe (:class:`ntkit.compute.tile_task.TileTask`) are scattered to every worker
once; each tile is a task returning its block, gathered here as it completes and written by the
caller (so the output, its ledger and resumption behave exactly as in a local run). At most a few
tiles per worker are in flight, which bounds the memory of this process. Dask reruns the tasks of
a worker that dies; tiles are deterministic, so the result does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ntkit.compute.tile_task import TileTask, run_tile

#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT = 10.0
#: Times a tile is resubmitted after its task was cancelled or its worker died.
MAX_RESUBMIT = 3
_RETRYABLE = {"CancelledError", "FutureCancelledError", "KilledWorker"}


def get_client(scheduler: Any, *, timeout: float | None = None) -> tuple[Any, bool]:
    """``(client, owned)`` from a ``Client`` or a scheduler address (owned clients are closed by us)."""
    try:
        from dask.distributed import Client
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("scheduler: the Dask backend needs dask.distributed: pip install 'ntkit[dask]'") from err
    if isinstance(scheduler, Client):
        return scheduler, False
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    if not isinstance(scheduler, str) or not scheduler:
        raise TypeError(f"scheduler: expected a dask.distributed.Client or an address such as "
                        f"'tcp://host:8786', got {type(scheduler).__name__}")
    try:
        return Client(scheduler, timeout=timeout, set_as_default=False), True
    except (OSError, TimeoutError) as err:
        raise ConnectionError(
            f"scheduler: expected a reachable Dask scheduler, got {scheduler!r} "
            f"(no connection within {timeout:g} s: {err})"
        ) from None


def run_on_dask(
    client: Any,
    task: TileTask,
    todo: Sequence[tuple[int, int]],
    finish: Callable[[int, int, np.ndarray], None],
    *,
    per_worker: int = 2,
) -> None:
    """Evaluate ``task(i, j)`` for every tile of ``todo`` on the cluster of ``client``, calling ``finish`` on each."""
    from dask.distributed import as_completed

    futures = as_completed(loop=client.loop)
    where: dict[Any, tuple[int, int]] = {}
    try:
        n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        state = {"task": client.scatter([task], broadcast=True, hash=False)[0]}
        pending = list(todo)[::-1]
        limit = per_worker * n_workers + 1
        attempts: dict[tuple[int, int], int] = {}

        def submit(tile: tuple[int, int]) -> None:
            fut = client.submit(run_tile, state["task"], tile[0], tile[1], pure=False, retries=2)
            where[fut] = tile
            futures.add(fut)

        for _ in range(min(limit, len(pending))):
            submit(pending.pop())
        for fut in futures:
            tile = where.pop(fut)
            try:
                block = fut.result()
            except Exception as err:  # a lost worker can cancel a task or lose the scattered data
                if type(err).__name__ not in _RETRYABLE or attempts.get(tile, 0) >= MAX_RESUBMIT:
                    raise
                attempts[tile] = attempts.get(tile, 0) + 1
                state["task"] = client.scatter([task], broadcast=True, hash=False)[0]
                submit(tile)
                continue
            fut.release()
            if pending:
                submit(pending.pop())
            finish(tile[0], tile[1], block)
    finally:  # on an error or an interrupt, cancel what is still queued
        for fut in list(where):
            fut.cancel()
