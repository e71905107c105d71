"""Kernel movement vs width: a width sweep of the `ntkit dynamics` experiment, ReLU and erf.

For each activation, networks of the Jacot et al. (2018) Fig. 1 setting (depth 3, n0 = 2,
beta = 0.1, 8 training points, 200 full-batch GD steps with learning rate 1.0) are trained from
several initialisations at every width; the kernel movement ``||Theta_T - Theta_0||_F /
||Theta_0||_F`` is split into its mean part and its seed-to-seed fluctuation
(:mod:`ntkit.experiments.movement`) and log-log slopes vs width are fitted with bootstrap standard
errors over initialisations, together with the slopes of ``RMS(trained - linearized)`` and
``RMS(trained - Theta_inf prediction)``. Usage::

    flock /work/cpu.lock env PYTHONPATH=src python benchmarks/dynamics_movement.py
    PYTHONPATH=src python benchmarks/dynamics_movement.py --quick      # a 1-minute check

Writes ``movement_sweep.json`` (per activation: the summary of :func:`run_dynamics`, wall time,
peak RSS) and ``README.md`` (the tables; also the default ``ntkit dynamics`` run when its
``summary.json`` is in the same folder, and ``notes.md`` when present) to ``--out`` (default
benchmarks/results/dynamics). ``--readme-only`` rewrites README.md from the files there.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ntkit.experiments.dynamics import run_dynamics

ROOT = Path(__file__).resolve().parent
WIDTHS = [250, 500, 1000, 2000, 4000, 8000]


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far in GiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sweep(activation: str, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    res = run_dynamics(
        widths=args.widths,
        n_inits=args.inits,
        steps=args.steps,
        activation=activation,
        seed=args.seed,
        progress=not args.quiet,
    )
    out = res.to_dict()
    out["wall_seconds"] = time.perf_counter() - start
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def _fit(fits: dict[str, Any], name: str) -> str:
    f = fits.get(name)
    return "n/a" if f is None else f"{f['slope']:.3f} ± {f['stderr']:.3f}"


def table(summary: dict[str, Any]) -> list[str]:
    """Markdown table of one run: per width the movement and its parts, the distances; then slopes."""
    s, parts, fits = summary["summary"], summary.get("movement_parts", {}), summary["slope_fits"]
    lines = [
        "| width | inits | movement (mean ± sd) | total (rms) | mean part | fluctuation part "
        "| RMS(trained − linearized) | RMS(trained − Θ∞ prediction) | ‖Θ0 − Θ∞‖/‖Θ∞‖ |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in summary["widths"]:
        k = str(w)
        if k not in s["movement"]:
            continue
        m, p = s["movement"][k], parts.get(k, {})
        lines.append(
            f"| {w} | {m['n']} | {m['mean']:.4g} ± {m['std']:.2g} | {p.get('total', float('nan')):.4g} "
            f"| {p.get('mean', float('nan')):.4g} | {p.get('fluctuation', float('nan')):.4g} "
            f"| {s['dist_linearized'][k]['mean']:.4g} | {s['dist_kernel'][k]['mean']:.4g} "
            f"| {s['init_distance'][k]['mean']:.4g} |"
        )
    lines += [
        "",
        "Log-log slopes vs width (± bootstrap standard error over initialisations): "
        f"movement **{_fit(fits, 'movement')}**; its mean part {_fit(fits, 'movement_mean')}, "
        f"fluctuation part {_fit(fits, 'movement_fluctuation')}, total (rms) {_fit(fits, 'movement_total')}; "
        f"trained − linearized {_fit(fits, 'dist_linearized')}; trained − Θ∞ prediction {_fit(fits, 'dist_kernel')}; "
        f"‖Θ0 − Θ∞‖ {_fit(fits, 'init_distance')}.",
    ]
    return lines


def write_readme(out: Path) -> Path:
    """README.md of the results folder from the files present there."""
    lines = [
        "# Training dynamics: kernel movement vs width",
        "",
        "Written by `benchmarks/dynamics_movement.py` from the results in this folder. Movement is",
        "`‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F` (trace NTK on the training and circle inputs, after T GD steps);",
        "it is split over initialisations into a mean part (the change all seeds share) and a fluctuation",
        "part (each seed's deviation), total² = mean² + fluctuation² (`ntkit.experiments.movement`).",
        "Theory: Jacot et al. 2018 / Lee et al. 2019 bound the movement by O(n^-1/2); its expected part",
        "is O(1/n) (Dyer & Gur-Ari 2019; Huang & Yau 2020), so the total slope lies between -1 and -1/2.",
        "",
    ]
    default = out / "summary.json"
    if default.exists():
        d = json.loads(default.read_text())
        c = d["config"]
        log = out / "default_run.log"  # stdout of the run followed by `/usr/bin/time -v`
        if log.exists() and (m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text())):
            d["peak_rss_gb"] = int(m.group(1)) / 2**20
        lines += [
            f"## Default `ntkit dynamics` (Jacot et al. 2018, Fig. 1 setting): depth {c['depth']}, {c['activation']}, "
            f"beta {c['beta']}, {c['n_inits']} inits, {c['steps']} GD steps, lr {c['learning_rate']}",
            "",
            f"Runtime {d['seconds']:.0f} s" + (f", peak RSS {d['peak_rss_gb']:.2f} GiB" if "peak_rss_gb" in d else "")
            + ". Figure: `dynamics.png`; data: `summary.json`; console output: `default_run.log`.",
            "",
            *table(d),
            "",
        ]
    sweep_path = out / "movement_sweep.json"
    if sweep_path.exists():
        data = json.loads(sweep_path.read_text())
        meta = data["meta"]
        lines += [
            f"## Width sweep ({meta['inits']} inits, {meta['steps']} steps; `movement_sweep.json`)",
            "",
            f"Run: `{meta['command']}` on {meta['machine']}, torch {meta['torch']}.",
            "",
        ]
        for act, summary in data["runs"].items():
            lines += [
                f"### {act}: {summary['wall_seconds']:.0f} s, peak RSS {summary['peak_rss_gb']:.2f} GiB",
                "",
                *table(summary),
                "",
            ]
    notes = out / "notes.md"  # hand-written reading of the results, kept across regenerations
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    parser.add_argument("--activations", nargs="+", default=["relu", "erf"])
    parser.add_argument("--inits", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "dynamics"))
    parser.add_argument("--quick", action="store_true", help="widths 250 500 1000, 3 inits, 50 steps")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite README.md from the results")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.readme_only:
        print(f"wrote {write_readme(out)}")
        return 0
    if args.quick:
        args.widths, args.inits, args.steps = [250, 500, 1000], 3, 50
    runs = {}
    for act in args.activations:
        runs[act] = sweep(act, args)
        fits = runs[act]["slope_fits"]
        print(
            f"{act}: {runs[act]['wall_seconds']:.0f} s; slopes: movement {_fit(fits, 'movement')}, "
            f"mean part {_fit(fits, 'movement_mean')}, fluctuation {_fit(fits, 'movement_fluctuation')}, "
            f"trained-linearized {_fit(fits, 'dist_linearized')}, trained-kernel {_fit(fits, 'dist_kernel')}",
            flush=True,
        )
    meta = {
        "widths": args.widths,
        "inits": args.inits,
        "steps": args.steps,
        "seed": args.seed,
        "command": "python benchmarks/dynamics_movement.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    (out / "movement_sweep.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(f"wrote {out / 'movement_sweep.json'} and {write_readme(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
