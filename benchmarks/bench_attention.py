"""Infinite-width NNGP + NTK of a two-block transformer encoder on tokens: ntkit vs neural-tangents.

The model (tokens ``(N, L, C)``, channels last): a token embedding ``Linear(C, W)``, then two encoder
blocks ``x = x + attn(ln(x)); x = x + mlp(ln(x))`` (``SelfAttention`` with 2 heads, softmax, linear
scaling; ``mlp = Linear, ReLU, Linear``), the mean over the tokens and a ``Linear`` read-out. ntkit:
``ntkit.infinite_kernel(model, x, which="both", dtype=torch.float32)`` of N inputs against themselves.
neural-tangents 0.6.5: the same ``stax`` model (``GlobalSelfAttention``, ``LayerNorm(axis=-1)``,
``FanOut`` / ``FanInSum`` residuals, ``GlobalAvgPool``), its jitted ``kernel_fn(x, None, ("nngp", "ntk"))``
in float32, run in its own virtual environment (``--nt-python``) as a subprocess with a timeout; a failure
(timeout, out of memory, an error) is reported as what it is. Both: best of ``--repeats`` after a warm-up
call (neural-tangents' first call compiles; its compile time is reported apart); also the best CPU seconds of
each side (``time.process_time``: all threads of the process), steadier than wall-clock seconds on a shared machine.

    .venv/bin/python benchmarks/bench_attention.py --n 64 --lengths 16 64 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from torch import nn

import ntkit
from ntkit.nn import LayerNorm, Linear, Residual, SelfAttention

NT_PYTHON = "/work/nt-venv/bin/python"

NT_CODE = r"""
import json, sys, time
job = json.loads(sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from neural_tangents import stax
import warnings
warnings.filterwarnings("ignore")
def block():
    attn = stax.serial(stax.LayerNorm(axis=-1), stax.GlobalSelfAttention(job["width"], job["width"] // 2,
                       job["width"] // 2, 2, linear_scaling=True))
    mlp = stax.serial(stax.LayerNorm(axis=-1), stax.Dense(job["width"], b_std=0.1), stax.Relu(),
                      stax.Dense(job["width"], b_std=0.1))
    res = lambda f: stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), f), stax.FanInSum())
    return [res(attn), res(mlp)]
layers = [stax.Dense(job["width"], b_std=0.1)]
for _ in range(job["blocks"]):
    layers += block()
_, _, kernel_fn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, b_std=0.1))
x = jnp.asarray(np.load(job["x"]), dtype=jnp.float32)
fn = jax.jit(kernel_fn, static_argnames=("get",))
t0 = time.perf_counter()
k = fn(x, None, get=("nngp", "ntk"))
k.ntk.block_until_ready()
first = time.perf_counter() - t0
best = cpu = float("inf")
for _ in range(job["repeats"]):
    t0, c0 = time.perf_counter(), time.process_time()
    k = fn(x, None, get=("nngp", "ntk"))
    k.ntk.block_until_ready()
    best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
np.save(job["out"], np.stack([np.asarray(k.nngp, dtype=np.float64), np.asarray(k.ntk, dtype=np.float64)]))
print(json.dumps({"first": first, "best": best, "cpu": cpu}))
"""


def encoder(c: int, width: int, blocks: int) -> nn.Module:
    """The benchmark's model (on ``meta``: the kernel does not need the weights)."""
    layers: list[nn.Module] = [Linear(c, width, b_std=0.1, device="meta")]
    for _ in range(blocks):
        layers.append(Residual(LayerNorm(width), SelfAttention(width, width, n_heads=2, device="meta")))
        layers.append(Residual(LayerNorm(width), Linear(width, width, b_std=0.1, device="meta"), nn.ReLU(),
                               Linear(width, width, b_std=0.1, device="meta")))
    return nn.Sequential(*layers, TokenMean(), Linear(width, 1, b_std=0.1, device="meta"))


class TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def time_ntkit(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Best wall-clock and best CPU seconds (all threads of this process) of ``repeats`` calls, and the kernels."""
    k = ntkit.infinite_kernel(model, x, dtype=torch.float32)  # warm-up
    best = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        k = ntkit.infinite_kernel(model, x, dtype=torch.float32)
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return best, cpu, torch.stack([k.nngp.double(), k.ntk.double()])


def time_nt(python: str, x: torch.Tensor, width: int, blocks: int, repeats: int, timeout: float,
            workdir: str) -> tuple[dict[str, float] | None, str, torch.Tensor | None]:
    """``({"first", "best"}, "", kernels)`` or ``(None, what went wrong, None)``."""
    import numpy as np

    path, out = os.path.join(workdir, "x.npy"), os.path.join(workdir, "nt.npy")
    np.save(path, x.numpy())
    job = {"x": path, "out": out, "width": width, "blocks": blocks, "repeats": repeats}
    try:
        proc = subprocess.run([python, "-c", NT_CODE, json.dumps(job)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", None
    except OSError as err:
        return None, f"could not start {python}: {err}", None
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])[-200:]
        return None, f"exit {proc.returncode}: {tail}", None
    return json.loads(proc.stdout.strip().splitlines()[-1]), "", torch.from_numpy(np.load(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="inputs (the kernel is N x N)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64], help="tokens per input")
    parser.add_argument("--channels", type=int, default=8, help="channels of the input tokens")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nt-python", default=NT_PYTHON)
    parser.add_argument("--nt-timeout", type=float, default=600.0, help="seconds for each neural-tangents run")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    import tempfile

    torch.set_num_threads(int(os.environ.get("NTKIT_THREADS", torch.get_num_threads())))
    rows = []
    model = encoder(args.channels, 64, args.blocks)
    for length in args.lengths:
        x = torch.randn(args.n, length, args.channels, generator=torch.Generator().manual_seed(length))
        ours, ours_cpu, k_ours = time_ntkit(model, x, args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            nt, why, k_nt = time_nt(args.nt_python, x, 64, args.blocks, args.repeats, args.nt_timeout, tmp)
        agree = ""
        if k_nt is not None:
            agree = f"{float(((k_ours - k_nt).abs().amax(dim=(1, 2)) / k_nt.abs().amax(dim=(1, 2))).max()):.1e}"
        rows.append((length, ours, ours_cpu, nt, why, agree))
        print(f"L={length}: ntkit {ours:.4f} s (cpu {ours_cpu:.4f} s); neural-tangents "
              + (f"{nt['best']:.3f} s (cpu {nt['cpu']:.3f} s, first call {nt['first']:.1f} s), x{nt['best'] / ours:.1f}"
                 f" (cpu x{nt['cpu'] / ours_cpu:.1f}), max rel diff {agree}" if nt else why), flush=True)
    if args.markdown:
        print(f"\nN = {args.n}, C = {args.channels}, {args.blocks} encoder blocks (2 heads, softmax), float32, "
              f"{torch.get_num_threads()} threads, best of {args.repeats}\n")
        print("| tokens L | ntkit s (cpu s) | neural-tangents s (cpu s; first call, compiling) | speed-up (cpu) "
              "| max rel. difference |")
        print("|---|---|---|---|---|")
        for length, ours, ours_cpu, nt, why, agree in rows:
            theirs = f"{nt['best']:.3f} ({nt['cpu']:.3f}; {nt['first']:.1f})" if nt else f"failed: {why}"
            speed = f"{nt['best'] / ours:.1f}x ({nt['cpu'] / ours_cpu:.1f}x)" if nt else "-"
            print(f"| {length} | {ours:.4f} ({ours_cpu:.4f}) | {theirs} | {speed} | {agree or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
