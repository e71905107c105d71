"""``ntkit bench images``: infinite-width kernels on real images (Arora et al. 2019 and 2020).

Reproduces, on images that install with the project, the protocol of

* Arora, Du, Hu, Li, Salakhutdinov, Wang (2019), "On exact computation with an infinitely wide
  neural net" (NeurIPS): kernel regression with the exact CNTK (vanilla and with global average
  pooling) against the trained CNN;
* Arora, Du, Li, Salakhutdinov, Wang, Yu (2020), "Harnessing the power of infinitely wide deep nets
  on small-data tasks" (ICLR): SVC with the NTK, and few-shot learning (1 .. 128 images per class);
* with the Myrtle networks of Shankar, Fang, Guo, Fridovich-Keil, Ragan-Kelley, Schmidt, Recht
  (2020), "Neural kernels without tangents" (ICML).

Data (:mod:`ntkit.experiments.images_data`): scikit-learn's 8x8 handwritten digits and the 5,000
MNIST images of the shared data folder (``--data``; skipped with a message when absent), by default
reduced to 14x14 by 2x2 average pooling. Preprocessing: the training pool's pixel mean and standard
deviation (Arora et al.'s code; ``--preprocess image`` standardises each image instead).

Kernels: the exact infinite-width NNGP and NTK of models built on ``device="meta"``: ``fcD``
(:func:`ntkit.nn.fc` on the flattened image, ``D`` hidden ReLU layers), ``vD`` (CNTK-V,
:func:`ntkit.nn.cntk` with ``readout="flatten"``), ``gapD`` (CNTK-GAP, ``readout="gap"``) and
``myrtleD`` (:func:`ntkit.nn.myrtle`, ``D`` in 5, 7, 10; images zero-padded to a multiple of 8,
e.g. 14x14 to 16x16). Each is computed once, NNGP and NTK in one pass, as two blocks,
``K(pool, pool)`` and ``K(test, pool)`` (``K(test, test)`` is never needed), by
:func:`ntkit.compute_kernel` into ``OUT/kernels/<data>/<kernel>_{pool,test}.npy``: an interrupted
run resumes there tile by tile. Every split and few-shot draw is a sub-block.

Protocol: :mod:`ntkit.experiments.images_eval` (kernel regression and SVC with ridge / ``C`` chosen
on a validation split, few-shot means and standard deviations over seeded draws) and
:mod:`ntkit.experiments.images_cnn` (the finite CNN-GAP trained by SGD). Outputs in ``OUT``:
``results.csv`` (one row per data set, model, NNGP/NTK and method: test accuracy on the whole pool,
few-shot mean / std per size, timings), ``summary.json`` (everything, validation grids and every
draw included), ``fewshot.png`` (accuracy against training images per class; needs matplotlib,
``ntkit[plot]``). Per-kernel records in ``OUT/records`` make a rerun skip finished work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkit._io import write_text_atomic
from ntkit._progress import Progress
from ntkit._validation import check_int
from ntkit.experiments.images_cnn import CNNConfig, train_cnn
from ntkit.experiments.images_data import (
    PREPROCESSING,
    ImageData,
    few_shot_draw,
    find_mnist,
    load_digits_images,
    load_mnist5k,
    max_per_class,
    split_indices,
    standardise,
    validation_split,
)
from ntkit.experiments.images_eval import evaluate_kernel, few_shot_sizes
from ntkit.experiments.images_kernels import (
    FAMILIES,
    KernelSpec,
    kernel_blocks,
    pairs_of,
    parse_kernels,
    projected_seconds,
)
from ntkit.experiments.images_report import format_table, write_outputs

RESULT_VERSION = 1
DATASETS = ("digits", "mnist")

# ------------------------------------------------------------------------------------------ data sets


@dataclass(frozen=True)
class Prepared:
    """A data set ready for the protocol: preprocessed images, split and few-shot sizes."""

    data: ImageData
    x: torch.Tensor
    pool: np.ndarray
    test: np.ndarray
    fit: np.ndarray
    val: np.ndarray
    sizes: list[int]
    key: str

    @property
    def y_pool(self) -> np.ndarray:
        """Labels of the training pool."""
        return self.data.y[self.pool]

    @property
    def y_test(self) -> np.ndarray:
        """Labels of the test set."""
        return self.data.y[self.test]


def prepare(data: ImageData, *, n_train: int, n_test: int, preprocess: str, val_fraction: float,
            max_size: int, seed: int) -> Prepared:
    """Split (stratified, seeded), preprocess with the pool's statistics, choose the few-shot sizes."""
    pool, test = split_indices(data.y, n_train, n_test, seed)
    x = standardise(data.x, pool, preprocess)
    fit, val = validation_split(data.y[pool], val_fraction, seed)
    sizes = few_shot_sizes(max_size, max_per_class(data.y[pool]))
    h, w = data.image_shape
    key = f"{data.name}-{h}x{w}-{n_train}+{n_test}-{preprocess}-seed{seed}"
    return Prepared(data, x, pool, test, fit, val, sizes, key)


