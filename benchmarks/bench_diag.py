"""Cost per pair of the exact CNN-GP / CNTK without pooling: the pair loop against the lane-parallel loop.

The ``v`` kernels of ``ntkit bench fashion`` (``KernelSpec("v", depth).model``: ``depth`` 3x3 ``same``
convolutions + ReLU on 28x28x1 images, flatten, a dense read-out) are evaluated on one ``N x N`` tile of
Fashion-MNIST training images (standardised as the benchmark does; random images when the data set is not
installed) by

* ``old``: :func:`ntkit.infinite.conv_fast.evaluate_spatial` (``_cntk_native.c``, one pair at a time), and
* ``new``: :func:`ntkit.infinite.diag_fast.evaluate_diag` (``_diag_native.c``, 8 / 16 pairs per vector),

back to back, for depths 1-5, NNGP only and NNGP + NTK, float64 and float32, 1 and 2 threads (best of
``--repeats``; CPU seconds by ``time.process_time``, wall seconds by ``time.perf_counter``). Also printed: the
relative error (max |a - b| / max |b|) of float64 new against old, and of float32 old / new against float64, and
the extrapolated hours of the 70k protocol (2.45e9 pairs: the 70k x 70k upper triangle) on 2 cores::

    .venv/bin/python benchmarks/bench_diag.py --n 128 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

PAIRS_70K = 70_000 * 70_001 / 2


def images(n: int) -> torch.Tensor:
    """``n`` Fashion-MNIST training images (N, 1, 28, 28), standardised over themselves (else random images)."""
    try:
        from ntkit.experiments.fashion_data import load_fashion, standardise_global

        raw = load_fashion()
        x = standardise_global(raw.x_train[:n], np.arange(n))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(n, 1, 28, 28)
    except (OSError, ImportError, AttributeError) as err:
        print(f"(Fashion-MNIST not available: {err}; random images)")
        return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def best(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(wall s, CPU s, result) of the fastest of ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        runs.append((time.perf_counter() - w0, time.process_time() - c0, out))
    return min(runs, key=lambda r: r[0])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="images per side of the tile (N^2 pairs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--depths", default="1,2,3,4,5")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    from ntkit.experiments.images_kernels import KernelSpec
    from ntkit.infinite import diag_fast, native
    from ntkit.infinite.conv_fast import evaluate_spatial, match_spatial
    from ntkit.infinite.walk import describe_model

    print("diag loop:", native.status("diag"), "| load:", os.getloadavg())
    x64 = images(args.n)
    ids = torch.unique(x64.reshape(args.n, -1), dim=0, return_inverse=True)[1]
    pairs = args.n * args.n
    rows = []
    for depth in [int(d) for d in args.depths.split(",")]:
        arch = describe_model(KernelSpec("v", depth).model((28, 28)), (1, 28, 28))
        prog = match_spatial(arch)
        assert prog is not None and diag_fast.match_diag(prog)
        for ntk in (False, True):
            exact = None
            for dtype in (torch.float64, torch.float32):
                x = x64.to(dtype)
                for threads in [int(t) for t in args.threads.split(",")]:
                    torch.set_num_threads(threads)
                    call = (arch, prog, x, x, ids, ids)
                    wo, co, old = best(partial(evaluate_spatial, *call, ntk=ntk), args.repeats)
                    wn, cn, new = best(partial(diag_fast.evaluate_diag, *call, ntk=ntk), args.repeats)
                    k = 1 if ntk else 0
                    if dtype == torch.float64:
                        exact = old[k]  # type: ignore[index]
                        err = f"{rel(new[k], old[k]):.1e} vs old"  # type: ignore[index]
                    else:
                        err = f"{rel(old[k], exact):.1e} / {rel(new[k], exact):.1e}"  # type: ignore[index]
                    us = [v / pairs * 1e6 for v in (co, cn, wo, wn)]
                    rows.append((depth, "NNGP + NTK" if ntk else "NNGP", str(dtype)[6:], threads, *us, err))
                    print(rows[-1], flush=True)
    torch.set_num_threads(1)
    print("\n| depth | kernels | dtype | threads | old CPU us/pair | new CPU us/pair | CPU ratio | old wall us/pair "
          "| new wall us/pair | wall ratio | 70k protocol on 2 cores, new (h) | error (f64: new vs old; f32: old / "
          "new vs f64) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for depth, kind, dtype, threads, co, cn, wo, wn, err in rows:
        hours = PAIRS_70K * (cn / 2 if threads == 1 else wn) * 1e-6 / 3600
        print(f"| {depth} | {kind} | {dtype} | {threads} | {co:.2f} | {cn:.2f} | {co / cn:.1f}x | {wo:.2f} | "
              f"{wn:.2f} | {wo / wn:.1f}x | {hours:.2f} | {err} |")


if __name__ == "__main__":
    main()
