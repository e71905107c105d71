"""Moment cases (:mod:`tests.moments`) of tokens, sums over axes, graphs and self-attention; part of
:data:`tests.moment_cases.CASES`.

Inputs (seeded, float64; held channel-first by the harness, :mod:`tests.moment_inputs`):

* :data:`TOKENS` / :data:`TOKEN_GRID`: deterministic tokens ``(N, *S, C)``, ``S = (3,)`` / ``(2, 2)``,
  ``C = 8``, channels last: the features on channels 0-3, the tangents on channels 4-7 (rows as
  :func:`tests.moment_inputs.deterministic`). Disjoint channels make ``sum_c x_c u'_c = 0`` exactly, as
  for tangents independent of a wide input: the attention matrix's derivative along ``u`` (through
  ``u x'^T + x u'^T``) then vanishes as in the infinite-width limit (with the tangents on the
  features' channels it is an O(1) artefact of the narrow input: the attention NTK misses by ~10%);
* :data:`GAUSS_TOKENS`: a Gaussian field over 4 tokens handed over channels last;
* :data:`GRAPHS` / :data:`GRAPH_TOKENS`: Gaussian node features over ``V = 5`` nodes (with a channel
  mean / channels last) and a graph per input: weighted, with self-loops, a node without in-edges;
  input 3 has the features of input 0 on another graph (another input of the kernel), input 5 is
  input 1 on its graph (an exact duplicate), input 4 is zero.

Self-attention (:class:`ntkit.nn.SelfAttention`, linear scaling, no bias) is drawn at *exact* weights
(:func:`exact_attention`): each head's key and value weights ``W`` (``C x d``) are random orthonormal
frames scaled to ``W W^T = d I``, and the read-out is ``sqrt(H d_v) I``. Gaussian weights have these
second moments only in expectation, and one draw couples all its output channels through the shared
heads (they are not i.i.d. draws): the heads' error falls like ``1 / sqrt(H d_v)`` per drawn layer, the
keys' like ``1 / sqrt(d_k)`` with a bias of the softmax's ``~1.3 / d_k`` (measured), so the harness's
0.3% standard error would take ~4e5 drawn value features, each paying for a whole read-out. At the
exact weights every layer's logits are ``qk K(x, x)``, its channel mean is the limit's
``ov^2 G K G'^T`` to rounding (any H, d_k, d_v), and the NTK's only finite-width term is the key
weights' own part, measured ``O(1 / d_k)``: ``0.2 / d_k`` (softmax), ``1.7 / d_k`` (relu) of the largest
entry, which the case's ``floor`` admits (``d_k = 1024``: 0.5 / 1.7 floors). Then a 1% error of the op's
NNGP or NTK is ~10 floors (z-score), of its logits' scale (``qk``, softmax) ~11, and the harness's 1%
scale fault (2% of the moments) 20-50. Two draws (different frames) give the SE (rounding only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ntkit.nn import Aggregate, Linear, SelfAttention
from tests.moment_inputs import Data, Graphs, deterministic, gaussian_field, generator
from tests.moments import Maker, MomentCase

F64 = torch.float64


def _disjoint_tokens(tokens: tuple[int, ...], features: int, seed: int) -> Data:
    """Tokens (N, *S, 2 F) as a channel-first :class:`Data` (N, 2 F, *S): features on channels < F, tangents >= F."""
    rows = deterministic((features, *tokens), seed)
    zero = torch.zeros_like(rows.x)
    return Data(torch.cat([rows.x, zero], 1), torch.cat([zero, rows.u], 1), tokens=True)


def _graphs(nodes: int, seed: int) -> torch.Tensor:
    """(6, V, V) weighted graphs with self-loops; node 1 of graph 0 without in-edges; graph 5 = graph 1."""
    g = generator(seed)
    edges = (torch.rand(6, nodes, nodes, generator=g) < 0.45).to(F64)
    a = edges * (0.5 + torch.rand(6, nodes, nodes, generator=g, dtype=F64)) + torch.eye(nodes, dtype=F64)
    a[0, 1] = 0.0
    a[5] = a[1]
    return a


def _graph_field(nodes: int, seed: int, *, tokens: bool = False, mean: bool = False) -> Graphs:
    """Gaussian node features (3 units and a zero input; inputs 3 = 0 and 5 = 1) with :func:`_graphs`."""
    field = gaussian_field((nodes,), seed, mean=mean)
    field = dataclasses.replace(field, index=torch.tensor([0, 1, 2, 0, 3, 1]), tokens=tokens)
    return Graphs(field, _graphs(nodes, seed + 7))


TOKENS = _disjoint_tokens((3,), 4, 30)
TOKEN_GRID = _disjoint_tokens((2, 2), 4, 35)
GAUSS_TOKENS = dataclasses.replace(gaussian_field((4,), 31), tokens=True)
GRAPHS = _graph_field(5, 32, mean=True)
GRAPH_TOKENS = _graph_field(5, 33, tokens=True)


class SumOver(nn.Module):
    """``x.sum(dim=dims)`` in a forward (captured by torch.fx: :class:`ntkit.infinite.ops.spatial_mean.SpatialSum`)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=self.dims)


