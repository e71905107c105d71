"""Finite networks against their infinite-width limit over wide width sweeps (the conformance suite, larger).

For each architecture of ``tests/arch_cases.py`` named on the command line, ``--seeds`` networks at
each width of ``--widths`` (hidden channels for convolutional models) are drawn; for each, the
relative Frobenius distance of its empirical NTK (one output) and empirical NNGP (``f.f'/k`` over
``k = width`` outputs) to ``ntkit.infinite_kernel`` of the same model is recorded, and the log-log
slope is fitted (theory: -1/2 once the widths are in the asymptotic regime), with the slope of
every consecutive pair of widths. The CI test (``tests/test_conformance.py``) checks the slope for
dense models at widths 128-2048 and only a decrease for convolutional ones; this script measures
how convolutional models reach the -1/2 regime. Usage::

    PYTHONPATH=src:. python benchmarks/conformance_sweep.py --cases conv_same_gap conv_same_flatten \\
        --widths 32 128 512 2048 --seeds 8 --out benchmarks/results/conformance.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.arch_cases import case_by_name, make_inputs  # noqa: E402
from tests.arch_models import build  # noqa: E402

import ntkit  # noqa: E402


def sweep(name: str, widths: list[int], seeds: int) -> dict[str, object]:
    _, spec, shape, n1, _ = case_by_name(name)
    x = torch.from_numpy(make_inputs(name, shape, n1, 1)[0])
    limit = ntkit.infinite_kernel(build(spec, shape)[0], x)
    rows: dict[str, list[list[float]]] = {"ntk": [], "nngp": []}
    start = time.perf_counter()
    for width in widths:
        d_ntk, d_nngp = [], []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(7919 * width + seed)
            model = build(spec, shape, width=width, last=1, generator=g, device=None)[0]
            wide = build(spec, shape, width=width, last=width, generator=torch.Generator().manual_seed(seed),
                         device=None)[0]
            theta = ntkit.empirical_ntk(model, x, mode="trace")
            d_ntk.append(float(torch.linalg.norm(theta - limit.ntk) / torch.linalg.norm(limit.ntk)))
            nngp = ntkit.empirical_nngp(wide, x)
            d_nngp.append(float(torch.linalg.norm(nngp - limit.nngp) / torch.linalg.norm(limit.nngp)))
        rows["ntk"].append(d_ntk)
        rows["nngp"].append(d_nngp)
        print(f"  {name} width {width}: ntk {np.mean(d_ntk):.4f}  nngp {np.mean(d_nngp):.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    out: dict[str, object] = {"case": name, "widths": widths, "seeds": seeds, "seconds": time.perf_counter() - start}
    for what, dist in rows.items():
        means = [float(np.mean(d)) for d in dist]
        lx = np.log(widths)
        out[what] = {
            "mean": means,
            "std": [float(np.std(d)) for d in dist],
            "slope": float(np.polyfit(lx, np.log(means), 1)[0]),
            "pairwise_slopes": [float((np.log(means[i + 1]) - np.log(means[i])) / (lx[i + 1] - lx[i]))
                                for i in range(len(widths) - 1)],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["conv_same_gap", "conv_same_flatten", "conv_avgpool",
                                                  "conv_residual_preact", "conv1d_same"])
    p.add_argument("--widths", type=int, nargs="+", default=[32, 128, 512, 2048])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = []
    for name in args.cases:
        res = sweep(name, args.widths, args.seeds)
        results.append(res)
        for what in ("ntk", "nngp"):
            r = res[what]
            assert isinstance(r, dict)
            pairs = ", ".join(f"{s:+.2f}" for s in r["pairwise_slopes"])
            print(f"{name:26s} {what:5s} slope {r['slope']:+.3f}  (consecutive widths: {pairs})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
