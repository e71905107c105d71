"""Sketches of one layer's per-example parameter gradients: count sketches and tensor sketches.

A sketch ``S`` maps a layer's per-example gradient ``J(x)`` (``F`` numbers per output) to ``m`` numbers
such that ``E[<S J(x), S J(x')>] = <J(x), J(x')>``. Both kinds here are count sketches (Charikar et al.
2002): every gradient entry ``f`` is added, with a random sign ``s(f)``, to the bucket ``h(f)`` in
``[0, m)``; they differ in how the hash of a weight entry is drawn.

* ``"count"``: ``h`` and ``s`` drawn independently for every entry (:class:`CountHash`), applied to the
  per-example Jacobian blocks of the streamed engine
  (:func:`~ntkit.empirical._streamed_layers.jacobian_blocks`: ``d f / d W = s_w sum_p g_p a_p^T`` by a
  batched GEMM, batch-norm and layer-norm affine parameters, biases) — the TRAK-style projection of
  full per-example gradients, with a sparse map: cost ``2 P d_in d_out`` per example for the gradient
  plus ``F`` scattered additions. With a fully random hash, for two gradients ``a``, ``b`` of ``F``
  entries,

      Var <S a, S b> = ( |a|^2 |b|^2 + (a.b)^2 - 2 sum_f a_f^2 b_f^2 ) / m.

* ``"tensor"``: the hash of the weight entry ``(o, i)`` is ``h_out(o) + h_in(i) mod m`` with sign
  ``s_out(o) s_in(i)`` — the tensor sketch of Pham & Pagh (2013). It is computed from the layer's
  factors without forming the gradient: with ``C_out g_p`` and ``C_in a_p`` the count sketches (length
  ``m``) of a position's output cotangent and input patch,

      TS( sum_p g_p a_p^T ) = s_w irfft( sum_p rfft(C_out g_p) * rfft(C_in a_p) ),

  (a circular convolution per position, summed over the ``P`` positions in the Fourier domain):
  cost ``P (d_in + d_out)`` scattered additions and ``2 P`` FFTs of length ``m`` per example instead
  of ``P d_in d_out`` — far cheaper for wide layers at few positions (a ResNet's last stages, dense
  layers). Unbiased as well; its variance obeys ``Var <TS A, TS B> <= 11 |A|^2 |B|^2 / m`` (the
  second-moment bound ``(2 + 3^q) / m`` of degree-``q = 2`` tensor sketches, Avron, Nguyen and
  Woodruff 2014, Lemma 2, polarised).

The bias of a tensor-sketched layer is count-sketched (it is small). :func:`choose_method` takes the
cheaper of the two per layer by an estimated cost (GEMM-flop equivalents measured on a CPU: a
scattered addition costs about :data:`SCATTER_COST` flops, an FFT of length ``m`` about
:data:`FFT_COST` ``m log2 m``); the choice depends on the layer and ``m`` only, never on the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ntkit.empirical._common import Tensor
from ntkit.empirical._streamed_layers import (
    StreamLayer,
    Workspace,
    bias_jacobian,
    cotangent_rows,
    jacobian_blocks,
    out_slices,
    patch_rows,
    weight_jacobian,
)

#: GEMM-flop equivalents of one scattered addition (``index_add_``).
SCATTER_COST = 128.0
#: GEMM-flop equivalents of a real FFT of length ``m``, per ``m log2 m``.
FFT_COST = 30.0
#: The ways of sketching a layer (``"auto"`` chooses per layer).
SKETCHES = ("auto", "count", "tensor")
#: Layer kinds with a weight matrix ``s_w sum_p g_p a_p^T``; the other kinds the streamed engine knows
#: (batch norm, layer norm) give their per-example Jacobian in one block of fixed layout.
WEIGHT_KINDS = ("linear", "conv")
#: Kinds the sketch does not take (token embeddings: their inputs are integer ids).
UNSUPPORTED_KINDS = ("embedding",)


class CountHash:
    """A drawn count sketch of ``n`` entries into ``m`` buckets: buckets ``h`` (n,) and signs ``s`` (n,).

    Parameters
    ----------
    n, m : int
    generator : torch.Generator
        The draw (``h`` uniform in ``[0, m)``, ``s`` uniform in ``{-1, 1}``), made on the CPU.
    dtype : torch.dtype
        Of the signs (that of the gradients they multiply).
    device : torch.device
    shape : tuple of int, optional
        Shape of ``h`` and ``s`` (default ``(n,)``), to pick the entries of a block of parameters.
    """

    def __init__(self, n: int, m: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device,
                 shape: tuple[int, ...] | None = None) -> None:
        shape = (n,) if shape is None else shape
        self.h = torch.randint(0, m, shape, generator=generator).to(device)
        self.s = (torch.randint(0, 2, shape, generator=generator, dtype=torch.int8) * 2 - 1).to(dtype).to(device)

    def add(self, target: Tensor, j: Tensor, h: Tensor | None = None, s: Tensor | None = None) -> None:
        """``target[..., h(f)] += s(f) j[..., f]`` along the last axis (``target`` (..., m), ``j`` (..., F)),
        with the whole hash or the given part ``h``, ``s`` (flattened to F entries)."""
        h = self.h if h is None else h
        s = self.s if s is None else s
        target.index_add_(target.ndim - 1, h.reshape(-1), j * s.reshape(-1))


def fft_cost(m: int) -> float:
    """Cost of one real FFT of length ``m`` (GEMM-flop equivalents)."""
    return FFT_COST * m * max(1.0, math.log2(m))


def method_costs(layer: StreamLayer, m: int) -> dict[str, float]:
    """Estimated cost per example and output of sketching the layer's weight gradient each way (the
    tensor sketch only for a dense or convolutional layer with one group and a selected weight)."""
    p, g, din, dout = layer.positions, layer.groups, layer.d_in, layer.d_out
    costs = {"count": 2.0 * p * g * din * dout * int(layer.take_w) + SCATTER_COST * layer.n_params}
    if layer.kind in WEIGHT_KINDS and g == 1 and layer.take_w:
        mf = m // 2 + 1
        costs["tensor"] = (
            SCATTER_COST * (p * (din + dout) + dout * int(layer.take_b)) + (2 * p + 1) * fft_cost(m) + 8.0 * p * mf
        )
    return costs


def choose_method(layer: StreamLayer, m: int, sketch: str) -> str:
    """``"count"`` or ``"tensor"`` for ``sketch`` in :data:`SKETCHES` (``"tensor"`` where the layer allows it)."""
    costs = method_costs(layer, m)
    if sketch == "count" or "tensor" not in costs:
        return "count"
    if sketch == "tensor":
        return "tensor"
    return min(costs, key=lambda k: costs[k])


@dataclass
class LayerSketch:
    """The drawn sketch of one layer: its method and hashes.

    ``"count"``: ``weight`` hashes the weight entries in the layout ``(G, d_in, d_out)`` of
    :func:`~ntkit.empirical._streamed_layers.weight_jacobian` blocks, ``flat`` the entries of a batch
    norm (gamma then beta); ``"tensor"``: ``inp`` (d_in,) and ``out`` (d_out,) hash the factors.
    ``bias`` hashes a linear or convolutional layer's bias (G d_out,).
    """

    layer: StreamLayer
    method: str
    m: int
    weight: CountHash | None = None
    flat: CountHash | None = None
    inp: CountHash | None = None
    out: CountHash | None = None
    bias: CountHash | None = None

    @staticmethod
    def draw(layer: StreamLayer, m: int, method: str, generator: torch.Generator, dtype: torch.dtype,
             device: torch.device) -> LayerSketch:
        """Draw the hashes of ``layer`` for ``method`` (in a fixed order, from ``generator``; signs in ``dtype``)."""
        ls = LayerSketch(layer, method, m)
        if layer.kind not in WEIGHT_KINDS:  # batch norm, layer norm: one Jacobian block in a fixed layout
            ls.flat = CountHash(layer.n_params, m, generator, dtype, device)
            return ls
        g, din, dout = layer.groups, layer.d_in, layer.d_out
        if layer.take_b:
            ls.bias = CountHash(g * dout, m, generator, dtype, device)
        if layer.take_w and method == "count":
            ls.weight = CountHash(g * din * dout, m, generator, dtype, device, shape=(g, din, dout))
        elif layer.take_w:
            ls.inp = CountHash(din, m, generator, dtype, device)
            ls.out = CountHash(dout, m, generator, dtype, device)
        return ls

    def add(self, phi: Tensor, inp: Tensor, g: Tensor, ws: Workspace, limit: float) -> None:
        """``phi`` (N, kc, m) ``+=`` the sketch of the layer's per-example gradient, from its input ``inp``
        (N, ...) and the cotangents ``g`` (kc, N, ...) at its output."""
        layer = self.layer
        if layer.kind not in WEIGHT_KINDS:
            assert self.flat is not None
            for j in jacobian_blocks(layer, inp, g, ws, limit, flat=False):  # one block (N, kc, F)
                self.flat.add(phi, j)
            return
        g5 = cotangent_rows(layer, g)
        if self.bias is not None:
            self.bias.add(phi, bias_jacobian(layer, g5))
        if self.weight is not None:
            n, kc = g.shape[1], g.shape[0]
            for o0, o1 in out_slices(layer, n, kc, ws.itemsize, limit):
                j = weight_jacobian(layer, inp, g5, o0, o1, ws, False, limit)  # (N, kc, G d_in oc)
                if o1 - o0 == layer.d_out:
                    self.weight.add(phi, j)
                else:
                    self.weight.add(phi, j, self.weight.h[:, :, o0:o1], self.weight.s[:, :, o0:o1])
        elif self.inp is not None:
            self._tensor(phi, inp, g5, limit)

    def row_bytes(self, kc: int, itemsize: int) -> float:
        """Working memory per example of the tensor sketch (patches, count sketches, their FFTs)."""
        layer, m = self.layer, self.m
        p = layer.positions
        return float(p) * (layer.d_in + kc * layer.d_out + (1 + kc) * 3.0 * m + 2.0 * kc * m) * itemsize

    def _tensor(self, phi: Tensor, inp: Tensor, g5: Tensor, limit: float) -> None:
        """The tensor sketch of ``s_w sum_p g_p a_p^T`` (see the module notes), in chunks of rows."""
        assert self.inp is not None and self.out is not None
        layer, m = self.layer, self.m
        kc, n = g5.shape[0], g5.shape[1]
        step = max(1, int(limit // max(1.0, self.row_bytes(kc, inp.element_size()))))
        work = torch.float64 if inp.dtype == torch.float64 else torch.float32
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            a = patch_rows(layer, inp[r0:r1])[:, 0].transpose(1, 2)  # (r, P, d_in)
            ca = a.new_zeros((r1 - r0, layer.positions, m))
            self.inp.add(ca, a)
            gg = g5[:, r0:r1, 0].transpose(2, 3)  # (kc, r, P, d_out)
            cg = gg.new_zeros((kc, r1 - r0, layer.positions, m))
            self.out.add(cg, gg)
            fa = torch.fft.rfft(ca.to(work), dim=-1)
            del ca
            fg = torch.fft.rfft(cg.to(work), dim=-1)
            del cg
            prod = fg.mul_(fa).sum(2)  # (kc, r, m/2 + 1)
            ts = torch.fft.irfft(prod, n=m, dim=-1).to(phi.dtype)  # (kc, r, m)
            if layer.s_w != 1.0:
                ts.mul_(layer.s_w)
            phi[r0:r1] += ts.transpose(0, 1)


def sketch_jacobian(hashes: dict[str, CountHash], jac: dict[str, Tensor], phi: Tensor) -> None:
    """``phi`` (N, k, m) ``+=`` the count sketches of per-example Jacobians ``jac`` {name: (N, k, P_name)}
    (the parameters the streamed engine leaves to :class:`~ntkit.empirical.jacobian.JacobianEngine`)."""
    for name, j in jac.items():
        hashes[name].add(phi, j)


__all__ = [
    "SKETCHES",
    "UNSUPPORTED_KINDS",
    "WEIGHT_KINDS",
    "CountHash",
    "LayerSketch",
    "choose_method",
    "method_costs",
    "sketch_jacobian",
]
