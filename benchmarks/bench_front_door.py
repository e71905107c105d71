"""Call time and repeated work of the front door, :func:`ntkit.infinite_kernel` (issue 20, item 2).

Two small problems, where the per-call overhead is a visible part of the call time:

* ``fc``: a depth-3 fully connected ReLU network (``ntkit.nn.fc``) on 20 points of dimension 10;
* ``cntk``: CNTK-GAP of depth 5 (``ntkit.nn.cntk``) on 8 images 3 x 8 x 8.

For each, ``which="both"`` with ``x2`` omitted and with a distinct ``x2`` of as many rows: the best
(minimum) wall-clock and CPU time of ``--repeats`` calls after a warm-up (one torch thread), and
the number of times one call describes the model (``describe_model``), validates the inputs
(``check_pair``) and hashes them (``data_digest``, SHA-256), counted by wrapping those functions
wherever an ``ntkit`` module imported them.

Usage::

    python benchmarks/bench_front_door.py [--repeats 30]

Results: ``benchmarks/results/front_door.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import ntkit
from ntkit._validation import check_pair
from ntkit.compute.storage import data_digest
from ntkit.infinite.walk import describe_model

COUNTED: dict[str, Callable[..., Any]] = {
    "describe_model": describe_model, "check_pair": check_pair, "data_digest": data_digest,
}


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count calls of :data:`COUNTED` made through any loaded ``ntkit`` module (patched, then restored)."""
    counts = dict.fromkeys(COUNTED, 0)
    patched: list[tuple[Any, str, Any]] = []

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)
        return counted

    wrappers = {name: wrap(name, fn) for name, fn in COUNTED.items()}
    for mod_name, module in list(sys.modules.items()):
        if not mod_name.startswith("ntkit") or module is None:
            continue
        for name, fn in COUNTED.items():
            if getattr(module, name, None) is fn:
                patched.append((module, name, fn))
                setattr(module, name, wrappers[name])
    try:
        yield counts
    finally:
        for module, name, fn in patched:
            setattr(module, name, fn)


def problems() -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x_fc = torch.randn(40, 10, dtype=torch.float64, generator=g)
    x_img = torch.randn(16, 3, 8, 8, dtype=torch.float64, generator=g)
    return {
        "fc depth 3, 20 x 10": (ntkit.nn.fc(10, depth=3, device="meta"), x_fc[:20], x_fc[20:]),
        "cntk-gap depth 5, 8 x 3x8x8": (ntkit.nn.cntk(3, depth=5, device="meta"), x_img[:8], x_img[8:]),
    }


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time of ``repeats`` calls of ``fn`` after a warm-up, in seconds.

    On a loaded machine the CPU time is the steadier measure of the work a call does (one thread).
    """
    fn()  # warm-up (native builds, caches)
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        c1, t1 = time.process_time(), time.perf_counter()
        wall, cpu = min(wall, t1 - t0), min(cpu, c1 - c0)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared machine: one thread keeps the timings comparable
    print(f"torch {torch.__version__}, 1 thread, best of {args.repeats} calls after a warm-up, which='both'")
    print(f"{'problem':30s} {'x2':>5s} {'wall ms':>8s} {'cpu ms':>7s} {'describe':>9s} {'validate':>9s} {'sha256':>7s}")
    for label, (model, x1, x2) in problems().items():
        for x2_label, other in (("None", None), ("given", x2)):
            def call(model: torch.nn.Module = model, x1: torch.Tensor = x1, other: Any = other) -> Any:
                return ntkit.infinite_kernel(model, x1, other)
            wall, cpu = best_time(call, args.repeats)
            with counting() as counts:
                call()
            print(f"{label:30s} {x2_label:>5s} {1e3 * wall:8.2f} {1e3 * cpu:7.2f} {counts['describe_model']:9d} "
                  f"{counts['check_pair']:9d} {counts['data_digest']:7d}")


if __name__ == "__main__":
    main()
