"""neural-tangents reference kernels for ntkit's architecture conformance tests (never imported by ntkit).

For every case of ``tests/arch_cases.py`` this script builds the equivalent neural-tangents (NT)
``stax`` model and evaluates its infinite-width NNGP and NTK in float64, both cross
(``kernel_fn(x1, x2)``, shape ``(n1, n2)``) and symmetric (``kernel_fn(x1, None)``, ``(n1, n1)``).
It writes

* ``tests/data/nt_reference.npz``: per supported case ``NAME``, the arrays ``NAME/x1``, ``NAME/x2``
  (the inputs of ``make_inputs``, channels first as ntkit uses them), ``NAME/cross/nngp``,
  ``NAME/cross/ntk``, ``NAME/sym/nngp`` and ``NAME/sym/ntk``;
* ``tests/data/nt_reference.json``: NT / jax / jaxlib / numpy versions, the date, the commands that
  regenerate the files, the cases NT refuses (with NT's error message) and per-case checks
  (symmetry of ``sym``; agreement of ``sym`` and ``cross`` on the duplicated rows).

It runs in its own virtual environment (neural-tangents is never a project dependency; newer jax
breaks NT 0.6.5)::

    python3 -m venv /work/nt-venv
    /work/nt-venv/bin/pip install "neural-tangents==0.6.5" "jax==0.4.25" "jaxlib==0.4.25" "numpy<2"
    /work/nt-venv/bin/python benchmarks/nt_reference.py            # all cases, writes tests/data/
    /work/nt-venv/bin/python benchmarks/nt_reference.py --dry-run --cases fc_relu_d1 conv_circular

``tests/arch_cases.py`` is imported by file path, so the ntkit package need not be importable here.

``--branches`` does the same for the series-parallel cases of ``tests/arch_cases_branches.py`` (inputs
from ``tests/arch_cases.py``'s ``make_inputs``), written to ``tests/data/nt_reference_branches.npz`` /
``.json``; their ``parallel`` layer is ``serial(FanOut(n), parallel(*branches), FanInSum() |
FanInConcat(axis=-1) | FanInProd())`` (an empty branch: ``Identity()``). ``--forward`` does the same for the
CNNs written as plain forwards (``tests/arch_cases_forward.py``), written to ``tests/data/nt_reference_forward.*``.
``--graphs`` writes ``tests/data/nt_reference_graphs.*`` for the graph networks of
``benchmarks/nt_reference_graphs.py``.

Mapping (NT conventions an exact implementation has to follow are listed in ``NT_NOTES`` below):
images are transposed from ntkit's channels-first ``(N, C, H, W)`` / ``(N, C, L)`` to NT's
channels-last ``NHWC`` / ``NWC``; convolutions get explicit channels-last dimension numbers;
``layernorm`` normalises over the channel axis only (``axis=-1``, i.e. per pixel for images), or with
``"axes": "all"`` over every axis but the batch's (``axis=(1, ..., d + 1)``: channels and pixels);
``convtranspose`` is ``stax.ConvTranspose`` with the same channels-last dimension numbers;
``residual`` is ``serial(FanOut(2), parallel(Identity(), serial(*block)), FanInSum())``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import json
import sys
import time
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

try:
    import jax
    import jaxlib
    import neural_tangents
    from neural_tangents import stax
except ImportError as exc:  # pragma: no cover - depends on the interpreter
    sys.exit(f"{exc}: run this script with the neural-tangents venv, e.g. /work/nt-venv/bin/python")

jax.config.update("jax_enable_x64", True)
# Emitted for every residual: its identity branch has no weight layer. Harmless here, since the other
# branch ends with fresh weights (zero cross-covariance in the limit), as NT's FanInSum assumes.
warnings.filterwarnings("ignore", message="`FanIn` layers assume independent inputs", category=UserWarning)

REPO = Path(__file__).resolve().parents[1]
ARCH_CASES_PATH = REPO / "tests" / "arch_cases.py"
BRANCH_CASES_PATH = REPO / "tests" / "arch_cases_branches.py"
FORWARD_CASES_PATH = REPO / "tests" / "arch_cases_forward.py"
OUT_DIR = REPO / "tests" / "data"
SETUP_COMMAND = ('python3 -m venv /work/nt-venv && /work/nt-venv/bin/pip install "neural-tangents==0.6.5" '
                 '"jax==0.4.25" "jaxlib==0.4.25" "numpy<2"')
COMMAND = "/work/nt-venv/bin/python benchmarks/nt_reference.py"

#: Channels-last dimension numbers per number of spatial dimensions (NT's ``Conv`` default for
#: ``len(filter_shape) == n`` is the same layout with letters ``A, B, ...``).
DIMENSION_NUMBERS: dict[int, tuple[str, str, str]] = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
}

#: What an implementation matching NT 0.6.5 to ~1e-10 must reproduce (read from its source).
NT_NOTES = [
    "Input kernel: x.x'/C per position pair (C = channels, or d for vectors); the first layer's NTK input is 0.",
    "Conv kernel: the covariance is averaged (sum / prod(filter)) over the filter window, the same offset for "
    "both positions; padded positions count as zeros but the divisor stays prod(filter); b_std**2 is added "
    "everywhere, edges included.",
    "SAME padding is lax's (TF's): out = ceil(n / stride), total = max((out - 1) * stride + k - n, 0), "
    "low = total // 2, high = total - low. Even filters pad more at the end; with strides total depends on "
    "n and stride, e.g. n=6, k=3, stride 2 pads (0, 1), not (1, 1) (conv_same_stride2 along W).",
    "CIRCULAR conv/pool: wrap-pads with those SAME pads and applies VALID, so the output size is "
    "ceil(n / stride) and output i reads inputs (i * stride - low + t) mod n, t < k.",
    "AvgPool (normalize_edges=False): divides by prod(window) (only matters with SAME padding); "
    "normalize_edges=True divides the pair (q, q') by n(q) n(q'), the in-range taps of the two windows. "
    "Pooling pads as SAME convolutions do (TF's pads); torch's symmetric padding p matches where they coincide.",
    "SumPool: the window sums of both sides, no divisor (|W|^2 x AvgPool for VALID windows).",
    "Flatten: the kernel is the mean over positions of the same-position covariance; GlobalAvgPool: the mean "
    "over all pairs of positions.",
    "Standard parameterization: NNGP as under 'ntk'; NTK_out = fan_in * K_in + W_std**2 * NTK_in (+ 1 with a "
    "bias, not b_std**2), K_in the window-averaged input kernel, fan_in = C_in * prod(filter), C_in the width "
    "of the previous weight layer (the data's d / C for the first layer; C * H * W after a Flatten). "
    "Widths enter only here.",
    "LayerNorm(axis=-1): nngp and ntk are divided by sqrt((eps + q11) (eps + q22)), q the same-position "
    "variances (eps added to the variance, default 1e-12); it requires a Gaussian input. With the spatial axes "
    "in `axis` too, q is the mean of the same-position variances over those axes (one scalar per example).",
    "ConvTranspose: lax.conv_transpose, i.e. the input upsampled (s - 1 zeros between pixels, pads (pad_a, pad_b)) "
    "and a stride-1 VALID conv; SAME: n s outputs, pad_a = k - 1 if s >= k else ceil((k + s - 2) / 2), "
    "pad_a + pad_b = k + s - 2; VALID: n s + max(k - s, 0) outputs, pad_a = k - 1. The kernel is the conv "
    "kernel of the upsampled covariance (same offset on both sides, divided by prod(filter), zero taps "
    "counted); fan_in = C_in * prod(filter) (standard parameterization).",
    "Erf(a, b, c) = a erf(b x) + c: nngp -> a^2 * (2/pi) arcsin(...) + c^2 (c enters squared), ntk gets a^2 b^2.",
    "Sin(a, b, c) = a sin(b x + c) (c is a phase). Gelu: the kernel is that of the exact x Phi(x) whatever "
    "`approximate` says (it only affects apply_fn).",
    "ReLU / LeakyRelu / Abs: angle = arctan2(sqrt(max(q11 q22 - q12^2, 0)), q12). For identical inputs "
    "q11 q22 - q12^2 is a rounding residue (~1e-16 q^2), so NT's angle is ~1e-8 instead of 0 and its NTK at "
    "identical pairs (duplicated rows, the sym diagonal, and through spatial diagonals in CNNs) is off the "
    "exact value by up to ~1e-8 relative, nondeterministically in the rounding. Compare those entries loosely "
    "(see the per-case checks 'hand_ntk_identical').",
    "FanInSum and every activation require Gaussian (mean-zero, after a weight layer) inputs: a residual whose "
    "identity branch carries a post-activation is refused.",
]


#: What the branch merges of NT 0.6.5 compute (``--branches``), read from ``stax/branching.py``.
BRANCH_NOTES = [
    "FanInSum: the sum of the branches' kernels (cross-covariances assumed 0: independent branches); every "
    "input must be Gaussian (is_gaussian), else NotImplementedError.",
    "FanInConcat(axis=-1), the channel axis: sum_i C_i K_i / sum_i C_i (sum_i K_i / n for equal widths), "
    "C_i = shape1[channel_axis]; the output is marked non-Gaussian (no activation may follow before a weight layer).",
    "FanInProd: nngp = prod_i K_i, ntk = sum_i T_i prod_{j != i} K_j (accumulated as ntk * K_i + nngp * T_i); "
    "non-Gaussian output; independence is not checked.",
]


def load_arch_cases(path: Path = ARCH_CASES_PATH, name: str = "arch_cases") -> ModuleType:
    """``tests/arch_cases.py`` (or another case file) imported by file path."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses / typing look modules up by name
    spec.loader.exec_module(module)
    return module


