"""An embedding layer's contribution to a kernel block, by matching tokens.

An ``nn.Embedding`` maps the integer tokens ``t_p`` of an example (``P`` positions) to rows of its
weight, ``z_p = W[t_p]``. With ``g_{c,p} = d f_c / d z_p`` the cotangents of output ``c`` at its output,
the per-example gradient is a sum of cotangent rows per distinct token,

    d f_c / d W[u] = sum_{p : t_p = u} g_{c,p}                (zero at ``padding_idx``),

nonzero in at most ``P`` of the ``V`` rows of ``W``. The contribution to the kernel is therefore

    Theta_W(x_i, x'_j)_{cd} = sum_u <J_{c,i}[u], J'_{d,j}[u]>,

a sum over the tokens that the two examples share. :func:`token_rows` forms the rows ``J_{c,i}[u]``
of every distinct (example, token) pair (``index_add`` of the cotangents, ``N P k d`` additions),
:func:`matching_pairs` pairs the rows of the two sides that carry the same token (a sort and a
binary search), and :func:`add_embedding` adds their inner products to the block, in chunks of pairs
of bounded memory. The work is ``2 M k^2 d`` for ``M`` matched pairs: about ``N1 P`` plus the
coincidences of tokens between examples, never more than the Gram product over all position pairs
(``2 N1 N2 P^2 k^2 d``) and usually far less; the ``N x V d`` Jacobian is never formed. This is the
Gram product of the layer's one-hot inputs, ``A[ip, jq] = [t_ip = t'_jq]``, evaluated on its nonzero
entries only.
"""

from __future__ import annotations

from typing import Any

import torch

from ntkit.empirical._common import Tensor


