"""Mehler / Hermite fast path vs split composite quadrature: depth-3 NNGP + NTK of smooth activations.

For tanh, softplus and SiLU and N in {100, 300, 1000} points (``x ~ N(0, I_10)``, beta = 0.1,
w_std = 1, float64) this times ``ntkit.fc_kernel`` with the default general path (``method="auto"``:
the Mehler expansion) and with ``method="quadrature"`` (the previous default), side by side in one
process; the quadrature runs only where its time, extrapolated as N^2 from the previous size, stays
under ``--quadrature-limit`` seconds (default 60). Errors: ``max |K - K_ref| / max |K_ref|`` over
NNGP and NTK, for the Mehler and the quadrature kernels, on a random subset of 60 points (kernel
entries depend only on their two points, so the sub-matrix is exact), ``K_ref`` the quadrature with
32 nodes per panel instead of 16 (the default quadrature's largest error is on the diagonal of the
derivative map, ~2e-11 for tanh, where the expansion uses the exact Parseval norm). Also reported:
the largest number of Hermite terms any entry used and the entries handed to quadrature by the
truncation bound, summed over the three layers.

Each timing is the best of ``--repeat`` runs after one small warm-up call (one-time start-up
costs, e.g. torch's autograd initialisation, excluded). Run it alone on the machine::

    flock /work/cpu.lock env PYTHONPATH=src python benchmarks/bench_mehler.py --out benchmarks/results/mehler.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import ntkit
import ntkit.activations.mehler as mehler_module
from ntkit.activations import CallableActivation, get_activation

ROOT = Path(__file__).resolve().parents[1]
ACTIVATIONS = ("tanh", "softplus", "silu")
DEPTH, BETA, W_STD, DIM, SUBSET, REF_NODES = 3, 0.1, 1.0, 10, 60, 32


class _Recorder:
    """Collects the :class:`MehlerInfo` of every expansion call (terms used, entries by quadrature)."""

    def __init__(self) -> None:
        self.infos: list[mehler_module.MehlerInfo] = []
        self._orig = mehler_module.mehler_expectations

    def __enter__(self) -> _Recorder:
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            out = self._orig(*args, **kwargs)
            self.infos.append(out[1])
            return out

        mehler_module.mehler_expectations = wrapped
        return self

    def __exit__(self, *exc: object) -> None:
        mehler_module.mehler_expectations = self._orig


def _timed(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def _kernel(act: CallableActivation, x: torch.Tensor) -> ntkit.Kernel:
    return ntkit.fc_kernel(x, depth=DEPTH, activation=act, b_std=BETA, w_std=W_STD)


def run(sizes: list[int], limit: float, repeat: int) -> list[dict[str, object]]:
    rows = []
    warm = torch.randn(8, DIM, dtype=torch.float64)
    for name in ACTIVATIONS:
        act = get_activation(name)
        assert isinstance(act, CallableActivation)
        quad = CallableActivation(act.fn, name=name, method="quadrature")
        fine = CallableActivation(act.fn, name=name, method="quadrature", nodes=REF_NODES)
        for a in (act, quad):
            _kernel(a, warm)
        last: tuple[int, float] | None = None
        for n in sizes:
            x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
            with _Recorder() as rec:
                t_m, k_m = _timed(lambda x=x, a=act: _kernel(a, x), repeat)
            infos = rec.infos[-DEPTH:]
            predicted = None if last is None else last[1] * (n / last[0]) ** 2
            t_q: float | None = None
            k_q = None
            if predicted is None or predicted < limit:
                t_q, k_q = _timed(lambda x=x, a=quad: _kernel(a, x), 1)
                last = (n, t_q)
            sub = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: min(n, SUBSET)].sort().values
            ref = _kernel(fine, x[sub])
            ix = (sub[:, None], sub[None, :])
            row = {
                "activation": name,
                "n": n,
                "mehler_s": t_m,
                "quadrature_s": t_q,
                "predicted_quadrature_s": predicted if t_q is None else None,
                "err_mehler": max(_err(k_m.nngp[ix], ref.nngp), _err(k_m.ntk[ix], ref.ntk)),  # type: ignore[attr-defined]
                "err_quadrature": None
                if k_q is None
                else max(_err(k_q.nngp[ix], ref.nngp), _err(k_q.ntk[ix], ref.ntk)),  # type: ignore[attr-defined]
                "terms": max(i.terms for i in infos),
                "fallback": sum(i.fallback for i in infos),
                "entries": sum(i.entries for i in infos),
            }
            rows.append(row)
            quad_txt = f"{t_q:.2f} s" if t_q is not None else f"(not run, ~{predicted:.0f} s)"
            eq = "-" if row["err_quadrature"] is None else f"{row['err_quadrature']:.1e}"
            print(
                f"{name:8s} N={n:5d}  mehler {t_m:.3f} s  quadrature {quad_txt}  err mehler {row['err_mehler']:.1e} "
                f"quadrature {eq}  terms<={row['terms']}  to quadrature {row['fallback']}/{row['entries']}",
                flush=True,
            )
    return rows


def to_markdown(rows: list[dict[str, object]], args: argparse.Namespace, wall: float) -> str:
    lines = [
        "# bench_mehler.py — Mehler / Hermite fast path vs quadrature (measured)",
        "",
        f"*Generated by `benchmarks/bench_mehler.py`; {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {torch.get_num_threads()} threads, total {wall:.0f} s.*",
        "",
        f"Depth-{DEPTH} NNGP + NTK (`ntkit.fc_kernel`, symmetric: upper triangle), `x ~ N(0, I_{DIM})`, "
        f"beta = {BETA}, w_std = {W_STD}, float64. Times: best of {args.repeat} (Mehler) / one run (quadrature, "
        "the previous default, 16 nodes per panel), after a warm-up call, measured side by side in one process "
        "on the shared 2-core machine under `flock /work/cpu.lock`. Errors: `max |K - K_ref| / max |K_ref|` over "
        f"NNGP and NTK on {SUBSET} random points (kernel entries depend only on their two points, so the "
        f"sub-matrix is exact), `K_ref` the quadrature with {REF_NODES} nodes per panel. `terms`: most Hermite "
        "terms any entry used; `to quadrature`: entries the truncation bound did not certify (all 3 layers).",
        "",
        "| activation | N | Mehler | quadrature | speed-up | err Mehler | err quadrature | terms | to quadrature |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tq = r["quadrature_s"]
        quad = f"{tq:.2f} s" if tq is not None else f"not run (~{r['predicted_quadrature_s']:.0f} s extrapolated)"
        ratio = f"{tq / r['mehler_s']:.0f}x" if tq is not None else "-"  # type: ignore[operator]
        eq = "-" if r["err_quadrature"] is None else f"{r['err_quadrature']:.1e}"
        lines.append(
            f"| {r['activation']} | {r['n']} | {r['mehler_s']:.3f} s | {quad} | {ratio} | {r['err_mehler']:.1e} | "
            f"{eq} | {r['terms']} | {r['fallback']} / {r['entries']} |"
        )
    lines += ["", "Command: `" + " ".join(["python", "benchmarks/bench_mehler.py", *sys.argv[1:]]) + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--quadrature-limit", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write a markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(args.sizes, args.quadrature_limit, args.repeat)
    text = to_markdown(rows, args, time.perf_counter() - start)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