# ------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class Settings:
    """Everything ``ntkit bench images`` is run with (see :func:`add_arguments` for the meaning)."""

    datasets: tuple[str, ...]
    kernels: tuple[KernelSpec, ...]
    mnist_kernels: tuple[KernelSpec, ...]
    digits_train: int
    digits_test: int
    mnist_train: int
    mnist_test: int
    mnist_size: int
    preprocess: str
    val_fraction: float
    max_per_class: int
    draws: int
    seed: int
    svc: bool
    svc_few_shot: bool
    cnn: CNNConfig | None
    cnn_sizes: tuple[int, ...]
    cnn_draws: int
    data: str | None
    features: tuple[int, ...] = ()

    def protocol(self) -> dict[str, Any]:
        """The fields a saved kernel record must match to be reused."""
        return {"version": RESULT_VERSION, "val_fraction": self.val_fraction, "max_per_class": self.max_per_class,
                "draws": self.draws, "seed": self.seed, "svc": self.svc, "svc_few_shot": self.svc_few_shot}


def _load(name: str, settings: Settings, say: Callable[[str], None]) -> ImageData | None:
    if name == "digits":
        return load_digits_images()
    path = find_mnist(settings.data)
    if path is None:
        say("mnist: skipped (no mnist_5k.csv.gz in the shared data folder; pass --data DIR to use one)")
        return None
    return load_mnist5k(path, size=settings.mnist_size)


def _prepared(name: str, data: ImageData, s: Settings) -> Prepared:
    n_train, n_test = (s.digits_train, s.digits_test) if name == "digits" else (s.mnist_train, s.mnist_test)
    return prepare(data, n_train=n_train, n_test=n_test, preprocess=s.preprocess, val_fraction=s.val_fraction,
                   max_size=s.max_per_class, seed=s.seed)


