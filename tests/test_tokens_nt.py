"""``infinite_kernel`` of token models (inputs ``(N, L, C)``, self-attention) against neural-tangents.

``tests/data/nt_reference_tokens.npz`` holds neural-tangents 0.6.5's float64 NNGP / NTK of every case of
:mod:`tests.arch_cases_tokens` (``Dense`` per token, ``LayerNorm(axis=-1)``, ``GlobalAvgPool`` over the
tokens, ``GlobalSelfAttention`` with the softmax / identity / relu / abs mechanisms, 1 and 2 heads,
residual encoder blocks), written by ``benchmarks/nt_reference_tokens.py``. Distinct pairs must agree
to 1e-12 of the largest entry; identical pairs (the diagonal, duplicated rows) to 1e-7, where
neural-tangents' arc-cosine angle is off by ~1e-8 (``tests/test_infinite_nt.py``); ntkit's own identical
pairs are exact (equal to its self kernel bit for bit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from tests.arch_cases import make_inputs
from tests.arch_cases_tokens import CASES
from tests.arch_models import activation
from tests.nt_compare import assert_matches_reference

DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "nt_reference_tokens.npz")
META = json.loads((DATA / "nt_reference_tokens.json").read_text())


class TokenMean(nn.Module):
    """The mean over the tokens of ``(N, L, C)``, written as a forward (captured)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def build_tokens(spec: list[dict[str, Any]], shape: list[int]) -> tuple[nn.Module, int]:
    """The ``ntkit.nn`` model of a token spec for tokens of shape ``(L, C)``, and its output width."""
    length, c = shape
    layers: list[nn.Module] = []
    for layer in spec:
        op = layer["op"]
        if op == "dense":
            b = layer["b_std"]
            layers.append(ntkit.nn.Linear(c, layer["width"], w_std=layer["w_std"], b_std=b or 0.0, bias=b is not None,
                                          device="meta"))
            c = layer["width"]
        elif op == "act":
            layers.append(nn.ReLU() if layer["name"] == "relu" else ntkit.nn.Activation(activation(layer)))
        elif op == "layernorm":
            layers.append(ntkit.nn.LayerNorm(c, eps=layer["eps"]))
        elif op == "gap":
            layers.append(TokenMean())
        elif op == "flatten":
            layers.append(nn.Flatten())
            c *= length
        elif op == "attention":
            (wq, wk), (wo, wv) = layer["w_qk"], layer["w_ov"]
            layers.append(ntkit.nn.SelfAttention(c, layer["width"], n_heads=layer["heads"],
                                                 mechanism=layer["mechanism"], linear_scaling=layer["linear_scaling"],
                                                 w_query_std=wq, w_key_std=wk, w_out_std=wo, w_value_std=wv,
                                                 b_std=layer["b_std"], pos_emb=layer["pos_emb"],
                                                 n_tokens=length if layer["pos_emb"] else None,
                                                 pos_emb_std=layer["pos_std"],
                                                 pos_emb_features=layer["pos_features"], device="meta"))
            c = layer["width"]
        elif op == "residual":
            block, end = build_tokens(layer["block"], [length, c])
            assert end == c
            layers.append(ntkit.nn.Residual(block))
        else:
            raise KeyError(op)
    return nn.Sequential(*layers), c


def test_reference_file_covers_the_cases() -> None:
    assert sorted(META["supported"]) == sorted(case[0] for case in CASES) and not META["unsupported"]
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_matches_neural_tangents(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    x1, x2 = make_inputs(name, shape, n1, n2)
    np.testing.assert_array_equal(x1, REF[f"{name}/x1"])
    model, out = build_tokens(spec, shape)
    assert out == 1
    own = ntkit.infinite_kernel(model, torch.from_numpy(x1))
    for _, which, got, same in assert_matches_reference(model, x1, x2, REF, name):
        diag = getattr(own, which).numpy().diagonal()
        rows, cols = np.nonzero(same)
        np.testing.assert_array_equal(got[rows, cols], diag[rows])  # identical inputs: exact


def test_token_model_is_described_as_tokens() -> None:
    model, _ = build_tokens(CASES[0][1], CASES[0][2])
    arch = ntkit.infinite.describe_model(model, (5, 3))
    assert arch.tokens and arch.data_shape == (3, 5) and arch.input_mode == "full"
    assert arch.describe()["tokens"] is True
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    assert torch.equal(arch.prepare(x), x.transpose(1, 2))