def _frames(heads: int, rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    """(heads, rows, cols): per head ``rows`` random orthonormal vectors of length ``cols`` times ``sqrt(cols)``."""
    q, _ = torch.linalg.qr(torch.randn(heads, cols, rows, generator=g, dtype=F64))
    return q.transpose(1, 2) * math.sqrt(cols)


def exact_attention(heads: int, key_features: int, value_features: int, **kw: Any) -> Maker:
    """``SelfAttention(C, H d_v, ...)`` on :data:`TOKENS` at exact weights (see the module notes; width unused)."""
    c = TOKENS.x.shape[1]

    def make(width: int, g: torch.Generator) -> nn.Module:
        n = heads * value_features
        m = SelfAttention(c, n, n_heads=heads, key_features=key_features, value_features=value_features,
                          generator=g, dtype=F64, **kw)
        with torch.no_grad():
            m.key.copy_(_frames(heads, c, key_features, g))
            m.value.copy_(_frames(heads, c, value_features, g))
            m.out.copy_(torch.eye(n, dtype=F64) * math.sqrt(n))
        return m

    return make


#: Exact-weight attention: two draws (instances), their channel means; the floor admits the keys' own NTK part.
_EXACT: dict[str, Any] = {"draws": 2, "max_draws": 2, "width": 16, "instances": True, "own_draws": 2, "floor": 4e-4}

TOKEN_GRAPH_CASES: list[MomentCase] = [
    # ntkit.nn.Linear on every token (TokenDense): the draws are the output channels
    MomentCase("token_linear", lambda w, g: Linear(8, w, w_std=1.2, b_std=0.3, generator=g, dtype=F64), TOKENS),
    MomentCase("token_linear_standard", lambda w, g: Linear(8, w, b_std=0.5, parameterization="standard",
                                                            generator=g, dtype=F64), TOKENS),
    # x.sum(dim=...) over the spatial axes of images, over the token axis of tokens (GlobalSumPool)
    MomentCase("sum_images", lambda w, g: SumOver((2, 3)), gaussian_field((2, 3), 34)),
    MomentCase("sum_tokens", lambda w, g: SumOver((-2,)), GAUSS_TOKENS),
    # graph aggregation (AggregateOp): channel-first node features, node tokens
    MomentCase("aggregate", lambda w, g: Aggregate(), GRAPHS),
    MomentCase("aggregate_tokens", lambda w, g: Aggregate(channel_axis=-1), GRAPH_TOKENS),
    # self-attention (Attention), linear scaling, at exact weights
    MomentCase("attention_softmax", exact_attention(2, 1024, 8, w_query_std=1.3, w_key_std=0.9, w_value_std=1.1,
                                                    w_out_std=0.8), TOKENS, **_EXACT),
    MomentCase("attention_relu_grid", exact_attention(2, 1024, 8, mechanism="relu"), TOKEN_GRID,
               **{**_EXACT, "floor": 1e-3}),
]
