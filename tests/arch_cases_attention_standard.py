"""Token cases with self-attention (and dense layers) in standard parameterization.

The layer dicts of :mod:`tests.arch_cases_tokens`, every ``dense`` with ``"parameterization": "standard"``
and every ``attention`` with ``"parameterization": "standard"`` and its ``key_features`` / ``value_features``
(in standard parameterization the fan-ins ``C`` (values), ``H d_v`` (output weights) and ``C_k`` (queries and
keys) enter the NTK: the widths below make them differ). ``benchmarks/nt_reference_tokens.py`` writes their
references into ``tests/data/nt_reference_tokens.npz`` next to the NTK-parameterization cases;
``tests/test_attention_standard.py`` checks ntkit against them. Standard library only (loaded by file path in
the neural-tangents virtual environment).
"""

from __future__ import annotations

from typing import Any

Spec = list[dict[str, Any]]


def _dense(width: int = 16, w_std: float = 1.0, b_std: float | None = 0.0) -> dict:
    return {"op": "dense", "width": width, "w_std": w_std, "b_std": b_std, "parameterization": "standard"}


def _attn(width: int = 12, heads: int = 1, key_features: int = 7, value_features: int = 5,
          mechanism: str = "softmax", linear_scaling: bool = True, w_qk: tuple[float, float] = (1.0, 1.0),
          w_ov: tuple[float, float] = (1.0, 1.0), b_std: float | None = None, pos_emb: str | None = None,
          pos_std: float = 1.0, pos_features: int | None = None) -> dict:
    return {"op": "attention", "width": width, "heads": heads, "key_features": key_features,
            "value_features": value_features, "mechanism": mechanism, "linear_scaling": linear_scaling,
            "w_qk": list(w_qk), "w_ov": list(w_ov), "b_std": b_std, "pos_emb": pos_emb, "pos_std": pos_std,
            "pos_features": pos_features, "parameterization": "standard"}


def _residual(*block: dict) -> dict:
    return {"op": "residual", "block": list(block)}


RELU = {"op": "act", "name": "relu"}
ERF = {"op": "act", "name": "erf", "a": 1.0, "b": 1.0, "c": 0.0}
NORM = {"op": "layernorm", "eps": 1e-12}
GAP = {"op": "gap"}
READOUT = _dense(1, b_std=0.1)

#: (name, spec, input shape [L, C], n1, n2); attention widths: C = 16 (after the first dense), H d_v = 5 .. 12.
CASES: list[tuple[str, Spec, list[int], int, int]] = [
    ("std_attn_softmax_h1", [_dense(b_std=0.1), _attn(), RELU, GAP, READOUT], [5, 3], 4, 3),
    ("std_attn_softmax_h2", [_dense(b_std=0.1), _attn(heads=2, key_features=6, w_qk=(1.5, 0.8), w_ov=(1.2, 0.9),
                                                      b_std=0.3), RELU, GAP, READOUT], [5, 3], 4, 3),
    ("std_attn_identity_h1", [_dense(), _attn(mechanism="identity", w_ov=(0.7, 1.3), b_std=0.0), ERF, GAP, READOUT],
     [4, 3], 4, 3),
    ("std_attn_identity_h2", [_dense(b_std=None), _attn(heads=2, value_features=3, mechanism="identity", b_std=0.2),
                              RELU, GAP, READOUT], [4, 3], 4, 3),
    ("std_attn_identity_sqrt", [_dense(), _attn(heads=2, value_features=6, mechanism="identity",
                                                linear_scaling=False, w_qk=(1.2, 0.9), w_ov=(1.1, 0.8)),
                                RELU, GAP, READOUT], [4, 3], 4, 3),
    ("std_attn_on_data", [_attn(heads=2, value_features=4, w_ov=(0.9, 1.4)), RELU, GAP, READOUT], [6, 3], 4, 3),
    ("std_attn_pos_concat", [_dense(), _attn(pos_emb="concat", pos_std=1.3, pos_features=8, mechanism="relu",
                                             w_qk=(0.7, 1.1)), RELU, GAP, READOUT], [5, 3], 4, 3),
    ("std_encoder_2blocks", [
        _dense(b_std=0.1),
        _residual(NORM, _attn(16, heads=2, value_features=4)), _residual(NORM, _dense(), RELU, _dense(b_std=0.1)),
        _residual(NORM, _attn(16, heads=2, value_features=4)), _residual(NORM, _dense(), RELU, _dense(b_std=0.1)),
        GAP, READOUT], [5, 3], 4, 3),
]
