"""Structured (layer-factored) empirical NTK for ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and NTKLinear.

A layer ``z = s_w W a + s_b b`` applied at positions ``p`` (sequence positions of a Linear, output
pixels of a convolution, whose input rows are then the unfolded patches ``a_p``) has the per-example
parameter gradient of output ``f_c``

    d f_c / d W = s_w sum_p g_{c,p} a_p^T,        d f_c / d b = s_b sum_p g_{c,p},

with ``g_{c,p} = d f_c / d z_p`` the cotangent reaching the layer's output. Its NTK contribution is
therefore a product of two Gram matrices, never a Jacobian:

    Theta_W+b(x, x')_{cd} = sum_{p,q} [s_w^2 <a_p(x), a_q(x')> + s_b^2] <g_{c,p}(x), g_{d,q}(x')>.

For a dense layer (one position) this is ``A(x, x') * G(x, x')_{cd}`` with ``A`` the (N1, N2) input
Gram and ``G`` the cotangent Gram; in trace mode ``sum_c G_cc`` is a single GEMM of the cotangents
reshaped to (N1, k * n_out) and (N2, k * n_out) — all the work is large matrix products. Groups of a
grouped convolution are summed. When positions make the pairwise (p, q) product more expensive
than forming the layer's per-example Jacobian (``N k P_layer`` numbers), that layer is contracted
as Jacobians instead (both are exact; the cheaper one by a flop count is used).

The layer inputs are captured by forward hooks; the cotangents of all ``k`` outputs at every layer
output come from one backward pass batched over the ``k`` output basis vectors
(``torch.autograd.grad(..., is_grads_batched=True)``) through zero "probe" tensors added to the layer
outputs. Parameters of any other module (LayerNorm, BatchNorm affine, custom modules, a weight
shared between modules) are handled by per-example Jacobians (``torch.func``), restricted to them.
A layer is recognised only by its exact type, and its parameters must enter the computation only
through its own forward (e.g. ``nn.MultiheadAttention.out_proj`` does not: it falls back).

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

from ntkit.empirical._common import Engine, Tensor, check_output, contract_jacobian_pairs, contract_jacobians
from ntkit.empirical._gemm import CotangentRecorder, LinearCotangent, fast, matmul_t
from ntkit.empirical.jacobian import JacobianEngine


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


def _scales(module: nn.Module) -> tuple[float, float]:
    from ntkit.networks import NTKLinear

    if isinstance(module, NTKLinear):
        return float(module.weight_scale) ** 2, float(module.bias_scale) ** 2
    return 1.0, 1.0


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
        act = [0]
        sizes: dict[int, tuple[int, int, int]] = {}

        def count(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                act[0] += out[0].numel()

        handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        try:
            feats = self._capture(probe, record_shapes=sizes)
        finally:
            for h in handles:
                h.remove()
        del feats
        self.act_per_row = float(act[0])
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
    def _capture(self, x: Tensor, record_shapes: dict[int, tuple[int, int, int]] | None = None) -> list[Any]:
        """Forward with hooks (layer inputs, probes), then backward passes for the cotangents.

        float32 on CPU: linear layers pass cotangents on by oneDNN products inside ``k`` plain
        backward passes (:class:`LinearCotangent`). Otherwise: zero probes added to the layer outputs
        and one backward pass batched over the ``k`` output basis vectors.
        """
        n, k = x.shape[0], self.k
        records: dict[int, list[tuple[Tensor, Any]]] = {i: [] for i in range(len(self.layers))}
        use_fast = fast(x)
        counter = [0]
        anchor = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
        w_eff: dict[int, Tensor] = {}

        def make_hook(idx: int) -> Callable[[nn.Module, Any, Any], Any]:
            layer = self.layers[idx]

            def hook(m: nn.Module, inputs: Any, output: Tensor) -> Tensor:
                inp = inputs[0]
                if use_fast and layer.kind == "linear":
                    if idx not in w_eff:
                        scale = _scales(m)[0] ** 0.5
                        weight: Tensor = m.weight  # type: ignore[assignment]
                        w_eff[idx] = weight.detach() * scale if scale != 1.0 else weight.detach()
                    rec = CotangentRecorder(w_eff[idx], k, counter)
                    records[idx].append((inp.detach(), rec))
                    return LinearCotangent.apply(inp, output.detach(), anchor, rec)
                probe = torch.zeros_like(output, requires_grad=True)
                records[idx].append((inp.detach(), probe))
                return output + probe

            return hook

        handles = [layer.module.register_forward_hook(make_hook(i)) for i, layer in enumerate(self.layers)]
        try:
            with torch.enable_grad():
                out = check_output(self.model(x), n)
        finally:
            for h in handles:
                h.remove()
        if out.shape[1] != k:
            raise ValueError(f"model: expected {k} outputs for every block, got {out.shape[1]}")
        probes = [pr for recs in records.values() for _, pr in recs if isinstance(pr, torch.Tensor)]
        if use_fast:
            grads = self._cotangent_passes(out, probes, anchor, counter)
        else:
            grads = self._cotangents(out, probes)
        feats: list[Any] = []
        pos = 0
        for i, layer in enumerate(self.layers):
            recs = records[i]
            if not recs:
                feats.append(None)
                continue
            a_parts, g_parts = [], []
            for inp, pr in recs:
                if isinstance(pr, CotangentRecorder):
                    d_out = pr.w_eff.shape[0]
                    buf = pr.result()
                    if buf is None:  # the output does not depend on this call
                        buf = torch.zeros((inp.numel() // inp.shape[-1], k, d_out), dtype=x.dtype, device=x.device)
                    grad = buf.view(n, -1, k, d_out).permute(2, 0, 1, 3)  # (k, N, P, d_out), a view
                else:
                    grad = grads[pos]
                    pos += 1
                a_u, g_u = self._layer_tensors(layer, inp, grad, n)
                a_parts.append(a_u)
                g_parts.append(g_u)
            a = torch.cat(a_parts, dim=-1) if len(a_parts) > 1 else a_parts[0]  # (N, G, d_in, P)
            g = torch.cat(g_parts, dim=-1) if len(g_parts) > 1 else g_parts[0]  # (k, N, G, d_out, P)
            if record_shapes is not None:
                record_shapes[i] = (a.shape[-1], a.shape[2], g.shape[3])
            feats.append((a, g))
        return feats

    def _cotangent_passes(self, out: Tensor, probes: list[Tensor], anchor: Tensor, counter: list[int]) -> list[Tensor]:
        """One plain backward pass per output; linear layers record into their buffers."""
        n, k = out.shape
        grads: list[list[Tensor]] = [[] for _ in probes]
        if not out.requires_grad:
            return [torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device) for p in probes]
        eye = torch.eye(k, dtype=out.dtype, device=out.device)
        inputs = [*probes, anchor]
        for c in range(k):
            counter[0] = c
            res = torch.autograd.grad(
                out, inputs, grad_outputs=eye[c].expand(n, k), retain_graph=c < k - 1, allow_unused=True
            )
            for j, p in enumerate(probes):
                r = res[j]
                grads[j].append(torch.zeros_like(p) if r is None else r)
        return [torch.stack(gs) for gs in grads]

    def _cotangents(self, out: Tensor, probes: list[Tensor], batched: bool = True) -> list[Tensor]:
        n, k = out.shape
        zeros = [torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device) for p in probes]
        if not out.requires_grad or not probes:
            return zeros
        eye = torch.eye(k, dtype=out.dtype, device=out.device)
        basis = eye[:, None, :].expand(k, n, k)
        try:
            if not batched:
                raise RuntimeError("one backward pass per output")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                grads = torch.autograd.grad(
                    out, probes, grad_outputs=basis, is_grads_batched=True, allow_unused=True
                )
        except RuntimeError:  # unbatched (fast linear path) or an op without a batching rule
            rows: list[tuple[Tensor | None, ...]] = []
            for c in range(k):
                rows.append(
                    torch.autograd.grad(out, probes, grad_outputs=basis[c], retain_graph=c < k - 1, allow_unused=True)
                )
            grads = tuple(
                None if rows[0][j] is None else torch.stack([r[j] for r in rows])  # type: ignore[misc]
                for j in range(len(probes))
            )
        return [z if gr is None else gr.detach() for z, gr in zip(zeros, grads, strict=True)]

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
        raw = self._capture(x)
        layers: list[Any] = []
        for layer, item in zip(self.layers, raw, strict=True):
            a, g = item
            if layer.method == "jacobian":
                layers.append(("jacobian", self._layer_jacobian(layer, a, g)))
                continue
            n, groups, d_in, p = a.shape
            a_s = a.permute(1, 0, 3, 2).reshape(groups, n * p, d_in).contiguous()
            g_s = g.permute(2, 1, 4, 0, 3).contiguous()  # (G, N, P, k, d_out)
            layers.append(("factored", a_s, g_s))
        fb = self.fallback.features(x) if self.fallback is not None else None
        return {"layers": layers, "fallback": fb, "n": x.shape[0]}

    def _layer_jacobian(self, layer: _Layer, a: Tensor, g: Tensor) -> Tensor:
        """Per-example Jacobian (N, k, F) of the layer's selected parameters."""
        n = a.shape[0]
        parts = []
        if layer.w_scale2 > 0:
            jw = torch.einsum("kngop,ngcp->nkgoc", g, a) * layer.w_scale2**0.5
            parts.append(jw.reshape(n, self.k, -1))
        if layer.b_scale2 > 0:
            jb = g.sum(-1).permute(1, 0, 2, 3) * layer.b_scale2**0.5
            parts.append(jb.reshape(n, self.k, -1))
        if not parts:
            return torch.zeros((n, self.k, 1), dtype=a.dtype, device=a.device)
        return torch.cat(parts, dim=-1)

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
        n1, n2, k = f1["n"], f2["n"], self.k
        ref = next(iter(f1["layers"]), None)
        like = ref[1] if ref is not None else next(iter(f1["fallback"].values()))
        if mode == "full":
            acc = torch.zeros((n1, k, n2, k), dtype=like.dtype, device=like.device)
            view = acc.permute(0, 2, 1, 3)
        elif mode == "diagonal":
            acc = torch.zeros((k, n1, n2), dtype=like.dtype, device=like.device)
            view = acc.permute(1, 2, 0)
        else:
            acc = torch.zeros((n1, n2), dtype=like.dtype, device=like.device)
            view = acc
        for layer, l1, l2 in zip(self.layers, f1["layers"], f2["layers"], strict=True):
            if l1[0] == "jacobian":
                term = contract_jacobians(l1[1], l2[1], mode)
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
                term = contract_jacobian_pairs(l1[1], l2[1], mode)
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