def token_rows(layer_module: Any, tokens: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows of the per-example gradient: for every distinct (example, token), ``sum_p g_{c,p}``.

    Parameters
    ----------
    layer_module : nn.Embedding
    tokens : Tensor of shape (N, ...)
        Integer tokens of the examples.
    g : Tensor of shape (kc, N, ..., d)
        Cotangents at the embedding's output.

    Returns
    -------
    example, token : Tensor of shape (E,)
        The example and the token of each row, sorted by example then token; ``padding_idx`` left out.
    rows : Tensor of shape (kc, E, d)
    """
    n, kc, d = tokens.shape[0], g.shape[0], g.shape[-1]
    vocab = int(layer_module.num_embeddings)
    flat = tokens.reshape(n, -1).to(torch.int64)
    p = flat.shape[1]
    example = torch.arange(n, device=tokens.device).repeat_interleave(p)
    keys, inverse = torch.unique(example * vocab + flat.reshape(-1), return_inverse=True)
    rows = g.new_zeros((kc, keys.shape[0], d)).index_add_(1, inverse, g.reshape(kc, n * p, d))
    ex, tok = keys // vocab, keys % vocab
    pad = layer_module.padding_idx
    if pad is not None:
        keep = tok != pad
        ex, tok, rows = ex[keep], tok[keep], rows[:, keep]
    return ex, tok, rows


def matching_pairs(tok_left: Tensor, tok_right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All pairs ``(a, b)`` with ``tok_left[a] == tok_right[b]``, grouped by ``a``.

    Returns ``start`` (E_left + 1,), the offsets of each left row's pairs, and the index arrays
    ``a`` (M,) and ``b`` (M,).
    """
    order = torch.argsort(tok_right, stable=True)
    ordered = tok_right[order]
    lo = torch.searchsorted(ordered, tok_left)
    hi = torch.searchsorted(ordered, tok_left, right=True)
    counts = hi - lo
    start = torch.zeros(tok_left.shape[0] + 1, dtype=torch.int64, device=tok_left.device)
    torch.cumsum(counts, 0, out=start[1:])
    a = torch.repeat_interleave(torch.arange(tok_left.shape[0], device=tok_left.device), counts)
    within = torch.arange(a.shape[0], device=a.device) - start[:-1][a]
    b = order[lo[a] + within]
    return start, a, b


def pair_estimate(n1: int, n2: int, positions: int, vocab: int, pairs: bool) -> float:
    """Estimated matched pairs ``M`` of a block: each (example, token) row meets itself (``i == j``) and
    the rows of the other examples with the same token, for tokens drawn uniformly from ``vocab``
    (at most every position pair)."""
    per = float(positions) * (1.0 if pairs else max(1.0, n2 * positions / max(1, vocab)))
    return min(float(n1) * per, float(n1) * (1 if pairs else n2) * positions * positions)


def add_embedding(acc: Any, layer_module: Any, tokens: Tensor, g: Tensor, c0: int, limit: float,
                  right: tuple[Tensor, Tensor] | None = None) -> None:
    """Add an embedding's contribution for the cotangents ``g`` (kc, N, ..., d) of outputs ``c0 ..`` to
    the :class:`~ntkit.empirical._streamed_contract.Accumulator` ``acc``.

    ``tokens`` (N, ...) are the rows of the pass (``x1``'s then ``x2``'s, or ``x1``'s alone for a
    symmetric block); ``right``: the tokens and cotangents of the ``x2`` rows when they come
    separately. Pairs are processed ``limit`` bytes of gathered rows at a time.
    """
    ex, tok, rows = token_rows(layer_module, tokens, g)
    n1 = acc.n1
    if right is not None:
        ex_r, tok_r, rows_r = token_rows(layer_module, right[0], right[1])
        left = (ex, tok, rows)
    elif acc.sym:
        ex_r, tok_r, rows_r = ex, tok, rows
        left = (ex, tok, rows)
    else:
        side = ex < n1
        left = (ex[side], tok[side], rows[:, side])
        ex_r, tok_r, rows_r = ex[~side] - n1, tok[~side], rows[:, ~side]
    ex_l, tok_l, rows_l = left
    _, a_all, b_all = matching_pairs(tok_l, tok_r)
    if acc.pairs:  # only the entries i == j
        same = ex_l[a_all] == ex_r[b_all]
        a_all, b_all = a_all[same], b_all[same]
    kc, d = rows_l.shape[0], rows_l.shape[2]
    step = max(1, int(limit // max(1, (3 * kc * d + kc * kc) * rows_l.element_size())))
    for m0 in range(0, a_all.shape[0], step):
        a, b = a_all[m0 : m0 + step], b_all[m0 : m0 + step]
        _add_pairs(acc, ex_l[a], ex_r[b], rows_l[:, a], rows_r[:, b], c0)


def _add_pairs(acc: Any, ia: Tensor, jb: Tensor, left: Tensor, right: Tensor, c0: int) -> None:
    """Add ``<left[c, m], right[d, m]>`` to the entries ``(ia[m], jb[m])`` of the block."""
    kc = left.shape[0]
    mode, out = acc.mode, acc.acc
    if acc.pairs:  # ia == jb
        if mode == "trace":
            out.index_add_(0, ia, (left * right).sum((0, 2)))
        elif mode == "diagonal":
            out[c0 : c0 + kc].index_add_(1, ia, (left * right).sum(2))
        else:
            prods = torch.bmm(left.transpose(0, 1), right.permute(1, 2, 0))  # (M, kc, kc)
            out[:, c0 : c0 + kc, c0 : c0 + kc].index_add_(0, ia, prods)
        return
    n2 = out.shape[-1] if mode != "full" else out.shape[2]
    flat = ia * n2 + jb
    if mode == "trace":
        out.view(-1).index_add_(0, flat, (left * right).sum((0, 2)))
    elif mode == "diagonal":
        out[c0 : c0 + kc].view(kc, -1).index_add_(1, flat, (left * right).sum(2))
    else:
        prods = torch.bmm(left.transpose(0, 1), right.permute(1, 2, 0))  # (M, kc, kc)
        n1 = out.shape[0]
        block = prods.new_zeros((n1 * n2, kc, kc)).index_add_(0, flat, prods)
        out[:, c0 : c0 + kc, :, c0 : c0 + kc] += block.view(n1, n2, kc, kc).permute(0, 2, 1, 3)
