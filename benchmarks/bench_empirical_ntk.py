"""Empirical NTK: ntkit's implementations vs PyTorch's tutorial method vs neural-tangents, side by side.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_empirical_ntk.py [--threads 1] [--quick] [--big]
        [--only mlp|cnn|big] [--widths 512,2048] [--dtypes float32,float64] [--modes trace,full]

Models (same architecture, shapes and dtype on both sides; not the same weights):
a 3-hidden-layer ReLU MLP, widths 512 and 2048, d = 100, k = 10 outputs, N1 = N2 = 256 (distinct
x1, x2); and a small CNN (two 3x3 convolutions with 32 channels, ReLU, global average pooling,
dense readout; 8x8x3 images, N1 = N2 = 128). Modes: full blocks and trace; float32 and float64.

Columns (seconds, best of a few runs; lower is better). ntkit's structured (and, for the CNN, its
Jacobian) times and neural-tangents' are taken alternately, ``ROUNDS`` rounds of best-of-a-few
each, from a neural-tangents process that compiled once and waits idle while ntkit runs, so both
sides see the same machine state; each side's best is reported.
* ``structured`` / ``ntvp`` / ``jacobian``: ntkit's implementations. ``jacobian`` *is* the method of
  PyTorch's NTK tutorial (``vmap(jacrev)`` per-example Jacobians, contracted), the reference of the
  ``x tut`` ratios. Where a full run is too slow or too big it is estimated and marked ``~``: for
  the Jacobian method from separately timed per-row Jacobians and per-pair contraction
  (``t = a (N1 + N2) + b N1 N2``); for ntvp from a column subset (cost is linear in N2).
* ``NT struct`` / ``NT jac``: neural-tangents 0.6.5 (``vmap_axes=0``, jit-compiled, compile time
  excluded) in ``$NTBENCH_PYTHON`` (default /work/nt-venv, else /work/ntbench-venv), run in a
  subprocess (``_nt_worker.py``); its Jacobian contraction estimated from two subset sizes with the same linear +
  quadratic model (marked ``~``), skipped at width 2048 (the per-example Jacobians alone exceed this
  machine's memory budget).
Both sides on one thread (robust to other processes on the machine): ``--threads 1`` with
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`` in the environment
(the neural-tangents worker inherits it).
``--big`` also times a 10,000 x 10,000 trace NTK of the width-512 MLP (float32) in a subprocess and
reports its peak resident memory (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ntkit
from ntkit.empirical._common import select_parameters
from ntkit.empirical.jacobian import JacobianEngine
from ntkit.empirical.ntvp import NTVPEngine

NT_PYTHON = Path(
    os.environ.get("NTBENCH_PYTHON")
    or next((p for p in ("/work/nt-venv/bin/python", "/work/ntbench-venv/bin/python") if Path(p).exists()),
            "/work/nt-venv/bin/python")
)
NT_WORKER = Path(__file__).with_name("_nt_worker.py")
#: Rounds of alternate timing (ntkit, then neural-tangents); each side's best is reported. Five rounds
#: give both sides several chances at a quiet moment on a shared machine (the allocator also settles).
ROUNDS = 5


def best_of(fn: Callable[[], object], repeat: int, warm: bool = True) -> float:
    if warm:
        fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def mlp(width: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = 100
    for _ in range(3):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10)).to(dtype)


def cnn(dtype: torch.dtype, channels: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10),
    ).to(dtype)


def tutorial_estimate(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, mode: str, rows: int) -> float:
    """``a (N1 + N2) + b`` from the per-row Jacobian time ``a`` (``rows`` rows timed) and the time ``b``
    of the full-size contraction (the tutorial's ``einsum``), timed on random Jacobians of all N1, N2
    rows and a 1/s slice of the parameters (its cost is linear in the parameter count), times s.
    """
    params = select_parameters(model, None)
    eng = JacobianEngine(model, params, 10, 0.0)
    eng.features(x1[:1])
    t = time.perf_counter()
    eng.features(x1[:rows])
    eng.features(x2[:rows])
    a = (time.perf_counter() - t) / (2 * rows)
    n_params = sum(p.numel() for p in params.values())
    n1, n2 = x1.shape[0], x2.shape[0]
    p_slice = max(1, int(2**26 // (10 * (n1 + n2))))  # 256 MB of float32 Jacobians
    j1 = torch.randn(n1, 10, p_slice, dtype=x1.dtype)
    j2 = torch.randn(n2, 10, p_slice, dtype=x1.dtype)
    expr = "Naf,Mbf->NMab" if mode == "full" else "Naf,Maf->NM"  # the tutorial's contraction
    b = best_of(lambda: torch.einsum(expr, j1, j2), 2) * n_params / p_slice
    return a * (n1 + n2) + b


def ntvp_estimate(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, mode: str, cols: int) -> float:
    params = select_parameters(model, None)
    eng = NTVPEngine(model, params, 10, 0.0, 2**28)
    with torch.no_grad():
        t = best_of(lambda: eng.block(x1, x2[:cols], mode), 1)
    return t * x2.shape[0] / cols


def run_nt(job: dict[str, object]) -> dict[str, dict[str, object]] | str:
    if not NT_PYTHON.exists():
        return f"neural-tangents venv not found at {NT_PYTHON} (set NTBENCH_PYTHON): NT columns skipped"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(
            [str(NT_PYTHON), str(NT_WORKER), json.dumps(job)], capture_output=True, text=True, env=env, timeout=1200
        )
    except subprocess.TimeoutExpired:
        return "neural-tangents took over 1200 s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return f"neural-tangents failed: {proc.stderr.strip().splitlines()[-1:]}"
    result: dict[str, dict[str, object]] = json.loads(lines[-1])
    return result


class NTServer:
    """A neural-tangents worker process that compiled ``job`` and times it on request (``--serve``).

    Between requests it waits idle on stdin, so ntkit and neural-tangents can be timed alternately.
    """

    def __init__(self, job: dict[str, object], ready_timeout: float) -> None:
        self.error: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        if not NT_PYTHON.exists():
            self.error = f"neural-tangents venv not found at {NT_PYTHON} (set NTBENCH_PYTHON): NT columns skipped"
            return
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
        self.proc = subprocess.Popen(
            [str(NT_PYTHON), str(NT_WORKER), json.dumps(job), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        ready = self._reply(ready_timeout)
        if ready is None:
            self.error = f"neural-tangents did not compile within {ready_timeout:.0f} s"
            self.close()
        else:
            bad = {n: e for n, e in ready["ready"].items() if e != "ok"}
            self.error = f"neural-tangents failed: {bad}" if bad else None

    def _reply(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                return None
            if line.startswith("{"):
                reply: dict[str, Any] = json.loads(line)
                return reply
        return None

    def time(self, name: str, repeat: int) -> float | None:
        if self.proc is None or self.proc.stdin is None:
            return None
        self.proc.stdin.write(f"{name} {repeat}\n")
        self.proc.stdin.flush()
        reply = self._reply(3600)
        return None if reply is None else float(reply["seconds"])

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None and self.proc.stdin is not None:
                try:
                    self.proc.stdin.write("quit\n")
                    self.proc.stdin.flush()
                    self.proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


def alternate(
    ours: Callable[[], object], server: NTServer, name: str, repeat: int, rounds: int
) -> tuple[float, float | None]:
    """Best times of ntkit and of neural-tangents' ``name``, timed alternately for ``rounds`` rounds."""
    t_ours, t_nt = float("inf"), None
    for r in range(rounds):
        t_ours = min(t_ours, best_of(ours, repeat, warm=r == 0))
        t = server.time(name, repeat) if server.error is None else None
        if t is not None:
            t_nt = t if t_nt is None else min(t_nt, t)
    return t_ours, t_nt


def nt_jacobian_estimate(base: dict[str, object], s: int) -> float | None:
    """Two subset sizes s and 2s: t = 2 a n + b n^2 -> extrapolate to the full N."""
    times = []
    for n in (s, 2 * s):
        res = run_nt({**base, "impls": ["jacobian"], "n": n, "repeat": 2})
        if isinstance(res, str) or "seconds" not in res["jacobian"]:
            return None
        times.append(float(res["jacobian"]["seconds"]))  # type: ignore[arg-type]
    t1, t2 = times
    b = max((t2 - 2 * t1) / (2 * s * s), 0.0)
    a = max((t1 - b * s * s) / (2 * s), 0.0)
    n_full = int(base["n"])  # type: ignore[call-overload]
    return 2 * a * n_full + b * n_full**2


def fmt(t: float | None, est: bool = False) -> str:
    if t is None:
        return "      -"
    return f"{'~' if est else ' '}{t:7.3f}"


def bench_mlp(dtype: torch.dtype, width: int, mode: str, quick: bool) -> None:
    n = 256
    model = mlp(width, dtype)
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(n, 100, generator=g, dtype=dtype)
    x2 = torch.randn(n, 100, generator=g, dtype=dtype)
    repeat = 2 if width > 1000 else 3
    dname = str(dtype).split(".")[-1]
    base: dict[str, object] = {"model": "mlp", "width": width, "d": 100, "k": 10, "n": n, "dtype": dname, "mode": mode}
    server = NTServer({**base, "impls": ["structured"]}, ready_timeout=600)
    try:
        t_struct, nt_struct = alternate(
            lambda: ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured"),
            server, "structured", repeat, ROUNDS,
        )
    finally:
        server.close()
    nt: str | None = server.error
    t_tut = tutorial_estimate(model, x1, x2, mode, rows=4 if width <= 512 else 1)
    t_ntvp = None if quick else ntvp_estimate(model, x1, x2, mode, cols=2)
    nt_jac = None if quick or width > 1000 else nt_jacobian_estimate(base, 8)
    line = (
        f"mlp w={width:<5d} {dname:8s} {mode:6s} | structured {fmt(t_struct)}  ntvp {fmt(t_ntvp, True)}  "
        f"tutorial-jac {fmt(t_tut, True)} | NT struct {fmt(nt_struct)}  NT jac {fmt(nt_jac, True)} | "
        f"x tut {t_tut / t_struct:7.1f}  x NT-struct "
        f"{(nt_struct / t_struct if nt_struct else float('nan')):5.2f}"
    )
    if nt is not None:
        line += f"  [{nt}]"
    print(line, flush=True)


def bench_cnn(dtype: torch.dtype, mode: str, quick: bool) -> None:
    n = 128
    model = cnn(dtype)
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(n, 3, 8, 8, generator=g, dtype=dtype)
    x2 = torch.randn(n, 3, 8, 8, generator=g, dtype=dtype)
    dname = str(dtype).split(".")[-1]
    job = {"model": "cnn", "channels": 32, "size": 8, "cin": 3, "k": 10, "n": n, "dtype": dname, "mode": mode}
    results: dict[str, tuple[float, float | None]] = {}
    notes = []
    for impl in ("structured", "jacobian"):
        server = NTServer({**job, "impls": [impl]}, ready_timeout=180)
        try:
            results[impl] = alternate(
                functools.partial(ntkit.empirical_ntk, model, x1, x2, mode=mode, implementation=impl),
                server, impl, 3, ROUNDS,
            )
        finally:
            server.close()
        if server.error:
            notes.append(f"NT {impl}: {server.error}")
    (t_struct, nt_s), (t_jac, nt_j) = results["structured"], results["jacobian"]
    print(
        f"cnn c=32 8x8 {dname:8s} {mode:6s} | structured {fmt(t_struct)}  tutorial-jac {fmt(t_jac)} | "
        f"NT struct {fmt(nt_s)}  NT jac {fmt(nt_j)} | x tut {t_jac / t_struct:6.1f}  x NT-struct "
        f"{(nt_s / t_struct if nt_s else float('nan')):5.2f}" + (f"  [{'; '.join(notes)}]" if notes else ""),
        flush=True,
    )


BIG = """
import resource, sys, time, torch, ntkit
from torch import nn
torch.set_num_threads({threads})
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(100, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                  nn.Linear(512, 10))
x = torch.randn(10000, 100)
t = time.perf_counter()
k = ntkit.empirical_ntk(m, x, mode="trace", memory_budget="{budget}", progress=True)
t = time.perf_counter() - t
chk = ntkit.empirical_ntk(m, x[9000:9050], x[:50], mode="trace")
err = float((k[9000:9050, :50] - chk).abs().max() / chk.abs().max())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"10000 x 10000 trace NTK, width-512 MLP, float32, budget {budget}: {{t:.1f}} s, peak RSS {{peak:.2f}} GiB, "
      f"result {{k.numel() * 4 / 2**30:.2f}} GiB, tile-vs-direct rel err {{err:.1e}}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="skip the slow estimates (ntvp, NT jacobian)")
    parser.add_argument("--big", action="store_true", help="also run the 10,000 x 10,000 memory test")
    parser.add_argument("--only", choices=["mlp", "cnn", "big"], default=None)
    parser.add_argument("--budget", default="768MB", help="memory budget of the 10k run")
    parser.add_argument("--widths", default="512,2048", help="MLP widths (comma-separated)")
    parser.add_argument("--dtypes", default="float32,float64", help="dtypes (comma-separated)")
    parser.add_argument("--modes", default="trace,full", help="modes (comma-separated)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    xla = os.environ.get("XLA_FLAGS")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); neural-tangents via {NT_PYTHON} "
        f"({f'XLA_FLAGS={xla}' if xla else 'XLA default threads'}); load average {os.getloadavg()[0]:.1f}; "
        "times in seconds; ~ = estimate",
        flush=True,
    )
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    modes = args.modes.split(",")
    if args.only in (None, "mlp"):
        for dtype in dtypes:
            for width in map(int, args.widths.split(",")):
                for mode in modes:
                    bench_mlp(dtype, width, mode, args.quick)
    if args.only in (None, "cnn"):
        for dtype in dtypes:
            for mode in modes:
                bench_cnn(dtype, mode, args.quick)
    if args.big or args.only == "big":
        code = BIG.format(threads=torch.get_num_threads(), budget=args.budget)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        print(proc.stdout.strip() or proc.stderr.strip()[-2000:], flush=True)
    _ = resource  # the big run measures its own peak in a subprocess


if __name__ == "__main__":
    main()
