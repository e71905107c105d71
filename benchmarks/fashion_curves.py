"""Learning curves of several ``ntkit bench fashion`` runs on one plot (the results page's figure).

Each run folder's final records (``OUT/records/<key>/final-*.json``) and random-feature records
(``features-*.json``) give test accuracy against training images; every curve is labelled with its kernel,
NNGP / NTK (or the number of random features), the preprocessing and the kernels' dtype (from the records'
folder name)::

    python benchmarks/fashion_curves.py /work/fashion-full /work/fashion-image \\
        --out benchmarks/results/fashion_learning_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ntkit.experiments.fashion_report import plot_curves


def curves_of(run: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(label, curve)`` of every final record and random-feature record with a curve under ``run/records``, in
    a stable order."""
    out = []
    for path in sorted([*run.glob("records/*/final-*.json"), *run.glob("records/*/features-*.json")]):
        rec = json.loads(path.read_text())
        if not rec.get("curve"):  # a features record from before the features' learning curve
            continue
        key = path.parent.name  # fashion-<train>+<val>+<test>-sweep<n>-<preprocess>-seed<s>[-float32]
        preprocess = "per image" if "-image-" in key else "global"
        if "n_features" in rec:
            out.append((f"{rec['kernel']} NTK, {rec['n_features']} random features ({preprocess})", rec["curve"]))
            continue
        dtype = ", float32" if key.endswith("-float32") else ""
        out.append((f"{rec['kernel']} {rec['which'].upper()} ({preprocess}{dtype})", rec["curve"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of ntkit bench fashion")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fashion_learning_curve.png"))
    args = parser.parse_args()
    curves = [c for run in args.runs for c in curves_of(run)]
    for label, curve in curves:
        print(label, " ".join(f"{r['n']}:{100 * r['test_acc']:.2f}" for r in curve))
    if not plot_curves(curves, args.out):
        raise SystemExit("nothing plotted: no final records found, or matplotlib is missing "
                         "(pip install 'ntkit[plot]')")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
