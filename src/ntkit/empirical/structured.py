"""Structured (layer-factored) empirical NTK for ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and NTKLinear.

A layer ``z = s_w W a + s_b b`` applied at positions ``p`` (sequence positions of a Linear, output
pixels of a convolution, whose input rows are then the unfolded patches ``a_p``) has the per-example
parameter gradient of output ``f_c``

    d f_c / d W = s_w sum_p g_{c,p} a_p^T,        d f_c / d b = s_b sum_p g_{c,p},

with ``g_{c,p} = d f_c / d z_p`` the cotangent reaching the layer's output. Its NTK contribution is
therefore a product of two Gram matrices, never a Jacobian:

    Theta_W+b(x, x')_{cd} = sum_{p,q} [s_w^2 <a_p(x), a_q(x')> + s_b^2] <g_{c,p}(x), g_{d,q}(x')>.

For a dense layer (one position) this is ``A(x, x') * G(x, x')_{cd}`` with ``A`` the (N1, N2) input
Gram and ``G`` the cotangent Gram: one GEMM (N1 k, n_out) x (n_out, N2 k), and in trace mode
``sum_c G_cc`` is a single GEMM of the cotangents reshaped to (N1, k * n_out) and (N2, k * n_out) —
all the work is large matrix products. Groups of a
grouped convolution are summed. When positions make the pairwise (p, q) product more expensive
than forming the layer's per-example Jacobian (``N k P_layer`` numbers), that layer is contracted
as Jacobians instead (both are exact; the cheaper one by a flop count is used).

The layer inputs and the cotangents of all ``k`` outputs at every layer output are recorded during
one forward pass and one backward pass vectorised over the ``k`` output basis vectors (in chunks of
outputs that keep temporaries small; see :mod:`ntkit.empirical._cotangents`). Linear layers pass
the cotangents on themselves (one GEMM for all ``k``); the model's output layer, a linear layer
whose output *is* the model's output, has the basis vectors themselves as cotangents
(``G_cd = delta_cd``: no Gram product). A model that is an ``nn.Sequential`` of linear layers and
elementwise activations gets the same numbers without autograd
(:mod:`ntkit.empirical._structured_chain`). Parameters of any other module (LayerNorm, BatchNorm
affine, custom modules, a weight shared between modules) are handled by per-example Jacobians
(``torch.func``), restricted to them. A layer is recognised only by its exact type, and its
parameters must enter the computation only through its own forward (e.g.
``nn.MultiheadAttention.out_proj`` does not: it falls back).

Cost and layout. Dense layers write ``A * G`` straight into the result in row blocks whose
cotangent Gram stays in cache (full mode), only on and above the diagonal when ``x2`` is ``None``.
When the whole kernel is one tile, the features of ``x1`` and ``x2`` come from one pass; in trace
mode each dense layer's ``sum_c G_cc`` is then accumulated during the backward pass and its
cotangents are never stored.

Reference: Novak, Sohl-Dickstein, Schoenholz (2022), "Fast finite width neural tangent kernel",
ICML, section 4 ("structured derivatives"); the per-layer factorisation of dense layers follows
Jacot et al. (2018) and, for patches, Arora et al. (2019) "On exact computation with an infinitely
wide neural net".

Modules: :mod:`ntkit.empirical._structured_layers` (recognised layers, their scales and shapes),
:mod:`ntkit.empirical._structured_capture` (recording layer inputs and cotangents),
:mod:`ntkit.empirical._structured_chain` (the same for chains of dense layers) and
:mod:`ntkit.empirical._structured_products` (the Gram and trace products); this module holds the
engine, its cost model and the feature layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ntkit.empirical._common import Engine, Tensor, block_shape
from ntkit.empirical._structured_capture import capture_layers
from ntkit.empirical._structured_chain import capture_chain, dense_chain
from ntkit.empirical._structured_layers import Layer, find_layers, probe_layers
from ntkit.empirical._structured_products import feature_like, pair_entries, write_block
from ntkit.empirical.jacobian import JacobianEngine

#: Compute the ``k`` cotangents in backward passes vectorised over the outputs (else ``k`` passes).
VECTORISE = True
#: Vectorised passes of a chain of dense layers and activations without autograd
#: (:mod:`ntkit.empirical._structured_chain`).
CHAIN = True
#: Bytes of the largest activation-sized temporary of one vectorised backward pass (outputs in chunks).
#: Below :data:`ALLOCATOR_BLOCK`, so that the temporaries of one chunk are reused by the next one and by
#: the next call rather than faulted in again (see there); larger chunks mean fewer, larger operations,
#: each ending in a wait for all threads.
CHUNK_BYTES = 16 << 20
#: The same in trace mode with ``x1`` and ``x2`` in one pass, where dense layers' cotangents go straight
#: into their trace Gram and are never stored. At least :data:`TRACE_CHUNK_MIN` outputs per chunk keep
#: the Gram GEMMs' inner dimension large.
TRACE_CHUNK_BYTES = 16 << 20
TRACE_CHUNK_MIN = 2
#: Bytes of the one block allocated and freed once per process before the first CPU capture (0: none).
#: glibc's malloc maps every block above its mmap threshold (initially 128 KiB) from fresh pages and
#: returns it when freed, and trims its heap when more than twice that lies free at the top, so a
#: capture's MB-sized temporaries would be faulted in (~1 us per 4 KiB page) call after call. Freeing
#: one mapped block raises the threshold to that block's size (its "dynamic threshold", at most
#: 32 MiB), as any program that once frees such a block does: later temporaries up to that size come
#: from the heap and are reused. Elsewhere (other allocators, GPUs) the block is just allocated and freed.
ALLOCATOR_BLOCK = 31 << 20
_allocator_ready = False


def _settle_allocator() -> None:
    """Allocate and free one :data:`ALLOCATOR_BLOCK`-byte CPU block, once per process."""
    global _allocator_ready
    if not _allocator_ready and ALLOCATOR_BLOCK > 0:
        _allocator_ready = True
        del_me = torch.empty(ALLOCATOR_BLOCK, dtype=torch.uint8)
        del del_me


class StructuredEngine(Engine):
    """Features per block: for each recognised layer its inputs ``a`` and output cotangents ``g``.

    Stored layouts (``G`` groups, ``P`` positions): ``a`` (G, N * P, d_in) and ``g`` (G, N, P, k,
    d_out), both contiguous, so that every Gram matrix is one (batched) GEMM.

    Parameters
    ----------
    model : nn.Module
    params : dict of str to Tensor
        The selected parameters (by qualified name).
    k : int
        Outputs of the model.
    probe : Tensor of shape (1, ...)
        One input row, run once to learn the layers' shapes.
    n1, n2 : int
        Rows of the kernel, for the cost-based choice of each layer's method.
    mode : {"full", "trace", "diagonal"}
    """

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, Tensor],
        k: int,
        probe: Tensor,
        n1: int,
        n2: int,
        mode: str,
    ) -> None:
        self.model = model
        self.k = k
        ref = next(iter(params.values()))
        self.itemsize = ref.element_size()
        self.layers, self.act_per_row, self.act_max = probe_layers(model, find_layers(model, params), probe)
        handled: set[str] = set()
        for layer in self.layers:
            handled.update(layer.names)
        rest = {n: t for n, t in params.items() if n not in handled}
        self.forward_flops = sum(
            2.0 * layer.positions * layer.groups * layer.d_in * layer.d_out for layer in self.layers
        ) + 4.0 * self.act_per_row
        self.fallback = JacobianEngine(model, rest, k, self.forward_flops) if rest else None
        self.fallback_names = list(rest)
        for layer in self.layers:
            layer.method = self._choose(layer, n1, n2, mode)
        self.chain = dense_chain(model, self.layers)

    # ------------------------------------------------------------------ costs
    def _layer_flops(self, layer: Layer, method: str, n1: int, n2: int, mode: str) -> float:
        p, g, din, dout, k = layer.positions, layer.groups, layer.d_in, layer.d_out, self.k
        cw = k * k if mode == "full" else k
        if method == "factored":
            pairs = float(n1) * n2 * g * p * p
            return pairs * (2.0 * (din + cw * dout) + (1 if mode == "trace" else cw))
        return 2.0 * (n1 + n2) * k * g * dout * din * p + 2.0 * n1 * n2 * cw * g * dout * (din + 1)

    def _choose(self, layer: Layer, n1: int, n2: int, mode: str) -> str:
        if layer.positions == 1:
            return "factored"
        fac = self._layer_flops(layer, "factored", n1, n2, mode)
        jac = self._layer_flops(layer, "jacobian", n1, n2, mode)
        return "factored" if fac <= jac else "jacobian"

    def flops(self, n1: int, n2: int, mode: str) -> float:
        total = (n1 + n2) * (2 * self.k + 1) * self.forward_flops
        for layer in self.layers:
            total += self._layer_flops(layer, layer.method, n1, n2, mode)
        if self.fallback is not None:
            total += self.fallback.flops(n1, n2, mode)
        return total

    def row_bytes(self) -> float:
        per = (self.k / 2 + 2) * self.act_per_row  # saved activations and transient cotangents
        for layer in self.layers:
            pg = layer.positions * layer.groups
            per += pg * (layer.d_in + self.k * layer.d_out)
            if layer.method == "jacobian":
                per += self.k * layer.groups * layer.d_out * (layer.d_in + 1)
        total = per * self.itemsize
        if self.fallback is not None:
            total += self.fallback.row_bytes()
        return total

    def tile_bytes(self, b1: int, b2: int, mode: str) -> float:
        width = {"full": self.k * self.k, "trace": 1, "diagonal": self.k}[mode]
        temp = 0.0
        for layer in self.layers:
            if layer.method == "factored":
                temp = max(temp, 3.0 * b1 * b2 * layer.positions**2 * width)
        return (3.0 * b1 * b2 * width + temp) * self.itemsize

    # ------------------------------------------------------------- features
    def _capture(self, x: Tensor, trace_rows: int | None = None) -> list[Any]:
        """Layer inputs and output cotangents of every recognised layer, as listed by
        :func:`ntkit.empirical._structured_capture.capture_layers`: vectorised backward passes
        (:data:`VECTORISE`), else (or if an operation cannot be vectorised) one pass per output.
        """
        if VECTORISE:
            try:
                return self._capture_once(x, True, trace_rows)
            except Exception:  # an operation that cannot be vectorised: one plain pass per output
                pass
        return self._capture_once(x, False, trace_rows)

    def _chunk(self, n: int, itemsize: int, limit: int | None = None, least: int = 1) -> int:
        """Outputs per vectorised backward pass: its largest temporaries stay under ``limit`` bytes
        (default :data:`CHUNK_BYTES`), with at least ``least`` outputs (at most ``k``).

        (Larger blocks come from fresh memory pages at every allocation, which costs more than the
        larger GEMMs gain.)
        """
        per_output = n * self.act_max * itemsize
        chunks = max(1, -(-int(per_output * self.k) // (CHUNK_BYTES if limit is None else limit)))
        return min(self.k, max(least, -(-self.k // chunks)))

    def _capture_once(self, x: Tensor, vectorised: bool, trace_rows: int | None) -> list[Any]:
        """One capture of ``x`` (N, ...), vectorised or not (see :meth:`_capture`)."""
        n = x.shape[0]
        if x.device.type == "cpu":
            _settle_allocator()
        if trace_rows is not None:
            chunk = self._chunk(n, x.element_size(), TRACE_CHUNK_BYTES, TRACE_CHUNK_MIN)
        else:
            chunk = self._chunk(n, x.element_size())
        if vectorised and CHAIN and self.chain is not None and x.ndim == 2 and x.is_floating_point():
            return capture_chain(self.chain, self.layers, self.k, x, trace_rows=trace_rows, chunk=chunk)
        return capture_layers(
            self.model, self.layers, self.k, x, vectorised=vectorised, trace_rows=trace_rows, chunk=chunk
        )

    def features(self, x: Tensor) -> dict[str, Any]:
        return self._features(self._capture(x), x)

    def pair_features(self, x1: Tensor, x2: Tensor, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Features of x1 and x2 from one pass; in trace mode dense layers carry their cotangent
        Gram between x1 and x2 instead of their cotangents (less memory, no copies)."""
        n1 = x1.shape[0]
        x = torch.cat([x1, x2])
        return self.split(self._features(self._capture(x, n1 if mode == "trace" else None), x), n1)

    def _features(self, raw: list[Any], x: Tensor) -> dict[str, Any]:
        layers: list[Any] = []
        for layer, item in zip(self.layers, raw, strict=True):
            kind, a, g = item
            if kind == "identity":  # the model's output layer: cotangents e_c
                layers.append(("identity", a.reshape(1, a.shape[0], a.shape[2])))
                continue
            if kind == "gram":
                layers.append(("gram", a.reshape(1, a.shape[0], a.shape[2]), g))
                continue
            if kind == "scaled":  # cotangents g[i, c] = s[i] * w[c] from g = (s, w)
                layers.append(("scaled", a.reshape(1, a.shape[0], a.shape[2]), g[0], g[1]))
                continue
            if layer.method == "jacobian":
                layers.append(("jacobian", self._layer_jacobian(layer, a, g)))
                continue
            n, groups, d_in, p = a.shape
            a_s = a.permute(1, 0, 3, 2).reshape(groups, n * p, d_in).contiguous()
            g_s = g.permute(2, 1, 4, 0, 3).contiguous()  # (G, N, P, k, d_out)
            layers.append(("factored", a_s, g_s))
        fb = self.fallback.features(x) if self.fallback is not None else None
        return {"layers": layers, "fallback": fb, "n": x.shape[0]}

    splits = True

    def split(self, f: dict[str, Any], n1: int) -> tuple[dict[str, Any], dict[str, Any]]:
        parts: tuple[list[Any], list[Any]] = ([], [])
        for item in f["layers"]:
            halves: list[tuple[Any, ...]]
            if item[0] == "jacobian":
                halves = [(item[0], [j[:n1] for j in item[1]]), (item[0], [j[n1:] for j in item[1]])]
            elif item[0] == "identity":
                halves = [(item[0], item[1][:, :n1]), (item[0], item[1][:, n1:])]
            elif item[0] == "gram":  # the Gram between the halves goes with both
                halves = [(item[0], item[1][:, :n1], item[2]), (item[0], item[1][:, n1:], item[2])]
            elif item[0] == "scaled":  # the rows of w go with both
                halves = [
                    (item[0], item[1][:, :n1], item[2][:n1], item[3]),
                    (item[0], item[1][:, n1:], item[2][n1:], item[3]),
                ]
            else:
                p = item[2].shape[2]
                halves = [
                    (item[0], item[1][:, : n1 * p], item[2][:, :n1]),
                    (item[0], item[1][:, n1 * p :], item[2][:, n1:]),
                ]
            parts[0].append(halves[0])
            parts[1].append(halves[1])
        fb: tuple[Any, Any] = (None, None)
        if self.fallback is not None:
            fb = self.fallback.split(f["fallback"], n1)
        return (
            {"layers": parts[0], "fallback": fb[0], "n": n1},
            {"layers": parts[1], "fallback": fb[1], "n": f["n"] - n1},
        )

    def _layer_jacobian(self, layer: Layer, a: Tensor, g: Tensor) -> list[Tensor]:
        """Per-example Jacobians (N, k, F) of the layer's selected weight and bias, as parts."""
        n = a.shape[0]
        parts = []
        if layer.w_scale2 > 0:
            jw = torch.einsum("kngop,ngcp->nkgoc", g, a)
            if layer.w_scale2 != 1.0:
                jw.mul_(layer.w_scale2**0.5)
            parts.append(jw.reshape(n, self.k, -1))
        if layer.b_scale2 > 0:
            jb = g.sum(-1).permute(1, 0, 2, 3)
            if layer.b_scale2 != 1.0:
                jb = jb * layer.b_scale2**0.5
            parts.append(jb.reshape(n, self.k, -1))
        return parts

    # ------------------------------------------------------------ contraction
    def block(self, f1: dict[str, Any], f2: dict[str, Any], mode: str) -> Tensor:
        like = feature_like(f1)
        out = torch.empty(block_shape(f1["n"], f2["n"], self.k, mode), dtype=like.dtype, device=like.device)
        self.block_into(f1, f2, mode, out)
        return out

    def block_into(self, f1: dict[str, Any], f2: dict[str, Any], mode: str, out: Tensor) -> None:
        """Write the block into ``out`` (N1, N2[, k[, k]]), possibly a strided view
        (:func:`ntkit.empirical._structured_products.write_block`)."""
        write_block(self.layers, self.k, self.fallback, f1, f2, mode, out)

    def pairs(self, f1: dict[str, Any], f2: dict[str, Any], mode: str) -> Tensor:
        """The ``i == j`` entries (:func:`ntkit.empirical._structured_products.pair_entries`)."""
        return pair_entries(self.layers, self.k, self.fallback, f1, f2, mode)
