"""Accumulating one kernel block from per-layer contributions, as the streamed engine's backward pass
delivers them (output chunk by output chunk, layer by layer).

The rows of a pass are ``x1``'s then ``x2``'s (``n1 + n2`` rows), or ``x1``'s alone when the block
is symmetric (``sym``: ``x2`` is ``x1``). For outputs ``c0 .. c0 + kc - 1`` a layer contributes

* from per-example Jacobians ``J`` (N, kc, F) (:meth:`Accumulator.jacobian`):
  ``sum_f J[i, c, f] J'[j, d, f]`` — one GEMM ``(n1, kc F) x (kc F, n2)`` in trace mode (the sum over
  ``c = d`` is the inner dimension), ``kc`` GEMMs in diagonal mode, one ``(n1 k, F) x (F, n2 k)`` in
  full mode (then ``kc = k``);
* from Gram products (:meth:`Accumulator.factored`), for a layer applied at ``P`` positions with
  input rows ``a`` and cotangents ``g``: ``sum_{p,q} A[ip, jq] C[ip c, jq d]`` with the input Gram
  ``A = s_w^2 <a_p, a'_q> + s_b^2`` (G, n1 P, n2 P) and the cotangent Gram ``C = <g_{c,p}, g'_{d,q}>``
  (Novak et al. 2022, "structured derivatives"); cheaper than Jacobians when ``N P`` is small
  compared to the layer's parameters.

With ``pairs`` only the ``i == j`` entries are accumulated (the rows of ``x1`` and ``x2`` pair up).
Layouts while accumulating: trace (n1, n2); diagonal (k, n1, n2); full (n1, k, n2, k); with pairs
(n,), (k, n), (n, k, k). :meth:`Accumulator.result` returns the public layout.
"""

from __future__ import annotations

import torch

from ntkit.empirical._common import Tensor
from ntkit.empirical._gemm import matmul_t


