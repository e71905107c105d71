"""Kernel regression beyond memory: exact vs CG vs Nystrom on a synthetic teacher task (depth-3 ReLU NTK).

Task: ``x ~ N(0, I_100)``, ``y = f(x) + noise``, where ``f`` is a fixed random ReLU network
100 -> 512 -> 512 -> 1 (seed 0, He initialisation) normalised to unit variance, and the noise is
Gaussian with known standard deviation ``--noise`` (0.2). The ridge is the GP-consistent
``diag_reg = noise^2 * mean(diag Theta) / Var(f)``. Test error: MSE against the noiseless ``f`` on
5,000 fixed test points (so 0 is perfect and 1 is predicting the mean).

``features``: ridge regression on ``m = --centres`` random features of the same NTK
(:func:`ntkit.features` through ``KernelSystem(solver="features")``): ``O(N m^2)`` like Nystrom's
``K_nm^T K_nm`` pass, but no kernel tile is ever evaluated.

Each solver runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is its own;
predictions are saved and compared in the parent (CG vs exact: relative max difference). Kernel
tiles are streamed through the fused recursion of :mod:`ntkit.compute.fused`
(:class:`ntkit.solve.FusedTiles`); ``K_nm`` is never stored at 1M (``--method gram``: one pass
accumulating ``K_nm^T K_nm`` in float64 from float32 tiles, checkpointed every minute). The exact
and CG solvers run through :class:`ntkit.solve.KernelSystem` (the path of ``ntkit.predict`` and
``ntkit.sklearn``).

Examples
--------
python benchmarks/bench_solvers.py --n 20000 --solvers exact,cg,nystrom,nystrom_falkon --centres 5000
python benchmarks/bench_solvers.py --n 100000 --solvers nystrom --centres 5000
python benchmarks/bench_solvers.py --n 20000 --solvers exact,features --centres 5000,10000
nohup python benchmarks/bench_solvers.py --n 1000000 --solvers nystrom --centres 5000 > 1m.log 2>&1 &
(the 1M run checkpoints its K_nm^T K_nm accumulation in --workdir and resumes when rerun)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

D = 100
DEPTH = 3
W_STD = 2**0.5
TEACHER_WIDTH = 512


def teacher(x: torch.Tensor) -> torch.Tensor:
    """The fixed random teacher network (seed 0), unnormalised."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(D, TEACHER_WIDTH, generator=g, dtype=torch.float64) * (2 / D) ** 0.5
    w2 = torch.randn(TEACHER_WIDTH, TEACHER_WIDTH, generator=g, dtype=torch.float64) * (2 / TEACHER_WIDTH) ** 0.5
    w3 = torch.randn(TEACHER_WIDTH, generator=g, dtype=torch.float64) * (1 / TEACHER_WIDTH) ** 0.5
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for r0 in range(0, x.shape[0], 50_000):
        h = torch.relu(x[r0 : r0 + 50_000] @ w1)
        out[r0 : r0 + 50_000] = torch.relu(h @ w2) @ w3
    return out


def make_data(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, f(x) normalised, y = f + noise)`` for ``n`` points from seed ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    ref = teacher(torch.randn(20_000, D, generator=torch.Generator().manual_seed(99), dtype=torch.float64))
    mu, sd = float(ref.mean()), float(ref.std())
    f = (teacher(x) - mu) / sd
    y = f + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return x, f, y


