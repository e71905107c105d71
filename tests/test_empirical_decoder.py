"""Empirical NTK of small causal transformer decoders with integer token inputs.

The streamed engine's rules for transformers — ``nn.Linear`` at the token positions (per-example
weight gradients or Gram products), ``nn.LayerNorm`` / ``nn.RMSNorm`` affine parameters, token and
position ``nn.Embedding`` contracted by matching tokens — against brute force (float64, 1e-12) and
against the Jacobian method (float32, 1e-5); integer token inputs through the public entry point.
The GPT-2-sized case is benchmarks/bench_empirical_real.py ``--cases gpt2``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit
import ntkit.empirical.streamed as sm
from ntkit.empirical._common import select_parameters
from ntkit.empirical._streamed_embedding import matching_pairs, token_rows
from ntkit.empirical.tiling import tiled_kernel
from tests._empirical_models import brute_force_ntk, reduce, single_thread  # noqa: F401
from tests.conftest import rel_err

MODES = ["full", "trace", "diagonal"]
VOCAB = 7  # few tokens: many shared between examples


class Attention(nn.Module):
    """Causal multi-head self-attention, GPT-2's fused query/key/value projection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = (t.reshape(n, length, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).split(d, 2))
        scores = q @ k.transpose(2, 3) / (d // self.heads) ** 0.5
        mask = torch.ones(length, length, dtype=torch.bool).triu(1)
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(n, length, d))


class Decoder(nn.Module):
    """Two pre-norm blocks, token and position embeddings, scalar or ``k`` outputs from the mean token.

    ``positions``: ``"batched"`` (indices (N, L)), ``"broadcast"`` (indices (1, L), broadcast by the
    sum, as Hugging Face's GPT-2) or ``"unbatched"`` (indices (L,): left to the per-example Jacobians).
    """

    def __init__(self, k: int = 1, positions: str = "batched", norm: str = "layer", pad: int | None = None) -> None:
        super().__init__()
        d, length = 8, 6
        self.positions = positions
        self.wte = nn.Embedding(VOCAB, d, padding_idx=pad)
        self.wpe = nn.Embedding(length, d)

        def make_norm() -> nn.Module:
            if norm == "rms":
                return nn.RMSNorm(d)
            return nn.LayerNorm(d, bias=norm == "layer")

        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln_1": make_norm(),
                    "attn": Attention(d, 2),
                    "ln_2": make_norm(),
                    "fc": nn.Linear(d, 16),
                    "proj": nn.Linear(16, d),
                }
            )
            for _ in range(2)
        )
        self.ln_f = make_norm()
        self.head = nn.Linear(d, k)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))  # non-trivial norm scales and biases

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, length = tokens.shape
        pos = torch.arange(length)
        if self.positions == "batched":
            pos = pos.expand(n, length)
        elif self.positions == "broadcast":
            pos = pos[None]
        h = self.wte(tokens) + self.wpe(pos)
        for b in self.blocks:
            h = h + b["attn"](b["ln_1"](h))
            h = h + b["proj"](F.gelu(b["fc"](b["ln_2"](h)), approximate="tanh"))
        return self.head(self.ln_f(h).mean(1))


def tokens(n: int, seed: int, length: int = 6) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[Any, ...]]:
    out = {}
    for name, kw in {
        "scalar": {},
        "k3": {"k": 3},
        "broadcast": {"k": 2, "positions": "broadcast", "norm": "rms", "pad": 0},
        "unbatched": {"positions": "unbatched", "norm": "nobias"},
    }.items():
        torch.manual_seed(0)
        model = Decoder(**kw).double().eval()
        x1, x2 = tokens(5, 1), tokens(4, 2)
        out[name] = (model, x1, x2, brute_force_ntk(model, x1, x2), brute_force_ntk(model, x1, x1))
    return out


@pytest.mark.parametrize("name", ["scalar", "k3", "broadcast", "unbatched"])
@pytest.mark.parametrize("store", [False, True])
def test_streamed_decoder_equals_brute_force(cases: dict, name: str, store: bool) -> None:
    model, x1, x2, ref12, ref11 = cases[name]
    k = ref12.shape[-1]
    engine = sm.StreamedEngine(model, select_parameters(model, None), k, x1[:1], 1 << 30, store=store)
    kinds = sorted({layer.kind for layer in engine.layers})
    assert kinds == ["embedding", "layernorm", "linear"]
    assert engine.fallback_names == (["wpe.weight"] if name == "unbatched" else [])
    engine.limit = 512.0  # small working blocks: Jacobian slices and token pairs in chunks
    f1, f2, f1a = engine.features(x1), engine.features(x2), engine.features(x1[:4])
    for mode in MODES:
        assert rel_err(engine.block(f1, f2, mode), reduce(ref12, mode)) < 1e-12, (mode, "x2")
        assert rel_err(engine.block(f1, f1, mode), reduce(ref11, mode)) < 1e-12, (mode, "sym")
        pairs = torch.stack([reduce(ref12, mode)[i, i] for i in range(4)])
        assert rel_err(engine.pairs(f1a, f2, mode), pairs) < 1e-12, (mode, "pairs")
        own = torch.stack([reduce(ref11, mode)[i, i] for i in range(5)])
        assert rel_err(engine.pairs(f1, f1, mode), own) < 1e-12, (mode, "own pairs")


