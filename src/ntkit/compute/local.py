"""Running tiles in this process: on Python threads (:func:`run_threaded`), each finished block written
into the output (:func:`write_tile`, also used for the blocks that come back from Dask).

:mod:`ntkit.compute.distributed` is the Dask counterpart of :func:`run_threaded`; :mod:`ntkit.compute.api`
drives both (and re-exports these names).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch

from ntkit._validation import check_int
from ntkit.compute.storage import Output
from ntkit.compute.tile_task import TileTask, single_threaded
from ntkit.compute.tiling import TilePlan

Tensor = torch.Tensor


def _check_threads(threads: Any, device: torch.device) -> int:
    if threads is None:
        return 1 if device.type != "cpu" else max(1, torch.get_num_threads())
    return check_int(threads, "threads", minimum=1)


def run_threaded(
    task: TileTask,
    todo: list[tuple[int, int]],
    finish: Callable[[int, int, Any], None],
    threads: int,
    store: Callable[[int, int, Tensor], None] | None = None,
) -> None:
    """Evaluate the tiles of ``todo`` on ``threads`` Python threads (torch releases the GIL), at most
    ``threads`` tiles in flight, calling ``finish(i, j, block)`` here as each completes.

    With ``store``, each worker thread also calls ``store(i, j, block)`` itself (an output that
    takes concurrent writes of disjoint tiles: the copies into memory then run in parallel) and
    ``finish`` receives None. When a tile fails, no further tile starts; those already in flight
    complete (and are finished) before the first error is raised.
    """

    def work(i: int, j: int) -> Tensor | None:
        block = task(i, j)
        if store is None:
            return block
        store(i, j, block)
        return None

    if task.device.type != "cpu":
        for i, j in todo:
            finish(i, j, work(i, j))
        return
    if len(todo) <= 1 and threads > 1:  # one tile: its own operations use the threads
        for i, j in todo:
            finish(i, j, work(i, j))
        return
    if threads <= 1:
        with single_threaded():
            for i, j in todo:
                finish(i, j, work(i, j))
        return
    with single_threaded(), ThreadPoolExecutor(threads) as pool:
        pending = list(todo)[::-1]
        running: dict[Future[Tensor | None], tuple[int, int]] = {}
        failure: BaseException | None = None
        try:
            while running or (pending and failure is None):
                while failure is None and pending and len(running) < threads:
                    i, j = pending.pop()
                    running[pool.submit(work, i, j)] = (i, j)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, j = running.pop(fut)
                    err = fut.exception()
                    if err is not None:
                        # Start nothing new, but let the tiles in flight finish and be recorded:
                        # a tile that was wholly written next to a failing one is kept.
                        failure = failure or err
                        continue
                    finish(i, j, fut.result())
        finally:
            for fut in running:
                fut.cancel()
        if failure is not None:
            raise failure


def write_tile(output: Output, plan: TilePlan, which: tuple[str, ...], i: int, j: int, block: Any) -> None:
    """Write the stacked block of tile ``(i, j)`` (and its mirror for a symmetric plan)."""
    r = plan.rows(i)
    for k in range(len(which)):
        kk = None if len(which) == 1 else k
        if plan.diag:
            output.write(kk, r, None, block[k])
            continue
        c = plan.cols(j)
        output.write(kk, r, c, block[k])
        if plan.symmetric and i != j:
            mirrored = block[k].T
            mirrored = mirrored.contiguous() if isinstance(mirrored, Tensor) else np.ascontiguousarray(mirrored)
            output.write(kk, c, r, mirrored)


__all__ = ["run_threaded", "write_tile"]
