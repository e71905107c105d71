"""The ``ntkit`` command line: a thin front over public functions.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
adding a command is one line in :data:`COMMANDS`. Modules are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ntkit._version import __version__

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "converge": (
        "ntkit.experiments.converge",
        "empirical NTK vs its infinite-width limit over a width sweep (Jacot et al. 2018, Fig. 1)",
    ),
    "kernel": ("ntkit.compute.cli", "infinite-width NNGP/NTK matrix to .npy/.zarr: tiled, resumable, on Dask"),
    "dynamics": ("ntkit.experiments.dynamics", "trained networks vs the NTK's predictions (Jacot et al. 2018, Fig. 1)"),
    "bench": (
        "ntkit.experiments.bench",
        "benchmarks on data: `ntkit bench uci` (NTK + SVM on 90 UCI data sets, Arora et al. 2020)",
    ),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntkit", description="Neural Tangent Kernels made practical.")
    parser.add_argument("--version", action="version", version=f"ntkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in argv:  # import a command's module only when it is asked for
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ntkit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args))
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"ntkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nntkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