def activation(layer: dict[str, Any]) -> Any:
    """NT layer of an ``{"op": "act"}`` dict."""
    name = layer["name"]
    if name == "relu":
        return stax.Relu()
    if name == "erf":
        return stax.Erf(layer["a"], layer["b"], layer["c"])
    if name == "leaky_relu":
        return stax.LeakyRelu(layer["alpha"])
    if name == "abs":
        return stax.Abs()
    if name == "gelu":
        return stax.Gelu(approximate=False)
    if name == "sin":
        return stax.Sin(layer["a"], layer["b"], layer["c"])
    if name == "identity":
        return stax.Identity()
    raise ValueError(f"unknown activation {name!r}")


def nt_layer(layer: dict[str, Any], n_spatial: int) -> Any:
    """NT ``(init_fn, apply_fn, kernel_fn)`` of one layer dict (inputs channels last)."""
    op = layer["op"]
    if op == "dense":
        return stax.Dense(layer["width"], W_std=layer["w_std"], b_std=layer["b_std"],
                          parameterization=layer["parameterization"])
    if op == "act":
        return activation(layer)
    if op == "parallel":
        merges = {"sum": stax.FanInSum, "concat": lambda: stax.FanInConcat(axis=-1), "prod": stax.FanInProd}
        branches = [stax.serial(*[nt_layer(sub, n_spatial) for sub in branch]) if branch else stax.Identity()
                    for branch in layer["branches"]]
        return stax.serial(stax.FanOut(len(branches)), stax.parallel(*branches), merges[layer["merge"]]())
    if op == "residual":
        block = [nt_layer(sub, n_spatial) for sub in layer["block"]]
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.serial(*block)), stax.FanInSum())
    if op == "layernorm":
        if layer.get("axes") == "all":  # channels last: (N, *S, C), every axis but the batch's
            return stax.LayerNorm(axis=tuple(range(1, n_spatial + 2)), eps=layer["eps"])
        return stax.LayerNorm(axis=-1, eps=layer["eps"])
    if op == "convtranspose":
        return stax.ConvTranspose(layer["width"], tuple(layer["filter"]), tuple(layer["stride"]),
                                  padding=layer["padding"].upper(), W_std=layer["w_std"], b_std=layer["b_std"],
                                  dimension_numbers=DIMENSION_NUMBERS[n_spatial],
                                  parameterization=layer["parameterization"])
    if op == "conv":
        if len(layer["filter"]) != n_spatial or len(layer["stride"]) != n_spatial:
            raise ValueError(f"conv filter/stride {layer['filter']}/{layer['stride']} for {n_spatial}-d inputs")
        return stax.Conv(layer["width"], tuple(layer["filter"]), tuple(layer["stride"]),
                         padding=layer["padding"].upper(), W_std=layer["w_std"], b_std=layer["b_std"],
                         dimension_numbers=DIMENSION_NUMBERS[n_spatial],
                         parameterization=layer["parameterization"])
    if op == "avgpool":
        return stax.AvgPool(tuple(layer["window"]), tuple(layer["stride"]), padding=layer["padding"].upper(),
                            normalize_edges=layer.get("normalize_edges", False))
    if op == "sumpool":
        return stax.SumPool(tuple(layer["window"]), tuple(layer["stride"]), padding=layer["padding"].upper())
    if op == "gap":
        return stax.GlobalAvgPool()
    if op == "flatten":
        return stax.Flatten()
    raise ValueError(f"unknown op {op!r}")


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """``(N, C, *spatial)`` to ``(N, *spatial, C)``; vectors ``(N, d)`` unchanged."""
    return x if x.ndim == 2 else np.ascontiguousarray(np.moveaxis(x, 1, -1))


