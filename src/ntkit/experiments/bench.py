"""``ntkit bench TARGET``: benchmarks on data (currently ``uci``: Arora et al. 2020's 90 UCI data sets).

Each target is a module exposing ``add_arguments(parser)`` and ``main(args) -> int``, imported only
when it runs; adding a target is one line in :data:`TARGETS`.
"""

from __future__ import annotations

import argparse
import importlib

#: target name -> (module, one-line help)
TARGETS: dict[str, tuple[str, str]] = {
    "uci": ("ntkit.experiments.uci", "NTK + SVM on the 90 UCI data sets of Arora et al. (2020)"),
    "images": ("ntkit.experiments.images", "CNTK / NTK regression, SVC, few-shot on digits + MNIST (Arora et al.)"),
    "fashion": ("ntkit.experiments.fashion_cli", "exact FC / CNN-GP and random-feature kernels on all of Fashion-MNIST "
                "(Novak et al. 2019)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-targets of ``ntkit bench``."""
    sub = parser.add_subparsers(dest="target", metavar="TARGET")
    for name, (module, help_text) in TARGETS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)


def main(args: argparse.Namespace) -> int:
    """Dispatch to the chosen target."""
    if getattr(args, "target", None) is None:
        raise ValueError(f"bench: expected a target, one of {sorted(TARGETS)}, got none")
    return int(importlib.import_module(TARGETS[args.target][0]).main(args))
