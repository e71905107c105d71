"""The command line of ``ntkit bench fashion``: its options, their validation into
:class:`~ntkit.experiments.fashion.Settings`, and the entry point (the protocol: :mod:`ntkit.experiments.fashion`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ntkit._validation import check_int
from ntkit.activations import available_activations
from ntkit.experiments.fashion import SIZES, STAGES, Settings, run_fashion_benchmark
from ntkit.experiments.fashion_kernels import WHICH
from ntkit.experiments.fashion_solve import PRECISIONS
from ntkit.experiments.images_kernels import parse_kernels


def _grid(values: Any, option: str, *, what: str = "bias standard deviations", positive: bool = False
          ) -> tuple[float, ...]:
    """A variance grid: finite numbers >= 0 (> 0 when ``positive``), at least one; sorted, duplicates dropped
    (the sweep's tie order)."""
    grid = []
    for v in values:
        if (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0
                or (positive and v == 0)):
            raise ValueError(f"{option}: expected finite numbers {'>' if positive else '>='} 0 ({what}), got {v!r}")
        grid.append(float(v))
    if not grid:
        raise ValueError(f"{option}: expected at least one of the {what}, got none")
    return tuple(sorted(set(grid)))


def _activations(names: Any, option: str) -> tuple[str, ...]:
    """Activation names of :func:`ntkit.activations.available_activations`, at least one; duplicates dropped,
    the order kept (the sweep's tie order)."""
    known = available_activations()
    for name in names:
        if name not in known:
            raise ValueError(f"{option}: expected activation names among {sorted(known)}, got {name!r}")
    if not names:
        raise ValueError(f"{option}: expected at least one activation, got none")
    return tuple(dict.fromkeys(names))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate the options into :class:`Settings`."""
    stages = tuple(dict.fromkeys(args.stages))
    for st in stages:
        if st not in STAGES:
            raise ValueError(f"--stages: expected names among {list(STAGES)}, got {st!r}")
    for token in args.features:
        if parse_kernels([token])[0].n_features is None:
            raise ValueError(f"--features: expected random-feature kernels such as gap3-rf1024, got {token!r}")
    fc_depths = tuple(check_int(v, "--fc-depths", minimum=0) for v in args.fc_depths)
    cnn_depths = tuple(check_int(v, "--cnn-depths", minimum=1) for v in args.cnn_depths)
    if not fc_depths or not cnn_depths:
        raise ValueError("--fc-depths / --cnn-depths: expected at least one depth, got none")
    fc_b_stds, cnn_b_stds = _grid(args.fc_b_stds, "--fc-b-stds"), _grid(args.cnn_b_stds, "--cnn-b-stds")
    fc_w_vars = _grid(args.fc_w_vars, "--fc-w-vars", what="weight variances", positive=True)
    cnn_w_vars = _grid(args.cnn_w_vars, "--cnn-w-vars", what="weight variances", positive=True)
    fc_acts = _activations(args.fc_activations, "--fc-activations")
    cnn_acts = _activations(args.cnn_activations, "--cnn-activations")
    return Settings(stages=stages, n_train=check_int(args.n_train, "--n-train", minimum=10),
                    n_val=check_int(args.n_val, "--n-val", minimum=10),
                    n_test=check_int(args.n_test, "--n-test", minimum=1),
                    n_sweep=check_int(args.n_sweep, "--n-sweep", minimum=10), fc_depths=fc_depths,
                    cnn_depths=cnn_depths, fc_b_stds=fc_b_stds, cnn_b_stds=cnn_b_stds, fc_w_vars=fc_w_vars,
                    cnn_w_vars=cnn_w_vars, fc_activations=fc_acts, cnn_activations=cnn_acts,
                    features=tuple(args.features),
                    sizes=tuple(check_int(v, "--sizes", minimum=10) for v in args.sizes), precision=args.precision,
                    memory_budget=args.memory_budget, preprocess=args.preprocess, seed=args.seed,
                    data_dir=args.data_dir, kernel_dtype=args.kernel_dtype,
                    finals=tuple(w for w in WHICH if w in args.finals), final_ridge=args.final_ridge)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit bench fashion``."""
    d = Settings()
    parser.add_argument("--data-dir", default=None,
                        help="folder with the four idx .gz files (default: Debian's dataset-fashion-mnist package, "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--out", default="ntkit-output/fashion", help="output folder (default ntkit-output/fashion)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), metavar="STAGE",
                        help=f"stages to run, among {' '.join(STAGES)} (default all)")
    parser.add_argument("--n-train", type=int, default=d.n_train,
                        help=f"training split images (default {d.n_train}; the final fit adds the validation split)")
    parser.add_argument("--n-val", type=int, default=d.n_val, help=f"validation split images (default {d.n_val})")
    parser.add_argument("--n-test", type=int, default=d.n_test, help=f"test images (default {d.n_test})")
    parser.add_argument("--n-sweep", type=int, default=d.n_sweep,
                        help=f"training images of the depth / ridge sweep (default {d.n_sweep})")
    parser.add_argument("--fc-depths", type=int, nargs="+", default=list(d.fc_depths), help="FC depths to sweep")
    parser.add_argument("--cnn-depths", type=int, nargs="+", default=list(d.cnn_depths),
                        help="CNN-GP / CNTK-V depths to sweep")
    parser.add_argument("--fc-b-stds", type=float, nargs="+", default=list(d.fc_b_stds), metavar="B",
                        help="bias standard deviations swept with the FC depths (default "
                             f"{' '.join(map(str, d.fc_b_stds))}; 0 alone: no biases)")
    parser.add_argument("--fc-w-vars", type=float, nargs="+", default=list(d.fc_w_vars), metavar="W",
                        help="weight variances sigma_w^2 swept with the FC depths and biases (default "
                             f"{' '.join(map(str, d.fc_w_vars))}, the ReLU value)")
    parser.add_argument("--cnn-b-stds", type=float, nargs="+", default=list(d.cnn_b_stds), metavar="B",
                        help="bias standard deviations swept with the CNN depths (each multiplies the CNN sweep; "
                             f"default {' '.join(map(str, d.cnn_b_stds))})")
    parser.add_argument("--cnn-w-vars", type=float, nargs="+", default=list(d.cnn_w_vars), metavar="W",
                        help="weight variances sigma_w^2 swept with the CNN depths and biases (each multiplies the "
                             f"CNN sweep; default {' '.join(map(str, d.cnn_w_vars))})")
    parser.add_argument("--fc-activations", nargs="+", default=list(d.fc_activations), metavar="ACT",
                        help="activations swept with the FC depths and variances, e.g. relu erf; ties go to the one "
                             f"listed first (default {' '.join(d.fc_activations)})")
    parser.add_argument("--cnn-activations", nargs="+", default=list(d.cnn_activations), metavar="ACT",
                        help="activations swept with the CNN depths and variances (each multiplies the CNN sweep; "
                             f"default {' '.join(d.cnn_activations)})")
    parser.add_argument("--features", nargs="+", default=list(d.features), metavar="K",
                        help="random-feature kernels of the features stage, e.g. gap3-rf1024 (default gap3-rf256)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="training sizes of the learning curve (prefixes of the pool; default 1k .. 60k)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="final solve: float64 Cholesky, float32 factor + float64 refinement, or auto (float64 "
                             "where 8 N^2 bytes fit --memory-budget)")
    parser.add_argument("--memory-budget", default=d.memory_budget, help="memory for the dense factor (default 16G)")
    parser.add_argument("--kernel-dtype", default=d.kernel_dtype, choices=("float64", "float32"),
                        help="dtype the exact kernels are computed and stored in (default float64; float32 halves "
                             "disk and is 2-3x faster for the CNN-GP, the solves still in float64 or refined; "
                             "its own folder of kernels and records)")
    parser.add_argument("--preprocess", default="global", choices=("global", "image"),
                        help="global: the pool's pixel mean / std (default); image: each image standardised")
    parser.add_argument("--finals", nargs="+", default=list(d.finals), choices=WHICH,
                        help="kernels fitted at full size after the sweep (default: nngp ntk)")
    parser.add_argument("--final-ridge", default=d.final_ridge, choices=("sweep", "validation"),
                        help="ridge of the final fit: the sweep's (default), or validation: the sweep's and its "
                             "half-decade neighbours refitted on the whole training split and scored on the "
                             "validation split (three more training-size solves)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the feature maps (default 0)")
    parser.add_argument("--no-plot", action="store_true", help="no learning_curve.png")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit bench fashion``."""
    settings = settings_from_args(args)
    summary = run_fashion_benchmark(settings, args.out, progress=not args.quiet, plot=not args.no_plot)
    print((Path(args.out) / "results.md").read_text())
    return 0 if summary["complete"] else 130


__all__ = ["add_arguments", "main", "settings_from_args"]
