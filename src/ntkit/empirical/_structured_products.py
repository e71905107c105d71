"""The structured engine's kernel blocks from recorded layer inputs and cotangents: Gram and trace products.

A layer's contribution is the product of its input Gram ``A = s_w^2 <a, a'> + s_b^2`` and its
cotangent Gram ``G`` (summed over position pairs ``(p, q)`` for convolutions and repeated calls):

* dense layers (one position, one group) and the output layer are written straight into the result,
  row block by row block, so that each block's cotangent Gram is multiplied into the result while it
  is still in cache (:data:`FULL_BLOCK_BYTES`, :data:`ROW_BLOCK_BYTES`); with the same features on
  both sides only the blocks on and above the diagonal are computed and the rest is mirrored;
* other layers (several positions or groups, or per-layer Jacobians) and the autodiff fallback
  engine are accumulated in a separate block and added.

The feature layout is that of :class:`ntkit.empirical.structured.StructuredEngine`: per layer
``("factored", a (G, N P, d_in), g (G, N, P, k, d_out))``, ``("identity", a (1, N, d_in))``,
``("gram", a (1, N, d_in), G (N1, N2))``, ``("scaled", a (1, N, d_in), s (N, d_out), w (k, d_out))``
(cotangents ``g[i, c] = s[i] * w[c]``) or ``("jacobian", [J (N, k, F), ...])``.
"""

from __future__ import annotations

from typing import Any

import torch

from ntkit.empirical._common import Engine, Tensor, contract_jacobian_pairs, contract_jacobians
from ntkit.empirical._gemm import matmul_t
from ntkit.empirical._structured_layers import Layer

#: Bytes of one row block's cotangent Gram in full mode (kept in cache while multiplied into the result).
FULL_BLOCK_BYTES = 4 << 20
#: Bytes of one row block's temporaries in trace and diagonal mode (and the bound on the weighted rows
#: of a ``"scaled"`` layer in every mode, see :func:`_scaled_gram`).
ROW_BLOCK_BYTES = 16 << 20

#: A dense layer for :func:`_dense_rows`: ``(kind, layer, a1, a2, g1, g2, w)`` (see there).
DenseEntry = tuple[str, Layer, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]


def write_block(
    layers: list[Layer], k: int, fallback: Engine | None, f1: dict[str, Any], f2: dict[str, Any], mode: str, out: Tensor
) -> None:
    """Write the kernel block between the features ``f1`` and ``f2`` into ``out`` (N1, N2[, k[, k]]),
    possibly a strided view.

    Dense layers (one position, one group) and the output layer go straight into ``out`` in
    row blocks (:func:`_dense_rows`); everything else (convolutions, per-layer Jacobians, the
    autodiff ``fallback`` engine) is accumulated in a separate block and added. ``layers`` are
    the engine's layers, in the order of the features; ``k`` its number of outputs.
    """
    dense: list[DenseEntry] = []
    rest: list[tuple[Layer, Any, Any]] = []
    for layer, l1, l2 in zip(layers, f1["layers"], f2["layers"], strict=True):
        if l1[0] == "identity":
            dense.append(("identity", layer, l1[1][0], l2[1][0], None, None, None))
        elif l1[0] == "gram":
            if mode != "trace":
                raise ValueError(f"mode: features with trace Grams give trace blocks only, got mode={mode!r}")
            dense.append(("gram", layer, l1[1][0], l2[1][0], l1[2], None, None))
        elif l1[0] == "scaled":
            dense.append(("scaled", layer, l1[1][0], l2[1][0], l1[2], l2[2], l1[3]))
        elif l1[0] == "factored" and l1[2].shape[0] == 1 and l1[2].shape[2] == 1:
            dense.append(("cotangents", layer, l1[1][0], l2[1][0], l1[2][0, :, 0], l2[2][0, :, 0], None))
        else:
            rest.append((layer, l1, l2))
    if dense:
        _dense_rows(out, dense, mode, k, sym=f1 is f2)
    other = _rest_block(f1, f2, rest, mode, k, fallback)
    if other is None and not dense:
        out.zero_()
    elif other is not None:
        if dense:
            out.add_(other)
        else:
            out.copy_(other)


