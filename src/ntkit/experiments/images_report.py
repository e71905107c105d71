"""Outputs of ``ntkit bench images``: the results table (CSV), ``summary.json``, the few-shot plot, a text table.

All functions work on the summary dictionary of :func:`ntkit.experiments.images.run_images_benchmark`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ntkit._io import write_text_atomic


def _few_shot(sizes: list[int], means: list[Any], stds: list[Any]) -> dict[int, tuple[Any, Any]]:
    return {m: (a, b) for m, a, b in zip(sizes, means, stds, strict=True)}


def result_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows: per data set, model, NNGP/NTK and method, its test accuracy and few-shot mean / std.

    Kernel rows have ``method`` ``"regression"`` or ``"svc"`` (``hyper`` the ridge or ``C``); the CNN's
    row has ``which="trained"``, ``method="sgd"`` and its training time as ``kernel_seconds``.
    """
    rows: list[dict[str, Any]] = []
    for name, entry in summary["datasets"].items():
        for rec in entry["kernels"]:
            for r in rec["results"]:
                fs = r["few_shot"]
                for kind, method, hyper in (("reg", "regression", r["reg"]), ("svc", "svc", r["C"])):
                    acc = r[f"{kind}_acc"]
                    if acc is None:
                        continue
                    rows.append({
                        "dataset": name, "model": rec["kernel"], "family": rec["family"], "depth": rec["depth"],
                        "which": r["which"], "method": method, "hyper": hyper, "test_acc": acc,
                        "few_shot": _few_shot(fs["sizes"], fs[f"{kind}_mean"], fs[f"{kind}_std"]),
                        "kernel_seconds": rec["kernel_seconds"], "seconds_per_pair": rec["seconds_per_pair"],
                    })
        cnn = entry.get("cnn")
        if cnn is not None:
            fs = cnn["few_shot"]
            rows.append({
                "dataset": name, "model": cnn["model"], "family": "cnn", "depth": cnn["protocol"]["cnn"]["depth"],
                "which": "trained", "method": "sgd", "hyper": None, "test_acc": cnn["full"]["accuracy"],
                "few_shot": _few_shot(fs["sizes"], fs["mean"], fs["std"]),
                "kernel_seconds": cnn["full"]["seconds"], "seconds_per_pair": None,
            })
    return rows


def _fmt(v: Any, spec: str = ".6f") -> str:
    return "" if v is None else format(v, spec)


