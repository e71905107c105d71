"""Token cases: inputs ``(N, L, C)`` (channels last), dense layers per token, layer norm, self-attention.

The layer dicts of :mod:`tests.arch_cases` (``dense``, ``act``, ``layernorm`` over the channels, ``flatten``,
``gap``: the mean over the tokens) plus::

    {"op": "attention", "width": C_out, "heads": H, "mechanism": "softmax" | "identity" | "relu" | "abs",
     "linear_scaling": bool, "w_qk": (w_query_std, w_key_std), "w_ov": (w_out_std, w_value_std), "b_std": b,
     "pos_emb": None | "sum" | "concat", "pos_std": s, "pos_features": None | C_p}
    {"op": "residual", "block": [...]}

ntkit builds ``ntkit.nn.Linear`` / ``ntkit.nn.LayerNorm(C)`` / ``ntkit.nn.SelfAttention`` on tokens and a
captured ``x.mean(dim=1)`` (``tests/test_tokens_nt.py``); neural-tangents the ``stax`` layers with its
default ``channel_axis=-1`` (``benchmarks/nt_reference_tokens.py`` writes
``tests/data/nt_reference_tokens.npz``). Inputs are :func:`tests.arch_cases.make_inputs` of the case's
name and shape ``[L, C]``, used as they are (tokens). Standard library only (loaded by file path in the
neural-tangents virtual environment).
"""

from __future__ import annotations

from typing import Any

Spec = list[dict[str, Any]]


def _dense(width: int = 16, w_std: float = 1.0, b_std: float | None = 0.0) -> dict:
    return {"op": "dense", "width": width, "w_std": w_std, "b_std": b_std, "parameterization": "ntk"}


def _attn(width: int = 16, heads: int = 1, mechanism: str = "softmax", linear_scaling: bool = True,
          w_qk: tuple[float, float] = (1.0, 1.0), w_ov: tuple[float, float] = (1.0, 1.0),
          b_std: float | None = None, pos_emb: str | None = None, pos_std: float = 1.0,
          pos_features: int | None = None) -> dict:
    return {"op": "attention", "width": width, "heads": heads, "mechanism": mechanism,
            "linear_scaling": linear_scaling, "w_qk": list(w_qk), "w_ov": list(w_ov), "b_std": b_std,
            "pos_emb": pos_emb, "pos_std": pos_std, "pos_features": pos_features}


def _residual(*block: dict) -> dict:
    return {"op": "residual", "block": list(block)}


RELU = {"op": "act", "name": "relu"}
ERF = {"op": "act", "name": "erf", "a": 1.0, "b": 1.0, "c": 0.0}
NORM = {"op": "layernorm", "eps": 1e-12}
GAP = {"op": "gap"}
FLATTEN = {"op": "flatten"}
READOUT = _dense(1, b_std=0.1)

#: (name, spec, input shape [L, C], n1, n2)
CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("tok_dense_relu_gap", [_dense(b_std=0.1), RELU, _dense(), ERF, GAP, READOUT], [5, 3], 4, 3),
    ("tok_dense_norm_flatten", [_dense(b_std=0.2), NORM, RELU, FLATTEN, READOUT], [4, 3], 4, 3),
    ("tok_norm_gap", [_dense(), NORM, _dense(b_std=0.1), RELU, GAP, READOUT], [6, 4], 4, 3),
    ("tok_attn_softmax_h1", [_dense(b_std=0.1), _attn(), RELU, GAP, READOUT], [5, 3], 4, 3),
    ("tok_attn_softmax_h2", [_dense(b_std=0.1), _attn(heads=2, w_qk=(1.5, 0.8), w_ov=(1.2, 0.9), b_std=0.3),
                             RELU, GAP, READOUT], [5, 3], 4, 3),
    ("tok_attn_identity_h1", [_dense(), _attn(mechanism="identity"), ERF, GAP, READOUT], [4, 3], 4, 3),
    ("tok_attn_identity_h2", [_dense(), _attn(heads=2, mechanism="identity", b_std=0.2), RELU, GAP, READOUT],
     [4, 3], 4, 3),
    ("tok_attn_relu_h1", [_dense(), _attn(mechanism="relu", w_qk=(0.7, 1.1)), RELU, GAP, READOUT], [5, 3], 4, 3),
    ("tok_attn_relu_h2", [_dense(), _attn(heads=2, mechanism="relu"), RELU, FLATTEN, READOUT], [5, 3], 4, 3),
    ("tok_attn_abs", [_attn(mechanism="abs"), RELU, GAP, READOUT], [4, 3], 4, 3),
    ("tok_attn_on_data", [_attn(heads=2), RELU, GAP, READOUT], [6, 3], 4, 3),
    ("tok_attn_identity_sqrt", [_dense(), _attn(mechanism="identity", linear_scaling=False, w_qk=(1.2, 0.9)),
                                RELU, GAP, READOUT], [4, 3], 4, 3),
    ("tok_attn_pos_sum", [_dense(), _attn(heads=2, pos_emb="sum", pos_std=0.7), RELU, GAP, READOUT], [5, 3], 4, 3),
    ("tok_attn_pos_concat", [_dense(), _attn(pos_emb="concat", pos_std=1.3, pos_features=8, mechanism="relu"),
                             RELU, GAP, READOUT], [5, 3], 4, 3),
    ("tok_encoder_2blocks", [
        _dense(b_std=0.1),
        _residual(NORM, _attn(heads=2)), _residual(NORM, _dense(), RELU, _dense(b_std=0.1)),
        _residual(NORM, _attn(heads=2)), _residual(NORM, _dense(), RELU, _dense(b_std=0.1)),
        GAP, READOUT], [5, 3], 4, 3),
]


def case_by_name(name: str) -> tuple[str, Spec, list[int], int, int]:
    """The case tuple called ``name``."""
    for case in CASES:
        if case[0] == name:
            return case
    raise KeyError(name)