def _read_record(path: Path, protocol: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return rec if rec.get("protocol") == protocol else None


def run_kernel(spec: KernelSpec, prep: Prepared, s: Settings, out: Path, *, progress: bool) -> dict[str, Any]:
    """Kernel (cached) and protocol (cached record) of one architecture on one data set."""
    path = out / "records" / prep.key / f"{spec.token}.json"
    rec = _read_record(path, s.protocol())
    if rec is not None:
        return rec
    k_pool, k_test, timing = kernel_blocks(spec, prep.x, prep.pool, prep.test, out / "kernels" / prep.key,
                                           progress=progress, seed=s.seed)
    per_which = 2 + len(prep.sizes) * s.draws
    bar = Progress(2 * per_which, desc=f"  evaluate {spec.name}", enabled=progress)
    rows = []
    for i, which in enumerate(("nngp", "ntk")):
        ev = evaluate_kernel(k_pool[i], k_test[i], prep.y_pool, prep.y_test, fit=prep.fit, val=prep.val,
                             sizes=prep.sizes, draws=s.draws, seed=s.seed, svc=s.svc, svc_few_shot=s.svc_few_shot,
                             on_step=lambda note, w=which: bar.update(1, note=f"{w} {note}"))  # type: ignore[misc]
        rows.append({"which": which, **ev})
    bar.close()
    rec = {"protocol": s.protocol(), "dataset": prep.data.name, "kernel": spec.name, "family": spec.family,
           "depth": spec.depth, "n_features": spec.n_features, "feature_seconds": timing.get("feature_seconds"),
           "input_shape": list(spec.inputs(prep.x[:1]).shape[1:]),
           "kernel_seconds": timing["seconds"], "pairs": pairs_of(len(prep.pool), len(prep.test)),
           "seconds_per_pair": timing["seconds_per_pair"], "results": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(rec))
    return rec


def run_cnn(prep: Prepared, s: Settings, out: Path, *, progress: bool) -> dict[str, Any] | None:
    """The CNN baseline on the whole pool and on the few-shot draws of ``cnn_sizes`` (cached record)."""
    if s.cnn is None:
        return None
    protocol = {**s.protocol(), "cnn": s.cnn.as_dict(), "cnn_sizes": list(s.cnn_sizes), "cnn_draws": s.cnn_draws}
    path = out / "records" / prep.key / "cnn.json"
    rec = _read_record(path, protocol)
    if rec is not None:
        return rec
    sizes = [m for m in s.cnn_sizes if m <= max_per_class(prep.y_pool)]
    bar = Progress(1 + len(sizes) * s.cnn_draws, desc=f"  train CNN-GAP-{s.cnn.depth}", enabled=progress)
    n_classes = prep.data.n_classes
    x_pool, x_test = prep.x[torch.as_tensor(prep.pool)], prep.x[torch.as_tensor(prep.test)]
    full = train_cnn(x_pool, prep.y_pool, x_test, prep.y_test, s.cnn, n_classes=n_classes, seed=s.seed)
    bar.update(1, note=f"whole pool: {100 * full['accuracy']:.1f}%")
    accs: list[list[float]] = []
    for m in sizes:
        accs.append([])
        for d in range(s.cnn_draws):
            idx = few_shot_draw(prep.y_pool, m, (s.seed, m, d))  # the kernels' draws
            r = train_cnn(x_pool[torch.as_tensor(idx)], prep.y_pool[idx], x_test, prep.y_test, s.cnn,
                          n_classes=n_classes, seed=s.seed + 1000 * m + d)
            accs[-1].append(r["accuracy"])
            bar.update(1, note=f"{m}/class draw {d + 1}: {100 * r['accuracy']:.1f}%")
    bar.close()
    rec = {"protocol": protocol, "dataset": prep.data.name, "model": f"CNN-GAP-{s.cnn.depth} (width {s.cnn.width})",
           "full": full, "few_shot": {"sizes": sizes, "draws": s.cnn_draws, "accs": accs,
                                      "mean": [float(np.mean(a)) for a in accs],
                                      "std": [float(np.std(a, ddof=1)) if len(a) > 1 else 0.0 for a in accs]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(rec))
    return rec


def run_images_benchmark(settings: Settings, out_dir: str | os.PathLike[str], *, progress: bool = True,
                         plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark; write ``results.csv``, ``summary.json`` and ``fewshot.png`` to ``out_dir``.

    Returns
    -------
    dict
        The summary: per data set its source, split sizes, preprocessing, kernel records and CNN
        record; ``complete`` is False after an interruption (Ctrl-C keeps what was finished).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    summary: dict[str, Any] = {"benchmark": "images: NNGP / NTK kernel regression, SVC, few-shot (Arora et al. "
                               "2019, 2020; Shankar et al. 2020)", "settings": _settings_json(settings),
                               "datasets": {}, "complete": False, "skipped": []}
    try:
        for name in settings.datasets:
            data = _load(name, settings, say)
            if data is None:
                summary["skipped"].append(name)
                continue
            prep = _prepared(name, data, settings)
            specs = settings.kernels if name == "digits" else settings.mnist_kernels
            entry: dict[str, Any] = {
                "source": data.source, "image_shape": list(data.image_shape), "n_pool": len(prep.pool),
                "n_test": len(prep.test), "n_fit": len(prep.fit), "n_val": len(prep.val),
                "preprocess": settings.preprocess, "few_shot_sizes": prep.sizes, "kernels": [], "cnn": None,
            }
            summary["datasets"][name] = entry
            say(f"{name}: {data.source}; pool {len(prep.pool)} (fit {len(prep.fit)} + validation {len(prep.val)}), "
                f"test {len(prep.test)}; few-shot sizes {prep.sizes} x {settings.draws} draws")
            for i, spec in enumerate(specs, start=1):
                say(f"[{name} {i}/{len(specs)}] {spec.name} on {tuple(spec.inputs(prep.x[:1]).shape[1:])}: "
                    f"{pairs_of(len(prep.pool), len(prep.test)):,} pairs of images")
                rec = run_kernel(spec, prep, settings, out, progress=progress)
                entry["kernels"].append(rec)
                ntk = rec["results"][1]
                say(f"  {spec.name} NTK: regression {100 * ntk['reg_acc']:.1f}%"
                    + (f", SVC {100 * ntk['svc_acc']:.1f}%" if ntk["svc_acc"] is not None else ""))
            entry["cnn"] = run_cnn(prep, settings, out, progress=progress)
        summary["complete"] = True
    except KeyboardInterrupt:
        say(f"\ninterrupted: finished kernels are kept in {out}; rerun the same command to resume")
    summary["seconds_this_run"] = time.perf_counter() - start
    write_outputs(summary, out, plot=plot)
    return summary


def _settings_json(s: Settings) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(s, k) for k in s.__dataclass_fields__}
    d["kernels"] = [k.token for k in s.kernels]
    d["mnist_kernels"] = [k.token for k in s.mnist_kernels]
    d["cnn"] = None if s.cnn is None else s.cnn.as_dict()
    return d


# ------------------------------------------------------------------------------------------- the CLI

#: Defaults of the full run and of ``--quick`` (a few hundred digits, two cheap kernels: well under a
#: minute). The full run is sized for under an hour on 2 CPU cores (measured parts,
#: benchmarks/results/images.md: digits ~23 min, MNIST-14 without Myrtle ~28 min); Myrtle-5 on MNIST
#: (16x16 after padding) adds ~26 min: ``--mnist-kernels fc1 fc3 fc5 v3 v6 gap3 myrtle5``.
FULL: dict[str, Any] = {
    "datasets": ["digits", "mnist"],
    "kernels": ["fc1", "fc3", "fc5", "v3", "v6", "gap3", "gap6", "myrtle5", "myrtle7", "myrtle10"],
    "mnist_kernels": ["fc1", "fc3", "fc5", "v3", "v6", "gap3"],
    "digits_train": 1397, "digits_test": 400, "mnist_train": 1280, "mnist_test": 300, "mnist_size": 14,
    "max_per_class": 128, "draws": 20,
    "cnn_depth": 3, "cnn_width": 128, "cnn_epochs": 20, "cnn_lr": 0.05, "cnn_sizes": [1, 4, 16, 64], "cnn_draws": 3,
}
QUICK: dict[str, Any] = {
    **FULL, "datasets": ["digits"], "kernels": ["fc3", "v3"], "mnist_kernels": ["fc3", "v3"],
    "digits_train": 200, "digits_test": 100, "mnist_train": 200, "mnist_test": 100,
    "max_per_class": 16, "draws": 3,
    "cnn_depth": 2, "cnn_width": 32, "cnn_epochs": 40, "cnn_lr": 0.1, "cnn_sizes": [1, 16], "cnn_draws": 1,
}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Resolve the options (unset ones from :data:`QUICK` with ``--quick``, else :data:`FULL`)."""
    preset = QUICK if args.quick else FULL

    def opt(name: str) -> Any:
        value = getattr(args, name, None)
        return preset[name] if value is None else value

    datasets = tuple(dict.fromkeys(opt("datasets")))
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"--datasets: expected names among {list(DATASETS)}, got {name!r}")
    if opt("mnist_size") not in (14, 28):
        raise ValueError(f"--mnist-size: expected 14 (2x2 average pooling) or 28, got {opt('mnist_size')}")
    draws = check_int(opt("draws"), "--draws", minimum=1)
    cnn = None
    if not args.no_cnn:
        cnn = CNNConfig(depth=opt("cnn_depth"), width=opt("cnn_width"), epochs=opt("cnn_epochs"),
                        learning_rate=opt("cnn_lr"), device=args.device)
    cnn_sizes = tuple(check_int(m, "--cnn-sizes", minimum=1) for m in opt("cnn_sizes"))
    feats = tuple(check_int(m, "--features", minimum=1) for m in (args.features or ()))
    return Settings(
        datasets=datasets, kernels=tuple(parse_kernels(opt("kernels"), feats)),
        mnist_kernels=tuple(parse_kernels(opt("mnist_kernels"), feats)), features=feats,
        digits_train=check_int(opt("digits_train"), "--digits-train", minimum=2),
        digits_test=check_int(opt("digits_test"), "--digits-test", minimum=1),
        mnist_train=check_int(opt("mnist_train"), "--mnist-train", minimum=2),
        mnist_test=check_int(opt("mnist_test"), "--mnist-test", minimum=1), mnist_size=opt("mnist_size"),
        preprocess=args.preprocess, val_fraction=args.val_fraction,
        max_per_class=check_int(opt("max_per_class"), "--max-per-class", minimum=1), draws=draws, seed=args.seed,
        svc=not args.no_svc, svc_few_shot=not args.no_svc_few_shot, cnn=cnn, cnn_sizes=cnn_sizes,
        cnn_draws=check_int(opt("cnn_draws"), "--cnn-draws", minimum=1), data=args.data,
    )


def estimate(settings: Settings, *, probe: int = 128, say: Callable[[str], None] = print) -> float:
    """Print the projected kernel time of every data set and kernel from a timed ``probe x probe`` block
    (random features: from the features of ``probe`` images).

    Returns the projected total in seconds (kernels only: the evaluation and the CNN come on top).
    """
    total = 0.0
    for name in settings.datasets:
        data = _load(name, settings, say)
        if data is None:
            continue
        prep = _prepared(name, data, settings)
        pairs = pairs_of(len(prep.pool), len(prep.test))
        n = min(probe, len(prep.pool))
        say(f"{name} ({data.source}): pool {len(prep.pool)} + test {len(prep.test)} = {pairs:,} pairs; "
            f"probe {n}x{n}")
        specs = settings.kernels if name == "digits" else settings.mnist_kernels
        for spec in specs:
            secs = projected_seconds(spec, prep.x[torch.as_tensor(prep.pool)], n, len(prep.pool), len(prep.test))
            total += secs
            say(f"  {spec.name:<18} {1e3 * secs / pairs:9.4f} ms/pair  -> {secs:9.1f} s")
    say(f"projected kernel time: {total / 60:.1f} min (NNGP and NTK; evaluation and CNN not included)")
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit bench images``."""
    def ints(text: str) -> int:
        return int(text)

    parser.add_argument("--quick", action="store_true",
                        help="a few hundred digits, FC-3 and CNTK-V-3, 3 draws, a tiny CNN (well under a minute)")
    parser.add_argument("--out", default=None, help="output folder (default ntkit-output/images, or images-quick)")
    parser.add_argument("--data", default=None,
                        help="folder holding mnist5k/mnist_5k.csv.gz (default: the shared data folder beside the "
                             "checkout; without it MNIST is skipped)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, help="data sets (default: digits mnist)")
    parser.add_argument("--kernels", nargs="+", metavar="K",
                        help="digits kernels: fcD (fully connected, D hidden layers), vD (CNTK-V), gapD (CNTK-GAP), "
                             f"myrtleD (D in 5 7 10); default {' '.join(FULL['kernels'])}")
    parser.add_argument("--mnist-kernels", nargs="+", metavar="K",
                        help=f"MNIST kernels (default {' '.join(FULL['mnist_kernels'])})")
    parser.add_argument("--features", type=ints, nargs="+", metavar="M",
                        help="also estimate every fc / v / gap kernel by M random features (ntkit.features; "
                             "adds e.g. gap3-rf1024 beside gap3); a kernel token -rfM names one alone")
    parser.add_argument("--digits-train", type=ints, help=f"digits training pool (default {FULL['digits_train']})")
    parser.add_argument("--digits-test", type=ints, help=f"digits test set (default {FULL['digits_test']})")
    parser.add_argument("--mnist-train", type=ints, help=f"MNIST training pool (default {FULL['mnist_train']})")
    parser.add_argument("--mnist-test", type=ints, help=f"MNIST test set (default {FULL['mnist_test']})")
    parser.add_argument("--mnist-size", type=ints, choices=(14, 28),
                        help="MNIST image size: 14 (2x2 average pooling, default) or 28")
    parser.add_argument("--preprocess", default="global", choices=PREPROCESSING,
                        help="global: the pool's pixel mean / std (Arora et al., default); image: per image")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="validation share of the pool for choosing the ridge and C (default 0.2)")
    parser.add_argument("--max-per-class", type=ints,
                        help="largest few-shot size, images per class (default 128; sizes 1, 2, 4, ...)")
    parser.add_argument("--draws", type=ints, help="few-shot draws per size (default 20)")
    parser.add_argument("--seed", type=ints, default=0, help="seed of the splits and draws (default 0)")
    parser.add_argument("--no-svc", action="store_true", help="kernel regression only")
    parser.add_argument("--no-svc-few-shot", action="store_true", help="no SVC on the few-shot draws")
    parser.add_argument("--no-cnn", action="store_true", help="no trained CNN baseline")
    parser.add_argument("--cnn-depth", type=ints, help="CNN convolutions (default 3)")
    parser.add_argument("--cnn-width", type=ints, help="CNN channels (default 128)")
    parser.add_argument("--cnn-epochs", type=ints, help="CNN epochs (default 20)")
    parser.add_argument("--cnn-lr", type=float, help="CNN learning rate (default 0.05)")
    parser.add_argument("--cnn-sizes", type=ints, nargs="+", help="CNN few-shot sizes (default 1 4 16 64)")
    parser.add_argument("--cnn-draws", type=ints, help="CNN draws per few-shot size (default 3)")
    parser.add_argument("--device", default="cpu", help="device of the CNN (default cpu)")
    parser.add_argument("--estimate", action="store_true",
                        help="only time a small block of every kernel and print the projected kernel time")
    parser.add_argument("--no-plot", action="store_true", help="no fewshot.png")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit bench images``: print the table, write CSV / JSON / PNG."""
    settings = settings_from_args(args)
    if args.estimate:
        estimate(settings)
        return 0
    out = Path(args.out or ("ntkit-output/images-quick" if args.quick else "ntkit-output/images"))
    summary = run_images_benchmark(settings, out, progress=not args.quiet, plot=not args.no_plot)
    print(format_table(summary))
    print(f"wrote {out / 'results.csv'}, {out / 'summary.json'}" + ("" if args.no_plot else f", {out / 'fewshot.png'}"))
    return 0 if summary["complete"] else 130


__all__ = [
    "FAMILIES",
    "FULL",
    "QUICK",
    "KernelSpec",
    "Prepared",
    "Settings",
    "add_arguments",
    "estimate",
    "kernel_blocks",
    "main",
    "parse_kernels",
    "prepare",
    "projected_seconds",
    "run_cnn",
    "run_images_benchmark",
    "run_kernel",
    "settings_from_args",
]