def scalar_kernel(k: Any, name: str, shape: tuple[int, int], squeezed: list[str]) -> np.ndarray:
    """A kernel as a float64 ``shape`` array, squeezing an extra trailing unit axis (recorded)."""
    arr = np.asarray(k, dtype=np.float64)
    if arr.shape != shape:
        if arr.size == shape[0] * shape[1] and arr.shape[:2] == shape:
            squeezed.append(f"{name}: {arr.shape} -> {shape}")
            arr = arr.reshape(shape)
        else:
            raise ValueError(f"{name}: NT kernel of shape {arr.shape}, expected {shape}")
    if arr.dtype != np.float64 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite or non-float64 kernel")
    return arr


def case_checks(x1: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, float]:
    """Symmetry of ``sym`` and agreement of ``sym`` / ``cross`` on the duplicated rows.

    ``x2[0] == x1[1]`` and ``x2[-1] == x1[0]`` (``== x1[-1]``), so ``cross[:, 0] == sym[:, 1]`` and
    ``cross[:, -1] == sym[:, 0]``; ``cross[0, -1]`` is an identical pair (an NT diagonal entry).
    """
    checks: dict[str, float] = {}
    for kind in ("nngp", "ntk"):
        sym, cross = out[f"sym/{kind}"], out[f"cross/{kind}"]
        scale = float(np.max(np.abs(sym)))
        checks[f"sym_asym_{kind}"] = float(np.max(np.abs(sym - sym.T)) / scale)
        dup = max(np.max(np.abs(cross[:, 0] - sym[:, 1])), np.max(np.abs(cross[:, -1] - sym[:, 0])))
        checks[f"dup_{kind}"] = float(dup / scale)
        n = len(x1)
        checks[f"selfdup_{kind}"] = float(max(abs(sym[0, 0] - sym[n - 1, n - 1]), abs(sym[0, 0] - sym[0, n - 1]))
                                          / scale)
    return checks


