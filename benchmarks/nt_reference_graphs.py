"""neural-tangents references for graph networks (``nt_reference.py --graphs``; never imported by ntkit).

Each case of :data:`CASES` is a layer list: ``dense`` (a per-node dense layer: NT's ``stax.Dense`` on the
channel axis, ntkit's ``Conv1d(kernel_size=1)``), ``agg`` (``stax.Aggregate``, ntkit's
``ntkit.nn.Aggregate``), ``act``, ``gap`` (global average pooling over the nodes), ``flatten`` and a final
``dense`` read-out. Inputs are random graphs (numpy seed per case): node features ``x`` (N, C, V),
channels first as ntkit takes them, and adjacencies ``a`` (N, V, V) with ``a[n, i, j]`` the weight of the
edge ``j -> i`` (ntkit's ``out_i = sum_j a_ij x_j``); NT gets ``x`` channels last and
``pattern = a.transpose(0, 2, 1)`` (its ``out = x @ pattern``). The graphs include a node with no
in-edge (a zero row), self-loops, a weighted graph, and duplicates: ``x2[0]`` is ``x1[1]`` (same
graph), ``x2[-1]`` and ``x1[-1]`` are ``x1[0]``, and ``x2[1]`` has the features of ``x1[2]`` on another graph.

Written to ``tests/data/nt_reference_graphs.npz`` (``NAME/x1``, ``NAME/a1``, ``NAME/x2``, ``NAME/a2``,
``NAME/{cross,sym}/{nngp,ntk}``) and ``.json`` (versions, command, each case's layers).
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from types import ModuleType
from typing import Any

import jax
import numpy as np
from neural_tangents import stax

N1, N2 = 4, 3

#: name -> (layers, (C, V)); ``dense`` and ``agg`` act per node, the last ``dense`` is the read-out.
CASES: dict[str, tuple[list[dict[str, Any]], tuple[int, int]]] = {
    "gnn_gap_relu": ([
        {"op": "dense", "width": 16, "w_std": 1.5, "b_std": 0.0, "parameterization": "ntk"},
        {"op": "agg"}, {"op": "act", "name": "relu"}, {"op": "agg"}, {"op": "gap"},
        {"op": "dense", "width": 1, "w_std": 1.0, "b_std": 0.0, "parameterization": "ntk"},
    ], (3, 6)),
    "gnn_gap_erf_bias_standard": ([
        {"op": "dense", "width": 16, "w_std": 1.2, "b_std": 0.3, "parameterization": "standard"},
        {"op": "agg"}, {"op": "act", "name": "erf", "a": 1.0, "b": 1.0, "c": 0.0},
        {"op": "dense", "width": 12, "w_std": 1.1, "b_std": 0.2, "parameterization": "standard"},
        {"op": "agg"}, {"op": "gap"},
        {"op": "dense", "width": 1, "w_std": 0.9, "b_std": 0.1, "parameterization": "standard"},
    ], (2, 5)),
    "gnn_agg_first_flatten": ([
        {"op": "agg"},
        {"op": "dense", "width": 16, "w_std": 1.3, "b_std": 0.2, "parameterization": "ntk"},
        {"op": "act", "name": "relu"}, {"op": "agg"}, {"op": "flatten"},
        {"op": "dense", "width": 1, "w_std": 1.0, "b_std": 0.1, "parameterization": "ntk"},
    ], (3, 5)),
}

NOTES = [
    "stax.Aggregate(): aggregate_axis None (every axis but batch and channels: the nodes), batch_axis 0, "
    "channel_axis -1, implementation DENSE; kernel_fn(x1, x2, pattern=(p1, p2)) gives p1^T K p2 per pair, "
    "i.e. A1 K A2^T with A = p^T; the symmetric kernel is kernel_fn(x1, None, pattern=(p1, p1))",
    "dense on (N, V, C) inputs: stax.Dense acts on the last (channel) axis, per node, like a 1x1 convolution",
]


def make_graphs(name: str, c: int, v: int) -> dict[str, np.ndarray]:
    """Random graphs of one case (see the module notes), float64."""
    rng = np.random.default_rng(sum(map(ord, name)))
    x1, x2 = rng.standard_normal((N1, c, v)), rng.standard_normal((N2, c, v))
    a1 = (rng.random((N1, v, v)) < 0.4).astype(np.float64)
    a2 = (rng.random((N2, v, v)) < 0.4).astype(np.float64)
    a1[0, 1] = 0.0  # node 1 of graph 0 receives nothing
    a1[1][np.diag_indices(v)] = 1.0  # self-loops
    a2[2][np.diag_indices(v)] = 1.0
    a1[2] = rng.random((v, v)) * (rng.random((v, v)) < 0.6)  # weighted
    x1[-1], a1[-1] = x1[0], a1[0]  # duplicates, as nt_reference.case_checks expects
    x2[0], a2[0] = x1[1], a1[1]
    x2[-1], a2[-1] = x1[0], a1[0]
    x2[1] = x1[2]  # the same features on another graph
    a2[1, 0] = 0.0
    return {"x1": x1, "a1": a1, "x2": x2, "a2": a2}


def nt_model(layers: list[dict[str, Any]], activation: Any) -> Any:
    """NT ``(init_fn, apply_fn, kernel_fn)`` of a case (inputs (N, V, C))."""
    out = []
    for layer in layers:
        op = layer["op"]
        if op == "dense":
            out.append(stax.Dense(layer["width"], W_std=layer["w_std"], b_std=layer["b_std"],
                                  parameterization=layer["parameterization"]))
        elif op == "agg":
            out.append(stax.Aggregate())
        elif op == "act":
            out.append(activation(layer))
        elif op == "gap":
            out.append(stax.GlobalAvgPool())
        elif op == "flatten":
            out.append(stax.Flatten())
        else:
            raise ValueError(f"unknown op {op!r}")
    return stax.serial(*out)


def run_graphs(args: Any, base: ModuleType) -> int:
    """Compute (and unless ``--dry-run`` write) the graph references; ``base`` is ``nt_reference``."""
    t_start = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    checks: dict[str, dict[str, float]] = {}
    for name, (layers, (c, v)) in CASES.items():
        g = make_graphs(name, c, v)
        _, _, kernel_fn = nt_model(layers, base.activation)
        x1, x2 = (jax.numpy.asarray(base.to_channels_last(g[k])) for k in ("x1", "x2"))
        p1, p2 = (jax.numpy.asarray(np.ascontiguousarray(g[k].transpose(0, 2, 1))) for k in ("a1", "a2"))
        cross = kernel_fn(x1, x2, ("nngp", "ntk"), pattern=(p1, p2))
        sym = kernel_fn(x1, None, ("nngp", "ntk"), pattern=(p1, p1))
        out = dict(g)
        squeezed: list[str] = []
        for kind in ("nngp", "ntk"):
            out[f"cross/{kind}"] = base.scalar_kernel(getattr(cross, kind), f"{name}/cross/{kind}", (N1, N2), squeezed)
            out[f"sym/{kind}"] = base.scalar_kernel(getattr(sym, kind), f"{name}/sym/{kind}", (N1, N1), squeezed)
        checks[name] = base.case_checks(out["x1"], out)
        arrays.update({f"{name}/{key}": val for key, val in out.items()})
        print(f"{name:28s} asym {max(checks[name]['sym_asym_nngp'], checks[name]['sym_asym_ntk']):.1e}  "
              f"dup {max(checks[name]['dup_nngp'], checks[name]['dup_ntk']):.1e}", flush=True)
    total = time.perf_counter() - t_start
    if args.dry_run:
        return 0
    npz_path, json_path = args.out_dir / "nt_reference_graphs.npz", args.out_dir / "nt_reference_graphs.json"
    base.write_npz(npz_path, arrays)
    meta = {
        "description": "neural-tangents infinite-width NNGP/NTK (float64) of graph networks (stax.Aggregate)",
        "versions": {"neural_tangents": base.neural_tangents.__version__, "jax": jax.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "setup": base.SETUP_COMMAND,
        "command": base.COMMAND + " --graphs",
        "seconds": round(total, 1),
        "layout": "NAME/x1 (n1, C, V), NAME/a1 (n1, V, V) with a[n, i, j] the edge j -> i, NAME/x2, NAME/a2; "
                  "NAME/cross/{nngp,ntk} (n1, n2); NAME/sym/{nngp,ntk} (n1, n1)",
        "cases": {name: {"layers": layers, "shape": list(shape)} for name, (layers, shape) in CASES.items()},
        "checks": {name: {k: float(f"{v:.3e}") for k, v in c.items()} for name, c in checks.items()},
        "nt_notes": NOTES,
    }
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {npz_path.name} ({npz_path.stat().st_size / 1024:.1f} KiB) and {json_path.name}")
    return 0
