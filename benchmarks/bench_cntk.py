"""Convolutional NTKs (CNTK-GAP, CNTK-V, Myrtle) on a CPU: ntkit against neural-tangents, side by side.

For every case, size N and dtype, the NNGP and NTK of N random normal images against themselves
(fixed seed; channels first for ntkit, the same values channels last for neural-tangents) are
computed by

* ntkit: ``ntkit.compute.compute_kernel(..., x, which="both")`` (``--entry infinite_kernel``:
  ``ntkit.infinite_kernel(model, x)``, which also returns the diagonal) of an ``ntkit.nn.cntk`` /
  ``ntkit.nn.myrtle`` model on the meta device; a warm-up call on two images (it builds and loads
  any native code, cached in ``~/.cache/ntkit``) runs before the timed call and is reported apart;
* neural-tangents (``_nt_cntk_worker.py``, run with ``--nt-python``): the same architecture in
  stax, ``jax.jit(kernel_fn)(x, None, ("nngp", "ntk"))`` compiled ahead of time for that exact
  shape; the compile time is excluded from its seconds and reported apart (``--nt-batch B``:
  ``nt.batch`` with B x B blocks instead, compiled on one block).

Each measurement is a fresh subprocess (its own peak RSS, ``ru_maxrss``) under a wall-clock
``--timeout`` and an address-space limit (``RLIMIT_AS``, ``--mem-limit`` GiB) so that an
out-of-memory fails that process only; a timeout or an out-of-memory is reported as such, with
the resident memory it had reached, and larger N of the same case, dtype and side are then
skipped (the largest N that finished is listed). Printed per case: seconds, peak RSS (and its
growth during the timed call), the ratios neural-tangents / ntkit of time and of peak RSS, image
pairs per second (N (N + 1) / 2 pairs: the symmetric kernel's distinct entries), and the largest
entrywise relative difference of the NTK and NNGP between the two sides (float64: must be below
1e-10). The summary ends with the pairs-per-second series against N of every case run at several N.

Cases are ``ARCH-HxWxC:N,N,...`` with ARCH ``gap`` (CNTK-GAP), ``v`` (CNTK-V, flattening read-out),
both of ``--depth`` convolutions, or ``myrtle5`` / ``myrtle7`` / ``myrtle10``. Run from the
repository root, under the CPU lock (the whole default list takes over an hour, mostly
neural-tangents)::

    flock /work/cpu.lock .venv/bin/python benchmarks/bench_cntk.py
    .venv/bin/python benchmarks/bench_cntk.py --cases gap-8x8x1:16 v-8x8x1:16 myrtle5-32x32x3:2 --dtypes float64
    .venv/bin/python benchmarks/bench_cntk.py --cases gap-32x32x3:4,8,16 --skip-nt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NT_WORKER = Path(__file__).with_name("_nt_cntk_worker.py")
DEFAULT_CASES = ["gap-8x8x1:256", "gap-32x32x3:4,8,16,32,64", "v-32x32x3:256", "myrtle5-32x32x3:4,8,16"]
ARCHS = {"gap": "CNTK-GAP", "v": "CNTK-V", "myrtle5": "Myrtle-5", "myrtle7": "Myrtle-7", "myrtle10": "Myrtle-10"}
#: Largest entrywise relative difference of the two sides' kernels accepted, by dtype.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
#: Messages of a process that ran out of (address space) memory: XLA, the C++ runtime, torch, Python.
OOM_PATTERNS = ("RESOURCE_EXHAUSTED", "bad_alloc", "MemoryError", "Out of memory", "out of memory",
                "Cannot allocate memory", "can't allocate memory", "Resource exhausted")


@dataclass(frozen=True)
class Case:
    arch: str
    shape: tuple[int, int, int]  # (H, W, C)
    sizes: tuple[int, ...]

    @property
    def name(self) -> str:
        h, w, c = self.shape
        return f"{self.arch}-{h}x{w}x{c}"


def parse_case(spec: str) -> Case:
    m = re.fullmatch(r"(gap|v|myrtle5|myrtle7|myrtle10)-(\d+)x(\d+)x(\d+):(\d+(?:,\d+)*)", spec)
    if m is None:
        raise argparse.ArgumentTypeError(f"case {spec!r}: expected ARCH-HxWxC:N,N,... with ARCH one of {list(ARCHS)}")
    h, w, c = int(m[2]), int(m[3]), int(m[4])
    if m[1].startswith("myrtle") and (h % 8 or w % 8):
        raise argparse.ArgumentTypeError(f"case {spec!r}: Myrtle needs H and W divisible by 8")
    return Case(m[1], (h, w, c), tuple(int(n) for n in m[5].split(",")))


@dataclass
class Outcome:
    status: str  # "ok", "timeout", "oom", "error", "skipped"
    seconds: float = math.nan
    peak: float = math.nan  # bytes; for a killed process the last resident high-water mark seen
    base: float = math.nan
    setup: float = math.nan  # ntkit's warm-up / neural-tangents' compilation, seconds
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------- ntkit worker


def ntkit_worker(job: dict[str, Any]) -> None:
    """The ntkit side (in a fresh process): warm up, time the kernel, save it, print one JSON line."""
    import torch

    import ntkit
    from ntkit.compute import compute_kernel

    dtype = getattr(torch, job["dtype"])
    x = torch.from_numpy(np.load(job["x"])).to(dtype)
    _, c, h, w = x.shape
    arch, depth, sqrt2 = job["arch"], int(job["depth"]), math.sqrt(2.0)
    if arch in ("gap", "v"):
        model = ntkit.nn.cntk(c, depth, readout="gap" if arch == "gap" else "flatten", image_shape=(h, w),
                              out_features=1, w_std=sqrt2, device="meta")
    else:
        model = ntkit.nn.myrtle(int(arch.removeprefix("myrtle")), c, out_features=1, w_std=sqrt2, device="meta")
    opts: dict[str, Any] = {"dtype": dtype} if job["budget"] is None else {"dtype": dtype, "budget": job["budget"]}

    def run(xs: torch.Tensor) -> Any:
        if job["entry"] == "infinite_kernel":
            return ntkit.infinite_kernel(model, xs, which="both", **opts)
        return compute_kernel(model, xs, which="both", **opts)

    t0 = time.perf_counter()
    run(x[:2])  # builds / loads native code (cached) outside the timed region
    warm = time.perf_counter() - t0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    res = run(x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(job["out"], nngp=res.nngp.numpy(), ntk=res.ntk.numpy())
    print(json.dumps({
        "seconds": seconds, "setup": warm, "base": base, "peak": peak, "dtype": str(res.ntk.dtype),
        "versions": {"ntkit": getattr(ntkit, "__version__", "?"), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
    }), flush=True)


# --------------------------------------------------------------------------------------------- subprocesses


def _hwm(pid: int) -> float:
    """Resident high-water mark of a running process (bytes), nan when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.nan


