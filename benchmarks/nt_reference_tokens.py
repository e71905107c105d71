"""neural-tangents reference kernels of the token cases (``tests/arch_cases_tokens.py``); never imported by ntkit.

Inputs ``(N, L, C)`` go into neural-tangents as they are (its ``channel_axis=-1`` default): ``Dense`` acts
per token, ``LayerNorm(axis=-1)`` per token over the channels, ``GlobalAvgPool`` over the tokens,
``GlobalSelfAttention(width, width // heads, width // heads, heads, ...)`` (ntkit's default key / value
widths; they do not enter the limit), ``residual`` = ``serial(FanOut(2), parallel(Identity(), block),
FanInSum())``. Writes ``tests/data/nt_reference_tokens.npz`` / ``.json`` in the layout of
``benchmarks/nt_reference.py`` (whose helpers it reuses)::

    /work/nt-venv/bin/python benchmarks/nt_reference_tokens.py            # writes tests/data/
    /work/nt-venv/bin/python benchmarks/nt_reference_tokens.py --dry-run

The cases of ``tests/arch_cases_attention_standard.py`` (listed under ``"standard_parameterization"`` in the
json) have self-attention in standard parameterization, which neural-tangents' ``GlobalSelfAttention`` does
not offer (0.6.5): :func:`standard_attention` composes it from neural-tangents' NTK-parameterization kernel
(unit output / value scales, no bias) by the rule of neural-tangents' own standard ``Dense`` applied to each
weight: its NTK term times ``fan_in / W_std^2``, the bias's term 1 (see ``STANDARD_NOTES``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("nt_reference", HERE / "nt_reference.py")
assert _spec is not None and _spec.loader is not None
ntr = importlib.util.module_from_spec(_spec)
sys.modules["nt_reference"] = ntr
_spec.loader.exec_module(ntr)

import jax  # noqa: E402  (after nt_reference: it checks the venv and enables float64)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

warnings.filterwarnings("ignore", message="Linear scaling attention used", category=UserWarning)

CASES_PATH = ntr.REPO / "tests" / "arch_cases_tokens.py"
STANDARD_CASES_PATH = ntr.REPO / "tests" / "arch_cases_attention_standard.py"
COMMAND = "/work/nt-venv/bin/python benchmarks/nt_reference_tokens.py"

NOTES = [
    "Tokens (N, L, C) are NT's default layout (channel_axis=-1): no transposition.",
    "GlobalSelfAttention, linear_scaling=True: G = mech(W_q W_k cov1) (softmax over the key axis), "
    "nngp = ov^2 G1 K G2^T + b^2, ntk = ov^2 G1 T G2^T + b^2 + 2 (nngp - b^2); ov = W_out_std W_value_std.",
    "GlobalSelfAttention, linear_scaling=False: only the identity mechanism has a kernel: "
    "(qk ov)^2 [<K, K> K] + b^2 and (qk ov)^2 [2 <K, T> K + <K, K> (T + 4 K)] + b^2.",
    "Positional embeddings (pos_emb_type SUM / CONCAT, default decay: identity covariance R, val_pos_emb=False): "
    "G = mech(qk (w_in K + w_pe R)), w_in = 1, w_pe = W_pos_emb_std^2 (SUM) or C / (C + C_p), "
    "W_pos_emb_std^2 C_p / (C + C_p) (CONCAT); values and the NTK as without.",
]

STANDARD_NOTES = [
    "GlobalSelfAttention has no standard parameterization in neural-tangents; composed from its NTK-parameterization "
    "kernel_fn U (W_out_std = W_value_std = 1, b_std=None, the case's query / key scales, mechanism, positional "
    "embeddings) on the input kernel k (nngp K, ntk T) and on k with ntk = 0 (Z): nngp = ov^2 U.nngp + b^2; "
    "ntk = ov^2 (U.ntk - Z.ntk) [the input's term] + (C W_out^2 + H d_v W_value^2) U.nngp [the value and output "
    "weights: each one's NTK-parameterization term is ov^2 U.nngp, times fan_in / W_std^2] + ov^2 C_k "
    "(1 / W_query^2 + 1 / W_key^2) / 2 (Z.ntk - 2 U.nngp) [the query and key weights: half each of the rest of "
    "Z.ntk, times fan_in / W_std^2] + [1 with a bias]; C = k's channels, C_k = C (+ n_chan_pos_emb for CONCAT), "
    "H d_v the output weights' fan-in: neural-tangents' standard Dense rule (ntk = fan_in nngp + W_std^2 ntk + 1).",
]


def standard_attention(layer: dict[str, Any]) -> Any:
    """``(init_fn, apply_fn, kernel_fn)`` of a standard-parameterization attention (see ``STANDARD_NOTES``)."""
    from neural_tangents._src.stax.requirements import get_req, requires

    heads, dk, dv = layer["heads"], layer["key_features"], layer["value_features"]
    (wq, wk), (wo, wv) = layer["w_qk"], layer["w_ov"]
    b_std, ov2 = layer["b_std"], (wo * wv) ** 2
    init_fn, apply_fn, unit_fn = stax.GlobalSelfAttention(
        layer["width"], dk, dv, heads, linear_scaling=layer["linear_scaling"], W_key_std=wk, W_value_std=1.0,
        W_query_std=wq, W_out_std=1.0, b_std=None, attention_mechanism=layer["mechanism"].upper(),
        pos_emb_type=(layer.get("pos_emb") or "none").upper(), W_pos_emb_std=layer.get("pos_std", 1.0),
        n_chan_pos_emb=layer.get("pos_features"))

    def nngp_of(x: Any) -> Any:
        return None if x is None else ov2 * x + (0.0 if b_std is None else b_std**2)

    @requires(**get_req(unit_fn))
    def kernel_fn(k: Any, **kwargs: Any) -> Any:
        c = k.shape1[-1]
        ck = c + ((layer.get("pos_features") or c) if layer.get("pos_emb") == "concat" else 0)
        u = unit_fn(k, **kwargs)
        ntk = None
        if k.ntk is not None:
            z = unit_fn(k.replace(ntk=jax.numpy.zeros_like(k.ntk)), **kwargs)
            ntk = (ov2 * (u.ntk - z.ntk) + (c * wo**2 + heads * dv * wv**2) * u.nngp
                   + ov2 * ck * (1.0 / wq**2 + 1.0 / wk**2) / 2.0 * (z.ntk - 2.0 * u.nngp))
            if b_std is not None:
                ntk = ntk + 1.0
        return u.replace(nngp=nngp_of(u.nngp), cov1=nngp_of(u.cov1), cov2=nngp_of(u.cov2), ntk=ntk)

    return init_fn, apply_fn, kernel_fn


def token_layer(layer: dict[str, Any]) -> Any:
    """NT layer of one token layer dict."""
    if layer["op"] == "attention" and layer.get("parameterization", "ntk") == "standard":
        return standard_attention(layer)
    if layer["op"] == "attention":
        heads, width = layer["heads"], layer["width"]
        head = max(1, width // heads)
        (wq, wk), (wo, wv) = layer["w_qk"], layer["w_ov"]
        return stax.GlobalSelfAttention(width, head, head, heads, linear_scaling=layer["linear_scaling"],
                                        W_key_std=wk, W_value_std=wv, W_query_std=wq, W_out_std=wo,
                                        b_std=layer["b_std"], attention_mechanism=layer["mechanism"].upper(),
                                        pos_emb_type=(layer.get("pos_emb") or "none").upper(),
                                        W_pos_emb_std=layer.get("pos_std", 1.0),
                                        n_chan_pos_emb=layer.get("pos_features"))
    if layer["op"] == "residual":
        block = stax.serial(*[token_layer(sub) for sub in layer["block"]])
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), block), stax.FanInSum())
    return ntr.nt_layer(layer, 1)


def run_case(case: tuple[str, list[dict[str, Any]], list[int], int, int]) -> dict[str, np.ndarray]:
    """x1, x2 and the cross / sym NNGP and NTK of one case."""
    name, spec, shape, n1, n2 = case
    arch = ntr.load_arch_cases()
    x1, x2 = arch.make_inputs(name, shape, n1, n2)
    _, _, kernel_fn = stax.serial(*[token_layer(layer) for layer in spec])
    out: dict[str, np.ndarray] = {"x1": x1, "x2": x2}
    squeezed: list[str] = []
    cross = kernel_fn(jax.numpy.asarray(x1), jax.numpy.asarray(x2), ("nngp", "ntk"))
    sym = kernel_fn(jax.numpy.asarray(x1), None, ("nngp", "ntk"))
    for kind in ("nngp", "ntk"):
        out[f"cross/{kind}"] = ntr.scalar_kernel(getattr(cross, kind), f"{name}/cross/{kind}", (n1, n2), squeezed)
        out[f"sym/{kind}"] = ntr.scalar_kernel(getattr(sym, kind), f"{name}/sym/{kind}", (n1, n1), squeezed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="compute and check, write nothing")
    args = parser.parse_args(argv)
    cases = ntr.load_arch_cases(CASES_PATH, "arch_cases_tokens").CASES
    standard = [case[0] for case in ntr.load_arch_cases(STANDARD_CASES_PATH, "arch_cases_attention_standard").CASES]
    cases = cases + ntr.load_arch_cases(STANDARD_CASES_PATH, "arch_cases_attention_standard").CASES
    t_start = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    unsupported: dict[str, str] = {}
    checks: dict[str, dict[str, float]] = {}
    for case in cases:
        name = case[0]
        t0 = time.perf_counter()
        try:
            out = run_case(case)
        except (NotImplementedError, ValueError, TypeError) as exc:
            unsupported[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            print(f"{name:28s} UNSUPPORTED {unsupported[name]}", flush=True)
            continue
        checks[name] = ntr.case_checks(out["x1"], out)
        arrays.update({f"{name}/{key}": val for key, val in out.items()})
        c = checks[name]
        print(f"{name:28s} {time.perf_counter() - t0:6.2f} s  asym {max(c['sym_asym_nngp'], c['sym_asym_ntk']):.1e}"
              f"  dup {max(c['dup_nngp'], c['dup_ntk']):.1e}", flush=True)
    total = time.perf_counter() - t_start
    print(f"{len(checks)} supported, {len(unsupported)} unsupported, {total:.1f} s")
    if args.dry_run:
        return 0
    npz_path, json_path = ntr.OUT_DIR / "nt_reference_tokens.npz", ntr.OUT_DIR / "nt_reference_tokens.json"
    ntr.write_npz(npz_path, arrays)
    meta = {
        "description": "neural-tangents infinite-width NNGP/NTK (float64) of the cases of tests/arch_cases_tokens.py",
        "versions": {"neural_tangents": ntr.neural_tangents.__version__, "jax": jax.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "setup": ntr.SETUP_COMMAND,
        "command": COMMAND,
        "seconds": round(total, 1),
        "layout": "NAME/x1 (n1, L, C), NAME/x2 (n2, L, C) tokens; NAME/cross/{nngp,ntk} (n1, n2); "
                  "NAME/sym/{nngp,ntk} (n1, n1)",
        "supported": [name for name in checks if name not in standard],
        "unsupported": unsupported,
        "standard_parameterization": {"cases": "tests/arch_cases_attention_standard.py",
                                      "supported": [name for name in checks if name in standard],
                                      "notes": STANDARD_NOTES},
        "checks": {name: {k: float(f"{v:.3e}") for k, v in c.items()} for name, c in checks.items()},
        "nt_notes": NOTES,
    }
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {npz_path.name} ({npz_path.stat().st_size / 1024:.1f} KiB) and {json_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
