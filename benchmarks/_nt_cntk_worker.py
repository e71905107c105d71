"""neural-tangents side of bench_cntk.py (run with the neural-tangents venv's python, never imported by ntkit).

Reads a JSON job from argv[1]::

    {"arch": "gap" | "v" | "myrtle5" | "myrtle7" | "myrtle10", "depth": 5, "x": "images.npy",
     "dtype": "float32" | "float64", "out": "result.npz", "batch": 0}

``images.npy`` holds float64 images channels first, ``(N, C, H, W)`` (ntkit's layout); they are cast
to ``dtype`` and transposed to neural-tangents' ``(N, H, W, C)``. The architecture is neural-tangents'
stax, as in its papers and notebooks:

* ``gap`` / ``v`` (Arora et al. 2019, CNTK-GAP / CNTK-V): ``depth`` x [``Conv(1, (3, 3), padding="SAME",
  W_std=sqrt(2), b_std=None)``, ``Relu()``], then ``GlobalAvgPool()`` / ``Flatten()``, then
  ``Dense(1, W_std=sqrt(2), b_std=None)``;
* ``myrtleD`` (Shankar et al. 2020, neural-tangents' ``MyrtleNetwork`` notebook): stages of
  ``layer_factor = {5: [2, 1, 1], 7: [2, 2, 2], 10: [3, 3, 3]}`` [Conv, Relu], ``AvgPool((2, 2), (2, 2))``
  after the first two stages, three after the last, ``Flatten()``, ``Dense(1)`` (``b_std=None``
  throughout; the notebook's ``b_std=0.`` gives the same kernel).

Widths do not enter the infinite-width kernels. The NNGP and NTK of ``x`` against itself,
``kernel_fn(x, None, ("nngp", "ntk"))``, are computed by ``jax.jit`` (compiled ahead of time for
this exact shape: ``jit(...).lower(...).compile()``, timed separately) or, with ``batch > 0``, by
``nt.batch(kernel_fn, batch)`` (compiled by a warm-up call on one ``batch x batch`` block). The
worker saves both matrices to ``out`` and prints one JSON line: ``seconds`` (the kernel, compile
excluded), ``compile``, ``base`` (peak RSS before the timed call) and ``peak`` (after it), in bytes,
and the library versions.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from typing import Any

LAYER_FACTOR = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def layers(arch: str, depth: int) -> list[Any]:
    from neural_tangents import stax

    w_std = math.sqrt(2.0)

    def conv() -> list[Any]:
        return [stax.Conv(1, (3, 3), padding="SAME", W_std=w_std, b_std=None), stax.Relu()]

    out: list[Any] = []
    if arch in ("gap", "v"):
        for _ in range(depth):
            out += conv()
        out.append(stax.GlobalAvgPool() if arch == "gap" else stax.Flatten())
    elif arch.startswith("myrtle"):
        factor = LAYER_FACTOR[int(arch.removeprefix("myrtle"))]
        for stage, convs in enumerate(factor):
            for _ in range(convs):
                out += conv()
            out += [stax.AvgPool((2, 2), strides=(2, 2))] * (3 if stage == 2 else 1)
        out.append(stax.Flatten())
    else:
        raise ValueError(f"arch: unknown {arch!r}")
    return [*out, stax.Dense(1, W_std=w_std, b_std=None)]


def main() -> None:
    job = json.loads(sys.argv[1])
    import jax

    if job["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jaxlib
    import neural_tangents as nt
    import numpy as np
    from neural_tangents import stax

    x_np = np.load(job["x"]).astype(job["dtype"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    x = jnp.asarray(x_np)
    assert x.dtype == np.dtype(job["dtype"]), (x.dtype, job["dtype"])
    _, _, kernel_fn = stax.serial(*layers(job["arch"], int(job["depth"])))
    get = ("nngp", "ntk")
    n, batch = x.shape[0], int(job.get("batch", 0))
    t0 = time.perf_counter()
    if batch and n > batch:
        if n % batch:
            raise ValueError(f"batch: N = {n} is not a multiple of the batch size {batch}")
        fn = nt.batch(kernel_fn, batch_size=batch, store_on_device=False)
        jax.block_until_ready(fn(x[:batch], None, get))  # compiles the batch x batch block

        def call() -> Any:
            return fn(x, None, get)
    else:
        compiled = jax.jit(kernel_fn, static_argnames="get").lower(x, None, get=get).compile()

        def call() -> Any:
            return compiled(x, None)
    compile_s = time.perf_counter() - t0
    base = rss()
    t0 = time.perf_counter()
    k = call()
    jax.block_until_ready(k)
    seconds = time.perf_counter() - t0
    peak = rss()
    np.savez(job["out"], nngp=np.asarray(k.nngp), ntk=np.asarray(k.ntk))
    print(json.dumps({
        "seconds": seconds, "compile": compile_s, "base": base, "peak": peak,
        "versions": {"neural_tangents": nt.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__},
        "dtype": str(k.ntk.dtype),
    }), flush=True)


if __name__ == "__main__":
    main()