def run_job(cmd: list[str], env: dict[str, str], timeout: float, mem_limit: float) -> Outcome:
    """Run a worker with an address-space limit and a wall-clock timeout; classify how it ended."""

    def limit() -> None:
        if mem_limit > 0:
            lim = int(mem_limit * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    t_start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, preexec_fn=limit,
                                start_new_session=True)
        hwm, timed_out = math.nan, False
        while proc.poll() is None:
            hwm = max(_hwm(proc.pid), 0.0 if math.isnan(hwm) else hwm)
            if time.monotonic() - t_start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session (it and any compiler it started)
                proc.wait()
                break
            time.sleep(0.25)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    wall = time.monotonic() - t_start
    if timed_out:
        return Outcome("timeout", peak=hwm, note=f"no result within {timeout:.0f} s")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        info = json.loads(lines[-1])
        setup = info.get("setup", info.get("compile", math.nan))  # ntkit's warm-up, neural-tangents' compile
        return Outcome("ok", seconds=info["seconds"], peak=info["peak"], base=info["base"], setup=setup, info=info)
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith(("WARNING", "I0000"))]
    last = tail[-1][:200] if tail else f"exit status {proc.returncode}"
    oom = any(p in stderr for p in OOM_PATTERNS) or proc.returncode == -signal.SIGKILL
    if oom:
        what = next((ln for ln in reversed(tail) if any(p in ln for p in OOM_PATTERNS)), last)[:200]
        return Outcome("oom", peak=hwm, note=f"out of memory after {wall:.0f} s (limit {mem_limit:g} GiB): {what}")
    return Outcome("error", peak=hwm, note=f"failed after {wall:.0f} s: {last}")