def pair_entries(
    layers: list[Layer], k: int, fallback: Engine | None, f1: dict[str, Any], f2: dict[str, Any], mode: str
) -> Tensor:
    """The ``i == j`` entries between the features ``f1`` and ``f2`` of equal length N: shape (N, k, k),
    (N,) or (N, k) by ``mode`` (arguments as in :func:`write_block`)."""
    n = f1["n"]
    total: Tensor | None = None
    for layer, l1, l2 in zip(layers, f1["layers"], f2["layers"], strict=True):
        if l1[0] == "jacobian":
            for j1, j2 in zip(l1[1], l2[1], strict=True):
                term = contract_jacobian_pairs(j1, j2, mode)
                total = term if total is None else total + term
            continue
        if l1[0] == "identity":  # cotangents e_a: A(x_i, x_i) on the (a, a) diagonal
            a_ii = (l1[1][0] * l2[1][0]).sum(-1) * layer.w_scale2 + layer.b_scale2  # (N,)
            eye = torch.eye(k, dtype=a_ii.dtype, device=a_ii.device)
            term = {"full": a_ii[:, None, None] * eye, "trace": a_ii, "diagonal": a_ii[:, None].expand(n, k)}[mode]
            total = term if total is None else total + term
            continue
        if l1[0] == "scaled":
            term = _scaled_pairs(layer, l1, l2, mode, k)
            total = term if total is None else total + term
            continue
        g1, g2 = l1[2], l2[2]
        groups, _, p, _, d = g1.shape
        for gi in range(groups):
            if layer.w_scale2 == 0:
                a: Tensor | float = layer.b_scale2
            else:
                a1 = l1[1][gi].view(n, p, -1)
                a2 = l2[1][gi].view(n, p, -1)
                a = torch.bmm(a1, a2.transpose(1, 2)) * layer.w_scale2 + layer.b_scale2  # (N, P, P)
            if mode == "trace":
                c = torch.bmm(g1[gi].reshape(n, p, k * d), g2[gi].reshape(n, p, k * d).transpose(1, 2))
                term = (c * a).sum((1, 2)) / k
            elif mode == "diagonal":
                c = torch.matmul(g1[gi].permute(0, 2, 1, 3), g2[gi].permute(0, 2, 3, 1))  # (N, k, P, P)
                a4 = a if isinstance(a, float) else a[:, None]
                term = (c * a4).sum((2, 3))
            else:
                c = torch.bmm(g1[gi].reshape(n, p * k, d), g2[gi].reshape(n, p * k, d).transpose(1, 2))
                a5 = a if isinstance(a, float) else a.view(n, p, 1, p, 1)
                term = (c.view(n, p, k, p, k) * a5).sum((1, 3))
            total = term if total is None else total + term
    if fallback is not None:
        term = fallback.pairs(f1["fallback"], f2["fallback"], mode)
        total = term if total is None else total + term
    assert total is not None
    return total


def input_gram(layer: Layer, a1: Tensor, a2: Tensor) -> Tensor | float:
    """``s_w^2 <a1, a2> + s_b^2`` per group: (G, N1 P, N2 P) from ``a1`` (G, N1 P, d_in) and ``a2``
    (G, N2 P, d_in), or the number ``s_b^2`` when the weight is not selected."""
    if layer.w_scale2 == 0:
        return layer.b_scale2
    if a1.shape[0] == 1:
        gram = matmul_t(a1[0], a2[0]).unsqueeze(0)  # (1, N1 P, N2 P)
    else:
        gram = torch.bmm(a1, a2.transpose(1, 2))  # (G, N1 P, N2 P)
    if layer.w_scale2 != 1.0:
        gram.mul_(layer.w_scale2)
    if layer.b_scale2 != 0:
        gram.add_(layer.b_scale2)
    return gram


def feature_like(f: dict[str, Any]) -> Tensor:
    """A tensor of the features ``f`` (for their dtype and device)."""
    ref = next(iter(f["layers"]), None)
    if ref is None:
        return next(iter(f["fallback"].values()))
    return ref[1][0] if isinstance(ref[1], list) else ref[1]


