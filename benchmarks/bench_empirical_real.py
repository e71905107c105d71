"""Empirical NTK of a CIFAR-style ResNet-18: ntkit's implementations vs the torch.func tutorial method.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_empirical_real.py [--cases trace,full,pntk,pntk512]
        [--impls auto,before,jacobian,tutorial] [--timeout 900] [--repeat 2] [--threads 2]
        [--budget 3GB] [--out benchmarks/results/empirical_real.md]

Model: ResNet-18 for 32 x 32 x 3 images built from ``torch.nn`` only (3x3 stem convolution, no max
pooling, four stages of two BasicBlocks with widths 64, 128, 256, 512, batch norm in eval mode with
non-trivial running statistics, global average pooling, 10 outputs; 11.17M parameters; random
weights, nothing downloaded), float32, inputs ``randn(N, 3, 32, 32)``.

Every measurement runs in a fresh subprocess (``--worker``) with a wall-clock ``--timeout``; it
reports wall time, process CPU time and peak resident memory (``ru_maxrss``, the whole process:
interpreter, torch and the model included); the best of ``--repeat`` runs is kept.

Implementations (rows):

* ``auto`` / ``structured``: ``ntkit.empirical_ntk(model, x, mode=...)`` as a user calls it;
* ``before``: the structured engine that stores features (the only structured path before the
  streamed engine; forced by ``ntkit.empirical._choice.STREAMED_MARGIN = inf``);
* ``jacobian``: ``implementation="jacobian"`` (per-example ``vmap(jacrev)`` Jacobians, tiled);
* ``tutorial``: the method of PyTorch's "Neural Tangent Kernels" tutorial (``torch.func``:
  ``vmap(jacrev(f))`` per-example Jacobians of all rows, ``einsum`` contraction). Its Jacobians of
  64 rows need 64 x 10 x 11.2M x 4 B = 28.7 GB: it is timed at N = 2 and N = 4 and extrapolated as
  ``t(N) = a N + b N^2`` (marked ``~``); for the pNTK (one output) it runs at N = 64 itself.

Cases: ``trace`` and ``full`` (N = 64, ``x2=None``), ``trace512`` (N = 512; also ``trace128``, ``trace256``), ``pntk``
(N = 64) and ``pntk512`` (N = 512); N > 64 at the default memory budget and at ``--budget``. Ratios ``x tut``
are tutorial / ntkit (> 1: ntkit faster).

GPT-2 cases (model: :mod:`gpt2_decoder`, a GPT-2-small-sized causal decoder from ``torch.nn``, scalar
output = the mean final hidden state projected to 1, 123.75M parameters, float32; inputs: random
token ids (N, 128)): ``gpt2`` (12 layers, N = 32, the kernel 32 x 32; rows at the default budget and at
``--gpt2-budget``); ``gpt2small`` (2 layers, N = 16; ``before``: the structured engine with the
embeddings and layer norms left to the whole-model ``vmap(jacrev)``, as before the streamed engine
knew them); ``gpt2acc`` (2 layers, N = 4: relative distance of the float32 kernels of ``auto`` and of
``implementation="jacobian"`` to the float64 kernel of ``auto``). The tutorial's Jacobians of the
12-layer model need N x 123.75M x 4 B = 15.8 GB at N = 32: it is timed at N = 2 and 4 and
extrapolated (``~``).
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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_decoder import GPT2Decoder, random_tokens

ROOT = Path(__file__).resolve().parents[1]
#: GPT-2 cases: (layers, N).
GPT2_CASES = {"gpt2": (12, 32), "gpt2small": (2, 16), "gpt2acc": (2, 4)}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (He et al. 2016, the 32 x 32 variant: 3x3 stem, no max pooling)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ResNet18()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # running statistics and affine parameters as after some training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


def tutorial_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> torch.Tensor:
    """PyTorch's NTK tutorial: per-example Jacobians by vmap(jacrev), contracted by einsum."""
    from torch.func import functional_call, jacrev, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}

    def fnet_single(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = jac1 if x2 is x1 else [j.flatten(2) for j in vmap(jacrev(fnet_single), (None, 0))(params, x2).values()]
    spec = "Naf,Mbf->NMab" if mode == "full" else "Naf,Maf->NM"
    out = torch.stack([torch.einsum(spec, a, b) for a, b in zip(jac1, jac2, strict=True)]).sum(0)
    return out / jac1[0].shape[1] if mode == "trace" else out


class SumOfLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.sum(1, keepdim=True) / out.shape[1] ** 0.5


# --------------------------------------------------------------------------- worker
def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(spec["threads"])
    import ntkit
    import ntkit.empirical._choice as choice

    n, mode, impl = spec["n"], spec["mode"], spec["impl"]
    if "layers" in spec:  # GPT-2 decoder on random token ids
        model = GPT2Decoder(layers=spec["layers"]).eval()
        x = random_tokens(n, 128)
    else:
        model = resnet18()
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    if impl == "accuracy":  # float32 auto and jacobian against float64 auto
        ref = ntkit.empirical_ntk(model.double(), x, mode=mode, progress=False)
        model = model.float()
        dist = {}
        for name in ("auto", "jacobian"):
            got = ntkit.empirical_ntk(model, x, mode=mode, implementation=name, progress=False).double()
            dist[name] = float((got - ref).norm() / ref.norm())
        return {"accuracy": dist}
    if impl == "fwdbwd":
        t0, c0 = time.perf_counter(), time.process_time()
        model(x).sum().backward()
    elif impl == "tutorial":
        net = SumOfLogits(model) if mode == "pntk" else model
        t0, c0 = time.perf_counter(), time.process_time()
        tutorial_ntk(net, x, x, "trace" if mode == "pntk" else mode)
    else:
        if impl == "before":
            choice.STREAMED_MARGIN = float("inf")
        implementation = "structured" if impl == "before" else impl
        t0, c0 = time.perf_counter(), time.process_time()
        ntkit.empirical_ntk(
            model, x, mode=mode, implementation=implementation, memory_budget=spec.get("budget"), progress=False
        )
    return {
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return dict(json.loads(lines[-1]))


def best(spec: dict[str, Any], timeout: float, repeat: int) -> dict[str, Any]:
    runs = [run(spec, timeout) for _ in range(repeat)]
    ok = [r for r in runs if "wall" in r]
    if not ok:
        return runs[0]
    return min(ok, key=lambda r: float(r["wall"]))


def fmt(r: dict[str, Any]) -> str:
    if "accuracy" in r:
        return "  relative distance to float64: " + ", ".join(f"{k} {v:.1e}" for k, v in r["accuracy"].items())
    if "wall" in r:
        est = "~" if r.get("estimate") else " "
        rss = f"{r['rss_gb']:5.2f} GB" if "rss_gb" in r else "      -"
        return f"{est}{r['wall']:8.1f} s  (cpu {r.get('cpu', float('nan')):7.1f} s, peak {rss})"
    if "timeout" in r:
        return f"  > {r['timeout']:.0f} s (timed out)"
    return f"  error: {r.get('error')}"


def tutorial_estimate(
    mode: str, timeout: float, repeat: int, threads: int, n: int, **extra: Any
) -> dict[str, Any]:
    """Tutorial method timed at N = 2 and 4, extrapolated to n as a N + b N^2."""
    r2 = best({"impl": "tutorial", "mode": mode, "n": 2, "threads": threads, **extra}, timeout, repeat)
    r4 = best({"impl": "tutorial", "mode": mode, "n": 4, "threads": threads, **extra}, timeout, repeat)
    if "wall" not in r2 or "wall" not in r4:
        return r4 if "wall" not in r4 else r2
    b = max(0.0, (r4["wall"] - 2 * r2["wall"]) / 8)  # t4 - 2 t2 = 16b - 8b
    a = (r2["wall"] - 4 * b) / 2
    return {"wall": a * n + b * n * n, "estimate": True, "cpu": float("nan"), "n2": r2["wall"], "n4": r4["wall"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--cases", default="trace,full,pntk,pntk512")
    ap.add_argument("--impls", default="auto,before,jacobian,tutorial")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", default="3GB", help="memory_budget of the extra large-budget rows")
    ap.add_argument("--gpt2-budget", default="4GB", help="memory_budget of the extra gpt2 row")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    impls = args.impls.split(",")
    th, rep, to = args.threads, args.repeat, args.timeout
    print(f"torch {torch.__version__}, {th} threads, timeout {to:.0f} s per run, best of {rep}")
    cases = args.cases.split(",")
    if any(c not in GPT2_CASES for c in cases):
        base = best({"impl": "fwdbwd", "mode": "-", "n": 64, "threads": th}, to, rep)
        print(f"forward + backward of a batch of 64 (one output sum)      {fmt(base)}")
    for case in cases:
        if case in GPT2_CASES:
            gpt2_case(case, impls, args)
            continue
        digits = case[len(case.rstrip("0123456789")) :]  # trace128, trace256, trace512, pntk512: N; else 64
        mode = "pntk" if case.startswith("pntk") else case.rstrip("0123456789")
        n = int(digits) if digits else 64
        rows: dict[str, dict[str, Any]] = {}
        for impl in impls:
            if impl == "tutorial":
                if mode == "pntk" and n == 64:
                    rows[impl] = best({"impl": "tutorial", "mode": mode, "n": n, "threads": th}, to, rep)
                else:
                    rows[impl] = tutorial_estimate(mode, to, rep, th, n)
                continue
            if (impl == "jacobian" and (n > 64 or mode == "full")) or (impl == "before" and n > 64):
                continue  # beyond any timeout here: see the trace case
            rows[impl] = best({"impl": impl, "mode": mode, "n": n, "threads": th}, to, 1 if impl != "auto" else rep)
        if n > 64 and args.budget:
            spec = {"impl": "auto", "mode": mode, "n": n, "threads": th, "budget": args.budget}
            rows[f"auto, {args.budget}"] = best(spec, to, rep)
        if mode == "full" and args.budget:
            spec = {"impl": "auto", "mode": mode, "n": n, "threads": th, "budget": args.budget}
            rows[f"auto, {args.budget}"] = best(spec, to, rep)
        tut = rows.get("tutorial", {}).get("wall")
        for impl, r in rows.items():
            ratio = f"x tut {tut / r['wall']:6.1f}" if tut and "wall" in r and impl != "tutorial" else ""
            print(f"{case:8s} N={n:3d} {impl:14s} {fmt(r)}  {ratio}", flush=True)


def gpt2_case(case: str, impls: list[str], args: Any) -> None:
    """The GPT-2 rows of ``case`` (see the module docstring): trace kernel of N sequences, x2=None."""
    layers, n = GPT2_CASES[case]
    th, rep, to = args.threads, args.repeat, args.timeout
    spec: dict[str, Any] = {"mode": "trace", "n": n, "threads": th, "layers": layers}
    rows: dict[str, dict[str, Any]] = {}
    if case == "gpt2acc":
        rows["accuracy"] = run({**spec, "impl": "accuracy"}, to)
    else:
        rows["fwdbwd"] = best({**spec, "impl": "fwdbwd"}, to, rep)
        for impl in impls:
            if impl == "tutorial":
                rows[impl] = tutorial_estimate("trace", to, rep, th, n, layers=layers)
            elif impl in ("before", "jacobian") and case == "gpt2":
                continue  # beyond any timeout: see gpt2small
            else:
                rows[impl] = best({**spec, "impl": impl}, to, 1 if impl != "auto" else rep)
        if case == "gpt2" and args.gpt2_budget:
            rows[f"auto, {args.gpt2_budget}"] = best({**spec, "impl": "auto", "budget": args.gpt2_budget}, to, rep)
    tut = rows.get("tutorial", {}).get("wall")
    for impl, r in rows.items():
        ratio = f"x tut {tut / r['wall']:6.1f}" if tut and "wall" in r and impl not in ("tutorial", "fwdbwd") else ""
        print(f"{case:9s} L={layers:2d} N={n:3d} {impl:14s} {fmt(r)}  {ratio}", flush=True)


if __name__ == "__main__":
    main()