# --------------------------------------------------------------------------------------------- reporting


def gib(b: float) -> str:
    return "-" if math.isnan(b) else f"{b / 2**30:.2f} GiB"


def pairs(n: int) -> int:
    return n * (n + 1) // 2


def rel_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Largest entrywise ``|a - b| / |b|`` off the diagonal and on it (nan where there are none)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    r = np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float64).tiny)
    off = r[np.eye(*r.shape) == 0]
    return (float(off.max()) if off.size else math.nan), float(np.diagonal(r).max())


def cntk_v_diagonal(x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact NNGP and NTK diagonals ``K(x_i, x_i)`` of CNTK-V (3x3 SAME convolutions, W_std^2 = 2, flatten).

    On identical inputs every ReLU sees correlation 1: ``E[relu(u)^2] = S / 2`` and ``E[relu'(u)^2] = 1 / 2``,
    so the recursion is linear (sums and halvings only, exact to float64 rounding), and CNTK-V needs only
    each pixel's own variance: a convolution averages its 3x3 window (zeros outside, divided by 9).
    """
    h, w = x.shape[2:]

    def conv(v: np.ndarray) -> np.ndarray:  # W_std^2 x the 3x3 window mean
        pad = np.pad(v, ((0, 0), (1, 1), (1, 1)))
        total = np.zeros_like(v)
        for i in range(3):
            for j in range(3):
                total += pad[:, i:i + h, j:j + w]
        return 2.0 * total / 9.0

    sigma = conv((x.astype(np.float64) ** 2).mean(axis=1))
    theta = sigma
    for _ in range(depth - 1):
        sigma, theta = conv(sigma / 2), conv(theta / 2) + conv(sigma / 2)
    # read-out Dense(W_std^2 = 2) on the flattened ReLU features: pixel means
    return sigma.mean(axis=(1, 2)), (theta + sigma).mean(axis=(1, 2))


def describe(side: str, o: Outcome, n: int) -> str:
    if o.status == "skipped":
        return f"  {side:6s} skipped ({o.note})"
    if not o.ok:
        return f"  {side:6s} {o.status.upper()}: {o.note}; resident memory reached {gib(o.peak)}"
    setup = "warm-up" if side == "ntkit" else "compile"
    return (f"  {side:6s} {o.seconds:9.3f} s  peak RSS {gib(o.peak)} (+{gib(o.peak - o.base)} in the call)  "
            f"{setup} {o.setup:.2f} s  {pairs(n) / o.seconds:10.2f} pairs/s")


@dataclass
class Row:
    case: Case
    n: int
    dtype: str
    ntkit: Outcome | None
    nt: Outcome | None
    diff: dict[str, float] = field(default_factory=dict)  # ntk_off, ntk_diag, nngp_off, nngp_diag

    def side(self, name: str) -> Outcome | None:
        return self.ntkit if name == "ntkit" else self.nt

    def dcell(self, key: str) -> str:
        d = self.diff.get(key, math.nan)
        return "-" if math.isnan(d) else f"{d:.1e}"

    @property
    def both_ok(self) -> bool:
        return self.ntkit is not None and self.nt is not None and self.ntkit.ok and self.nt.ok

    def value(self, o: Outcome, what: str) -> float:
        return {"seconds": o.seconds, "peak": o.peak, "gib": o.peak / 2**30, "rate": pairs(self.n) / o.seconds}[what]

    def cell(self, name: str, what: str, fmt: str) -> str:
        o = self.side(name)
        if o is None or o.status == "skipped":
            return "-"
        return format(self.value(o, what), fmt) if o.ok else o.status.upper()

    def ratio(self, what: str) -> str:
        """neural-tangents / ntkit of ``what`` where both finished."""
        if not self.both_ok:
            return "-"
        assert self.ntkit is not None and self.nt is not None
        return f"{self.value(self.nt, what) / self.value(self.ntkit, what):.2f}"


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", type=parse_case, default=[parse_case(c) for c in DEFAULT_CASES],
                   help=f"ARCH-HxWxC:N,N,... (default: {' '.join(DEFAULT_CASES)})")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"])
    p.add_argument("--depth", type=int, default=5, help="convolutions of gap / v (default 5)")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock seconds per measurement (default 600)")
    p.add_argument("--mem-limit", type=float, default=20.0,
                   help="address-space limit (RLIMIT_AS) of every worker in GiB, 0: none (default 20)")
    p.add_argument("--nt-python", default="/work/nt-venv/bin/python")
    p.add_argument("--skip-nt", action="store_true", help="ntkit only")
    p.add_argument("--skip-ntkit", action="store_true", help="neural-tangents only")
    p.add_argument("--nt-batch", type=int, default=0, help="nt.batch block size (default 0: one jit call)")
    p.add_argument("--entry", choices=["compute_kernel", "infinite_kernel"], default="compute_kernel")
    p.add_argument("--budget", default=None, help="ntkit's tile memory budget, e.g. 1G (default: ntkit's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-going", action="store_true",
                   help="also try larger N after a timeout / out-of-memory of the same case, dtype and side")
    p.add_argument("--ntkit-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ntkit_worker:
        ntkit_worker(json.loads(args.ntkit_worker))
        return

    have_nt = not args.skip_nt and Path(args.nt_python).exists()
    if not args.skip_nt and not have_nt:
        print(f"neural-tangents python {args.nt_python} not found: its side is skipped")
    ntkit_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                            os.environ.get("PYTHONPATH")]))}
    nt_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; timeout {args.timeout:.0f} s, "
          f"address-space limit {args.mem_limit:g} GiB per process; ntkit entry {args.entry}, "
          f"budget {args.budget or 'default'}; neural-tangents "
          f"{'skipped' if not have_nt else (f'nt.batch({args.nt_batch})' if args.nt_batch else 'jit')}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_cntk_"))
    rows: list[Row] = []
    failed_at: dict[tuple[str, str, str], int] = {}
    versions: dict[str, dict[str, Any]] = {}
    for case in args.cases:
        h, w, c = case.shape
        for n in case.sizes:
            xfile = tmp / f"x_{c}x{h}x{w}_{n}.npy"
            np.save(xfile, np.random.default_rng(args.seed).standard_normal((n, c, h, w)))
            for dtype in args.dtypes:
                print(f"\n{ARCHS[case.arch]} {case.name} N={n} {dtype} ({pairs(n)} pairs)", flush=True)
                res: dict[str, Outcome | None] = {}
                for side in ("ntkit", "nt"):
                    if (side == "nt" and not have_nt) or (side == "ntkit" and args.skip_ntkit):
                        res[side] = None
                        continue
                    key = (case.name, dtype, side)
                    if key in failed_at and not args.keep_going:
                        skipped = Outcome("skipped", note=f"failed at N={failed_at[key]}")
                        res[side] = skipped
                        print(describe(side, skipped, n), flush=True)
                        continue
                    out = tmp / f"{side}_{case.name}_{n}_{dtype}.npz"
                    job = {"arch": case.arch, "depth": args.depth, "x": str(xfile), "dtype": dtype, "out": str(out),
                           "batch": args.nt_batch, "entry": args.entry, "budget": args.budget}
                    if side == "ntkit":
                        cmd = [sys.executable, str(Path(__file__).resolve()), "--ntkit-worker", json.dumps(job)]
                        o = run_job(cmd, ntkit_env, args.timeout, args.mem_limit)
                    else:
                        o = run_job([args.nt_python, str(NT_WORKER), json.dumps(job)], nt_env, args.timeout,
                                    args.mem_limit)
                    if o.ok:
                        versions[side] = o.info.get("versions", {})
                        if o.info.get("dtype", dtype).removeprefix("torch.") != dtype:
                            o.note = f"computed in {o.info['dtype']}, not {dtype}"
                    elif o.status in ("timeout", "oom"):
                        failed_at[key] = n
                    res[side] = o
                    print(describe(side, o, n), flush=True)
                ours, nt = res["ntkit"], res["nt"]
                row = Row(case, n, dtype, ours, nt)
                if row.both_ok:
                    assert ours is not None and nt is not None
                    a = np.load(tmp / f"ntkit_{case.name}_{n}_{dtype}.npz")
                    b = np.load(tmp / f"nt_{case.name}_{n}_{dtype}.npz")
                    for k in ("ntk", "nngp"):
                        row.diff[f"{k}_off"], row.diff[f"{k}_diag"] = rel_diff(a[k], b[k])
                    worst = max(row.diff["ntk_off"], row.diff["nngp_off"])
                    verdict = "OK" if worst <= TOLERANCE[dtype] else ("-" if math.isnan(worst) else "MISMATCH")
                    print(f"  NT/ntkit: time {nt.seconds / ours.seconds:.2f}x, peak RSS {nt.peak / ours.peak:.2f}x",
                          flush=True)
                    print(f"  max rel diff off the diagonal: NTK {row.dcell('ntk_off')}, NNGP {row.dcell('nngp_off')} "
                          f"({verdict}, tolerance {TOLERANCE[dtype]:.0e}); on the diagonal: NTK "
                          f"{row.dcell('ntk_diag')}, NNGP {row.dcell('nngp_diag')}", flush=True)
                    if case.arch == "v":
                        x_run = np.load(xfile).astype(dtype)  # the values both sides saw
                        ex_nngp, ex_ntk = cntk_v_diagonal(x_run, args.depth)
                        err = {side: (float(np.abs(np.diagonal(m["ntk"]) / ex_ntk - 1).max()),
                                      float(np.abs(np.diagonal(m["nngp"]) / ex_nngp - 1).max()))
                               for side, m in (("ntkit", a), ("NT", b))}
                        print("  diagonal vs its exact linear recursion (rel err NTK, NNGP): "
                              + ", ".join(f"{s} {e[0]:.1e}, {e[1]:.1e}" for s, e in err.items()), flush=True)
                rows.append(row)

    print(f"\nsummary (seconds exclude ntkit's warm-up and neural-tangents' compilation; peak RSS in GiB; "
          f"pairs/s = N(N+1)/2 / seconds; load average {os.getloadavg()[0]:.2f})")
    print(f"{'case':>16} {'N':>4} {'dtype':>7} {'ntkit s':>9} {'NT s':>9} {'NT/ntkit':>8} {'ntkit GiB':>9} "
          f"{'NT GiB':>8} {'mem NT/nk':>9} {'ntkit pairs/s':>13} {'NT pairs/s':>11} {'NTK off-d':>12} {'diag':>9}")
    for r in rows:
        print(f"{r.case.name:>16} {r.n:>4} {r.dtype:>7} {r.cell('ntkit', 'seconds', '.3f'):>9} "
              f"{r.cell('nt', 'seconds', '.3f'):>9} {r.ratio('seconds'):>8} {r.cell('ntkit', 'gib', '.2f'):>9} "
              f"{r.cell('nt', 'gib', '.2f'):>8} {r.ratio('peak'):>9} {r.cell('ntkit', 'rate', '.2f'):>13} "
              f"{r.cell('nt', 'rate', '.2f'):>11} {r.dcell('ntk_off'):>12} {r.dcell('ntk_diag'):>9}")
    for case in args.cases:
        if len(case.sizes) < 2:
            continue
        for dtype in args.dtypes:
            print(f"\npairs per second against N: {ARCHS[case.arch]} {case.name} {dtype}")
            print(f"{'N':>5} {'pairs':>6} {'ntkit':>10} {'NT':>10}")
            for r in rows:
                if r.case == case and r.dtype == dtype:
                    print(f"{r.n:>5} {pairs(r.n):>6} {r.cell('ntkit', 'rate', '.2f'):>10} "
                          f"{r.cell('nt', 'rate', '.2f'):>10}")
    print("\nlargest N that finished (ntkit / NT), and failures:")
    for case in args.cases:
        for dtype in args.dtypes:
            mine = [r for r in rows if r.case == case and r.dtype == dtype]
            done = [max((r.n for r in mine if (oc := r.side(s)) is not None and oc.ok), default=None)
                    for s in ("ntkit", "nt")]
            fails = [f"{s} {oc.status} at N={r.n}" for r in mine for s in ("ntkit", "nt")
                     if (oc := r.side(s)) is not None and oc.status in ("timeout", "oom", "error")]
            print(f"  {case.name} {dtype}: {done[0] or '-'} / {done[1] or '-'}"
                  + (f"  ({'; '.join(fails)})" if fails else ""))
    for side, v in versions.items():
        print(f"{side} versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(f"(kernels and inputs kept in {tmp})")


if __name__ == "__main__":
    main()
