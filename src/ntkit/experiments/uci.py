"""The UCI benchmark of Arora et al. (2020): SVM with the fully connected NTK on 90 small data sets.

Arora, Du, Li, Salakhutdinov, Wang, Yu, "Harnessing the Power of Infinitely Wide Deep Nets on
Small-data Tasks", ICLR 2020 (arXiv:1910.01663), Sec. 4, reproduced with their protocol
(``LeoYu/neural-tangent-kernel-UCI``; data and splits of Fernández-Delgado et al., JMLR 2014):

1. Kernels ``K[dep][fix]`` (ReLU, no bias, ``S_0 = X X^T``, ``c_sigma = 1``) for ``dep = 0..4``
   hidden layers and ``fix = 0..dep`` frozen first layers: 15 kernels from one pass of the
   recursion over all ``n`` samples (:func:`ntkit.layerwise.iter_arora_kernels`); train / validation
   / test blocks are index subsets of the ``n x n`` matrices.
2. ``sklearn.svm.SVC(kernel="precomputed", C=C)`` for ``C in {1e-2, ..., 1e4}``.
3. Selection on the train/validation halves of ``conxuntos.dat`` over the 105 ``(dep, fix, C)``,
   looping ``dep -> fix -> C`` ascending and keeping the first maximum (strict ``>``).
4. Score: mean accuracy over the 4 train/test pairs of ``conxuntos_kfold.dat``; the benchmark's
   number is the mean of the per-data-set scores (paper: 81.95% NTK, 81.56% random forests).

Results are saved per data set as they finish (``OUT/datasets/<name>.json``) so an interrupted run
resumes where it stopped; ``OUT/results.csv`` and ``OUT/summary.json`` hold the table and average.
With ``--jobs N`` the data sets run in worker processes (``ntkit._workers.run_in_workers``): a
worker killed from outside (the out-of-memory killer's ``SIGKILL``) is reported by data set and
signal, the other workers go on, the lost data set is retried once alone at the end, and the summary
(``worker_failures``, ``failed``) and the printed table say what happened.
The data sets are read by :mod:`ntkit.experiments.uci_data`, the protocol on one data set is
:mod:`ntkit.experiments.uci_eval`, the outputs are written by :mod:`ntkit.experiments.uci_report`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ntkit._io import write_text_atomic
from ntkit._progress import Progress
from ntkit._validation import check_int
from ntkit._workers import WorkerDeath, run_in_workers
from ntkit.experiments.uci_data import (
    DEFAULT_DATA,
    UCIDataset,
    UCIFormatError,
    dataset_size,
    list_uci_datasets,
    load_uci_dataset,
    write_uci_dataset,
)
from ntkit.experiments.uci_eval import (
    C_GRID,
    DEFAULT_MAX_ITER,
    RESULT_VERSION,
    SVCFit,
    evaluate_dataset,
    svc_fit,
)
from ntkit.experiments.uci_eval import svc_accuracy as svc_accuracy  # re-exported (moved there)
from ntkit.experiments.uci_report import CSV_FIELDS, PAPER_NTK, PAPER_RF, format_table, summarize, write_outputs


def _fits(max_dep: int, n_c: int) -> int:
    return (max_dep + 1) * (max_dep + 2) // 2 * n_c + 4


def _worker(args: tuple[str, int, tuple[float, ...], int]) -> dict[str, Any]:
    folder, max_dep, c_grid, max_iter = args
    torch.set_num_threads(1)
    return evaluate_dataset(load_uci_dataset(folder), max_dep=max_dep, c_grid=c_grid, max_iter=max_iter)


def run_uci_benchmark(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA,
    out_dir: str | os.PathLike[str] = "ntkit-output/uci",
    *,
    datasets: Sequence[str] | None = None,
    max_dep: int = 4,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = DEFAULT_MAX_ITER,
    resume: bool = True,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark; write ``datasets/<name>.json``, ``results.csv``, ``summary.json``.

    Parameters
    ----------
    data_dir : path
        Folder of data set folders (``../shared/data/uci``).
    out_dir : path
        Output folder; per-data-set results already there (same ``max_dep`` and ``C`` grid) are
        reused when ``resume`` is true.
    datasets : sequence of str, optional
        Subset of data set names (default: every folder of ``data_dir``).
    jobs : int
        Data sets evaluated in parallel processes (each single-threaded). A worker that dies (e.g.
        killed by the out-of-memory killer) is reported and its data set retried once alone after
        the others; one lost twice is listed in ``failed`` and the run goes on.
    max_iter : int
        libsvm iteration cap per fit (``-1``: none, as in Arora et al.'s runs; see :func:`svc_fit`).

    Returns
    -------
    dict
        The summary: per-data-set rows, the mean accuracy in percent, the paper's numbers,
        ``complete`` (False after an interruption or a failed data set), ``interrupted``, ``failed``
        (data sets whose worker died on every attempt), ``worker_failures`` (one record per data set
        whose worker died: signal, exit status, likely cause, each attempt, whether it was retried,
        its outcome) and timings.

    Raises
    ------
    FileNotFoundError
        ``data_dir`` does not exist or holds no data set folder.
    ValueError
        Unknown names in ``datasets``, ``max_dep < 0``, ``jobs < 1``, a malformed data file
        (:class:`UCIFormatError`, naming the file and the line).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from ntkit.experiments.uci import write_uci_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> _ = write_uci_dataset(root / "toy", x, (x[:, 0] + x[:, 1] > 0).astype(int))
    >>> from ntkit.experiments.uci import run_uci_benchmark
    >>> summary = run_uci_benchmark(root, root / "out", max_dep=1, c_grid=(1.0,), progress=False)
    >>> summary["n_datasets"], summary["complete"], (root / "out" / "results.csv").is_file()
    (1, True, True)
    """
    jobs = check_int(jobs, "jobs", minimum=1)
    max_dep = check_int(max_dep, "max_dep", minimum=0)
    c_grid = tuple(float(c) for c in c_grid)
    available = list_uci_datasets(data_dir)
    if datasets is None:
        names = available
    else:
        unknown = [d for d in datasets if d not in available]
        if unknown:
            raise ValueError(f"datasets: expected names of folders in {data_dir}, got unknown {unknown}")
        names = list(datasets)
    out = Path(out_dir)
    (out / "datasets").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        path = out / "datasets" / f"{name}.json"
        if resume and path.is_file():
            try:
                rec = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            if (
                rec.get("version") == RESULT_VERSION
                and rec.get("max_iter") == max_iter
                and len(rec.get("val_grid", [])) == max_dep + 1
                and all(len(r) == len(c_grid) for rows in rec["val_grid"] for r in rows)
            ):
                results[name] = rec
    todo = [n for n in names if n not in results]
    sizes = {n: dataset_size(Path(data_dir) / n) for n in todo}
    todo.sort(key=lambda n: sizes[n])  # small first: early results, resumable
    n_fits = _fits(max_dep, len(c_grid))
    bar = Progress(sum(float(s) ** 2 for s in sizes.values()) or 1.0, "uci", enabled=progress, show_counts=False)
    if results and progress:
        print(f"resuming: {len(results)} data sets already done in {out / 'datasets'}", file=sys.stderr)
    start = time.perf_counter()
    complete = False
    worker_failures: list[dict[str, Any]] = []
    failed: list[str] = []

    def save(rec: dict[str, Any]) -> None:
        results[rec["dataset"]] = rec
        path = out / "datasets" / f"{rec['dataset']}.json"
        write_text_atomic(path, json.dumps(rec))

    try:
        if jobs == 1:
            for name in todo:
                unit = float(sizes[name]) ** 2 / n_fits
                rec = evaluate_dataset(
                    load_uci_dataset(Path(data_dir) / name),
                    max_dep=max_dep,
                    c_grid=c_grid,
                    max_iter=max_iter,
                    on_fit=lambda note, unit=unit: bar.update(unit, note=note),  # type: ignore[misc]
                )
                save(rec)
                bar.update(0, note=f"{name}: {100 * rec['test_acc']:.2f}%")
        else:
            deaths: dict[str, list[WorkerDeath]] = {}

            def finished(name: str, rec: dict[str, Any]) -> None:
                if name in deaths:  # recovered by a retry: the record says what it survived
                    rec["worker_failures"] = [d.as_dict() for d in deaths[name]]
                save(rec)
                bar.update(float(sizes[name]) ** 2, note=f"{name}: {100 * rec['test_acc']:.2f}%")

            def lost(death: WorkerDeath) -> None:
                deaths.setdefault(death.name, []).append(death)
                then = "retrying it alone after the others" if death.retry else "giving up on it (no result)"
                if not death.retry:
                    bar.update(float(sizes[death.name]) ** 2, note=f"{death.name}: failed")
                if progress:
                    print(f"\n{death.describe()}: {death.cause}; {then}", file=sys.stderr)

            items = [(n, (str(Path(data_dir) / n), max_dep, c_grid, max_iter)) for n in todo]
            report = run_in_workers(_worker, items, jobs=jobs, on_result=finished, on_death=lost)
            worker_failures = [{"dataset": r.pop("item"), **r} for r in report.records()]
            failed = list(report.failed)
            if report.interrupted:
                raise KeyboardInterrupt
        complete = True
    except KeyboardInterrupt:
        if progress:
            print(
                f"\ninterrupted: {len(results)} data sets saved in {out / 'datasets'}; rerun to resume", file=sys.stderr
            )
    finally:
        bar.close()
    summary = summarize(
        results,
        names,
        seconds=time.perf_counter() - start,
        complete=complete,
        failed=failed,
        worker_failures=worker_failures,
    )
    write_outputs(summary, out)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit bench uci``."""
    parser.add_argument("--data", default=os.environ.get("NTKIT_UCI_DATA", str(DEFAULT_DATA)), help="UCI data folder")
    parser.add_argument("--out", default="ntkit-output/uci", help="output folder (default ntkit-output/uci)")
    parser.add_argument("--datasets", nargs="+", help="only these data sets (default: all folders)")
    parser.add_argument("--max-dep", type=int, default=4, help="deepest network: hidden layers 0..MAX_DEP (default 4)")
    parser.add_argument("--no-resume", action="store_true", help="recompute data sets already saved in --out")
    parser.add_argument(
        "--max-iter",
        type=int,
        default=DEFAULT_MAX_ITER,
        help=f"libsvm iteration cap per SVM fit (default {DEFAULT_MAX_ITER}; -1: none, as in the paper, very slow)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="data sets in parallel processes (default 1); a worker that dies (e.g. killed by the out-of-memory "
        "killer) is reported, its data set retried once alone, and a data set lost twice is listed as failed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit bench uci``: print the table and the comparison, write CSV/JSON.

    Exit status 0 when every data set has a result, 130 after Ctrl-C, 1 when data sets failed
    (their worker process died on every attempt; the table lists them).
    """
    summary = run_uci_benchmark(
        args.data,
        args.out,
        datasets=args.datasets,
        max_dep=args.max_dep,
        max_iter=args.max_iter,
        resume=not args.no_resume,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    print(format_table(summary))
    print(f"wrote {Path(args.out) / 'results.csv'} and {Path(args.out) / 'summary.json'}")
    if summary["complete"]:
        return 0
    return 130 if summary["interrupted"] else 1


# the command's helpers (format_table, summarize, write_outputs, svc_accuracy) stay importable but
# are not part of the documented API
__all__ = [
    "CSV_FIELDS",
    "C_GRID",
    "DEFAULT_DATA",
    "DEFAULT_MAX_ITER",
    "PAPER_NTK",
    "PAPER_RF",
    "RESULT_VERSION",
    "SVCFit",
    "UCIDataset",
    "UCIFormatError",
    "add_arguments",
    "evaluate_dataset",
    "list_uci_datasets",
    "load_uci_dataset",
    "main",
    "run_uci_benchmark",
    "svc_fit",
    "write_uci_dataset",
]
