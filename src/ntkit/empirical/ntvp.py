"""Empirical NTK by NTK-vector products: a vjp followed by a jvp, never forming the Jacobian.

For a column block of ``x2`` the cotangent basis vectors ``e_(j, b)`` are pulled back to parameter
space by vector-Jacobian products, ``v_(j,b) = J(x2_j)^T e_b`` (one parameter-sized vector each),
and pushed forward through the ``x1`` block by Jacobian-vector products,
``Theta(x1_i, x2_j)_{ab} = [J(x1_i) v_(j,b)]_a``. Only ``chunk`` rows of ``x2`` (``chunk * k``
parameter-sized vectors) exist at any time, so memory stays at ``O(chunk k P + N1 k)`` whatever the
number of rows; the price is ``N2 k`` forward-mode passes over the ``x1`` block.

Reference: Novak et al. (2022), "Fast finite width neural tangent kernel", ICML, section 3.2.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from ntkit.empirical._common import Engine, Tensor
from ntkit.empirical.jacobian import per_example_function


class NTVPEngine(Engine):
    """Features: the input rows themselves; each block is built column chunk by column chunk."""

    def __init__(
        self, model: nn.Module, params: dict[str, Tensor], k: int, forward_flops: float, chunk_bytes: float
    ) -> None:
        self.params = params
        self.k = k
        ref = next(iter(params.values()))
        self.itemsize = ref.element_size()
        self.dtype = ref.dtype  # of the kernel (inputs may be integer token ids)
        self.n_params = sum(p.numel() for p in params.values())
        self.forward_flops = forward_flops
        self.chunk = max(1, int(chunk_bytes // (self.k * self.n_params * self.itemsize)))
        self._f_single = per_example_function(model, params)
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        fixed = {n: p.detach() for n, p in model.named_parameters()}

        def f_batch(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(model, ({**fixed, **p}, buffers), (x,))

        self._f_batch = f_batch
        self._eye: Tensor | None = None

    def _basis(self, like: Tensor) -> Tensor:
        if self._eye is None or self._eye.device != like.device or self._eye.dtype != self.dtype:
            self._eye = torch.eye(self.k, dtype=self.dtype, device=like.device)
        return self._eye

    def _pullback(self, rows: Tensor) -> dict[str, Tensor]:
        """``J(x_j)^T e_b`` for the rows ``x_j`` and all ``b``: a dict of (c, k, *param shape)."""
        eye = self._basis(rows)

        def one(x: Tensor) -> dict[str, Tensor]:
            vjp_fn = vjp(lambda p: self._f_single(p, x), self.params)[1]
            out: tuple[dict[str, Tensor]] = vmap(vjp_fn)(eye)
            return out[0]

        result: dict[str, Tensor] = vmap(one)(rows)
        return result

    def features(self, x: Tensor) -> Tensor:
        return x

    def block(self, f1: Tensor, f2: Tensor, mode: str) -> Tensor:
        n1, n2, k = f1.shape[0], f2.shape[0], self.k
        out = torch.empty((n1, n2, k, k), dtype=self.dtype, device=f1.device)
        for start in range(0, n2, self.chunk):
            rows = f2[start : start + self.chunk]
            c = rows.shape[0]
            tangents = {n: t.reshape(c * k, *t.shape[2:]) for n, t in self._pullback(rows).items()}

            def push(t: dict[str, Tensor]) -> Tensor:
                return jvp(lambda p: self._f_batch(p, f1), (self.params,), (t,))[1]

            with warnings.catch_warnings():  # torch's first jvp loads decompositions via torch.jit
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                cols = vmap(push)(tangents)  # (c * k, N1, k): [(j, b), i, a]
            out[:, start : start + c] = cols.reshape(c, k, n1, k).permute(2, 0, 3, 1)
        return _reduce(out, mode)

    def pairs(self, f1: Tensor, f2: Tensor, mode: str) -> Tensor:
        n, k = f1.shape[0], self.k
        out = torch.empty((n, k, k), dtype=self.dtype, device=f1.device)
        for start in range(0, n, self.chunk):
            pulled = self._pullback(f2[start : start + self.chunk])

            def push_one(x: Tensor, t: dict[str, Tensor]) -> Tensor:
                def one(tb: dict[str, Tensor]) -> Tensor:
                    return jvp(lambda p: self._f_single(p, x), (self.params,), (tb,))[1]

                return vmap(one)(t)  # (k_b, k_a)

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                res = vmap(push_one)(f1[start : start + self.chunk], pulled)
            out[start : start + res.shape[0]] = res.transpose(1, 2)
        if mode == "full":
            return out
        diag = torch.diagonal(out, dim1=1, dim2=2)
        return diag if mode == "diagonal" else diag.mean(-1)

    def row_bytes(self) -> float:
        return 0.0

    def tile_bytes(self, b1: int, b2: int, mode: str) -> float:
        chunk = min(self.chunk, b2)
        tangents = 1.0 * chunk * self.k * self.n_params * self.itemsize
        return tangents + 2.0 * b1 * b2 * self.k * self.k * self.itemsize

    def flops(self, n1: int, n2: int, mode: str) -> float:
        return 3.0 * n2 * self.k * self.forward_flops * (n1 + 1)


def _reduce(full: Tensor, mode: str) -> Tensor:
    """Full blocks (N1, N2, k, k) -> the requested mode."""
    if mode == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return diag if mode == "diagonal" else diag.mean(-1)
