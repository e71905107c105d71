"""Threads for the native pair loops: ranges of pairs run on a pool while torch's own threads stay quiet.

A native loop (``_tokens_native.c``, ``_cntk_native.c``, ``_diag_native.c``, ``_fc_native.c``) computes the
pairs ``[p0, p1)`` of a tile in one C call that releases the GIL. :func:`run_spans` hands such spans on demand
to the calling thread and ``threads - 1`` pool threads (:func:`run_chunks`: equal chunks of ``[0, n)``), so a
pool thread that wakes late takes fewer spans instead of holding up the call (on a shared 2-core machine a
static split left up to a third of a small call's wall time idle). :func:`torch_serial` keeps torch's OpenMP
workers from spinning on the same cores meanwhile.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

_pools: dict[tuple[str, int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_serial_lock = threading.Lock()
_serial = {"depth": 0, "threads": 1}


@contextmanager
def torch_serial() -> Iterator[int]:
    """Run torch's own operations single-threaded inside; yields torch's thread count from before, for the
    native loop's threads.

    torch's OpenMP workers spin for a while after each parallel operation; started right after one, the
    native loop's threads would share the cores with them (on a 2-core machine that made a small call several
    times slower). The few torch operations around the native loop are small, so they run on one thread.
    Nested and concurrent uses (tiles on several threads) restore the setting when the last one leaves.
    """
    with _serial_lock:
        if _serial["depth"] == 0:
            _serial["threads"] = torch.get_num_threads()
            if _serial["threads"] > 1:
                torch.set_num_threads(1)
        _serial["depth"] += 1
        threads = _serial["threads"]
    try:
        yield threads
    finally:
        with _serial_lock:
            _serial["depth"] -= 1
            if _serial["depth"] == 0 and _serial["threads"] > 1:
                torch.set_num_threads(_serial["threads"])


def run_chunks(run: Callable[[int, int], None], n: int, threads: int, *, name: str, per_thread: int = 4) -> None:
    """``run(p0, p1)`` over ``[0, n)`` in about ``per_thread * threads`` equal chunks (see :func:`run_spans`)."""
    step = max(1, -(-n // (per_thread * max(1, threads))))
    run_spans(run, [(p0, min(p0 + step, n)) for p0 in range(0, n, step)], threads, name=name)


def run_spans(run: Callable[[int, int], None], spans: Sequence[tuple[int, int]], threads: int, *, name: str) -> None:
    """``run(p0, p1)`` for each span, taken in order on demand by ``threads`` threads.

    The calling thread is one of them; the others come from a pool kept per ``(name, process, threads)`` (a
    forked child must not use its parent's thread-less pool). The first exception of a span is raised once
    every thread has stopped.
    """
    if threads <= 1 or len(spans) < 2:
        for p0, p1 in spans:
            run(p0, p1)
        return
    key = (name, os.getpid(), threads)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(threads - 1, thread_name_prefix=f"ntkit-{name}")
    todo = iter(spans)
    lock = threading.Lock()

    def take() -> None:
        while True:
            with lock:
                span = next(todo, None)
            if span is None:
                return
            run(*span)

    helpers = [pool.submit(take) for _ in range(threads - 1)]
    try:
        take()
    finally:
        for h in helpers:
            h.result()


__all__ = ["run_chunks", "run_spans", "torch_serial"]