def worker(args: argparse.Namespace) -> None:
    from ntkit.solve import FusedTiles, KernelOperator, KernelSystem, fc_kernel_diag, nystrom_krr

    torch.set_num_threads(args.threads)
    x, _, y = make_data(args.n, 1, args.noise)
    xt, ft, _ = make_data(args.n_test, 2, args.noise)
    kw = dict(depth=DEPTH, activation="relu", w_std=W_STD)
    tiles = FusedTiles(**kw)  # type: ignore[arg-type]
    diag_reg = args.noise**2 * float(fc_kernel_diag(x[:10_000], **kw).mean())  # type: ignore[arg-type]
    t0 = time.perf_counter()
    info: dict[str, object] = {"solver": args.worker, "n": args.n, "diag_reg": diag_reg, "threads": args.threads}
    if args.worker == "exact":
        system = KernelSystem(KernelOperator(x, tile_fn=tiles), y, diag_reg=diag_reg, solver="cholesky")
        pred = system.predict(x_test=xt)
    elif args.worker == "features":
        # random features of the same NTK (ntkit.features), ridge on their m x m normal equations
        op32 = KernelOperator(x, tile_fn=tiles, tile_dtype=torch.float32)
        system = KernelSystem(op32, y, diag_reg=diag_reg, solver="features", n_features=args.centres,
                              generator=torch.Generator().manual_seed(3), progress=True)
        pred = system.predict(x_test=xt)
        info.update(n_features=args.centres)
    elif args.worker == "cg":
        # float32 tiles in the CG iterations, float64 residuals (iterative refinement) to --tol
        op32 = KernelOperator(x, tile_fn=tiles, tile_dtype=torch.float32, tile_rows=256, tile_cols=8192)
        system = KernelSystem(
            op32, y, diag_reg=diag_reg, solver="cg", tol=args.tol, precond_rank=args.rank, progress=True
        )
        pred = system.predict(x_test=xt)
        info.update(rank=args.rank, tol=args.tol)
    else:
        # "nystrom" uses --method; "nystrom_falkon" forces Falkon's per-iteration K_nm passes
        method = "falkon" if args.worker == "nystrom_falkon" else args.method
        ckpt = Path(args.workdir) / f"gram_n{args.n}_m{args.centres}.pt"  # resumed by a rerun
        iters: list[int] = []
        model = nystrom_krr(
            x,
            y,
            tile_fn=tiles,
            n_centres=args.centres,
            diag_reg=diag_reg,
            generator=torch.Generator().manual_seed(3),
            tile_dtype=torch.float32,
            method=method,
            checkpoint=ckpt if method == "gram" else None,
            tol=1e-9,
            max_iter=200,
            progress=True,
            callback=lambda it, a, r: iters.append(it),
        )
        pred = model.predict(xt)
        info.update(centres=args.centres, method=method, cg_iter=model.cg.n_iter, converged=model.cg.converged)
    info["time_s"] = round(time.perf_counter() - t0, 1)
    info["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    info["load_avg_end"] = round(os.getloadavg()[0], 2)
    info["test_mse"] = float(((pred - ft) ** 2).mean())
    np.save(Path(args.workdir) / f"pred_{args.label or args.worker}_n{args.n}.npy", pred.numpy())
    print("RESULT " + json.dumps(info), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--n-test", type=int, default=5_000)
    p.add_argument("--solvers", default="exact,cg,nystrom")
    p.add_argument("--centres", default="5000",
                   help="Nystrom centres M / random features m, a comma-separated list (one run each)")
    p.add_argument("--method", default="gram", choices=["gram", "falkon"])
    p.add_argument("--rank", type=int, default=500, help="pivoted-Cholesky preconditioner rank (cg)")
    p.add_argument("--tol", type=float, default=1e-9, help="cg relative residual")
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/ntkit_bench_solvers")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--label", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.worker:
        args.centres = int(args.centres.split(",")[-1])  # a Nystrom / features worker gets its own --centres last
        worker(args)
        return
    load0 = os.getloadavg()[0]
    results = {}
    runs: list[tuple[str, list[str]]] = []  # (label, worker arguments)
    for solver in args.solvers.split(","):
        if solver.startswith("nystrom") or solver == "features":
            runs += [(f"{solver}_m{m}", ["--worker", solver, "--centres", m]) for m in args.centres.split(",")]
        else:
            runs.append((solver, ["--worker", solver]))
    for solver, extra in runs:
        cmd = [sys.executable, __file__, *sys.argv[1:], *extra, "--label", solver]
        print(f"== {solver}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{solver}: failed (exit {proc.returncode})")
            continue
        results[solver] = json.loads(lines[-1][7:])
        print(json.dumps(results[solver]), flush=True)
    print(f"\nN = {args.n}, depth-3 ReLU NTK, d = {D}, noise {args.noise}, test MSE vs noiseless teacher")
    print(f"threads {args.threads}, 1-min load average at start {load0:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"{'solver':22s} {'time s':>8s} {'peak GB':>8s} {'test MSE':>10s}")
    for s, r in results.items():
        print(f"{s:22s} {r['time_s']:8.1f} {r['peak_rss_gb']:8.2f} {r['test_mse']:10.5f}")
    if "exact" in results:
        ex = results["exact"]
        exact_pred = np.load(Path(args.workdir) / f"pred_exact_n{args.n}.npy")
        for s, r in results.items():
            if s == "exact":
                continue
            pred = np.load(Path(args.workdir) / f"pred_{s}_n{args.n}.npy")
            rel = float(np.abs(pred - exact_pred).max() / np.abs(exact_pred).max())
            print(
                f"{s} vs exact: time ratio {r['time_s'] / ex['time_s']:.2f}, "
                f"test-MSE ratio {r['test_mse'] / ex['test_mse']:.4f}, max rel. prediction diff {rel:.2e}"
            )


if __name__ == "__main__":
    main()
