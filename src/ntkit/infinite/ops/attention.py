"""Global self-attention on tokens (:class:`ntkit.nn.SelfAttention`): neural-tangents' ``GlobalSelfAttention``.

Write ``K = K(x, x')[q, q']`` and ``T`` for the token-pair covariances of the input (``full`` layout,
the ``L`` tokens flattened, shape ``(L, L)`` per pair), ``K_x = K(x, x)``, ``qk = w_query_std w_key_std``,
``ov = w_out_std w_value_std`` and ``m`` the mechanism (Hron et al. 2020).

*Linear scaling* (logits ``/ d_k``, tied query and key weights): the logits tend to ``qk K_x``, so each
example has the deterministic attention matrix ``G_x = m(qk K_x)`` (softmax over its last axis, the
keys), and as neural-tangents 0.6.5 computes it::

    K' = ov^2 G_x K G_x'^T + b^2,        T' = ov^2 G_x T G_x'^T + 2 ov^2 G_x K G_x'^T + b^2

(the value and output weights give the ``2 ov^2 G K G`` term; the key weights and the attention
matrix's dependence on the input contribute O(1 / width)), the NTK as ``ov^2 G (T + 2 K) G'^T``. Per
batch of pairs: two batched GEMMs on ``(N1, N2, L, L)`` blocks (:func:`_weigh`).

*Square-root scaling* (``/ sqrt(d_k)``, independent query and key weights): the logits ``g[p, q]``
of a head tend to centred Gaussians, independent across heads, with
``E[g_x[p, q] g_x'[p', q']] = qk^2 K[p, p'] K[q, q']``. With the dual maps of ``m``,
``E_mm = E[m(g) m(g')]`` and ``E_dd = E[m'(g) m'(g')]`` at each ``(p, q, p', q')``, the values'
covariance ``K[q, q']`` and the logits' NTK ``qk^2 (2 K[p, p'] K[q, q'] + T[p, p'] K[q, q'] +
K[p, p'] T[q, q'])`` (query and key weights, then the input through queries and keys)::

    K'[p, p'] = ov^2 sum_{q, q'} E_mm K[q, q'] + b^2
    T'[p, p'] = ov^2 sum_{q, q'} (E_mm (2 K + T)[q, q'] + E_dd K[q, q'] NTK_logits) + b^2

For the identity this is neural-tangents' closed form (``<K, K> (T + 4 K) + 2 <K, T> K``); for
``relu`` / ``abs`` the arc-cosine / arcsine dual maps are applied at every ``(p, q, p', q')``: O(L^4)
per pair, in chunks of ``p``. Softmax has no closed form there: an error naming the module.

*Positional embeddings* (``pos_emb``, linear scaling): a shared random ``P`` with i.i.d. entries of
variance ``s^2`` in the queries and keys only turns ``K_x`` into ``K_x + s^2 I`` (``"sum"``) or
``(C K_x + C_p s^2 I) / (C + C_p)`` (``"concat"``) inside ``m``; the values, hence the formulas above,
are unchanged (neural-tangents with ``val_pos_emb=False`` and its default decay).

*Standard parameterization* (``parameterization="standard"``, the module's parameters carrying their
scales): the NNGP is unchanged and each weight's NTK term above is multiplied by ``fan_in / w_std^2``, the
bias's ``b^2`` replaced by 1 -- the rule of :class:`~ntkit.infinite.ops.dense.Dense` (neural-tangents'
``Dense``: ``T' = fan_in K + w^2 T + 1``; Sohl-Dickstein et al. 2020), applied to the value weights (fan-in
``C``), the output weights (``H d_v``) and the query / key weights (``C_k``, the keys' input channels).
The input's own term (``ov^2 G T G'^T``, the ``T`` terms) is unchanged. With ``a = C w_out^2 + H d_v
w_value^2`` (the value and output weights) and ``c = C_k (w_query^2 + w_key^2)`` (query and key weights)::

    linear scaling:  T' = ov^2 G_x T G_x'^T + a G_x K G_x'^T + [1 if a bias]
    square root:     T'[p, p'] = sum_{q, q'} (E_mm (ov^2 T + a K)[q, q'] + ov^2 E_dd K[q, q'] NTK_logits) + [1]
                     NTK_logits = c K[p, p'] K[q, q'] + qk^2 (T[p, p'] K[q, q'] + K[p, p'] T[q, q'])

(in NTK parameterization ``a = 2 ov^2``, ``c = 2 qk^2``; the tied key weights of linear scaling and the
positional embeddings contribute O(1 / width) in either). neural-tangents' ``GlobalSelfAttention`` has no
standard parameterization (0.6.5); ``benchmarks/nt_reference_tokens.py`` composes its reference from
neural-tangents' NTK-parameterization kernels by this rule.

The output is a fresh centred Gaussian process (fresh value and output weights, any input law), so
the op is a weight layer for residual sums; it needs and gives the ``full`` layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ntkit.activations import get_activation
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.base import KernelOp, Shape
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.state import Context, Pairs
from ntkit.nn.attention import SelfAttention

Tensor = torch.Tensor

#: Elements of the (pairs, p-chunk, L, L, L) blocks of the square-root scaling at once.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Attention(KernelOp):
    """Global self-attention over the tokens (positions) of each example (see the module notes)."""

    mechanism: str = "softmax"
    linear_scaling: bool = True
    qk_std: float = 1.0
    ov_std: float = 1.0
    b_std: float | None = None
    input_weight: float = 1.0
    pos_weight: float = 0.0
    parameterization: str = "ntk"
    #: Standard parameterization: ``(a, c)`` of the module notes (the value / output and the query / key weights).
    std_weights: tuple[float, float] = (0.0, 0.0)

    weighted: ClassVar[bool] = True
    mean_role: ClassVar[str] = "reset"

    @property
    def b2(self) -> float:
        """Bias variance (0 without a bias)."""
        return 0.0 if self.b_std is None else self.b_std**2

    @property
    def ntk_bias(self) -> float:
        """The bias's term in the NTK: ``b^2`` (NTK parameterization), 1 with a bias (standard), else 0."""
        if self.parameterization == "ntk":
            return self.b2
        return 0.0 if self.b_std is None else 1.0

    def _alphas(self) -> tuple[float, float]:
        """The weights of ``K`` next to ``T``: in the values' term (``a / ov^2``) and in the logits' NTK
        (``c / qk^2``); 2 and 2 in NTK parameterization."""
        if self.parameterization == "ntk":
            return 2.0, 2.0
        a, c = self.std_weights
        return a / self.ov_std**2, c / self.qk_std**2

    def input_mode(self, out_mode: str) -> str:
        return "full"

    def output_mode(self, in_mode: str) -> str:
        return "full"

    def degree(self, d: int | None) -> int | None:
        if d == 0:
            return 0
        if d is None or self.mechanism == "softmax" or self.b2 != 0.0 or self.pos_weight != 0.0:
            return None
        if self.ntk_bias != 0.0:  # standard parameterization: the bias's 1 in the NTK
            return None
        return 3 * d  # the attention matrix has degree 2 d, the values d

    def pairs_as_list(self) -> bool:
        return True

    def weights(self, k_self: Tensor) -> Tensor:
        """``G = m(qk K_x)`` of the self covariances ``k_self`` (U, L, L): shape (U, L, L), softmax over the keys."""
        logits = k_self * self.qk_std
        if self.mechanism == "softmax":
            return torch.softmax(logits, dim=-1)
        if self.mechanism == "relu":
            return logits.clamp_min(0.0)
        return logits.abs() if self.mechanism == "abs" else logits

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        assert p.layout.mode == "full"
        n = p.layout.pixels
        batch = p.nngp.shape[: p.batch_ndim]
        k = p.nngp.reshape(*batch, n, n)
        t = p.ntk.reshape(*batch, n, n) if ntk and p.ntk is not None else None
        if self.linear_scaling:
            nngp, out_ntk = self._linear(k, t, ctx, p.batch_ndim)
        else:
            nngp, out_ntk = self._gaussian(k, t, ctx, p.batch_ndim)
        pair = p.layout.pair_shape
        return p.replace(nngp=nngp.reshape(*batch, *pair), mean=None,
                         ntk=None if out_ntk is None else out_ntk.reshape(*batch, *pair))

    def _sides(self, v: Tensor, ctx: Context, batch_ndim: int) -> tuple[Tensor, Tensor]:
        """A per-row quantity ``v`` (U, ...) of the self batch for the left / right input of each pair."""
        if batch_ndim == 1:
            return (v if ctx.left_ids is None else v[ctx.left_ids]), (v if ctx.right_ids is None else v[ctx.right_ids])
        left = v if ctx.left_ids is None else v[ctx.left_ids]
        right = v if ctx.right_ids is None else v[ctx.right_ids]
        return left[:, None], right[None, :]

    def _linear(self, k: Tensor, t: Tensor | None, ctx: Context, batch_ndim: int) -> tuple[Tensor, Tensor | None]:
        n = k.shape[-1]
        k_self = ctx.rows.nngp.reshape(-1, n, n)
        if self.pos_weight != 0.0:  # the queries' and keys' covariance with the positional embeddings
            eye = torch.eye(n, dtype=k_self.dtype, device=k_self.device)
            k_self = self.input_weight * k_self + self.pos_weight * eye
        g = self.weights(k_self)
        nngp = self._scaled(_weigh(g, k, ctx, batch_ndim), self.b2)
        out_ntk = None
        if t is not None:  # ov^2 G T G^T + 2 ov^2 G K G^T in one product (T + 2 K in one pass: 2 K is exact)
            alpha = self._alphas()[0]  # standard parameterization: ov^2 G (T + (a / ov^2) K) G^T
            out_ntk = self._scaled(_weigh(g, torch.add(t, k, alpha=alpha), ctx, batch_ndim), self.ntk_bias)
        return nngp, out_ntk

    def _scaled(self, gmg: Tensor, bias: float) -> Tensor:
        """``ov^2 gmg + bias``, over the new tensor ``gmg`` (the products of :func:`_weigh`)."""
        if self.ov_std**2 != 1.0:
            gmg = gmg.mul_(self.ov_std**2)
        return gmg.add_(bias) if bias != 0.0 else gmg

    def _gaussian(self, k: Tensor, t: Tensor | None, ctx: Context, batch_ndim: int) -> tuple[Tensor, Tensor | None]:
        n = k.shape[-1]
        var = ctx.rows.variances().reshape(-1, n)
        v_left, v_right = self._sides(var, ctx, batch_ndim)
        qk2, ov2 = self.qk_std**2, self.ov_std**2
        act = get_activation(self.mechanism)
        # axes (..., p, p', q, q'); s_left[p, q] = qk^2 v[p] v[q], s_right[p', q'] likewise
        s_right = (qk2 * v_right[..., None, :, None, None] * v_right[..., None, None, None, :])
        kk = k[..., None, None, :, :]
        tt = None if t is None else t[..., None, None, :, :]
        alpha_v, alpha_l = self._alphas()  # 2.0, 2.0 in NTK parameterization
        pairs = max(1, k[..., 0, 0].numel())
        step = max(1, _CHUNK_ELEMENTS // (pairs * n * n * n))
        nngp_parts, ntk_parts = [], []
        for lo in range(0, n, step):
            sl = slice(lo, min(n, lo + step))
            s_left = qk2 * v_left[..., sl, None, None, None] * v_left[..., None, None, :, None]
            k_pp = k[..., sl, :, None, None]
            cov = qk2 * k_pp * kk
            e_mm, e_dd = act.dual(s_left, cov, s_right, derivative=t is not None)
            nngp_parts.append((e_mm * kk).sum(dim=(-2, -1)) * ov2)
            if t is not None:
                assert e_dd is not None and tt is not None
                t_pp = t[..., sl, :]
                values = (e_mm * (alpha_v * kk + tt)).sum(dim=(-2, -1))
                dd_kk = (e_dd * kk * kk).sum(dim=(-2, -1))
                dd_kt = (e_dd * kk * tt).sum(dim=(-2, -1))
                k_pp2 = k[..., sl, :]
                logits = qk2 * ((alpha_l * k_pp2 + t_pp) * dd_kk + k_pp2 * dd_kt)
                ntk_parts.append((values + logits) * ov2)
        nngp = torch.cat(nngp_parts, dim=-2)
        out_ntk = torch.cat(ntk_parts, dim=-2) if t is not None else None
        if self.b2 != 0.0:
            nngp = nngp + self.b2
        if self.ntk_bias != 0.0:
            out_ntk = None if out_ntk is None else out_ntk + self.ntk_bias
        return nngp, out_ntk


def _weigh(g: Tensor, m: Tensor, ctx: Context, batch_ndim: int) -> Tensor:
    """``G_x m G_x'^T`` for every pair: ``g`` (U, L, L) the self batch's attention matrices, ``m`` (M, L, L)
    for a list of pairs or (N1, N2, L, L) for all pairs (rows ``ctx.left_ids`` / ``ctx.right_ids``).

    For all pairs the blocks are held token-interleaved, ``m[i, j, p, r]`` at memory position ``(i, p, j, r)``
    (the layout of :func:`~ntkit.infinite.reference.input_pairs`; another layout is copied into it once), and
    two GEMMs batched over one side each need no copy: ``G_i`` times the row block ``m[i]`` as
    ``(L, L) @ (L, N2 L)``, then ``((N1 L), L) @ G_j^T`` for every ``j``, on the strided column block ``j``
    of that product, written into the result's column block ``j``. The result has the same layout.
    """
    g_left = g if ctx.left_ids is None else g[ctx.left_ids]
    g_right = g if ctx.right_ids is None else g[ctx.right_ids]
    if batch_ndim == 1:
        return g_left @ m @ g_right.transpose(-1, -2)
    n1, n2, n = m.shape[0], m.shape[1], m.shape[-1]
    rows = m.permute(0, 2, 1, 3).contiguous().view(n1, n, n2 * n)  # [i, p, (j, r)]: a view when interleaved
    left = torch.bmm(g_left, rows).view(n1 * n, n2, n).transpose(0, 1)  # [j, (i, p), r], strided
    out = torch.empty((n1 * n, n2, n), dtype=left.dtype, device=left.device)  # [(i, p), j, s]
    torch.bmm(left, g_right.transpose(-1, -2), out=out.transpose(0, 1))
    return out.view(n1, n, n2, n).permute(0, 2, 1, 3)


def _label(name: str, module: nn.Module) -> str:
    return f"{name} ({type(module).__name__})"


def _build_tokens(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, SelfAttention)
    label = _label(name, module)
    if shape[0] != module.in_features:
        given = ", ".join(["N", *map(str, shape[1:]), str(shape[0])])
        raise ArchitectureError(f"infinite_kernel: module {label}: expected tokens (N, L, {module.in_features}) "
                                f"(in_features channels last), got tokens ({given})")
    if not module.linear_scaling and module.mechanism == "softmax":
        raise ArchitectureError(
            f"infinite_kernel: module {label}: linear_scaling=False with mechanism='softmax' has no closed-form "
            "infinite-width kernel (an expectation of the softmax of Gaussian logits; neural-tangents refuses it "
            "too); expected linear_scaling=True, or mechanism 'identity', 'relu' or 'abs'. "
            "ntkit.monte_carlo_kernel estimates the kernels of the finite model")
    input_weight, pos_weight = 1.0, 0.0
    if module.pos_emb is not None:
        tokens = int(math.prod(shape[1:]))
        if not module.linear_scaling:
            raise ArchitectureError(f"infinite_kernel: module {label}: positional embeddings with "
                                    "linear_scaling=False are not supported; expected linear_scaling=True")
        if module.n_tokens != tokens:
            raise ArchitectureError(f"infinite_kernel: module {label}: expected {module.n_tokens} tokens (n_tokens, "
                                    f"its positional embeddings), got {tokens}")
        pos_weight = module.pos_emb_std**2
        if module.pos_emb == "concat":  # the logits average over C input and C_p embedding channels
            c, cp = module.in_features, module.pos_emb_features
            input_weight, pos_weight = c / (c + cp), pos_weight * cp / (c + cp)
    std_weights = (0.0, 0.0)
    if module.parameterization == "standard":  # a = C w_out^2 + H d_v w_value^2, c = C_k (w_query^2 + w_key^2)
        ck = module.in_features + (module.pos_emb_features if module.pos_emb == "concat" else 0)
        std_weights = (module.in_features * module.w_out_std**2
                       + module.n_heads * module.value_features * module.w_value_std**2,
                       ck * (module.w_query_std**2 + module.w_key_std**2))
    return Attention(label, shape, (module.out_features, *shape[1:]), module.mechanism, module.linear_scaling,
                     module.qk_std, module.ov_std, module.b_std, input_weight, pos_weight, module.parameterization,
                     std_weights)


register(SelfAttention, build=None, names="ntkit.nn.SelfAttention (on tokens)", has_weights=lambda m: True,
         on_data=False, tokens=_build_tokens)

__all__ = ["Attention"]
