"""``ntkit kernel DATA [--arch ... | --depth ... --activation ...] --out FILE``: a kernel matrix to disk.

Resumable (run the same command again after an interruption), with progress and an ETA; with
``--scheduler ADDRESS`` the tiles run on a Dask cluster.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ntkit.compute.api import compute_kernel
from ntkit.compute.tiling import DEFAULT_BUDGET
from ntkit.data import load_array
from ntkit.nn.arch_spec import load_arch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit kernel``."""
    parser.add_argument("data", metavar="DATA", help=".npy or .csv file of inputs (one row per input)")
    parser.add_argument("--data2", help="second input file: the rectangular block K(DATA, DATA2)")
    parser.add_argument("--arch", help="architecture text (e.g. 'dense layernorm relu dense') or a .py file defining "
                        "build(width, in_shape, out_features); default: the fully connected --depth network")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    parser.add_argument("--activation", default="relu", help="activation name (default relu)")
    parser.add_argument("--beta", type=float, default=0.0, help="bias scale (default 0)")
    parser.add_argument("--w-std", type=float, default=1.0, help="weight scale (default 1)")
    parser.add_argument("--which", default="both", choices=["both", "nngp", "ntk"],
                        help="kernels to write; both: a (2, N1, N2) array ordered nngp, ntk")
    parser.add_argument("--diag", action="store_true", help="only the diagonal K(x_i, x_i)")
    parser.add_argument("--float32", action="store_true", help="float32 (default float64)")
    parser.add_argument("--out", required=True, help="output FILE ending in .npy or .zarr")
    parser.add_argument("--budget", default=str(DEFAULT_BUDGET), help="working memory, e.g. 512M (default 256M)")
    parser.add_argument("--tile", type=int, help="tile edge (a multiple of 128)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit kernel``; exit status 0 when the output is complete."""
    x1 = load_array(args.data)
    x2 = None if args.data2 is None else load_array(args.data2)
    budget: int | str = int(args.budget) if str(args.budget).isdigit() else args.budget
    if args.arch:  # the widths do not matter in NTK parameterization: describe it at width 8
        spec = load_arch(args.arch)
        model = spec.build(8, tuple(x1.shape[1:]), 1, w_std=args.w_std, b_std=args.beta, device="meta")
        network: dict[str, Any] = {"model": model}
    else:
        network = {"depth": args.depth, "activation": args.activation, "beta": args.beta, "w_std": args.w_std}
    try:
        res = compute_kernel(
            x1, x2, **network,
            which=args.which, diag=args.diag, dtype=torch.float32 if args.float32 else torch.float64,
            out=args.out, budget=budget, tile=args.tile, scheduler=args.scheduler, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except OSError as err:  # full disk, unreachable scheduler: a clear message, no trace
        print(f"ntkit kernel: error: {err}", file=sys.stderr)
        return 1
    resumed = res.tiles_total - res.tiles_computed
    print(
        f"wrote {res.path} ({args.which}, {res.tiles_computed} tiles computed"
        + (f", {resumed} already done" if resumed else "")
        + f", tile {res.tile}, {res.seconds:.1f} s)"
    )
    return 0
