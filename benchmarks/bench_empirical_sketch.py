"""Sketched empirical-NTK features of a CIFAR ResNet-18: error against m, and features of many images.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_empirical_sketch.py [--n-slope 64] [--ms 256,512,1024,2048,4096]
        [--seeds 2] [--n-big 10000] [--m-big 4096] [--features phi.npy] [--threads 2]
        [--out benchmarks/results/empirical_sketch.md]

Model: the ResNet-18 of ``benchmarks/bench_empirical_real.py`` (CIFAR variant, 11.17M parameters,
batch norm in eval mode, 10 outputs, random weights), float32, inputs ``randn(N, 3, 32, 32)``.

1. Error against ``m``: the relative Frobenius error ``||phi phi^T - K|| / ||K||`` of
   ``ntkit.empirical.empirical_features(model, x, m, mode="pntk")`` against the exact pseudo-NTK
   ``K = ntkit.empirical_ntk(model, x, mode="pntk")`` of ``--n-slope`` images, root mean square over
   ``--seeds`` draws, for each ``m`` in ``--ms``; the fitted log-log slope (``-1/2`` expected).
2. Features of ``--n-big`` images at ``m = --m-big`` (pNTK), streamed to the ``.npy`` file
   ``--features`` with its resume ledger (a run that is interrupted and started again continues);
   wall time, images per second and the time extrapolated to 10,000 images.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_empirical_real import resnet18
from ntkit import empirical_ntk
from ntkit.empirical import empirical_feature_map, empirical_features
from ntkit.empirical._sketch_map import describe_methods


def rel_frob(est: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.norm(est.double() - exact.double()) / torch.linalg.norm(exact.double()))


def slope(args: argparse.Namespace, lines: list[str]) -> None:
    model = resnet18()
    x = torch.randn(args.n_slope, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    exact = empirical_ntk(model, x, mode="pntk")
    lines.append(f"exact pNTK, N = {args.n_slope}: {time.perf_counter() - t0:.1f} s (ntkit.empirical_ntk)")
    ms = [int(v) for v in args.ms.split(",")]
    errs = []
    for m in ms:
        fmap = empirical_feature_map(model, x, m, mode="pntk", seed=0)
        sq, secs = 0.0, 0.0
        for s in range(args.seeds):
            t0 = time.perf_counter()
            phi = empirical_features(model, x, m, mode="pntk", seed=1000 + s)
            secs += time.perf_counter() - t0
            sq += rel_frob(phi @ phi.T, exact) ** 2
        err = math.sqrt(sq / args.seeds)
        errs.append(err)
        line = (f"m = {m:5d}: rel. Frobenius error {err:.4f} (RMS of {args.seeds} seeds), "
                f"{secs / args.seeds:.1f} s per draw of N = {args.n_slope}; sketches: {describe_methods(fmap)}")
        print(line, flush=True)
        lines.append(line)
    fit = float(np.polyfit(np.log(ms), np.log(errs), 1)[0])
    lines.append(f"fitted slope of log(error) against log(m): {fit:.3f} (expected -0.5)")
    print(lines[-1], flush=True)


def big(args: argparse.Namespace, lines: list[str]) -> None:
    model = resnet18()
    x = torch.randn(args.n_big, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    path = Path(args.features) if args.features else Path(tempfile.mkdtemp()) / "phi.npy"
    t0 = time.perf_counter()
    phi = empirical_features(model, x, args.m_big, mode="pntk", seed=0, out=path, progress=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rate = args.n_big / wall
    lines.append(
        f"features of N = {args.n_big} images, m = {args.m_big} (pNTK), streamed to {path.name}: {wall:.1f} s "
        f"({rate:.2f} images/s, {1e3 / rate:.0f} ms per image; peak RSS {peak:.2f} GB; "
        f"file {phi.shape} {phi.dtype}); extrapolated to 10,000 images: {10_000 / rate / 60:.1f} min"
    )
    print(lines[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-slope", type=int, default=64)
    parser.add_argument("--ms", default="256,512,1024,2048,4096")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n-big", type=int, default=10_000)
    parser.add_argument("--m-big", type=int, default=4096)
    parser.add_argument("--features", default="", help="the .npy file of the features (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: slope, big")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"torch {torch.__version__}, {args.threads} threads, float32"]
    skip = set(args.skip.split(",")) if args.skip else set()
    if "slope" not in skip:
        slope(args, lines)
    if "big" not in skip:
        big(args, lines)
    if args.out:
        Path(args.out).write_text("```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