def relu_fc_by_hand(spec: list[dict[str, Any]], x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross NNGP and NTK of a dense/ReLU stack with the arc-cosine formulas (numpy float64).

    Exact for identical inputs (angle 0 where the rows are equal). ``ntk`` and ``standard``
    parameterizations as NT defines them.
    """
    same = np.all(x1[:, None, :] == x2[None, :, :], axis=-1)
    d = x1.shape[1]
    q11, q22, q12 = np.sum(x1 * x1, 1) / d, np.sum(x2 * x2, 1) / d, x1 @ x2.T / d
    ntk = np.zeros_like(q12)
    fan_in = d
    for layer in spec:
        if layer["op"] == "dense":
            w2, b2 = layer["w_std"] ** 2, (layer["b_std"] or 0.0) ** 2
            if layer["parameterization"] == "ntk":
                ntk = (w2 * q12 + b2) + w2 * ntk
            else:
                ntk = fan_in * q12 + w2 * ntk + (0.0 if layer["b_std"] is None else 1.0)
            q11, q22, q12 = w2 * q11 + b2, w2 * q22 + b2, w2 * q12 + b2
            fan_in = layer["width"]
        else:
            assert layer == {"op": "act", "name": "relu"}, layer
            norm = np.sqrt(np.outer(q11, q22))
            theta = np.where(same, 0.0, np.arccos(np.clip(q12 / norm, -1.0, 1.0)))
            q12 = norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
            ntk = ntk * (np.pi - theta) / (2 * np.pi)
            q11, q22 = q11 / 2, q22 / 2
    return q12, ntk


def hand_checks(spec: list[dict[str, Any]], out: dict[str, np.ndarray]) -> dict[str, float]:
    """NT's cross kernels against ``relu_fc_by_hand``: max error / max |kernel|, identical input pairs apart."""
    x1, x2 = out["x1"], out["x2"]
    nngp, ntk = relu_fc_by_hand(spec, x1, x2)
    same = np.all(x1[:, None, :] == x2[None, :, :], axis=-1)
    scale_nngp, scale_ntk = np.max(np.abs(nngp)), np.max(np.abs(ntk))
    err_nngp, err_ntk = np.abs(out["cross/nngp"] - nngp), np.abs(out["cross/ntk"] - ntk)
    return {"hand_nngp": float(np.max(err_nngp) / scale_nngp),
            "hand_ntk": float(np.max(err_ntk[~same]) / scale_ntk),
            "hand_ntk_identical": float(np.max(err_ntk[same]) / scale_ntk)}


def run_case(case: tuple[str, list[dict[str, Any]], list[int], int, int],
             make_inputs: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """NT kernels of one case (raises whatever NT raises)."""
    name, spec, input_shape, n1, n2 = case
    x1, x2 = make_inputs(name, input_shape, n1, n2)
    n_spatial = len(input_shape) - 1
    _, _, kernel_fn = stax.serial(*[nt_layer(layer, n_spatial) for layer in spec])
    a1, a2 = jax.numpy.asarray(to_channels_last(x1)), jax.numpy.asarray(to_channels_last(x2))
    squeezed: list[str] = []
    out: dict[str, np.ndarray] = {"x1": x1, "x2": x2}
    cross = kernel_fn(a1, a2, ("nngp", "ntk"))
    sym = kernel_fn(a1, None, ("nngp", "ntk"))
    for kind in ("nngp", "ntk"):
        out[f"cross/{kind}"] = scalar_kernel(getattr(cross, kind), f"{name}/cross/{kind}", (n1, n2), squeezed)
        out[f"sym/{kind}"] = scalar_kernel(getattr(sym, kind), f"{name}/sym/{kind}", (n1, n1), squeezed)
    return out, squeezed


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` layout with fixed zip timestamps (regeneration gives identical bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="only these cases (requires --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="compute and check, write nothing")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="default: tests/data of the repo")
    parser.add_argument("--branches", action="store_true",
                        help="the cases of tests/arch_cases_branches.py, written to nt_reference_branches.*")
    parser.add_argument("--forward", action="store_true",
                        help="the cases of tests/arch_cases_forward.py, written to nt_reference_forward.*")
    parser.add_argument("--graphs", action="store_true",
                        help="the graph networks of nt_reference_graphs.py, written to nt_reference_graphs.*")
    args = parser.parse_args(argv)
    if args.cases and not args.dry_run:
        parser.error("--cases writes a partial reference; add --dry-run")
    if args.graphs:  # stax.Aggregate: graphs with per-example adjacencies (their own inputs and layout)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from nt_reference_graphs import run_graphs
        return int(run_graphs(args, sys.modules[__name__]))

    arch = load_arch_cases()
    source = load_arch_cases(BRANCH_CASES_PATH, "arch_cases_branches") if args.branches else arch
    if args.forward:
        source = load_arch_cases(FORWARD_CASES_PATH, "arch_cases_forward")
    cases = [source.case_by_name(n) for n in args.cases] if args.cases else list(source.CASES)
    print(f"neural-tangents {neural_tangents.__version__}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"numpy {np.__version__}, x64 {jax.config.jax_enable_x64}, {len(cases)} cases", flush=True)

    t_start = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    unsupported: dict[str, str] = {}
    checks: dict[str, dict[str, float]] = {}
    squeezed: list[str] = []
    seconds: dict[str, float] = {}
    for case in cases:
        name, spec = case[0], case[1]
        t0 = time.perf_counter()
        try:
            out, sq = run_case(case, arch.make_inputs)
        except (NotImplementedError, ValueError, TypeError) as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            unsupported[name] = f"{type(exc).__name__}: {msg}"
            seconds[name] = time.perf_counter() - t0
            print(f"{name:28s} {seconds[name]:6.2f} s  UNSUPPORTED  {unsupported[name]}", flush=True)
            continue
        seconds[name] = time.perf_counter() - t0
        squeezed += sq
        checks[name] = case_checks(out["x1"], out)
        if all(layer["op"] == "dense" or layer == {"op": "act", "name": "relu"} for layer in spec):
            checks[name].update(hand_checks(spec, out))
        arrays.update({f"{name}/{key}": val for key, val in out.items()})
        c = checks[name]
        hand = (f"  hand ntk {c['hand_ntk']:.1e} (identical pairs {c['hand_ntk_identical']:.1e})"
                if "hand_ntk" in c else "")
        print(f"{name:28s} {seconds[name]:6.2f} s  asym {max(c['sym_asym_nngp'], c['sym_asym_ntk']):.1e}"
              f"  dup {max(c['dup_nngp'], c['dup_ntk']):.1e}{hand}", flush=True)
    total = time.perf_counter() - t_start

    worst = {key: max((c[key] for c in checks.values() if key in c), default=float("nan"))
             for key in ("sym_asym_nngp", "sym_asym_ntk", "dup_nngp", "dup_ntk", "selfdup_nngp", "selfdup_ntk",
                         "hand_nngp", "hand_ntk", "hand_ntk_identical")}
    print(f"\n{len(checks)} supported, {len(unsupported)} unsupported, {total:.1f} s")
    for name, msg in unsupported.items():
        print(f"  unsupported {name}: {msg}")
    print("  worst relative checks: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    if squeezed:
        print("  squeezed extra output axes: " + "; ".join(squeezed))

    if args.dry_run:
        return 0
    stem, case_file = ("nt_reference_branches", "arch_cases_branches.py") if args.branches else ("nt_reference",
                                                                                                "arch_cases.py")
    if args.forward:
        stem, case_file = "nt_reference_forward", "arch_cases_forward.py"
    npz_path, json_path = args.out_dir / f"{stem}.npz", args.out_dir / f"{stem}.json"
    write_npz(npz_path, arrays)
    meta = {
        "description": f"neural-tangents infinite-width NNGP/NTK (float64) of the cases of tests/{case_file}",
        "versions": {"neural_tangents": neural_tangents.__version__, "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "setup": SETUP_COMMAND,
        "command": COMMAND + (" --branches" if args.branches else "") + (" --forward" if args.forward else ""),
        "seconds": round(total, 1),
        "layout": "NAME/x1 (n1, *shape), NAME/x2 (n2, *shape) channels first; NAME/cross/{nngp,ntk} (n1, n2); "
                  "NAME/sym/{nngp,ntk} (n1, n1)",
        "supported": list(checks),
        "unsupported": unsupported,
        "squeezed": squeezed,
        "checks": {name: {k: float(f"{v:.3e}") for k, v in c.items()} for name, c in checks.items()},
        "nt_notes": NT_NOTES + (BRANCH_NOTES if args.branches or args.forward else []),
    }
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {npz_path.relative_to(REPO) if npz_path.is_relative_to(REPO) else npz_path} "
          f"({npz_path.stat().st_size / 1024:.1f} KiB) and {json_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
