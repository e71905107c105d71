"""Depth-3 ReLU NNGP + NTK on a CPU: ntkit's entry points vs neural-tangents vs the reference evaluator.

Columns: ``compute_kernel`` (tiled, in memory), ``fc_kernel`` (the fully connected shortcut) and
``infinite_kernel`` of an ``ntkit.nn`` model (the same fast path, found by recognising the model's
pattern), neural-tangents 0.6.5 (jit), and ntkit's reference evaluator alone (``reference``: one
readable torch recursion over the whole matrix, what a plain eager implementation costs). Each
measurement runs in a fresh subprocess (so its peak RSS is its own), alternatives side by side for
every size and dtype, and the ratios are printed. Usage::

    PYTHONPATH=src python benchmarks/bench_kernels.py --sizes 2000 4000 8000 16000
    PYTHONPATH=src python benchmarks/bench_kernels.py --sizes 8000 --skip-eager-above 8000
    PYTHONPATH=src python benchmarks/bench_kernels.py --sizes --out-of-core 50000 --ooc-dir /tmp/k

neural-tangents (jit, its own batching) runs in its own environment, ``--nt-python``
(default /work/nt-venv/bin/python); when that is missing its column is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

D = 100
DEPTH = 3

NTKIT = r"""
import json, resource, sys, time, torch, ntkit
from ntkit.compute import compute_kernel
from ntkit.infinite.reference import reference_kernel
from ntkit.infinite.walk import describe_model
import numpy as np
x = torch.from_numpy(np.load(sys.argv[1])).to(getattr(torch, sys.argv[2]))
entry = sys.argv[4]
model = ntkit.nn.fc(x.shape[1], depth=DEPTH_, activation="relu", device="meta")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
if entry == "compute_kernel":
    ntk = compute_kernel(None, x, depth=DEPTH_, activation="relu", dtype=x.dtype, memory_budget=int(sys.argv[3])).ntk
elif entry == "fc_kernel":
    ntk = ntkit.fc_kernel(x, depth=DEPTH_, activation="relu", dtype=x.dtype).ntk
elif entry == "infinite_kernel":
    ntk = ntkit.infinite_kernel(model, x, dtype=x.dtype).ntk
else:
    ntk = reference_kernel(describe_model(model, (x.shape[1],)), x)[1]
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": t, "peak": peak, "base": rss0, "check": float(ntk[0, 1])}))
""".replace("DEPTH_", str(DEPTH))

ENTRIES = ("compute_kernel", "fc_kernel", "infinite_kernel", "reference")

NT = r"""
import json, resource, sys, time
import numpy as np
dtype = sys.argv[2]
if dtype == "float64":
    from jax import config
    config.update("jax_enable_x64", True)
import jax, jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
layers = []
for _ in range(DEPTH_):
    layers += [stax.Dense(512, W_std=1.0, b_std=None), stax.Relu()]
_, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=1.0, b_std=None))
x = jnp.asarray(np.load(sys.argv[1]).astype(dtype))
n = x.shape[0]
batch = int(sys.argv[3])
if batch and n > batch and n % batch == 0:
    fn = nt.batch(kernel_fn, batch_size=batch, store_on_device=False)
else:
    fn = jax.jit(kernel_fn, static_argnames="get")
