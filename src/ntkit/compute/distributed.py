"""Spreading kernel tiles over a Dask cluster (``dask.distributed``; the ``dask`` extra).

The data and the tile recipe (:class:`ntkit.compute.api.TileTask`) are scattered to every worker
once; each tile is a task returning its block, gathered here as it completes and written by the
caller (so the output, its ledger and resumption behave exactly as in a local run). At most a few
tiles per worker are in flight, which bounds the memory of this process. Dask reruns the tasks of
a worker that dies; tiles are deterministic, so the result does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT = 10.0


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
    task: Any,
    todo: Sequence[tuple[int, int]],
    finish: Callable[[int, int, np.ndarray], None],
    *,
    per_worker: int = 2,
) -> None:
    """Evaluate ``task(i, j)`` for every tile of ``todo`` on the cluster of ``client``, calling ``finish`` on each."""
    from dask.distributed import as_completed

    from ntkit.compute.api import run_tile

    futures = as_completed(loop=client.loop)
    where: dict[Any, tuple[int, int]] = {}
    try:
        n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        [task_future] = client.scatter([task], broadcast=True, hash=False)
        pending = list(todo)[::-1]
        limit = per_worker * n_workers + 1

        def submit() -> None:
            i, j = pending.pop()
            fut = client.submit(run_tile, task_future, i, j, pure=False, retries=2)
            where[fut] = (i, j)
            futures.add(fut)

        for _ in range(min(limit, len(pending))):
            submit()
        for fut in futures:
            i, j = where.pop(fut)
            block = fut.result()
            fut.release()
            if pending:
                submit()
            finish(i, j, block)
    finally:  # on an error or an interrupt, cancel what is still queued
        for fut in list(where):
            fut.cancel()
