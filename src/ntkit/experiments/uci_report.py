"""The UCI benchmark's outputs: the summary record, the CSV / JSON files and the printed table.

Split from :mod:`ntkit.experiments.uci` (which runs the protocol and re-exports these names).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkit._io import write_text_atomic

#: Paper averages (Arora et al. 2020, Table 1): NTK-SVM and random forests (Fernández-Delgado et al.).
PAPER_NTK = 81.95
PAPER_RF = 81.56


def summarize(
    results: dict[str, dict[str, Any]],
    names: Sequence[str],
    *,
    seconds: float,
    complete: bool,
    failed: Sequence[str] = (),
    worker_failures: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The summary record: rows in ``names`` order (finished ones), mean accuracy in percent.

    ``complete`` is whether the run went to its end (False: interrupted); ``failed`` and
    ``worker_failures`` are the data sets lost with their worker process (see
    :func:`ntkit.experiments.uci.run_uci_benchmark`).
    """
    rows = [results[n] for n in names if n in results]
    mean = float(np.mean([r["test_acc"] for r in rows])) * 100 if rows else float("nan")
    return {
        "benchmark": "UCI 90 data sets, NTK + SVC (Arora et al. 2020 protocol)",
        "n_datasets": len(rows),
        "n_requested": len(names),
        "mean_accuracy": mean,
        "paper_ntk": PAPER_NTK,
        "paper_random_forest": PAPER_RF,
        "complete": complete and len(rows) == len(names),
        "interrupted": not complete,
        "failed": list(failed),
        "worker_failures": list(worker_failures),
        "seconds_this_run": seconds,
        "seconds_total": float(sum(r["seconds"] for r in rows)),
        "rows": rows,
    }


CSV_FIELDS = ("dataset", "n", "d", "classes", "dep", "fix", "C", "val_acc", "test_acc", "fold_accs", "seconds")


def write_outputs(summary: dict[str, Any], out: Path) -> None:
    """Write ``results.csv`` (one row per data set) and ``summary.json`` (everything) into ``out``."""
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_FIELDS)
        for r in summary["rows"]:
            w.writerow(
                [
                    r["dataset"],
                    r["n"],
                    r["d"],
                    r["classes"],
                    r["dep"],
                    r["fix"],
                    r["C"],
                    f"{r['val_acc']:.6f}",
                    f"{r['test_acc']:.6f}",
                    " ".join(f"{a:.6f}" for a in r["fold_accs"]),
                    f"{r['seconds']:.2f}",
                ]
            )
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))


def format_table(summary: dict[str, Any]) -> str:
    """The per-data-set table, the average and the comparison with the paper, as text."""
    lines = [f"{'dataset':<32} {'n':>5} {'d':>4} {'c':>3} {'dep':>3} {'fix':>3} {'C':>7} {'val%':>6} {'test%':>6}"]
    for r in summary["rows"]:
        lines.append(
            f"{r['dataset']:<32} {r['n']:>5} {r['d']:>4} {r['classes']:>3} {r['dep']:>3} {r['fix']:>3} "
            f"{r['C']:>7g} {100 * r['val_acc']:>6.2f} {100 * r['test_acc']:>6.2f}"
        )
    lines.append(
        f"average test accuracy over {summary['n_datasets']}/{summary['n_requested']} data sets: "
        f"{summary['mean_accuracy']:.2f}%"
    )
    lines.append(f"paper (Arora et al. 2020): NTK {PAPER_NTK:.2f}%, random forests {PAPER_RF:.2f}%")
    lines.append(
        f"kernel+SVC time of these data sets: {summary['seconds_total']:.0f} s "
        f"(this run {summary['seconds_this_run']:.0f} s)"
    )
    failures = summary.get("worker_failures", [])
    if failures:
        lines.append(f"worker processes lost ({len(failures)} data set(s)):")
        lines.extend(f"  {r['message']}" for r in failures)
    if summary.get("failed"):
        lines.append(
            f"incomplete: {len(summary['failed'])} data set(s) failed: {', '.join(summary['failed'])}; "
            "rerun to try them again (finished data sets are kept)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI


__all__ = ["CSV_FIELDS", "PAPER_NTK", "PAPER_RF", "format_table", "summarize", "write_outputs"]
