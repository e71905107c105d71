"""neural-tangents side of bench_empirical_ntk.py (run with the ntbench venv's python, never imported by ntkit).

Reads a JSON job from argv[1]. Without ``--serve`` it prints one JSON line of timings (seconds per
call, best of ``repeat``). With ``--serve`` it compiles the job's implementations, prints one JSON
line ``{"ready": {name: "ok" or an error}}`` and then answers commands read from stdin, one per
line: ``NAME REPEAT`` prints ``{"seconds": best of REPEAT calls}``; ``quit`` ends it. The
benchmark thereby times ntkit and neural-tangents alternately, in the same minutes, while the
other process waits idle.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any


def build(job: dict[str, Any]) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """Jit-compiled kernel functions of the job (compiled here), and errors by implementation."""
    import jax

    if job["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    dtype = jnp.float64 if job["dtype"] == "float64" else jnp.float32
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    if job["model"] == "mlp":
        w = job["width"]
        layers = []
        for _ in range(3):
            layers += [stax.Dense(w), stax.Relu()]
        init_fn, apply_fn, _ = stax.serial(*layers, stax.Dense(job["k"]))
        x1 = jax.random.normal(k1, (job["n"], job["d"]), dtype)
        x2 = jax.random.normal(k2, (job["n"], job["d"]), dtype)
    else:  # small CNN: two 3x3 convs, global average pooling, dense readout (NHWC)
        c = job["channels"]
        init_fn, apply_fn, _ = stax.serial(
            stax.Conv(c, (3, 3), padding="SAME"), stax.Relu(),
            stax.Conv(c, (3, 3), padding="SAME"), stax.Relu(),
            stax.GlobalAvgPool(), stax.Dense(job["k"]),
        )
        s = job["size"]
        x1 = jax.random.normal(k1, (job["n"], s, s, job["cin"]), dtype)
        x2 = jax.random.normal(k2, (job["n"], s, s, job["cin"]), dtype)
    _, params = init_fn(k3, x1.shape)
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    impls = {
        "structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
        "jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION,
        "ntvp": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    }
    calls: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}
    for name in job["impls"]:
        trace_axes = (-1,) if job["mode"] == "trace" else ()
        fn = jax.jit(
            nt.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, vmap_axes=0, implementation=impls[name])
        )
        n_sub = job.get("subset", {}).get(name)
        a, b = (x1, x2) if not n_sub else (x1[:n_sub], x2[:n_sub])
        try:
            fn(a, b, params).block_until_ready()  # compile
            calls[name] = _bind(fn, a, b, params)
        except Exception as err:  # report, do not crash the benchmark
            errors[name] = f"{type(err).__name__}: {str(err)[:200]}"
    return calls, errors


def _bind(fn: Any, a: Any, b: Any, params: Any) -> Callable[[], Any]:
    return lambda: fn(a, b, params).block_until_ready()


def best(call: Callable[[], Any], repeat: int) -> float:
    result = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        result = min(result, time.perf_counter() - t)
    return result


def main() -> None:
    job = json.loads(sys.argv[1])
    calls, errors = build(job)
    if "--serve" in sys.argv[2:]:
        print(json.dumps({"ready": {**{n: "ok" for n in calls}, **errors}}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            print(json.dumps({"seconds": best(calls[words[0]], int(words[1]))}), flush=True)
        return
    out: dict[str, dict[str, Any]] = {n: {"error": e} for n, e in errors.items()}
    for name, call in calls.items():
        n_sub = job.get("subset", {}).get(name)
        scale = (job["n"] / n_sub) ** 2 if n_sub else 1.0
        out[name] = {"seconds": best(call, job["repeat"]) * scale, "estimated": bool(n_sub)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
