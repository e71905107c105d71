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
(``G_cd = delta_cd``: no Gram product). Parameters of any other module (LayerNorm, BatchNorm
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
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.empirical._common import (
    Engine,
    Tensor,
    block_shape,
    check_output,
    contract_jacobian_pairs,
    contract_jacobians,
)
from ntkit.empirical._cotangents import LinearCotangent, LinearCotangentOf, ProbeCotangent, Recorder
from ntkit.empirical._gemm import matmul_t
from ntkit.empirical.jacobian import JacobianEngine

#: Compute the ``k`` cotangents in backward passes vectorised over the outputs (else ``k`` passes).
VECTORISE = True
#: Bytes of the largest activation-sized temporary of one vectorised backward pass (outputs in chunks).
CHUNK_BYTES = 8 << 20
#: The same in trace mode with ``x1`` and ``x2`` in one pass, where dense layers' cotangents go straight
#: into their trace Gram and are never stored: smaller chunks keep the call's peak of temporaries, which
#: the C allocator hands back to the system after every call and must fault in again, small (the
#: first chunk's temporaries are reused by the next ones). At least :data:`TRACE_CHUNK_MIN` outputs
#: per chunk keep the Gram GEMMs' inner dimension large.
TRACE_CHUNK_BYTES = 2 << 20
TRACE_CHUNK_MIN = 2


@dataclass
class _Layer:
    """A recognised module whose selected parameters are handled by the factored formula."""

    module: nn.Module
    kind: str  # "linear" or "conv"
    w_scale2: float  # 0 when the weight is not selected
    b_scale2: float  # 0 when the bias is absent or not selected
    groups: int = 1
    d_in: int = 0  # per group (patch length for a convolution)
    d_out: int = 0  # per group
    positions: int = 0  # per example, summed over the calls of the module
    method: str = "factored"  # or "jacobian"
    names: list[str] = field(default_factory=list)


def _scale_factors(module: nn.Module) -> tuple[float, float]:
    """``(s_w, s_b)`` of a linear layer ``z = s_w W a + s_b b`` (1, 1 but for NTKLinear)."""
    from ntkit.networks import NTKLinear

    if isinstance(module, NTKLinear):
        return float(module.weight_scale), float(module.bias_scale)
    return 1.0, 1.0


def _scales(module: nn.Module) -> tuple[float, float]:
    s_w, s_b = _scale_factors(module)
    return s_w**2, s_b**2


def _known_kind(module: nn.Module) -> str | None:
    from ntkit.networks import NTKLinear

    if type(module) in (nn.Linear, NTKLinear):
        return "linear"
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return "conv"
    return None


def _patches(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded input patches (N, C_in * prod(kernel), P) matching ``weight.flatten(1)``'s order."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    pad = list(module._reversed_padding_repeated_twice)
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    if isinstance(module, nn.Conv1d):
        return F.unfold(
            x.unsqueeze(2),
            (1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            stride=(1, module.stride[0]),
        )
    return F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)


#: Bytes of one row block's cotangent Gram in full mode (kept in cache while multiplied into the result).
_FULL_BLOCK_BYTES = 4 << 20
#: Bytes of one row block's temporaries in trace and diagonal mode.
_ROW_BLOCK_BYTES = 16 << 20


def _transpose(blk: Tensor, mode: str) -> Tensor:
    """Theta(x2, x1) from Theta(x1, x2): swap the example axes (and the output axes for "full")."""
    return blk.permute(1, 0, 3, 2) if mode == "full" else blk.transpose(0, 1)


def _call_shape(layer: _Layer, inp: Tensor, output: Tensor) -> tuple[int, int, int]:
    """(positions, d_in, d_out) per group of one call of a recognised layer on one example."""
    if layer.kind == "linear":
        return inp.numel() // inp.shape[-1], inp.shape[-1], output.shape[-1]
    module = layer.module
    assert isinstance(module, (nn.Conv1d, nn.Conv2d))
    kernel = 1
    for s in module.kernel_size:
        kernel *= s
    positions = output[0, 0].numel()
    return positions, module.in_channels // layer.groups * kernel, module.out_channels // layer.groups


class StructuredEngine(Engine):
    """Features per block: for each recognised layer its inputs ``a`` and output cotangents ``g``.

    Stored layouts (``G`` groups, ``P`` positions): ``a`` (G, N * P, d_in) and ``g`` (G, N, P, k,
    d_out), both contiguous, so that every Gram matrix is one (batched) GEMM.
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
        owners: dict[int, set[int]] = {}
        for _, mod in model.named_modules(remove_duplicate=False):
            for p in mod._parameters.values():
                if p is not None:
                    owners.setdefault(id(p), set()).add(id(mod))
        layers: list[_Layer] = []
        handled: set[str] = set()
        for mname, mod in model.named_modules():
            kind = _known_kind(mod)
            if kind is None:
                continue
            prefix = f"{mname}." if mname else ""
            wname, bname = prefix + "weight", prefix + "bias"
            sw2, sb2 = _scales(mod)
            take_w = wname in params and len(owners[id(mod.weight)]) == 1
            bias = mod._parameters.get("bias")
            take_b = bname in params and bias is not None and len(owners[id(bias)]) == 1
            if not (take_w or take_b):
                continue
            layer = _Layer(mod, kind, sw2 if take_w else 0.0, sb2 if take_b else 0.0)
            layer.groups = int(getattr(mod, "groups", 1))
            layer.names = [n for n, t in ((wname, take_w), (bname, take_b)) if t]
            layers.append(layer)
        self.layers = layers
        # one-row probe: shapes, which hooks fire, activation sizes
        act, act_max = [0], [1]
        sizes: dict[int, tuple[int, int, int]] = {}

        def count(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                act[0] += out[0].numel()
                act_max[0] = max(act_max[0], out[0].numel())

        def shape_hook(idx: int) -> Callable[[nn.Module, Any, Any], None]:
            def hook(m: nn.Module, inputs: Any, output: Any) -> None:
                p, d_in, d_out = _call_shape(self.layers[idx], inputs[0], output)
                p0 = sizes[idx][0] if idx in sizes else 0
                sizes[idx] = (p0 + p, d_in, d_out)  # calls of one module: positions add up

            return hook

        handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        handles += [layer.module.register_forward_hook(shape_hook(i)) for i, layer in enumerate(self.layers)]
        try:
            with torch.no_grad():
                self.model(probe)
        finally:
            for h in handles:
                h.remove()
        self.act_per_row = float(act[0])
        self.act_max = act_max[0]
        fired = [layer for i, layer in enumerate(self.layers) if i in sizes]
        for i, layer in enumerate(self.layers):
            if i in sizes:
                layer.positions, layer.d_in, layer.d_out = sizes[i]
        self.layers = fired
        for layer in fired:
            handled.update(layer.names)
        rest = {n: t for n, t in params.items() if n not in handled}
        self.forward_flops = sum(
            2.0 * layer.positions * layer.groups * layer.d_in * layer.d_out for layer in fired
        ) + 4.0 * self.act_per_row
        self.fallback = JacobianEngine(model, rest, k, self.forward_flops) if rest else None
        self.fallback_names = list(rest)
        for layer in fired:
            layer.method = self._choose(layer, n1, n2, mode)

    # ------------------------------------------------------------------ costs
    def _layer_flops(self, layer: _Layer, method: str, n1: int, n2: int, mode: str) -> float:
        p, g, din, dout, k = layer.positions, layer.groups, layer.d_in, layer.d_out, self.k
        cw = k * k if mode == "full" else k
        if method == "factored":
            pairs = float(n1) * n2 * g * p * p
            return pairs * (2.0 * (din + cw * dout) + (1 if mode == "trace" else cw))
        return 2.0 * (n1 + n2) * k * g * dout * din * p + 2.0 * n1 * n2 * cw * g * dout * (din + 1)

    def _choose(self, layer: _Layer, n1: int, n2: int, mode: str) -> str:
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
        """Layer inputs and output cotangents of every recognised layer (see :mod:`._cotangents`).

        Returns per layer ``("cotangents", a, g)`` with ``a`` (N, G, d_in, P) and ``g``
        (k, N, G, d_out, P); ``("identity", a, None)`` for the model's output layer (a linear layer
        called once whose output *is* the model's output: its cotangents are the basis vectors
        ``e_c``); None for a layer that was not called. With ``trace_rows = n1``, dense layers
        called once instead give ``("gram", a, G)``: the trace cotangent Gram ``G[i, j] = sum_c
        <g_c(x_i), g_c(x_{n1 + j})>`` between rows ``i < n1`` and the rest, accumulated while the
        cotangents are computed (they are never stored).
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
        n, k = x.shape[0], self.k
        counter = [0]
        recs: dict[int, list[Recorder]] = {i: [] for i in range(len(self.layers))}
        scaled: dict[int, tuple[Tensor, Tensor | None]] = {}

        def weights(idx: int) -> tuple[Tensor, Tensor | None]:
            if idx not in scaled:
                mod = self.layers[idx].module
                w_s, b_s = _scale_factors(mod)
                weight: Tensor = mod.weight.detach()  # type: ignore[operator]
                bias: Tensor | None = mod.bias.detach() if mod.bias is not None else None  # type: ignore[operator]
                scaled[idx] = (
                    weight * w_s if w_s != 1.0 else weight,
                    None if bias is None else (bias * b_s if b_s != 1.0 else bias),
                )
            return scaled[idx]

        def patched_forward(idx: int, anchor: Tensor) -> Callable[[Tensor], Tensor]:
            def forward(inp: Tensor) -> Tensor:
                rec = Recorder(k, counter, *weights(idx))
                rec.out = LinearCotangent.apply(inp, anchor, rec)
                recs[idx].append(rec)
                return rec.out

            return forward

        def hook(idx: int, anchor: Tensor) -> Callable[[nn.Module, Any, Any], Any]:
            def fn(_m: nn.Module, inputs: Any, output: Tensor) -> Tensor:
                if self.layers[idx].kind == "linear":
                    rec = Recorder(k, counter, *weights(idx))
                    rec.out = LinearCotangentOf.apply(inputs[0], output.detach(), anchor, rec)
                else:
                    rec = Recorder(k, counter)
                    rec.out = ProbeCotangent.apply(inputs[0], output, anchor, rec)
                recs[idx].append(rec)
                return rec.out

            return fn

        grams: dict[int, Tensor] = {}

        def gram_sink(rec: Recorder) -> Callable[[Tensor], None]:
            assert trace_rows is not None
            n1 = trace_rows

            def sink(g: Tensor) -> None:  # g (kc, N, d): add sum_c g[c, :n1] g[c, n1:]^T
                rows = g.transpose(0, 1)
                if rows.is_contiguous():
                    c = matmul_t(rows[:n1].reshape(n1, -1), rows[n1:].reshape(n - n1, -1))
                else:
                    c = matmul_t(g[0, :n1], g[0, n1:])
                    for a in range(1, g.shape[0]):
                        c.add_(matmul_t(g[a, :n1], g[a, n1:]))
                key = id(rec)
                grams[key] = c if key not in grams else grams[key].add_(c)

            return sink

        def run(anchor: Tensor) -> Tensor:
            handles, patched = [], []
            for idx, layer in enumerate(self.layers):
                mod = layer.module
                if layer.kind == "linear" and "forward" not in mod.__dict__:
                    mod.forward = patched_forward(idx, anchor)  # shadows the class's forward for this call
                    patched.append(mod)
                else:
                    handles.append(mod.register_forward_hook(hook(idx, anchor)))
            try:
                out = check_output(self.model(x), n)
            finally:
                for h in handles:
                    h.remove()
                for mod in patched:
                    del mod.forward
            if out.shape[1] != k:
                raise ValueError(f"model: expected {k} outputs for every block, got {out.shape[1]}")
            for rl in recs.values():
                for rec in rl:
                    dense = len(rl) == 1 and rec.w_eff is not None and len(rec.out_shape) == 2
                    rec.identity = dense and rec.out is out
                    rec.out = None
                    if dense and not rec.identity and trace_rows is not None:
                        rec.sink = gram_sink(rec)
            return out

        eye = torch.eye(k, dtype=x.dtype, device=x.device)
        anchor = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        with torch.enable_grad():
            out = run(anchor)
        if out.requires_grad and vectorised:

            def pull(v: Tensor) -> Tensor:
                torch.autograd.grad(out, [anchor], grad_outputs=v, retain_graph=True, allow_unused=True)
                return v[0, 0]  # vmap wants a tensor back; the recorders hold the results

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                if trace_rows is not None:
                    chunk = self._chunk(n, x.element_size(), TRACE_CHUNK_BYTES, TRACE_CHUNK_MIN)
                else:
                    chunk = self._chunk(n, x.element_size())
                torch.func.vmap(pull, chunk_size=chunk)(eye[:, None, :].expand(k, n, k))
        elif out.requires_grad:
            for c in range(k):
                counter[0] = c
                torch.autograd.grad(
                    out, [anchor], grad_outputs=eye[c].expand(n, k), retain_graph=c < k - 1, allow_unused=True
                )
        feats: list[Any] = []
        for i, layer in enumerate(self.layers):
            rl = recs[i]
            if not rl:
                feats.append(None)
                continue
            if rl[0].identity or rl[0].sink is not None:
                inp = rl[0].inp
                assert inp is not None
                a = inp.reshape(n, 1, inp.shape[1], 1)
                if rl[0].identity:
                    feats.append(("identity", a, None))
                else:
                    n1 = int(trace_rows or 0)
                    zero = torch.zeros((n1, n - n1), dtype=x.dtype, device=x.device)
                    feats.append(("gram", a, grams.get(id(rl[0]), zero)))
                continue
            a_parts, g_parts = [], []
            for rec in rl:
                assert rec.inp is not None
                a_u, g_u = self._layer_tensors(layer, rec.inp, rec.cotangents(x.dtype, x.device), n)
                a_parts.append(a_u)
                g_parts.append(g_u)
            a = torch.cat(a_parts, dim=-1) if len(a_parts) > 1 else a_parts[0]  # (N, G, d_in, P)
            g = torch.cat(g_parts, dim=-1) if len(g_parts) > 1 else g_parts[0]  # (k, N, G, d_out, P)
            feats.append(("cotangents", a, g))
        return feats

    def _layer_tensors(self, layer: _Layer, inp: Tensor, grad: Tensor, n: int) -> tuple[Tensor, Tensor]:
        k, groups = self.k, layer.groups
        if layer.kind == "linear":
            d_in, d_out = inp.shape[-1], grad.shape[-1]
            a = inp.reshape(n, -1, d_in).transpose(1, 2).unsqueeze(1)
            g = grad.reshape(k, n, -1, d_out).transpose(2, 3).unsqueeze(2)
            return a, g
        module = layer.module
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))
        patches = _patches(module, inp)  # (N, C_in K, P)
        a = patches.reshape(n, groups, -1, patches.shape[-1])
        g = grad.reshape(k, n, groups, -1, patches.shape[-1])
        return a, g

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

    def _layer_jacobian(self, layer: _Layer, a: Tensor, g: Tensor) -> list[Tensor]:
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
    @staticmethod
    def _input_gram(layer: _Layer, a1: Tensor, a2: Tensor) -> Tensor | float:
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

    def block(self, f1: dict[str, Any], f2: dict[str, Any], mode: str) -> Tensor:
        like = self._like(f1)
        out = torch.empty(block_shape(f1["n"], f2["n"], self.k, mode), dtype=like.dtype, device=like.device)
        self.block_into(f1, f2, mode, out)
        return out

    @staticmethod
    def _like(f: dict[str, Any]) -> Tensor:
        ref = next(iter(f["layers"]), None)
        if ref is None:
            return next(iter(f["fallback"].values()))
        return ref[1][0] if isinstance(ref[1], list) else ref[1]

    def block_into(self, f1: dict[str, Any], f2: dict[str, Any], mode: str, out: Tensor) -> None:
        """Write the block into ``out`` (N1, N2[, k[, k]]), possibly a strided view.

        Dense layers (one position, one group) and the output layer go straight into ``out`` in
        row blocks (:meth:`_dense_rows`); everything else (convolutions, per-layer Jacobians, the
        autodiff fallback) is accumulated in a separate block and added.
        """
        dense: list[tuple[str, _Layer, Tensor, Tensor, Tensor | None, Tensor | None]] = []
        rest: list[tuple[_Layer, Any, Any]] = []
        for layer, l1, l2 in zip(self.layers, f1["layers"], f2["layers"], strict=True):
            if l1[0] == "identity":
                dense.append(("identity", layer, l1[1][0], l2[1][0], None, None))
            elif l1[0] == "gram":
                if mode != "trace":
                    raise ValueError(f"mode: features with trace Grams give trace blocks only, got mode={mode!r}")
                dense.append(("gram", layer, l1[1][0], l2[1][0], l1[2], None))
            elif l1[0] == "factored" and l1[2].shape[0] == 1 and l1[2].shape[2] == 1:
                dense.append(("cotangents", layer, l1[1][0], l2[1][0], l1[2][0, :, 0], l2[2][0, :, 0]))
            else:
                rest.append((layer, l1, l2))
        if dense:
            self._dense_rows(out, dense, mode, sym=f1 is f2)
        other = self._rest_block(f1, f2, rest, mode)
        if other is None and not dense:
            out.zero_()
        elif other is not None:
            if dense:
                out.add_(other)
            else:
                out.copy_(other)

    def _dense_rows(
        self,
        out: Tensor,
        dense: list[tuple[str, _Layer, Tensor, Tensor, Tensor | None, Tensor | None]],
        mode: str,
        sym: bool,
    ) -> None:
        """``out = sum_l A_l * G_l`` for dense layers, row block by row block.

        Each entry is ``(kind, layer, a1, a2, g1, g2)`` with the layer inputs ``a1`` (N1, d_in),
        ``a2`` (N2, d_in). ``A_l = s_w^2 a1 a2^T + s_b^2`` is formed block by block and ``G_l`` is
        the cotangent Gram of ``g1`` (N1, k, d), ``g2`` (N2, k, d): in full mode ``G[i, j, a, b] =
        <g1[i, a], g2[j, b]>`` is one GEMM (rows * k, d) x (d, N2 * k) per row block, whose product
        with ``A`` is written (or added) into ``out[rows]`` in its final (i, j, a, b) layout while
        the block is still in cache; in trace mode ``(1/k) sum_a G[i, j, a, a]`` is one GEMM
        (rows, k d) x (k d, N2), or ``g1`` already is ``sum_a G_aa`` (kind ``"gram"``). The output
        layer (kind ``"identity"``, cotangents ``e_a``) adds ``A`` on the (a, a) diagonal. With
        ``sym`` (the same features on both sides) only columns from the block's first row on are
        computed and the rest is mirrored.
        """
        n1, n2, k = out.shape[0], out.shape[1], self.k
        itemsize = out.element_size()
        width = {"full": k * k, "trace": 1, "diagonal": k}[mode]
        rb = max(1, min(n1, (_FULL_BLOCK_BYTES if mode == "full" else _ROW_BLOCK_BYTES) // (width * n2 * itemsize)))
        if sym:
            rb = min(rb, max(1, -(-n1 // 4)))
        # trace mode: (1/k) sum_a, with the identity layer's sum_a delta_aa = k
        unit = 1.0 / k if mode == "trace" else 1.0
        for i0 in range(0, n1, rb):
            i1 = min(n1, i0 + rb)
            j0 = i0 if sym else 0
            o = out[i0:i1, j0:]
            first = True
            for kind, layer, a1, a2, g1, g2 in dense:
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

    def _rest_block(
        self, f1: dict[str, Any], f2: dict[str, Any], rest: list[tuple[_Layer, Any, Any]], mode: str
    ) -> Tensor | None:
        """The block of the layers not handled by :meth:`_dense_rows`, and of the fallback; None if none."""
        if not rest and self.fallback is None:
            return None
        n1, n2, k = f1["n"], f2["n"], self.k
        like = self._like(f1)
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
            a_gram = self._input_gram(layer, l1[1], l2[1])
            g1, g2 = l1[2], l2[2]
            groups, _, p, _, _ = g1.shape
            for gi in range(groups):
                a_g = a_gram if isinstance(a_gram, float) else a_gram[gi]
                self._accumulate(acc, a_g, g1[gi], g2[gi], mode, p)
        if mode == "trace":
            acc.div_(k)
        if self.fallback is not None:
            view.add_(self.fallback.block(f1["fallback"], f2["fallback"], mode))
        return view

    def _accumulate(self, acc: Tensor, a: Tensor | float, g1: Tensor, g2: Tensor, mode: str, p: int) -> None:
        """Add one group's ``sum_{p,q} A[ip, jq] <g1[i,p,a], g2[j,q,b]>`` to ``acc``."""
        n1, n2, k, d = g1.shape[0], g2.shape[0], self.k, g1.shape[-1]
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

    def pairs(self, f1: dict[str, Any], f2: dict[str, Any], mode: str) -> Tensor:
        n, k = f1["n"], self.k
        total: Tensor | None = None
        for layer, l1, l2 in zip(self.layers, f1["layers"], f2["layers"], strict=True):
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
        if self.fallback is not None:
            term = self.fallback.pairs(f1["fallback"], f2["fallback"], mode)
            total = term if total is None else total + term
        assert total is not None
        return total