class Accumulator:
    """Sum of layer contributions to one block (see the module docstring)."""

    def __init__(
        self, n1: int, n2: int, k: int, mode: str, *, sym: bool, pairs: bool, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.n1, self.n2, self.k, self.mode, self.sym, self.pairs = n1, n2, k, mode, sym, pairs
        if pairs:
            shape = {"trace": (n1,), "diagonal": (k, n1), "full": (n1, k, k)}[mode]
        else:
            shape = {"trace": (n1, n2), "diagonal": (k, n1, n2), "full": (n1, k, n2, k)}[mode]
        self.acc = torch.zeros(shape, dtype=dtype, device=device)

    def halves(self, t: Tensor, right: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rows of ``x1`` and of ``x2`` of a per-row tensor of the pass (or ``t`` and ``right`` when the
        two sides come separately)."""
        if right is not None:
            return t, right
        if self.sym:
            return t, t
        return t[: self.n1], t[self.n1 :]

    # ------------------------------------------------------------------ Jacobians
    def jacobian(self, j: Tensor, c0: int, right: Tensor | None = None) -> None:
        """Add the contribution of per-example Jacobians ``j`` of outputs ``c0 ..``: (N, kc, F), or (N, M)
        when the outputs' sum is left to the inner products (trace mode, or a single output); ``right``:
        those of the ``x2`` rows when they come separately."""
        if j.ndim == 2:
            self._flat(j, c0, right)
            return
        left, right = self.halves(j, right)
        n1, n2 = left.shape[0], right.shape[0]
        kc, f = j.shape[1], j.shape[2]
        acc, mode = self.acc, self.mode
        if self.pairs:
            if mode == "trace":
                acc += torch.bmm(left.reshape(n1, 1, kc * f), right.reshape(n1, kc * f, 1)).view(n1)
            elif mode == "diagonal":
                dots = torch.bmm(left.reshape(n1 * kc, 1, f), right.reshape(n1 * kc, f, 1)).view(n1, kc)
                acc[c0 : c0 + kc] += dots.T
            else:
                acc += torch.bmm(left, right.transpose(1, 2))
            return
        if mode == "trace":
            acc += matmul_t(left.reshape(n1, kc * f), right.reshape(n2, kc * f))
        elif mode == "diagonal":
            acc[c0 : c0 + kc] += torch.bmm(left.transpose(0, 1), right.permute(1, 2, 0))
        elif self.sym:
            _gram_sym_into(acc.view(n1 * kc, n1 * kc), left.reshape(n1 * kc, f))
        else:
            acc.view(n1 * kc, n2 * kc).add_(matmul_t(left.reshape(n1 * kc, f), right.reshape(n2 * kc, f)))

    def _flat(self, j: Tensor, c0: int, right: Tensor | None) -> None:
        left, right = self.halves(j, right)
        n1, n2 = left.shape[0], right.shape[0]
        mode, acc = self.mode, self.acc
        if self.pairs:
            dots = torch.bmm(left.reshape(n1, 1, -1), right.reshape(n1, -1, 1)).view(n1)
            target = acc if mode == "trace" else (acc[c0] if mode == "diagonal" else acc.view(n1))
        else:
            dots = matmul_t(left, right) if not self.sym else matmul_t(left, left)
            target = acc if mode == "trace" else (acc[c0] if mode == "diagonal" else acc.view(n1, n2))
        target += dots

    # ---------------------------------------------------------------- Gram products
    def input_gram(self, a: Tensor, s_w2: float, s_b2: float, right: Tensor | None = None) -> Tensor:
        """``A = s_w^2 <a_p, a'_q> + s_b^2`` from input rows ``a`` (N, G, d_in, P): (G, n1 P, n2 P), or
        (G, n, P, P) with pairs. ``s_w2 = 0`` (weight not selected) gives the constant ``s_b^2``."""
        n, groups, d, p = a.shape
        left, right = self.halves(a, right)
        if self.pairs:
            if s_w2 == 0:
                return torch.full((groups, n if self.sym else self.n1, p, p), s_b2, dtype=a.dtype, device=a.device)
            lt = left.transpose(0, 1).reshape(-1, d, p)
            rt = right.transpose(0, 1).reshape(-1, d, p)
            gram = torch.bmm(lt.transpose(1, 2), rt).view(groups, -1, p, p)
        else:
            n1, n2 = left.shape[0], right.shape[0]
            if s_w2 == 0:
                return torch.full((groups, n1 * p, n2 * p), s_b2, dtype=a.dtype, device=a.device)
            lt = left.permute(1, 0, 3, 2).reshape(groups, n1 * p, d)
            rt = lt if self.sym and right is left else right.permute(1, 0, 3, 2).reshape(groups, n2 * p, d)
            if groups == 1:
                gram = matmul_t(lt[0], rt[0]).unsqueeze(0)
            else:
                gram = torch.bmm(lt, rt.transpose(1, 2))
        if s_w2 != 1.0:
            gram.mul_(s_w2)
        if s_b2 != 0:
            gram.add_(s_b2)
        return gram

    def factored(self, gram: Tensor, g5: Tensor, c0: int, row_limit: float, right: Tensor | None = None) -> None:
        """Add ``sum_{p,q} A[ip, jq] <g_{c,p}(x_i), g_{d,q}(x'_j)>`` for the input Gram ``gram``
        (:meth:`input_gram`) and cotangents ``g5`` (kc, N, G, d_out, P) of outputs ``c0 ..``; full-mode
        Gram blocks are formed ``row_limit`` bytes at a time."""
        kc, _, groups, d, p = g5.shape
        mode, acc = self.mode, self.acc
        if self.pairs:
            other = None if right is None else right.permute(1, 2, 4, 0, 3)
            left_p, right_p = self.halves(g5.permute(1, 2, 4, 0, 3), other)  # (n, G, P, kc, d)
            m = left_p.shape[0]
            lt = left_p.transpose(0, 1).reshape(groups * m, p * kc, d)
            rt = right_p.transpose(0, 1).reshape(groups * m, p * kc, d)
            c = torch.bmm(lt, rt.transpose(1, 2)).view(groups, m, p, kc, p, kc)
            weighted = c * gram.view(groups, m, p, 1, p, 1)
            if mode == "trace":
                acc += weighted.diagonal(dim1=3, dim2=5).sum((0, 2, 3, 4))
            elif mode == "diagonal":
                acc[c0 : c0 + kc] += weighted.diagonal(dim1=3, dim2=5).sum((0, 2, 3)).T
            else:
                acc += weighted.sum((0, 2, 4))
            return
        rows = g5.permute(2, 1, 4, 0, 3)  # (G, n, P, kc, d)
        rows_r = None if right is None else right.permute(2, 1, 4, 0, 3)
        n1 = self.n1
        n2 = n1 if self.sym else self.n2

        def sides(gi: int, ci: int | None, width: int, per: int) -> tuple[Tensor, Tensor]:
            pick = (lambda t: t[gi]) if ci is None else (lambda t: t[gi, :, :, ci])
            flat = pick(rows).reshape(-1, width)
            if rows_r is not None:
                return flat, pick(rows_r).reshape(-1, width)
            return (flat, flat) if self.sym else (flat[: n1 * per], flat[n1 * per :])

        for gi in range(groups):
            a_g = gram[gi]  # (n1 P, n2 P)
            if mode == "trace":
                left, right_t = sides(gi, None, kc * d, p)
                c = matmul_t(left, right_t)
                acc += c.mul_(a_g).view(n1, p, n2, p).sum((1, 3))
            elif mode == "diagonal":
                for ci in range(kc):
                    left, right_t = sides(gi, ci, d, p)
                    c = matmul_t(left, right_t)
                    acc[c0 + ci] += c.mul_(a_g).view(n1, p, n2, p).sum((1, 3))
            else:
                left, right_t = sides(gi, None, d, p * kc)
                flat = left
                step = max(1, int(row_limit // max(1, p * kc * n2 * p * kc * flat.element_size())))
                a6 = a_g.view(n1, p, 1, n2, p, 1)
                upper = self.sym and rows_r is None  # symmetric: blocks on and above the diagonal, mirrored
                for i0 in range(0, n1, step):
                    i1 = min(n1, i0 + step)
                    j0 = i0 if upper else 0
                    c = matmul_t(left[i0 * p * kc : i1 * p * kc], right_t[j0 * p * kc :])
                    term = c.view(i1 - i0, p, kc, n2 - j0, p, kc).mul_(a6[i0:i1, :, :, j0:]).sum((1, 4))
                    acc[i0:i1, :, j0:] += term
                    if upper and i1 < n2:
                        acc[i1:, :, i0:i1] += term[:, :, i1 - i0 :].permute(2, 3, 0, 1)

    # ------------------------------------------------------------------ result
    def result(self) -> Tensor:
        """The block in the public layout: (n1, n2), (n1, n2, k), (n1, n2, k, k); pairs: (n,), (n, k), (n, k, k)."""
        acc = self.acc
        if self.mode == "trace":
            return acc.div_(self.k)
        if self.mode == "diagonal":
            return acc.T if self.pairs else acc.permute(1, 2, 0)
        return acc if self.pairs else acc.permute(0, 2, 1, 3)


def _gram_sym_into(out: Tensor, rows: Tensor, blocks: int = 4) -> None:
    """``out += rows rows^T`` for rows (m, F), computing only the blocks on and above the diagonal
    (``blocks`` row blocks) and mirroring the rest."""
    m = rows.shape[0]
    step = -(-m // blocks)
    starts = list(range(0, m, step))
    for bi, i0 in enumerate(starts):
        i1 = min(m, i0 + step)
        upper = matmul_t(rows[i0:i1], rows[i0:])  # (i1 - i0, m - i0)
        out[i0:i1, i0:].add_(upper)
        if bi + 1 < len(starts):
            out[i1:, i0:i1].add_(upper[:, i1 - i0 :].T)