def _transpose(blk: Tensor, mode: str) -> Tensor:
    """Theta(x2, x1) from Theta(x1, x2): swap the example axes (and the output axes for "full")."""
    return blk.permute(1, 0, 3, 2) if mode == "full" else blk.transpose(0, 1)


def _dense_rows(out: Tensor, dense: list[DenseEntry], mode: str, k: int, sym: bool) -> None:
    """``out = sum_l A_l * G_l`` for dense layers, row block by row block.

    Each entry is ``(kind, layer, a1, a2, g1, g2, w)`` with the layer inputs ``a1`` (N1, d_in),
    ``a2`` (N2, d_in). ``A_l = s_w^2 a1 a2^T + s_b^2`` is formed block by block and ``G_l`` is
    the cotangent Gram of ``g1`` (N1, k, d), ``g2`` (N2, k, d): in full mode ``G[i, j, a, b] =
    <g1[i, a], g2[j, b]>`` is one GEMM (rows * k, d) x (d, N2 * k) per row block, whose product
    with ``A`` is written (or added) into ``out[rows]`` in its final (i, j, a, b) layout while
    the block is still in cache; in trace mode ``(1/k) sum_a G[i, j, a, a]`` is one GEMM
    (rows, k d) x (k d, N2), or ``g1`` already is ``sum_a G_aa`` (kind ``"gram"``). The output
    layer (kind ``"identity"``, cotangents ``e_a``) adds ``A`` on the (a, a) diagonal. Kind
    ``"scaled"`` has cotangents ``g[i, a] = s[i] * w[a]`` given by ``g1 = s1`` (N1, d), ``g2 = s2``
    (N2, d) and ``w`` (k, d) (the layer feeding the output layer through an activation), whose Gram
    is formed from the factors (:func:`_scaled_gram`). With ``sym`` (the same features on both
    sides) only columns from the block's first row on are computed and the rest is mirrored.
    """
    n1, n2 = out.shape[0], out.shape[1]
    itemsize = out.element_size()
    width = {"full": k * k, "trace": 1, "diagonal": k}[mode]
    rb = max(1, min(n1, (FULL_BLOCK_BYTES if mode == "full" else ROW_BLOCK_BYTES) // (width * n2 * itemsize)))
    for e in dense:  # a "scaled" layer's weighted rows (rows P, d) stay under ROW_BLOCK_BYTES
        if e[0] == "scaled" and mode != "trace" and e[4] is not None:
            per_row = (k * (k + 1) // 2 if mode == "full" else k) * e[4].shape[-1] * itemsize
            rb = max(1, min(rb, ROW_BLOCK_BYTES // per_row))
    if sym:
        rb = min(rb, max(1, -(-n1 // 4)))
    # trace mode: (1/k) sum_a, with the identity layer's sum_a delta_aa = k
    unit = 1.0 / k if mode == "trace" else 1.0
    weights = {id(e): _scaled_weights(e[6], mode) for e in dense if e[0] == "scaled" and e[6] is not None}
    for i0 in range(0, n1, rb):
        i1 = min(n1, i0 + rb)
        j0 = i0 if sym else 0
        o = out[i0:i1, j0:]
        first = True
        for entry in dense:
            kind, layer, a1, a2, g1, g2, _ = entry
            scale = 1.0 if kind == "identity" and mode == "trace" else unit
            if layer.w_scale2 == 0:
                a: Tensor | float = layer.b_scale2 * scale
            else:
                a = matmul_t(a1[i0:i1], a2[j0:])
                if layer.w_scale2 * scale != 1.0:
                    a.mul_(layer.w_scale2 * scale)
                if layer.b_scale2 != 0:
                    a.add_(layer.b_scale2 * scale)
                if mode != "trace":
                    a = a[:, :, None, None] if mode == "full" else a[:, :, None]
            if kind == "identity":
                if first:
                    o.zero_()
                diag = o.diagonal(dim1=2, dim2=3) if mode == "full" else o
                diag.add_(a[..., 0] if mode == "full" and isinstance(a, Tensor) else a)
                first = False
                continue
            assert g1 is not None
            d = g1.shape[-1]
            if kind == "gram":  # the trace Gram itself
                c = g1[i0:i1, j0:]
            elif kind == "scaled":
                assert g2 is not None
                c = _scaled_gram(g1[i0:i1], g2[j0:], weights[id(entry)], mode, k)
            elif mode == "full":
                assert g2 is not None
                c = matmul_t(g1[i0:i1].reshape(-1, d), g2[j0:].reshape(-1, d))
                c = c.view(i1 - i0, k, n2 - j0, k).transpose(1, 2)
            elif mode == "diagonal":
                assert g2 is not None
                c = torch.bmm(g1[i0:i1].transpose(0, 1), g2[j0:].permute(1, 2, 0)).permute(1, 2, 0)
            else:
                assert g2 is not None
                c = matmul_t(g1[i0:i1].reshape(i1 - i0, k * d), g2[j0:].reshape(n2 - j0, k * d))
            if isinstance(a, float):
                if first:
                    torch.mul(c, a, out=o)
                else:
                    o.add_(c, alpha=a)
            elif first:
                torch.mul(c, a, out=o)
            else:
                o.addcmul_(c, a)
            first = False
    if sym:
        for i0 in range(rb, n1, rb):
            i1 = min(n1, i0 + rb)
            out[i0:i1, :i0] = _transpose(out[:i0, i0:i1], mode)


def _scaled_weights(w: Tensor, mode: str) -> tuple[Tensor, Tensor | None]:
    """What :func:`_scaled_gram` needs of the rows ``w`` (k, d): in full mode the k(k+1)/2 products
    ``w_a * w_b`` (a <= b) and the index (k * k,) of each (a, b) among them; ``sum_a w_a^2`` (1, d)
    in trace mode; ``w * w`` (k, d) in diagonal mode."""
    if mode == "full":
        k = w.shape[0]
        ia, ib = torch.triu_indices(k, k, device=w.device)
        pos = torch.empty((k, k), dtype=torch.long, device=w.device)
        pos[ia, ib] = torch.arange(ia.shape[0], device=w.device)
        pos[ib, ia] = pos[ia, ib]
        return w[ia] * w[ib], pos.reshape(-1)
    w2 = w * w
    return (w2.sum(0, keepdim=True) if mode == "trace" else w2), None


def _scaled_gram(s1: Tensor, s2: Tensor, weights: tuple[Tensor, Tensor | None], mode: str, k: int) -> Tensor:
    """Cotangent Gram of ``g1[i, a] = s1[i] * w[a]`` and ``g2[j, b] = s2[j] * w[b]`` for ``s1`` (R, d),
    ``s2`` (M, d), from :func:`_scaled_weights` of ``w``:

        G[i, j, a, b] = sum_m s1[i, m] (w[a, m] w[b, m]) s2[j, m],

    one GEMM (R P, d) x (d, M) with ``P`` the number of distinct weight products: k(k+1)/2 in full mode
    (``G_ab = G_ba``; shape (R, M, k, k)), ``k`` in diagonal mode (``G_aa``, (R, M, k)), one in trace mode
    (``sum_a G_aa``, (R, M)) — instead of (R k, d) x (d, M k) (k^2 products) of the cotangents.
    """
    prods, pos = weights
    r, m, d = s1.shape[0], s2.shape[0], s1.shape[1]
    if mode == "trace":
        return matmul_t(s1 * prods, s2)
    c = matmul_t((s1.unsqueeze(1) * prods).reshape(-1, d), s2).view(r, prods.shape[0], m)  # (R, P, M)
    if mode == "diagonal":
        return c.permute(0, 2, 1)
    assert pos is not None
    return c.index_select(1, pos).view(r, k, k, m).permute(0, 3, 1, 2)


def _scaled_pairs(layer: Layer, l1: tuple[Any, ...], l2: tuple[Any, ...], mode: str, k: int) -> Tensor:
    """The ``i == j`` entries of a ``"scaled"`` layer (see :func:`_dense_rows`): (N, k, k), (N,) or (N, k)."""
    q = l1[2] * l2[2]  # s1 * s2, (N, d)
    w = l1[3]
    if mode == "full":
        g = torch.matmul(q.unsqueeze(1) * w, w.T)  # (N, k, k)
    elif mode == "trace":
        g = q @ (w * w).sum(0) / k
    else:
        g = q @ (w * w).T
    if layer.w_scale2 == 0:
        return g * layer.b_scale2
    a = (l1[1][0] * l2[1][0]).sum(-1) * layer.w_scale2 + layer.b_scale2  # (N,)
    return g * a.view(-1, *([1] * (g.ndim - 1)))


def _rest_block(
    f1: dict[str, Any],
    f2: dict[str, Any],
    rest: list[tuple[Layer, Any, Any]],
    mode: str,
    k: int,
    fallback: Engine | None,
) -> Tensor | None:
    """The block of the layers not handled by :func:`_dense_rows`, and of the fallback; None if none."""
    if not rest and fallback is None:
        return None
    n1, n2 = f1["n"], f2["n"]
    like = feature_like(f1)
    if mode == "full":
        acc = torch.zeros((n1, k, n2, k), dtype=like.dtype, device=like.device)
        view = acc.permute(0, 2, 1, 3)
    elif mode == "diagonal":
        acc = torch.zeros((k, n1, n2), dtype=like.dtype, device=like.device)
        view = acc.permute(1, 2, 0)
    else:
        acc = torch.zeros((n1, n2), dtype=like.dtype, device=like.device)
        view = acc
    for layer, l1, l2 in rest:
        if l1[0] == "jacobian":
            for j1, j2 in zip(l1[1], l2[1], strict=True):
                term = contract_jacobians(j1, j2, mode)
                view.add_(term * k if mode == "trace" else term)
            continue
        a_gram = input_gram(layer, l1[1], l2[1])
        g1, g2 = l1[2], l2[2]
        groups, _, p, _, _ = g1.shape
        for gi in range(groups):
            a_g = a_gram if isinstance(a_gram, float) else a_gram[gi]
            _accumulate(acc, a_g, g1[gi], g2[gi], mode, p, k)
    if mode == "trace":
        acc.div_(k)
    if fallback is not None:
        view.add_(fallback.block(f1["fallback"], f2["fallback"], mode))
    return view


def _accumulate(acc: Tensor, a: Tensor | float, g1: Tensor, g2: Tensor, mode: str, p: int, k: int) -> None:
    """Add one group's ``sum_{p,q} A[ip, jq] <g1[i,p,a], g2[j,q,b]>`` to ``acc``."""
    n1, n2, d = g1.shape[0], g2.shape[0], g1.shape[-1]
    if mode == "trace":
        c = matmul_t(g1.reshape(n1 * p, k * d), g2.reshape(n2 * p, k * d))
        if p == 1:
            if isinstance(a, float):
                acc.add_(c, alpha=a)
            else:
                acc.addcmul_(a, c)
        else:
            acc.add_((c * a).view(n1, p, n2, p).sum((1, 3)))
    elif mode == "diagonal":
        c = torch.bmm(
            g1.permute(2, 0, 1, 3).reshape(k, n1 * p, d), g2.permute(2, 3, 0, 1).reshape(k, d, n2 * p)
        )
        c.mul_(a)
        acc.add_(c.view(k, n1, p, n2, p).sum((2, 4)) if p > 1 else c)
    else:
        c = matmul_t(g1.reshape(n1 * p * k, d), g2.reshape(n2 * p * k, d)).view(n1, p, k, n2, p, k)
        a6 = a if isinstance(a, float) else a.view(n1, p, 1, n2, p, 1)
        if p == 1:
            if isinstance(a6, float):
                acc.add_(c.view(n1, k, n2, k), alpha=a6)
            else:
                acc.view(n1, 1, k, n2, 1, k).addcmul_(c, a6)
        else:
            acc.add_((c * a6).sum((1, 4)))