@pytest.mark.parametrize("implementation", ["auto", "structured", "jacobian", "ntvp"])
def test_public_entry_takes_integer_tokens(cases: dict, implementation: str) -> None:
    model, x1, x2, ref12, ref11 = cases["k3"]
    for mode in MODES:
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation=implementation)
        assert got.dtype == torch.float64
        assert rel_err(got, reduce(ref12, mode)) < 1e-12, mode
    got = ntkit.empirical_ntk(model, x1.numpy(), mode="pntk", implementation=implementation)
    assert rel_err(got, ref11.sum((2, 3)) / 3) < 1e-12
    got = ntkit.empirical_ntk(model, x1, x1, mode="trace", pairs="diagonal", implementation=implementation)
    assert rel_err(got, torch.diagonal(reduce(ref11, "trace"))) < 1e-12


def test_auto_streams_the_decoder_under_tiles(cases: dict) -> None:
    model, x1, x2, ref12, ref11 = cases["scalar"]
    params = select_parameters(model, None)
    engine = sm.StreamedEngine(model, params, 1, x1[:1], 1 << 30)
    budget = int(engine.tile_bytes(2, 2, "trace")) + 1  # tiles of about two rows
    for x, ref in ((x2, ref12), (None, ref11)):
        got = tiled_kernel(engine, x1, x, mode="trace", pairs="all", budget=budget, progress=False, out=None,
                           dtype=torch.float64)
        assert rel_err(got, reduce(ref, "trace")) < 1e-12
        assert rel_err(ntkit.empirical_ntk(model, x1, x, memory_budget=budget), reduce(ref, "full")) < 1e-12


def test_selected_embedding_and_norm_parameters(cases: dict) -> None:
    model, x1, x2, _, _ = cases["broadcast"]
    names = ["wte.weight", "wpe.weight", "blocks.0.ln_1.weight", "blocks.1.attn.c_attn.bias"]
    ref = brute_force_ntk(model, x1, x2, names)
    for implementation in ("auto", "structured"):
        got = ntkit.empirical_ntk(model, x1, x2, parameters=names, implementation=implementation)
        assert rel_err(got, ref) < 1e-12


def test_float32_equals_jacobian_method() -> None:
    torch.manual_seed(0)
    model = Decoder(k=2).eval()
    x = tokens(6, 4)
    ref = ntkit.empirical_ntk(model, x, implementation="jacobian")
    got = ntkit.empirical_ntk(model, x)
    assert got.dtype == torch.float32
    assert rel_err(got, ref) < 1e-5


def test_token_rows_and_matching_pairs() -> None:
    emb = nn.Embedding(5, 2, padding_idx=4)
    tok = torch.tensor([[1, 3, 1, 4], [0, 3, 3, 2]])
    g = torch.arange(16.0).reshape(1, 2, 4, 2)
    ex, tok_u, rows = token_rows(emb, tok, g)
    assert ex.tolist() == [0, 0, 1, 1, 1] and tok_u.tolist() == [1, 3, 0, 2, 3]
    assert rows[0].tolist() == [[4, 6], [2, 3], [8, 9], [14, 15], [10 + 12, 11 + 13]]
    start, a, b = matching_pairs(tok_u, torch.tensor([3, 1, 3]))
    assert start.tolist() == [0, 1, 3, 3, 3, 5]
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (1, 0), (1, 2), (4, 0), (4, 2)]


def test_integer_inputs_errors_and_other_models(cases: dict) -> None:
    model, x1, _, _, _ = cases["scalar"]
    with pytest.raises(TypeError, match="x2: expected integer token ids"):
        ntkit.empirical_ntk(model, x1, x1.double())
    with pytest.raises(ValueError, match="x1 and x2: expected the same feature shape"):
        ntkit.empirical_ntk(model, x1, x1[:, :4])
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    ints = torch.tensor([[1, 2, 3], [0, -1, 2]])
    assert torch.equal(ntkit.empirical_ntk(mlp, ints), ntkit.empirical_ntk(mlp, ints.double()))  # cast as before


def test_recorded_inputs_freed_after_each_tile(cases: dict) -> None:
    """The recorders (holding every layer's input of a pass) must not wait for the cyclic garbage
    collector: over many tiles they piled up (a GPT-2 kernel at the default budget peaked at 9 GB)."""
    import gc

    from ntkit.empirical._cotangents import Recorder

    model, x1, _, _, ref11 = cases["scalar"]
    gc.collect()
    gc.disable()
    try:
        for store in (False, True):
            engine = sm.StreamedEngine(model, select_parameters(model, None), 1, x1[:1], 1 << 30, store=store)
            budget = int(engine.tile_bytes(2, 2, "trace") + 4 * engine.row_bytes()) + 1
            got = tiled_kernel(engine, x1, None, mode="trace", pairs="all", budget=budget, progress=False, out=None,
                               dtype=torch.float64)
            assert rel_err(got, reduce(ref11, "trace")) < 1e-12
            assert not any(type(o) is Recorder for o in gc.get_objects()), store  # (isinstance warns on some)
    finally:
        gc.enable()
