"""A GPT-2-sized causal decoder from ``torch.nn`` only, with a scalar output, for empirical-NTK benchmarks.

Architecture (Radford et al. 2019, "Language models are unsupervised multitask learners"; the GPT-2
small configuration by default): learned token and position embeddings (``nn.Embedding``), ``layers``
pre-LayerNorm blocks ``h = h + attn(ln_1(h))``, ``h = h + mlp(ln_2(h))`` with causal multi-head
self-attention (``nn.Linear`` query/key/value projection ``c_attn`` (d, 3d) and output projection
``c_proj``; softmax of the masked scores ``q k^T / sqrt(d_head)`` as in GPT-2's code, or with
``sdpa=True`` PyTorch's fused ``F.scaled_dot_product_attention(is_causal=True)``, which has no
forward-mode derivative and no batching rule, so not for ``torch.func`` methods) and an MLP
``Linear(d, 4d)``, tanh-GELU, ``Linear(4d, d)``, a final LayerNorm, then the scalar output

    f(tokens) = head( mean_t ln_f(h)_t ),        head = nn.Linear(d, 1),

the mean over the ``L`` token positions of the final hidden state, projected to one number (so the
empirical NTK of a batch of ``N`` sequences is ``N x N``). Weights are random (GPT-2's initialisation:
normal(0, 0.02), residual projections scaled by ``1 / sqrt(2 layers)``); nothing is downloaded and
``transformers`` is not needed. With ``transformers`` installed, :func:`from_gpt2_config` reads the sizes
of a ``GPT2Config`` (an optional convenience only).

GPT-2 small: 12 layers, width 768, 12 heads, MLP 3072, vocabulary 50257, context 1024 (here 128 by
default): 123.75M parameters at context 128 (38.6M of them in the token embedding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with GPT-2's fused query/key/value projection.

    Input and output (N, L, d); ``heads`` must divide ``d``.
    """

    def __init__(self, width: int, heads: int, sdpa: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads: expected a divisor of the width {width}, got {heads}")
        self.heads, self.sdpa = heads, sdpa
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        shape = (n, length, self.heads, d // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))  # (N, heads, L, d / heads)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(2, 3) * (d // self.heads) ** -0.5  # (N, heads, L, L)
            mask = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(n, length, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``h + attn(ln_1(h))`` then ``h + mlp(ln_2(h))``."""

    def __init__(self, width: int, heads: int, mlp: int, sdpa: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, sdpa)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, mlp)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(mlp, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln_1(h))
        return h + self.c_proj(self.act(self.c_fc(self.ln_2(h))))


class GPT2Decoder(nn.Module):
    """Causal decoder with a scalar output: tokens (N, L) integers in ``[0, vocab)`` -> (N, 1).

    Parameters
    ----------
    layers, width, heads, mlp, vocab, context : int
        Blocks, hidden width ``d``, attention heads, MLP width, vocabulary size, longest sequence.
    seed : int
        Seed of the random weights.
    dtype : torch.dtype
    sdpa : bool
        Fused attention (see the module docstring).
    """

    def __init__(
        self,
        layers: int = 12,
        width: int = 768,
        heads: int = 12,
        mlp: int = 3072,
        vocab: int = 50257,
        context: int = 128,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        sdpa: bool = False,
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.h = nn.ModuleList([Block(width, heads, mlp, sdpa) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln_" in name or name.startswith("ln_f"):
                    p.fill_(1.0)
                else:
                    std = 0.02 / (2 * layers) ** 0.5 if name.endswith("c_proj.weight") else 0.02
                    p.normal_(0.0, std, generator=g)
        self.to(dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, length = tokens.shape
        positions = torch.arange(length, device=tokens.device).expand(n, length)
        h = self.wte(tokens) + self.wpe(positions)
        for block in self.h:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))


def gpt2_small(context: int = 128, **kwargs: Any) -> GPT2Decoder:
    """GPT-2 small (12 layers, width 768, 12 heads, MLP 3072, vocabulary 50257), in eval mode."""
    return GPT2Decoder(context=context, **kwargs).eval()


def from_gpt2_config(config: Any, context: int = 128, **kwargs: Any) -> GPT2Decoder:
    """The decoder with the sizes of a ``transformers.GPT2Config`` (needs only its attributes)."""
    mlp = config.n_inner if getattr(config, "n_inner", None) else 4 * config.n_embd
    return GPT2Decoder(
        config.n_layer, config.n_embd, config.n_head, mlp, config.vocab_size, min(context, config.n_positions), **kwargs
    ).eval()


def random_tokens(n: int, length: int, vocab: int = 50257, seed: int = 5) -> torch.Tensor:
    """(n, length) int64 token ids, uniform over the vocabulary."""
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
