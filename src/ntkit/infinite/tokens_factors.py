"""The linear prefix of a token model as per-input factors: ``K(x, x') = Phi_x Phi_x'^T``, ``T = Psi_x Psi_x'^T``.

Before its first activation a token model is linear in the features of each input, so its kernels are inner
products of finite per-input feature matrices (tokens ``L`` by rank ``r``): at the input ``Phi_x = x^T / sqrt(C)``
(``(L, C)``) and ``Psi_x`` empty (the input's NTK is 0), and every layer of the prefix maps the factors of an
input on their own (NTK parameterization; ``w``, ``b`` the layer's weight and bias standard deviations,
``[A, B]`` a concatenation of columns, ``1`` a column of ones)::

    token Linear:    Phi' = [w Phi, b 1],                       Psi' = [w Psi, Phi']
    layer norm:      Phi' = f Phi,  Psi' = f Psi,   f[p] = 1 / sqrt(K(x, x)[p, p] + eps)  (0 where <= 0), per token
    self-attention:  Phi' = [ov G Phi, b 1],                    Psi' = [ov G Psi, sqrt(2) ov G Phi, b 1]
                     with G = m(qk (iw Phi Phi^T + pw I)) (linear scaling: :mod:`ntkit.infinite.ops.attention`)
    sums of branches (residual blocks, ``Parallel`` sums and concatenations, weights ``w_i``):
                     Phi' = [sqrt(w_1) Phi_1, sqrt(w_2) Phi_2, ...], Psi' alike

which are the rules of :func:`~ntkit.infinite.ops.base.affine`, the layer norm, the attention (``K' = ov^2 G K
G'^T + b^2``, ``T' = ov^2 G (T + 2 K) G'^T + b^2``) and the merges written as Gram matrices. The attention then
costs ``O(L^2 r)`` per *input* instead of ``O(L^3)`` per *pair*; a pair of inputs costs one ``L x L`` product of
rank ``r_K + r_T`` where the factored prefix ends (:mod:`ntkit.infinite.tokens_fast` chooses where, by
:func:`ranks`). Exact up to rounding: the same sums in another order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ntkit.infinite.ops import KernelOp
from ntkit.infinite.ops.attention import Attention
from ntkit.infinite.ops.branches import Parallel
from ntkit.infinite.ops.layer_norm import LayerNormOp
from ntkit.infinite.ops.residual import Residual
from ntkit.infinite.ops.tokens import TokenDense

Tensor = torch.Tensor
#: Ranks ``(r_K, r_T)`` of the factors of the NNGP and the NTK.
Ranks = tuple[int, int]


def _branches(op: KernelOp) -> tuple[list[tuple[KernelOp, ...]], list[float]] | None:
    """The branches and merge weights of a residual block or a ``Parallel`` sum / concatenation (else None)."""
    if type(op) is Residual:
        return [(), op.block], [1.0, op.scale * op.scale]
    if type(op) is Parallel and op.rule in ("sum", "concat"):
        total = float(sum(op.widths))
        return list(op.paths), [w / total if op.rule == "concat" else 1.0 for w in op.widths]
    return None


def factorable(op: KernelOp) -> bool:
    """Whether ``op`` (and every op inside it) has a factored rule (module notes)."""
    if type(op) is TokenDense:
        return op.parameterization == "ntk"
    if type(op) is LayerNormOp:
        return True
    if type(op) is Attention:
        return op.linear_scaling and getattr(op, "parameterization", "ntk") == "ntk"
    sub = _branches(op)
    return sub is not None and all(factorable(o) for path in sub[0] for o in path)


def ranks(ops: Sequence[KernelOp], r: Ranks) -> Ranks:
    """The factors' ranks after ``ops`` (all :func:`factorable`) from ranks ``r`` before them."""
    rk, rt = r
    for op in ops:
        if type(op) is TokenDense:
            rk = rk + (op.b2 != 0.0)
            rt = rt + rk
        elif type(op) is Attention:
            bias = int(op.b2 != 0.0)
            rk, rt = rk + bias, rt + rk + bias
        elif type(op) is not LayerNormOp:
            sub = _branches(op)
            assert sub is not None
            outs = [ranks(path, (rk, rt)) for path in sub[0]]
            rk, rt = sum(o[0] for o in outs), sum(o[1] for o in outs)
    return rk, rt


def input_factors(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(Phi, Psi)`` of channel-first token inputs ``x`` (U, C, *S): shapes (U, L, C) and (U, L, 0)."""
    u, c = x.shape[0], x.shape[1]
    phi = x.reshape(u, c, -1).transpose(1, 2) / math.sqrt(c)
    return phi, phi[..., :0]


def apply_factors(ops: Sequence[KernelOp], phi: Tensor, psi: Tensor) -> tuple[Tensor, Tensor]:
    """The factors after ``ops`` (all :func:`factorable`): ``phi`` (U, L, r_K), ``psi`` (U, L, r_T)."""
    for op in ops:
        if type(op) is TokenDense:
            phi = phi * op.w_std if op.w_std != 1.0 else phi
            if op.b2 != 0.0:
                phi = torch.cat([phi, _ones(phi, math.sqrt(op.b2))], dim=-1)
            psi = torch.cat([psi * op.w_std if op.w_std != 1.0 else psi, phi], dim=-1)
        elif type(op) is LayerNormOp:
            shifted = (phi * phi).sum(dim=-1, keepdim=True) + op.eps
            f = torch.where(shifted > 0, shifted.rsqrt(), torch.zeros_like(shifted))
            phi, psi = phi * f, psi * f
        elif type(op) is Attention:
            phi, psi = _attention(op, phi, psi)
        else:
            sub = _branches(op)
            assert sub is not None
            outs = [apply_factors(path, phi, psi) for path in sub[0]]
            phi = torch.cat([o[0] * math.sqrt(w) if w != 1.0 else o[0] for o, w in zip(outs, sub[1], strict=True)], -1)
            psi = torch.cat([o[1] * math.sqrt(w) if w != 1.0 else o[1] for o, w in zip(outs, sub[1], strict=True)], -1)
    return phi, psi


def _ones(t: Tensor, value: float) -> Tensor:
    return torch.full((*t.shape[:-1], 1), value, dtype=t.dtype, device=t.device)


def _attention(op: Attention, phi: Tensor, psi: Tensor) -> tuple[Tensor, Tensor]:
    """The attention's factored rule: ``G`` from each input's own ``K = Phi Phi^T`` (as :meth:`Attention._linear`)."""
    k_self = phi @ phi.transpose(1, 2)
    if op.pos_weight != 0.0:
        eye = torch.eye(k_self.shape[-1], dtype=k_self.dtype, device=k_self.device)
        k_self = op.input_weight * k_self + op.pos_weight * eye
    g = op.weights(k_self) * op.ov_std if op.ov_std != 1.0 else op.weights(k_self)
    g_phi = g @ phi
    parts = [g @ psi, g_phi * math.sqrt(2.0)]
    if op.b2 != 0.0:
        bias = _ones(phi, math.sqrt(op.b2))
        return torch.cat([g_phi, bias], dim=-1), torch.cat([*parts, bias], dim=-1)
    return g_phi, torch.cat(parts, dim=-1)


__all__ = ["Ranks", "apply_factors", "factorable", "input_factors", "ranks"]
