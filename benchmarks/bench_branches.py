"""Cost per layer of a ResNet with 1x1 projection shortcuts against the plain CNN of the same convolutions, float32.

Models (plain forwards, captured by torch.fx; ``ntkit.nn`` layers on the meta device), for ``--blocks B`` and
``--strides``:

* ``resnet``: a 3x3 stem, then B basic blocks ``relu(conv3x3(relu(conv3x3_s(h))) + conv1x1_s(h))`` (stride ``s``
  per block), GAP, a linear read-out: ``1 + 2 B`` convolutions on the main path, ``B`` shortcut convolutions;
* ``plain``: the same main-path convolutions without the shortcuts (the same strides): ``1 + 2 B`` layers;
* ``cntk``: ``ntkit.nn.cntk`` of depth ``1 + 2 B`` (stride 1 throughout: every layer at full resolution).

Each is timed through ``ntkit.infinite_kernel(model, x, which="both", dtype=torch.float32)`` on ``N`` random images
(best of ``--repeats`` after a warm-up on two images), once on the path ntkit chooses (``native``: the compiled
convolution program where the model lowers to it, else the reference evaluator) and once with the native code off
(``NTKIT_NATIVE=0``: the reference evaluator; ``--native on`` skips it), each in a fresh subprocess. Printed: the
path, seconds, seconds per main-path layer, and the ratio to ``plain`` on the same path; with ``--markdown``, a
table for ``benchmarks/results/branches.md``::

    .venv/bin/python benchmarks/bench_branches.py --n 32 --image 16 --blocks 3 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("plain", "resnet", "cntk")


def build(arch: str, channels: int, blocks: int, strides: list[int]) -> Any:
    """The model ``arch`` (meta device)."""
    import torch.nn.functional as F
    from torch import nn

    import ntkit

    meta: dict[str, Any] = {"device": "meta"}
    conv = ntkit.nn.Conv2d
    if arch == "cntk":
        return ntkit.nn.cntk(channels, 1 + 2 * blocks, width=8, out_features=1, device="meta")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = conv(channels, 8, 3, **meta)
            self.a = nn.ModuleList(conv(8, 8, 3, stride=s, **meta) for s in strides)
            self.b = nn.ModuleList(conv(8, 8, 3, **meta) for _ in strides)
            self.s = nn.ModuleList(conv(8, 8, 1, stride=s, **meta) for s in strides)
            self.out = ntkit.nn.Linear(8, 1, **meta)

        def forward(self, x: Any) -> Any:
            h = F.relu(self.stem(x))
            for a, b, s in zip(self.a, self.b, self.s, strict=True):
                main = b(F.relu(a(h)))
                h = F.relu(main + s(h)) if arch == "resnet" else F.relu(main)
            return self.out(h.mean((2, 3)))

    return Net()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement (run in a subprocess): path and best seconds."""
    import torch

    import ntkit
    from ntkit.infinite import describe_model
    from ntkit.infinite.tiles import KernelTiles

    torch.set_num_threads(args.threads)
    strides = [int(s) for s in args.strides.split(",")]
    model = build(args.arch, args.channels, args.blocks, strides)
    shape = (args.channels, args.image, args.image)
    x = torch.randn(args.n, *shape, generator=torch.Generator().manual_seed(0)).to(torch.float32)
    path = KernelTiles(describe_model(model, shape)).path_for(x)
    ntkit.infinite_kernel(model, x[:2], dtype=torch.float32)  # warm-up: native build / load
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ntkit.infinite_kernel(model, x, dtype=torch.float32)
        best = min(best, time.perf_counter() - t0)
    return {"path": path, "seconds": best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images (the symmetric N x N kernel)")
    parser.add_argument("--image", type=int, default=16, help="H = W")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--strides", default="", help="per block, comma separated (default: 1, then 2, 1, 2, ...)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--native", nargs="+", default=["on", "off"], choices=["on", "off"],
                        help="native code settings to run (off: NTKIT_NATIVE=0, the reference evaluator)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--arch", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args(argv)
    if not args.strides:
        args.strides = ",".join("1" if i % 2 == 0 else "2" for i in range(args.blocks))
    if len(args.strides.split(",")) != args.blocks:
        parser.error(f"--strides: expected {args.blocks} strides, got {args.strides!r}")
    if args.arch:
        print(json.dumps(worker(args)))
        return 0

    layers = 1 + 2 * args.blocks
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for native in args.native:
        for arch in args.archs:
            env = {**os.environ, "NTKIT_NATIVE": "1" if native == "on" else "0"}
            cmd = [sys.executable, __file__, "--arch", arch, *(argv if argv is not None else sys.argv[1:])]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((arch, native, res))
            print(f"{arch:7s} native {native:3s} path {res['path']:9s} {res['seconds']:8.3f} s "
                  f"{res['seconds'] / layers:8.4f} s/layer", flush=True)
    plain = {native: res["seconds"] for arch, native, res in rows if arch == "plain"}
    if args.markdown:
        print(f"\nN = {args.n}, {args.channels}x{args.image}x{args.image} images, {args.blocks} blocks (strides "
              f"{args.strides}), {layers} main-path convolutions, float32, {args.threads} threads, best of "
              f"{args.repeats}\n")
        print("| model | native code | path | seconds | s / layer | / plain (same native setting) |")
        print("|---|---|---|---|---|---|")
        for arch, native, res in rows:
            ratio = f"{res['seconds'] / plain[native]:.2f}" if native in plain else "-"
            print(f"| {arch} | {native} | {res['path']} | {res['seconds']:.3f} | {res['seconds'] / layers:.4f} | "
                  f"{ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
