"""Random features of the infinite-width kernels: error against ``n_features`` and time against N.

Part 1 (``--part error``): the relative Frobenius error ``||Phi Phi^T - K|| / ||K||`` of
:func:`ntkit.features` against the exact :func:`ntkit.infinite_kernel`, mean over ``--seeds`` draws,
for ``m`` in ``--features`` (64 .. 4096), NNGP and NTK, on real data:

* FC ReLU (depth 1 and 3) and FC tanh (depth 3) on 300 of scikit-learn's 8x8 digits, flattened (d = 64);
* CNTK-V (flatten read-out) and CNTK-GAP, depth 3, on 100 of the same digits as 1x8x8 images
  (the preprocessing of ``ntkit bench images``: the pixels' global mean and standard deviation).

Printed per case: the error at every ``m``, ``err * sqrt(m)`` (constant when the error falls like
``1 / sqrt(m)``) and the log-log slope.

Part 2 (``--part time``): wall time against N, side by side in one run, each in a fresh process:

* depth-3 ReLU NTK on d = 100 Gaussian inputs: the exact kernel (``ntkit.compute_kernel``, float32,
  N x N) against the features (``ntkit.features``, float32, N x m) for m = 1024 and 4096;
* CNTK-GAP-3 on the 8x8 digits: the exact kernel (``ntkit.infinite_kernel``, float32) against the
  features for m = 256 and 1024.

The features' cost is linear in N; the kernel's quadratic (and a regression on it cubic). Usage::

    PYTHONPATH=src python benchmarks/bench_features.py
    PYTHONPATH=src python benchmarks/bench_features.py --part time --sizes 2000 8000 32000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

import ntkit

F64 = torch.float64


def digits(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` of the 8x8 digits (1, 8, 8), standardised by the global pixel mean and deviation."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(np.asarray(load_digits().images, dtype=np.float64) / 16.0).unsqueeze(1)
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    x = images[pick]
    return (x - x.mean()) / x.std()


def error_cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    flat, images = digits(300).flatten(1), digits(100)
    relu = math.sqrt(2.0)
    return {
        "FC ReLU depth 1": (ntkit.nn.fc(64, depth=1, w_std=relu, b_std=0.1, device="meta"), flat),
        "FC ReLU depth 3": (ntkit.nn.fc(64, depth=3, w_std=relu, b_std=0.1, device="meta"), flat),
        "FC tanh depth 3": (ntkit.nn.fc(64, depth=3, activation="tanh", w_std=1.5, b_std=0.1, device="meta"), flat),
        "CNTK-V depth 3": (ntkit.nn.cntk(1, 3, readout="flatten", image_shape=(8, 8), device="meta"), images),
        "CNTK-GAP depth 3": (ntkit.nn.cntk(1, 3, readout="gap", device="meta"), images),
    }


def part_error(fc_sizes: list[int], conv_sizes: list[int], seeds: int) -> None:
    """The error table: ``fc_sizes`` features for the dense cases, ``conv_sizes`` (per pixel) for the CNTKs."""
    print(f"## Relative Frobenius error of Phi Phi^T, mean of {seeds} draws (float64 features)\n")
    for name, (model, x) in error_cases().items():
        sizes = conv_sizes if name.startswith("CNTK") else fc_sizes
        print("\n| case | kernel | " + " | ".join(f"m={m}" for m in sizes) + " | err*sqrt(m) | slope |")
        print("|---|---|" + "---|" * len(sizes) + "---|---|")
        for which in ("nngp", "ntk"):
            exact = ntkit.infinite_kernel(model, x, which=which)
            errs = []
            for m in sizes:
                vals = []
                for s in range(seeds):
                    phi = ntkit.features(model, x, n_features=m, which=which, seed=s, dtype=F64)
                    vals.append(float(torch.linalg.norm(phi @ phi.T - exact) / torch.linalg.norm(exact)))
                errs.append(float(np.mean(vals)))
            slope = float(np.polyfit(np.log(sizes), np.log(errs), 1)[0])
            consts = "/".join(f"{e * math.sqrt(m):.2f}" for e, m in zip(errs, sizes, strict=True))
            print(f"| {name} | {which.upper()} | " + " | ".join(f"{e:.4f}" for e in errs)
                  + f" | {consts} | {slope:.3f} |", flush=True)


TIMER = r"""
import json, sys, time, math, torch, numpy as np, ntkit
sys.path.insert(0, sys.argv[1])
from bench_features import digits
kind, n, what = sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(sys.argv[5]))
if kind == "fc":
    x = torch.randn(n, 100, generator=torch.Generator().manual_seed(0))
    model = ntkit.nn.fc(100, depth=3, w_std=math.sqrt(2.0), device="meta")
else:
    x = torch.cat([digits(1797)] * math.ceil(n / 1797))[:n].float()
    model = ntkit.nn.cntk(1, 3, readout="gap", device="meta")
t0 = time.perf_counter()
if what == "exact":
    if kind == "fc":
        out = ntkit.compute_kernel(model, x, which="ntk", dtype=torch.float32)
    else:
        out = ntkit.infinite_kernel(model, x, which="ntk", dtype=torch.float32)
else:
    out = ntkit.features(model, x, n_features=int(what), which="ntk")
print(json.dumps({"seconds": time.perf_counter() - t0, "shape": list(getattr(out, "ntk", out).shape)}))
"""


def _time(kind: str, n: int, what: str, threads: int, timeout: float) -> str:
    cmd = [sys.executable, "-c", TIMER, os.path.dirname(os.path.abspath(__file__)), kind, str(n), what, str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout > {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return f"failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})"
    return f"{json.loads(lines[-1])['seconds']:.2f}"


def part_time(fc_sizes: list[int], image_sizes: list[int], threads: int, timeout: float) -> None:
    for kind, sizes, features, label in (
        ("fc", fc_sizes, ("1024", "4096"), "depth-3 ReLU NTK, d = 100, float32"),
        ("gap", image_sizes, ("256", "1024"), "CNTK-GAP-3 NTK, 8x8 digits, float32"),
    ):
        print(f"\n## Seconds against N: {label} ({threads} threads; exact = N x N kernel, features = N x m)\n")
        cols = ["exact", *features]
        print("| N | " + " | ".join(("exact kernel" if c == "exact" else f"features m={c}") for c in cols)
              + " | exact / features |")
        print("|---|" + "---|" * len(cols) + "---|")
        for n in sizes:
            row = [_time(kind, n, c, threads, timeout) for c in cols]
            try:
                ratio = " / ".join(f"{float(row[0]) / float(r):.1f}x" for r in row[1:])
            except ValueError:
                ratio = "-"
            print(f"| {n} | " + " | ".join(row) + f" | {ratio} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["error", "time", "all"], default="all")
    p.add_argument("--features", type=int, nargs="+", default=[64, 256, 1024, 4096],
                   help="feature counts of the dense cases")
    p.add_argument("--conv-features", type=int, nargs="+", default=[32, 128, 512],
                   help="feature counts (channels per pixel) of the convolutional cases: their cost grows like m^2")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 16000, 32000])
    p.add_argument("--image-sizes", type=int, nargs="+", default=[200, 800, 1797])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0)
    args = p.parse_args()
    print(f"# bench_features ({time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"1-min load average {os.getloadavg()[0]:.2f})\n")
    if args.part in ("error", "all"):
        part_error(args.features, args.conv_features, args.seeds)
    if args.part in ("time", "all"):
        part_time(args.sizes, args.image_sizes, args.threads, args.timeout)
    print(f"\n1-min load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