fn(x[:16], None, ("nngp", "ntk"))  # compile a small shape (batched: the batch shape below)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
k = fn(x, None, ("nngp", "ntk"))
jax.block_until_ready(k)
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": t, "peak": peak, "base": rss0, "check": float(k.ntk[0, 1])}))
""".replace("DEPTH_", str(DEPTH))


def run(python: str, code: str, *args: str) -> dict[str, float] | None:
    env = {**os.environ}
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"  (failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
        return None
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[2000, 4000, 8000, 16000])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--budget", type=int, default=256 * 2**20)
    p.add_argument("--nt-python", default="/work/nt-venv/bin/python")
    p.add_argument("--nt-batch", type=int, default=0, help="nt.batch size for N above it (default 0: plain jit)")
    p.add_argument("--skip-reference-above", type=int, default=8000)
    p.add_argument("--skip-nt-above", type=int, default=16000)
    p.add_argument("--out-of-core", type=int, nargs="*", default=[])
    p.add_argument("--ooc-dir", default=tempfile.gettempdir())
    args = p.parse_args()
    have_nt = Path(args.nt_python).exists()
    if not have_nt:
        print(f"neural-tangents python {args.nt_python} not found: its column is skipped")
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for n in args.sizes:
        xfile = tmp / f"x{n}.npy"
        np.save(xfile, np.random.default_rng(0).standard_normal((n, D)))
        for dtype in args.dtypes:
            print(f"N={n} {dtype}", flush=True)
            res: dict[str, dict[str, float] | None] = {}
            for entry in ENTRIES:
                if entry == "reference" and n > args.skip_reference_above:
                    res[entry] = None
                    continue
                res[entry] = run(sys.executable, NTKIT, str(xfile), dtype, str(args.budget), entry)
            res["nt"] = (run(args.nt_python, NT, str(xfile), dtype, str(args.nt_batch))
                         if have_nt and n <= args.skip_nt_above else None)
            rows.append((n, dtype, res))
            for name, r in res.items():
                if r is not None:
                    print(f"  {name:16s} {r['seconds']:8.2f} s  peak RSS {gib(r['peak'])} "
                          f"(+{gib(r['peak'] - r['base'])} over start)  K[0,1]={r['check']:.6g}", flush=True)
            fused = res["compute_kernel"]
            if fused is not None:
                out_bytes = 2 * n * n * (4 if dtype == "float32" else 8)
                grow = fused["peak"] - fused["base"]
                print(f"  compute_kernel RSS growth {gib(grow)} vs output + budget {gib(out_bytes + args.budget)}: "
                      f"{'OK' if grow <= out_bytes + args.budget else 'OVER'}")
    print("\nsummary (seconds; ratio = other / compute_kernel)")
    head = " ".join(f"{name[:15]:>15}" for name in (*ENTRIES, "nt"))
    print(f"{'N':>7} {'dtype':>8} {head} {'fc/ck':>6} {'inf/ck':>6} {'nt/ck':>6} {'ref/ck':>6}")
    for n, dtype, res in rows:
        t = {name: (r["seconds"] if r else float("nan")) for name, r in res.items()}
        base = t["compute_kernel"]
        cells = " ".join(f"{t[name]:15.2f}" for name in (*ENTRIES, "nt"))
        print(f"{n:>7} {dtype:>8} {cells} {t['fc_kernel'] / base:6.2f} {t['infinite_kernel'] / base:6.2f} "
              f"{t['nt'] / base:6.2f} {t['reference'] / base:6.2f}")
    for n in args.out_of_core:
        xfile = tmp / f"x{n}.npy"
        np.save(xfile, np.random.default_rng(0).standard_normal((n, D)))
        out = Path(args.ooc_dir) / f"ntkit_k{n}.npy"
        code = r"""
import json, resource, sys, time, torch, numpy as np
from ntkit.compute import compute_kernel
x = torch.from_numpy(np.load(sys.argv[1])).float()
t0 = time.perf_counter()
r = compute_kernel(None, x, depth=DEPTH_, dtype=torch.float32, out=sys.argv[2], overwrite=True, progress=True)
print(json.dumps({"seconds": time.perf_counter() - t0, "tiles": r.tiles_total,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""".replace("DEPTH_", str(DEPTH))
        res = run(sys.executable, code, str(xfile), str(out))
        if res is not None:
            size = out.stat().st_size
            print(f"out of core N={n} float32 NNGP+NTK: {res['seconds']:.1f} s, {res['tiles']:.0f} tiles, "
                  f"file {gib(size)}, peak RSS {gib(res['peak'])} ({'OK' if res['peak'] < 2**31 else 'OVER'} 2 GB)")
            out.unlink()
            Path(str(out) + ".ledger").unlink()


if __name__ == "__main__":
    main()
