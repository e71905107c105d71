"""Multi-head self-attention on tokens ``(N, L, C)`` in NTK or standard parameterization: :class:`SelfAttention`.

neural-tangents' ``stax.GlobalSelfAttention`` (Hron et al. 2020, "Infinite attention"), as a torch module.
With every weight entry i.i.d. N(0, 1), ``X`` one example's tokens ``(L, C)``, per head ``h``::

    Q_h = X W_Q[h],  K_h = X W_K[h],  V_h = X W_V[h]                      (L, d_k), (L, d_k), (L, d_v)
    A_h = m(qk_std Q_h K_h^T / (C d_k))           linear_scaling=True: W_Q = W_K (tied)
    A_h = m(qk_std Q_h K_h^T / (C sqrt(d_k)))     linear_scaling=False: W_Q, W_K independent
    out = ov_std [A_1 V_1, ..., A_H V_H] W_O / sqrt(C d_v H) + b_std b    (L, out_features)

with ``qk_std = w_query_std w_key_std``, ``ov_std = w_out_std w_value_std`` and the mechanism ``m``:
``softmax`` (over the keys, the last axis), ``identity``, ``relu`` or ``abs``. With linear scaling the
attention matrix tends to the deterministic ``m(qk_std K(x, x))`` as ``d_k`` grows (``K`` the input's
token covariance); without, the logits tend to Gaussians, whose expectation the kernel takes
(:mod:`ntkit.infinite.ops.attention`). Inputs ``(N, *S, C)`` with several token axes are flattened to
``(N, |S|, C)`` and back, as neural-tangents does.

Positional embeddings (neural-tangents' ``pos_emb_type`` with its default decay, an identity covariance
over the positions, and ``val_pos_emb=False``): a trained parameter ``P`` of shape ``(L, C_p)``, i.i.d.
N(0, 1) times ``pos_emb_std``, shared by every input, enters the queries and keys only: ``"sum"`` uses
``X + P`` (``C_p = C``), ``"concat"`` uses ``[X, P]`` (``C + C_p`` channels, ``1 / (C + C_p)`` in the logits).

Standard parameterization (``parameterization="standard"``, as :class:`~ntkit.nn.Linear`'s): the same function
at initialisation (the same draws, rescaled), the scales folded into the parameters, no ``1 / fan_in`` factor in
the forward pass. With ``C_k`` the keys' input channels (``C``, or ``C + C_p`` with concatenated embeddings)::

    W_Q[h] ~ N(0, w_query_std^2 / C_k),  W_K[h] ~ N(0, w_key_std^2 / C_k)     linear_scaling=False
    W_K[h] ~ N(0, w_query_std w_key_std / C_k)  (tied: W_Q = W_K)             linear_scaling=True
    W_V[h] ~ N(0, w_value_std^2 / C),  W_O ~ N(0, w_out_std^2 / (H d_v)),  b ~ N(0, b_std^2),  P ~ N(0, pos_emb_std^2)
    A_h = m(Q_h K_h^T / d_k)  (linear scaling)  or  m(Q_h K_h^T / sqrt(d_k)),    out = [A_1 V_1, ..., A_H V_H] W_O + b

The NNGP is unchanged; the NTK weighs every weight's term by its fan-in (Sohl-Dickstein et al. 2020, as
neural-tangents' ``Dense``; see :mod:`ntkit.infinite.ops.attention`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit._validation import check_choice, check_float, check_int, describe
from ntkit.nn._init import PARAMETERIZATIONS

Tensor = torch.Tensor

MECHANISMS = ("softmax", "identity", "relu", "abs")
POS_EMBS = ("sum", "concat")


class SelfAttention(nn.Module):
    """Global multi-head self-attention on tokens ``(N, L, C)`` (neural-tangents' ``GlobalSelfAttention``).

    Parameters
    ----------
    in_features, out_features : int
        Channels ``C`` of the input tokens and of the output tokens.
    n_heads : int
        Number of heads ``H``.
    key_features, value_features : int, optional
        Channels ``d_k`` of each head's keys (and queries), ``d_v`` of its values; default
        ``max(1, out_features // n_heads)``.
    linear_scaling : bool
        ``True``: logits scaled by ``1 / d_k`` and the query weights tied to the key weights
        (neural-tangents' default: a deterministic attention matrix in the limit); ``False``: the usual
        ``1 / sqrt(d_k)`` with independent queries.
    mechanism : {"softmax", "identity", "relu", "abs"}
        Applied to the logits (softmax over the keys).
    w_key_std, w_query_std, w_value_std, w_out_std : float
        Weight scales (``> 0``); only ``w_query_std * w_key_std`` and ``w_out_std * w_value_std`` matter.
    b_std : float, optional
        Bias scale (``>= 0``); None: no bias.
    pos_emb : {None, "sum", "concat"}
        Positional embeddings added to / concatenated with the tokens for the queries and keys (see the
        module notes); they need ``n_tokens``.
    n_tokens : int, optional
        Number of tokens ``L`` (all token axes together) the positional embeddings are drawn for.
    pos_emb_std : float
        Scale of the positional embeddings (``> 0``).
    pos_emb_features : int, optional
        Channels ``C_p`` of concatenated embeddings (default ``in_features``; ``"sum"`` needs ``in_features``).
    parameterization : {"ntk", "standard"}
        Where the scales live: in the forward pass (``"ntk"``, the module notes' first formulas) or in the
        parameters (``"standard"``: see the module notes; the same function at initialisation, another NTK).
    generator : torch.Generator, optional
    device, dtype
        Where and in what precision the parameters live.

    Attributes
    ----------
    key, value : Parameter of shapes (H, C_k, d_k), (H, C, d_v)
    query : Parameter of shape (H, C_k, d_k), or None (tied to ``key`` under linear scaling)
    out : Parameter of shape (H * d_v, out_features)
    bias : Parameter of shape (out_features,) or None
    pos : Parameter of shape (n_tokens, C_p) or None

    Raises
    ------
    ValueError
        Sizes below 1, non-positive weight scales, a negative ``b_std``, an unknown ``mechanism`` or
        ``parameterization``; at the call, an input that is not ``(N, *tokens, in_features)``.
    TypeError
        Sizes that are not integers, scales that are not real numbers, a non-boolean ``linear_scaling``.

    Examples
    --------
    >>> import torch
    >>> layer = SelfAttention(4, 6, n_heads=2, generator=torch.Generator().manual_seed(0))
    >>> layer(torch.randn(3, 5, 4)).shape
    torch.Size([3, 5, 6])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        n_heads: int = 1,
        key_features: int | None = None,
        value_features: int | None = None,
        linear_scaling: bool = True,
        mechanism: str = "softmax",
        w_key_std: float = 1.0,
        w_query_std: float = 1.0,
        w_value_std: float = 1.0,
        w_out_std: float = 1.0,
        b_std: float | None = None,
        pos_emb: str | None = None,
        n_tokens: int | None = None,
        pos_emb_std: float = 1.0,
        pos_emb_features: int | None = None,
        parameterization: str = "ntk",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.n_heads = check_int(n_heads, "n_heads", minimum=1)
        head = max(1, self.out_features // self.n_heads)
        self.key_features = check_int(head if key_features is None else key_features, "key_features", minimum=1)
        self.value_features = check_int(head if value_features is None else value_features, "value_features",
                                        minimum=1)
        if not isinstance(linear_scaling, bool):
            raise TypeError(f"linear_scaling: expected True or False, got {describe(linear_scaling)}")
        self.linear_scaling = linear_scaling
        self.mechanism = check_choice(mechanism, "mechanism", MECHANISMS)
        self.parameterization = check_choice(parameterization, "parameterization", PARAMETERIZATIONS)
        self.w_key_std = check_float(w_key_std, "w_key_std", minimum=0.0, strict=True)
        self.w_query_std = check_float(w_query_std, "w_query_std", minimum=0.0, strict=True)
        self.w_value_std = check_float(w_value_std, "w_value_std", minimum=0.0, strict=True)
        self.w_out_std = check_float(w_out_std, "w_out_std", minimum=0.0, strict=True)
        self.b_std = None if b_std is None else check_float(b_std, "b_std", minimum=0.0)
        self.pos_emb = None if pos_emb is None else check_choice(pos_emb, "pos_emb", POS_EMBS)
        self.pos_emb_std = check_float(pos_emb_std, "pos_emb_std", minimum=0.0, strict=True)
        self.n_tokens = None if n_tokens is None else check_int(n_tokens, "n_tokens", minimum=1)
        self.pos_emb_features = self.in_features if pos_emb_features is None else check_int(
            pos_emb_features, "pos_emb_features", minimum=1)
        if self.pos_emb is not None and self.n_tokens is None:
            raise ValueError(f"n_tokens: expected the number of tokens for pos_emb={self.pos_emb!r}, got None")
        if self.pos_emb == "sum" and self.pos_emb_features != self.in_features:
            raise ValueError(f"pos_emb_features: expected in_features ({self.in_features}) for pos_emb='sum', got "
                             f"{self.pos_emb_features}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {describe(generator)}")
        h, c, dk, dv = self.n_heads, self.in_features, self.key_features, self.value_features
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        ck = c + (self.pos_emb_features if self.pos_emb == "concat" else 0)  # channels of the keys' input
        self.key = nn.Parameter(torch.empty(h, ck, dk, **kw))
        self.query = None if linear_scaling else nn.Parameter(torch.empty(h, ck, dk, **kw))
        self.value = nn.Parameter(torch.empty(h, c, dv, **kw))
        self.out = nn.Parameter(torch.empty(h * dv, self.out_features, **kw))
        self.bias = None if self.b_std is None else nn.Parameter(torch.empty(self.out_features, **kw))
        self.pos = None if self.pos_emb is None else nn.Parameter(
            torch.empty(self.n_tokens, self.pos_emb_features, **kw))  # type: ignore[arg-type]
        self.reset_parameters(generator)

    @property
    def qk_std(self) -> float:
        """``w_query_std * w_key_std``: the only way the query and key scales enter."""
        return self.w_query_std * self.w_key_std

    @property
    def ov_std(self) -> float:
        """``w_out_std * w_value_std``: the only way the value and output scales enter."""
        return self.w_out_std * self.w_value_std

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every parameter afresh (nothing on ``meta``): i.i.d. N(0, 1) in NTK parameterization, the same
        draws times :meth:`init_scales` in standard parameterization."""
        scales = self.init_scales()
        for name, p in self.named_parameters():
            if p.device.type != "meta":
                with torch.no_grad():
                    draw = torch.randn(p.shape, generator=generator, dtype=torch.float64, device=p.device)
                    p.copy_(draw if self.parameterization == "ntk" else draw * scales[name])

    def init_scales(self) -> dict[str, float]:
        """The standard deviation of each parameter's entries, by name (all 1 in NTK parameterization)."""
        names = [name for name, _ in self.named_parameters()]
        if self.parameterization == "ntk":
            return dict.fromkeys(names, 1.0)
        ck, hv = self.key.shape[1], self.n_heads * self.value_features
        key_var = (self.qk_std if self.query is None else self.w_key_std**2) / ck  # tied: both scales in one
        scales = {"key": math.sqrt(key_var), "query": self.w_query_std / math.sqrt(ck),
                  "value": self.w_value_std / math.sqrt(self.in_features), "out": self.w_out_std / math.sqrt(hv),
                  "bias": self.b_std or 0.0, "pos": self.pos_emb_std}
        return {name: scales[name] for name in names}

    def attention(self, x: Tensor) -> Tensor:
        """The attention matrices of ``x`` (N, L, C): shape (N, H, L, L), each row over the keys."""
        if self.pos is not None:
            if x.shape[1] != self.pos.shape[0]:
                raise ValueError(f"SelfAttention: expected {self.pos.shape[0]} tokens (n_tokens, for the positional "
                                 f"embeddings), got inputs of shape {tuple(x.shape)}")
            pos = (self.pos * self.pos_emb_std if self.parameterization == "ntk" else self.pos).expand(
                x.shape[0], -1, -1)
            x = x + pos if self.pos_emb == "sum" else torch.cat([x, pos], dim=-1)
        keys = torch.einsum("nlc,hcd->nhld", x, self.key)
        queries = keys if self.query is None else torch.einsum("nlc,hcd->nhld", x, self.query)
        dk = self.key_features
        if self.parameterization == "ntk":
            norm = x.shape[-1] * (dk if self.linear_scaling else math.sqrt(dk))
            logits = queries @ keys.transpose(-1, -2) * (self.qk_std / norm)
        else:  # the scales live in the weights
            logits = queries @ keys.transpose(-1, -2) / (dk if self.linear_scaling else math.sqrt(dk))
        if self.mechanism == "softmax":
            return torch.softmax(logits, dim=-1)
        if self.mechanism == "relu":
            return F.relu(logits)
        return logits.abs() if self.mechanism == "abs" else logits

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"SelfAttention: expected tokens of shape (N, L, {self.in_features}) (channels last), "
                             f"got {describe(x)}")
        n, tokens = x.shape[0], x.shape[1:-1]
        flat = x.reshape(n, -1, self.in_features)
        values = torch.einsum("nlc,hcd->nhld", flat, self.value)
        heads = self.attention(flat) @ values  # (N, H, L, d_v)
        heads = heads.transpose(1, 2).reshape(n, flat.shape[1], -1)
        if self.parameterization == "standard":
            out = heads @ self.out
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(n, *tokens, self.out_features)
        scale = self.ov_std / math.sqrt(self.in_features * self.value_features * self.n_heads)
        out = heads @ self.out * scale
        if self.bias is not None:
            out = out + self.b_std * self.bias  # type: ignore[operator]
        return out.reshape(n, *tokens, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n_heads={self.n_heads}, "
                f"key_features={self.key_features}, value_features={self.value_features}, "
                f"linear_scaling={self.linear_scaling}, mechanism={self.mechanism!r}, qk_std={self.qk_std}, "
                f"ov_std={self.ov_std}, b_std={self.b_std}"
                + (f", parameterization={self.parameterization!r}" if self.parameterization != "ntk" else "")
                + (f", pos_emb={self.pos_emb!r}, n_tokens={self.n_tokens}, pos_emb_std={self.pos_emb_std}, "
                   f"pos_emb_features={self.pos_emb_features}" if self.pos_emb else ""))


__all__ = ["MECHANISMS", "POS_EMBS", "SelfAttention"]