def write_outputs(summary: dict[str, Any], out: Path, *, plot: bool = True) -> None:
    """``results.csv`` (:func:`result_rows`, few-shot sizes as column pairs), ``summary.json``, ``fewshot.png``."""
    rows = result_rows(summary)
    sizes = sorted({m for r in rows for m in r["few_shot"]})
    header = ["dataset", "model", "family", "depth", "which", "method", "reg_or_C", "test_acc",
              *[f"fs{m}_{k}" for m in sizes for k in ("mean", "std")], "kernel_seconds", "seconds_per_pair"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            fs = [_fmt(v) for m in sizes for v in r["few_shot"].get(m, (None, None))]
            w.writerow([r["dataset"], r["model"], r["family"], r["depth"], r["which"], r["method"],
                        _fmt(r["hyper"], "g"), _fmt(r["test_acc"]), *fs, _fmt(r["kernel_seconds"], ".2f"),
                        _fmt(r["seconds_per_pair"], ".3e")])
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    if plot and rows:
        plot_few_shot(rows, out / "fewshot.png")


def plot_few_shot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Few-shot accuracy against images per class: a row of panels per data set (regression, SVC).

    NTK solid, NNGP dashed, the trained CNN in black. Returns False (and draws nothing) without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("fewshot.png: skipped (matplotlib missing: pip install 'ntkit[plot]')", file=sys.stderr)
        return False
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.5 * len(names)), squeeze=False)
    models = list(dict.fromkeys(r["model"] for r in rows if r["family"] != "cnn"))
    colours = {m: plt.get_cmap("tab10" if len(models) <= 10 else "tab20")(i) for i, m in enumerate(models)}
    for row_axes, name in zip(axes, names, strict=True):
        for ax, method in zip(row_axes, ("regression", "svc"), strict=True):
            for r in rows:
                if r["dataset"] != name or not r["few_shot"] or r["method"] not in (method, "sgd"):
                    continue
                ms = sorted(m for m, (mean, _) in r["few_shot"].items() if mean is not None)
                if not ms:
                    continue
                mean = np.array([r["few_shot"][m][0] for m in ms])
                std = np.array([r["few_shot"][m][1] for m in ms])
                if r["family"] == "cnn":
                    ax.errorbar(ms, mean, yerr=std, color="black", marker="s", capsize=3, label=r["model"])
                    continue
                ls = "-" if r["which"] == "ntk" else "--"
                ax.plot(ms, mean, ls, color=colours[r["model"]], marker="o", ms=3,
                        label=f"{r['model']} {r['which'].upper()}")
            ax.set_xscale("log", base=2)
            ticks = sorted({m for r in rows if r["dataset"] == name for m in r["few_shot"]})
            ax.set_xticks(ticks, [str(m) for m in ticks])
            ax.set_xlabel("training images per class")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{name}: {'kernel regression' if method == 'regression' else 'SVC'}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def format_table(summary: dict[str, Any]) -> str:
    """The results as text, per data set and model: test accuracy after training on the whole pool
    (``acc%``: kernel regression, or the CNN), the SVC's, few-shot ``mean±std`` per size (kernel
    regression, or the CNN), and the kernel's milliseconds per pair of images."""
    lines: list[str] = []
    for name, entry in summary["datasets"].items():
        sizes = entry["few_shot_sizes"]
        lines.append(f"{name}: {entry['source']}, pool {entry['n_pool']}, test {entry['n_test']}, "
                     f"preprocessing {entry['preprocess']}")
        lines.append(f"{'model':<24} {'which':<7} {'acc%':>6} {'SVC%':>6} "
                     + " ".join(f"{f'{m}/c':>11}" for m in sizes) + f" {'ms/pair':>8} {'kernel s':>9}")
        rows = [r for r in result_rows({"datasets": {name: entry}}) if r["method"] in ("regression", "sgd")]
        svc = {(r["model"], r["which"]): r["test_acc"] for r in result_rows({"datasets": {name: entry}})
               if r["method"] == "svc"}
        for r in rows:
            fs = " ".join(f"{100 * r['few_shot'][m][0]:5.1f}±{100 * r['few_shot'][m][1]:4.1f}"
                          if m in r["few_shot"] else f"{'':>11}" for m in sizes)
            s = svc.get((r["model"], r["which"]))
            spp = "" if r["seconds_per_pair"] is None else f"{1e3 * r['seconds_per_pair']:.4f}"
            svc_text = "" if s is None else f"{100 * s:.2f}"
            secs = f"{r['kernel_seconds']:.1f}"
            lines.append(f"{r['model']:<24} {r['which']:<7} {100 * r['test_acc']:6.2f} {svc_text:>6} {fs} {spp:>8} "
                         f"{secs:>9}")
        lines.extend(feature_comparison(entry))
    for name in summary.get("skipped", []):
        lines.append(f"{name}: skipped (data not found)")
    return "\n".join(lines)


def feature_comparison(entry: dict[str, Any]) -> list[str]:
    """Per random-feature kernel of a data set that also has its exact kernel: the change in test
    accuracy (kernel regression, points) and the speed-up of the kernel's computation."""
    exact = {(r["family"], r["depth"]): r for r in entry["kernels"] if r.get("n_features") is None}
    lines = []
    for rec in entry["kernels"]:
        ref = exact.get((rec["family"], rec["depth"]))
        if rec.get("n_features") is None or ref is None:
            continue
        diffs = ", ".join(f"{a['which'].upper()} {100 * (a['reg_acc'] - b['reg_acc']):+.2f}"
                          for a, b in zip(rec["results"], ref["results"], strict=True))
        speed = ref["kernel_seconds"] / rec["kernel_seconds"] if rec["kernel_seconds"] else float("nan")
        lines.append(f"  {rec['kernel']} against {ref['kernel']}: regression accuracy {diffs} points; "
                     f"{rec['kernel_seconds']:.1f} s against {ref['kernel_seconds']:.1f} s ({speed:.1f}x faster)")
    return lines
