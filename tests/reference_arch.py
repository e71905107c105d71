r"""An independent high-precision (mpmath) reference for the infinite-width NNGP / NTK of composed architectures.

Written from the textbook formulas (not from ntkit's code) for the plain-data architectures of
``tests/arch_cases.py``; every operation runs in a private mpmath context at ``dps`` significant digits
(30 by default), the float64 inputs and hyper-parameters being converted exactly.

State
-----
At every layer and for every pair of inputs ``(x, x')`` the state is the pixel-by-pixel covariance
``K(x, x')[p, p']`` (NNGP, the second moment) and ``Θ(x, x')[p, p']`` (NTK) of one channel (channels are
i.i.d. at infinite width, centred Gaussian processes after a weight layer); a vector state is an image
without spatial axes (one pixel).
``var(x, p) = K(x, x)[p, p]`` is read from the self kernel of ``x``.

* Input: ``K0[p, p'] = Σ_c x[c, p] x'[c, p'] / C`` (``x·x'/d`` for vectors), ``Θ0 = 0``.
* Dense / conv, NTK parameterization (Jacot et al. 2018; Arora et al. 2019), filter taps ``δ``,
  ``|F|`` taps, output pixel ``q`` reading input pixel ``q s + δ - pad``::

      K'(q, q') = w² mean_δ K(q s + δ - pad, q' s + δ - pad) + b²,
      Θ'(q, q') = w² mean_δ Θ(q s + δ - pad, q' s + δ - pad) + K'(q, q'),

  terms outside the input being 0 ("same", "valid") or wrapped around ("circular"). Output size and
  padding per axis of size ``n``: "valid" ``(n - f)//s + 1`` and no padding; "same" / "circular"
  ``out = ceil(n / s)``, ``pad_before = max((out - 1) s + f - n, 0) // 2`` (TensorFlow / JAX SAME).
  A dense layer is a conv with a single tap. Standard parameterization (Novak et al. 2020,
  neural-tangents; ``fan_in = C_in |F|``)::

      K' = w² mean_δ K + b²,        Θ' = fan_in mean_δ K + w² mean_δ Θ + [bias present].

* Activation σ (Lee et al. 2018; Cho & Saul 2009; Williams 1997), ``(u, v) ~ N(0, [[v1, c], [c, v2]])``
  with ``v1 = var(x, p)``, ``v2 = var(x', p')``, ``c = K(p, p')``::

      K' = E[σ(u) σ(v)],        Θ' = Θ E[σ'(u) σ'(v)].

  With ``r = sqrt(v1 v2 - c²)`` and ``θ = atan2(r, c)`` (the angle between the inputs, exact 0 for
  identical inputs):

  - relu: ``(r + (π - θ) c) / 2π`` and ``(π - θ) / 2π`` (arc-cosine kernels of order 1 and 0);
  - leaky_relu(α) = α x + (1 - α) relu(x): ``α c + (1 - α)² J1`` and ``α + (1 - α)² J0``;
  - abs = relu(x) + relu(-x): ``(2 r + (π - 2θ) c) / π`` and ``1 - 2θ / π``;
  - a erf(b x) + c0: with ``D = (1 + 2b² v1)(1 + 2b² v2) - 4 b⁴ c²``,
    ``a² (2/π) atan(2 b² c / sqrt(D)) + c0²`` (the arcsin form) and ``4 a² b² / (π sqrt(D))``;
  - a sin(b x + c0) (characteristic functions, ``E±= exp(-b² (v1 + v2 ∓ 2c) / 2)``):
    ``a²/2 (E+ - cos(2 c0) E-)`` and ``a² b²/2 (E+ + cos(2 c0) E-)``;
  - gelu x Φ(x) (derived below): with ``P = (1 + v1)(1 + v2)``, ``Δ = P - c²``, ``φ = atan2(c, sqrt Δ)``,
    ``B = c² (1 - v1 v2) / P + v1 v2``::

        E[σσ]   = c (1/4 + φ / 2π) + B / (2π sqrt Δ),
        E[σ'σ'] = 1/4 + φ / 2π + c / (2π sqrt Δ) (1 + 2 (1 - v1 v2) / P + B / Δ).

    Write Φ(u) = P(z1 ≤ u) with independent z1, z2 ~ N(0, 1), so that
    ``E[u v 1{u - z1 > 0} 1{v - z2 > 0}]``; Gaussian integration by parts (twice) gives the
    orthant probability ``1/4 + φ/2π``, the density ``1 / (2π sqrt Δ)`` at the origin and its
    one-sided derivatives; ``E[σ'σ']`` is ``∂ E[σσ] / ∂c`` (Price's theorem);
  - identity: ``c`` and ``1``.

  For a zero variance (``u ≡ 0``) the piecewise-linear maps use ``σ(0) = 0``, ``σ'(0) = 0``
  (``α`` for leaky_relu), PyTorch's convention; the smooth maps are continuous there.
* Residual ``x + block(x)``: the block runs on the same state; ``K = K_x + K_block``,
  ``Θ = Θ_x + Θ_block`` (the block ends with a fresh, independent weight layer).
* Non-Gaussian states: an activation's output (and a residual sum, pooling or LayerNorm of it) is
  neither Gaussian nor, in general, centred: its channel mean is ``m = E[σ(u)]`` (relu ``sqrt(v/2π)``,
  leaky_relu ``(1 - α) sqrt(v/2π)``, abs ``sqrt(2v/π)``, erf ``c0``, sin ``a sin(c0) exp(-b² v/2)``,
  gelu ``v / sqrt(2π (1 + v))``, identity 0 (and Gaussian); the mean of the means under pooling, the
  skip's mean after a residual, 0 after a LayerNorm). ``K`` and ``Θ`` stay raw second moments, which is
  what a weight layer reads; a weight layer makes the state Gaussian again; an activation on a
  non-Gaussian state has no closed form and is refused.
* LayerNorm over channels: ``K' = (K - m m') / sqrt((ε + V)(ε + V'))``, ``Θ' = Θ / sqrt((ε + V)(ε + V'))``
  with ``V = var(x, p) - m(x, p)²`` (``m = 0`` for a centred Gaussian input, the usual case). The
  channel mean and the derivative of the normaliser contribute O(1/width) to the NTK.
* AvgPool: ``K'(q, q') = mean_{p ∈ W(q), p' ∈ W(q')} K(p, p')``; with "same" padding (TF's pads, as
  for a conv) the taps outside the input read 0 and the sum is divided by ``|W|²``, or, with
  ``normalize_edges``, by ``n(q) n(q')``, the numbers of in-range taps of the two windows; SumPool: the
  plain sum ``Σ_{p ∈ W(q), p' ∈ W(q')} K(p, p')`` (no divisor); the channel mean is pooled by the same
  window and divisor. GAP: the mean over all pixel pairs; Flatten: the mean over same-pixel pairs
  ``K(p, p)`` (different channels are independent); the same for Θ. GAP keeps the width ``C``,
  Flatten makes it ``C |S|`` (the standard parameterization's ``n_in`` of the next dense layer).

Transposed convolutions and layer norm over whole examples: ``tests/reference_arch_more.py``.

References: Jacot, Gabriel & Hongler 2018 (NTK); Lee et al. 2018 (deep NNGP); Arora et al. 2019
(CNTK, pooling, padding); Novak et al. 2020 (neural-tangents, standard parameterization, LayerNorm,
circular padding); Cho & Saul 2009; Williams 1997.

Implementation: the pixel pairs every layer has to produce are found by a backward pass from the
readout (e.g. only same-pixel pairs before Flatten), separately for the cross kernels and for the
self kernels (which only need the variances the activations and LayerNorms read, or, for ``x2=None``,
the diagonal of the output); self kernels are computed once per distinct row on the upper triangle of
pixel pairs and mirrored; ``fsum`` / ``fdot`` add with a single rounding, so that the formulas are
symmetric bit for bit and duplicated rows give identical values. :func:`reference_kernels_mp` returns
the mpmath values before the final rounding to float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mpmath
import numpy as np
from mpmath.libmp import round_nearest, to_float

from tests.reference_arch_more import layernorm_examples, normalises_examples, transpose_taps

Spec = list[dict[str, Any]]
Mpf = Any  # an mpf of the private mpmath context
DualMap = Callable[[Mpf, Mpf, Mpf], tuple[Mpf, Mpf]]
Kernel = dict[int, Mpf]  # flat pixel-pair index p * npix + p' -> value
Means = dict[int, Mpf] | None  # pixel -> channel mean of a state; None: a centred state
Records = dict[int, tuple[dict[int, Mpf], Means]]  # op uid -> (pixel -> variance, channel means) at its input

_NONLINEAR = ("act", "layernorm")


@dataclass(eq=False)
class _Op:
    """One layer of the compiled spec, with its pixel-pair bookkeeping."""

    uid: int
    kind: str
    layer: dict[str, Any]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_width: int
    out_width: int
    block: list[_Op] = field(default_factory=list)
    taps: list[list[int]] = field(default_factory=list)  # conv: [out pixel][tap] -> input pixel or -1
    windows: list[list[int]] = field(default_factory=list)  # pools: [out pixel] -> its in-range input pixels
    divisors: list[int] = field(default_factory=list)  # pools: [out pixel] -> what its window sum is divided by
    need: set[int] = field(default_factory=set)  # cross pairs needed at the output
    self_need: set[int] = field(default_factory=set)  # self pairs needed at the output (symmetric)
    self_upper: list[int] = field(default_factory=list)  # the p <= p' part of self_need
    reads: dict[int, list[int]] = field(default_factory=dict)  # output pair -> input pairs
    var_pixels: list[int] = field(default_factory=list)  # input pixels whose variance is read
    gaussian_in: bool = True  # the input state is a centred Gaussian process (else its mean is tracked)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)


def _axis_taps(n: int, f: int, s: int, padding: str) -> list[list[int]]:
    """Per output index, the input index each filter tap reads (-1: zero padding)."""
    if padding == "valid":
        out, before = (n - f) // s + 1, 0
    elif padding in ("same", "circular"):
        out = -(-n // s)
        before = max((out - 1) * s + f - n, 0) // 2
    else:
        raise ValueError(f"unknown padding {padding!r}")
    if out <= 0:
        raise ValueError(f"filter {f} larger than the input {n} with valid padding")
    rows = []
    for o in range(out):
        row = []
        for t in range(f):
            i = o * s + t - before
            if padding == "circular":
                i %= n
            elif not 0 <= i < n:
                i = -1
            row.append(i)
        rows.append(row)
    return rows


def _ravel(index: tuple[int, ...], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, shape, strict=True):
        flat = flat * n + i
    return flat


def _conv_taps(shape: tuple[int, ...], filt: tuple[int, ...], stride: tuple[int, ...],
               padding: str) -> tuple[list[list[int]], tuple[int, ...]]:
    if not len(filt) == len(stride) == len(shape):
        raise ValueError(f"filter {filt} / stride {stride} do not match the spatial shape {shape}")
    axes = [_axis_taps(n, f, s, padding) for n, f, s in zip(shape, filt, stride, strict=True)]
    out_shape = tuple(len(a) for a in axes)
    taps = []
    for q in itertools.product(*(range(n) for n in out_shape)):
        row = []
        for t in itertools.product(*(range(f) for f in filt)):
            idx = tuple(axes[k][q[k]][t[k]] for k in range(len(shape)))
            row.append(-1 if min(idx, default=0) < 0 else _ravel(idx, shape))
        taps.append(row)
    return taps, out_shape


def _pool_windows(shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...],
                  padding: str) -> tuple[list[list[int]], tuple[int, ...]]:
    """Per output pixel, the input pixels of its window inside the input ("valid" or "same" padding)."""
    if padding not in ("valid", "same"):
        raise NotImplementedError(f"pooling: padding {padding!r}")
    axes = [_axis_taps(n, w, s, padding) for n, w, s in zip(shape, window, stride, strict=True)]
    out_shape = tuple(len(a) for a in axes)
    windows = []
    for q in itertools.product(*(range(n) for n in out_shape)):
        windows.append([_ravel(idx, shape) for t in itertools.product(*(range(w) for w in window))
                        if min(idx := tuple(axes[k][q[k]][t[k]] for k in range(len(shape)))) >= 0])
    return windows, out_shape


def _compile(spec: Spec, shape: tuple[int, ...], width: int, uids: itertools.count,
             gaussian: bool = True) -> tuple[list[_Op], tuple[int, ...], int, bool]:
    """Ops of ``spec``, the output shape and width, and whether the output is a centred Gaussian."""
    ops: list[_Op] = []
    for layer in spec:
        kind = layer["op"]
        uid = next(uids)
        if kind == "residual":
            block, b_shape, b_width, _ = _compile(layer["block"], shape, width, uids, gaussian)
            if not block or block[-1].kind not in ("dense", "conv"):
                raise ValueError("a residual block must end with a weight layer")
            if b_shape != shape:
                raise ValueError(f"residual block changes the spatial shape {shape} -> {b_shape}")
            op = _Op(uid, kind, layer, shape, shape, width, b_width, block=block)
        elif kind in ("dense", "conv", "convtranspose"):
            if kind == "dense":  # pointwise over the channel axis
                filt, stride, padding = (1,) * len(shape), (1,) * len(shape), "valid"
            else:
                filt = tuple(layer["filter"])
                stride = tuple(layer.get("stride") or (1,) * len(filt))
                padding = layer.get("padding", "valid")
            taps, out_shape = (transpose_taps if kind == "convtranspose" else _conv_taps)(shape, filt, stride, padding)
            kind = "conv" if kind == "convtranspose" else kind  # a conv with these taps
            op = _Op(uid, kind, layer, shape, out_shape, width, int(layer["width"]), taps=taps)
        elif kind in _NONLINEAR:
            op = _Op(uid, kind, layer, shape, shape, width, width)
        elif kind in ("avgpool", "sumpool"):
            window = tuple(layer["window"])
            windows, out_shape = _pool_windows(shape, window, tuple(layer.get("stride") or window),
                                               layer.get("padding", "valid"))
            if kind == "sumpool":
                divisors = [1] * len(windows)
            elif layer.get("normalize_edges", False):
                divisors = [len(w) for w in windows]
            else:
                divisors = [math.prod(window)] * len(windows)
            op = _Op(uid, kind, layer, shape, out_shape, width, width, windows=windows, divisors=divisors)
        elif kind == "gap":
            op = _Op(uid, kind, layer, shape, (), width, width)
        elif kind == "flatten":
            op = _Op(uid, kind, layer, shape, (), width, width * math.prod(shape))
        else:
            raise ValueError(f"unknown layer {kind!r}")
        if kind == "act" and not gaussian:
            raise ValueError(f"activation {layer['name']!r} on a non-Gaussian state (an activation's output, "
                             "possibly through a residual sum, pooling or layernorm): no closed form")
        op.gaussian_in = gaussian
        if kind in ("dense", "conv"):
            gaussian = True
        elif kind == "act":
            gaussian = layer["name"] == "identity"
        # residual: Gaussian iff its skip input is (the block ends with a weight layer); layernorm and the
        # pools keep the (non-)Gaussianity
        ops.append(op)
        shape, width = op.out_shape, op.out_width
    return ops, shape, width, gaussian


def _reads(op: _Op, pair: int) -> list[int]:
    """The input pixel pairs an output pixel pair of a linear op averages over."""
    n_in = op.n_in
    q1, q2 = divmod(pair, op.n_out)
    if op.kind in ("dense", "conv"):
        return [p1 * n_in + p2 for p1, p2 in zip(op.taps[q1], op.taps[q2], strict=True) if p1 >= 0 and p2 >= 0]
    if op.kind in ("avgpool", "sumpool"):
        return [p1 * n_in + p2 for p1 in op.windows[q1] for p2 in op.windows[q2]]
    if op.kind == "gap":
        return list(range(n_in * n_in))
    if op.kind == "flatten":
        return [p * (n_in + 1) for p in range(n_in)]
    raise AssertionError(op.kind)


def _propagate(ops: list[_Op], need: set[int], self_need: set[int]) -> tuple[set[int], set[int]]:
    """Backward pass: record the pairs each op must produce; return the pairs needed at the input."""
    for op in reversed(ops):
        op.need, op.self_need = need, self_need
        n = op.n_out
        op.self_upper = sorted(pr for pr in self_need if pr // n <= pr % n)
        if op.kind == "residual":
            b_need, b_self = _propagate(op.block, need, self_need)
            need, self_need = need | b_need, self_need | b_self
        elif op.kind in _NONLINEAR:
            pixels = {pr // n for pr in need | self_need} | {pr % n for pr in need | self_need}
            if op.kind == "layernorm" and normalises_examples(op.layer):
                pixels = set(range(n))  # the variance is a mean over every pixel
            op.var_pixels = sorted(pixels)
            self_need = self_need | {p * (n + 1) for p in pixels}
        else:
            op.reads = {pr: _reads(op, pr) for pr in need | self_need}
            need = {r for pr in need for r in op.reads[pr]}
            self_need = {r for pr in self_need for r in op.reads[pr]}
    return need, self_need


def _activation(ctx: Any, layer: dict[str, Any]) -> DualMap:
    """``(v1, c, v2) -> (E[σ(u)σ(v)], E[σ'(u)σ'(v)])`` for the activation of ``layer``."""
    name = layer["name"]
    pi = ctx.pi
    two_pi = 2 * pi
    zero, one = ctx.mpf(0), ctx.mpf(1)

    def angle(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
        det = v1 * v2 - c * c
        r = ctx.sqrt(det) if det > 0 else zero
        return r, ctx.atan2(r, c)

    if name == "relu":
        def relu(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
            if v1 == 0 or v2 == 0:
                return zero, zero
            r, theta = angle(v1, c, v2)
            return (r + (pi - theta) * c) / two_pi, (pi - theta) / two_pi
        return relu
    if name == "leaky_relu":
        alpha = ctx.mpf(layer["alpha"])
        beta2 = (1 - alpha) ** 2

        def leaky(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
            if v1 == 0 or v2 == 0:  # u or v ≡ 0: σ(0) = 0, σ'(0) = α, E[σ'(v)] = (1 + α) / 2
                other = v1 if v2 == 0 else v2
                return zero, alpha * ((1 + alpha) / 2 if other > 0 else alpha)
            r, theta = angle(v1, c, v2)
            j1 = (r + (pi - theta) * c) / two_pi
            j0 = (pi - theta) / two_pi
            return alpha * c + beta2 * j1, alpha + beta2 * j0
        return leaky
    if name == "abs":
        def abs_(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
            if v1 == 0 or v2 == 0:
                return zero, zero
            r, theta = angle(v1, c, v2)
            return (2 * r + (pi - 2 * theta) * c) / pi, 1 - 2 * theta / pi
        return abs_
    if name == "erf":
        a, b, c0 = (ctx.mpf(layer.get(k, d)) for k, d in (("a", 1.0), ("b", 1.0), ("c", 0.0)))
        b2 = b * b
        a2, c02 = a * a, c0 * c0
        dot_scale = 4 * a2 * b2 / pi

        def erf(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
            x = 2 * b2 * c
            sd = ctx.sqrt((1 + 2 * b2 * v1) * (1 + 2 * b2 * v2) - x * x)
            return a2 * 2 / pi * ctx.atan2(x, sd) + c02, dot_scale / sd
        return erf
    if name == "sin":
        a, b, c0 = (ctx.mpf(layer.get(k, d)) for k, d in (("a", 1.0), ("b", 1.0), ("c", 0.0)))
        b2 = b * b
        a2 = a * a
        cos2c = ctx.cos(2 * c0)

        def sin(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
            e_minus = ctx.exp(-b2 * (v1 + v2 - 2 * c) / 2)  # E cos(b(u - v))
            e_plus = cos2c * ctx.exp(-b2 * (v1 + v2 + 2 * c) / 2)  # E cos(b(u + v) + 2 c0)
            return a2 / 2 * (e_minus - e_plus), a2 * b2 / 2 * (e_minus + e_plus)
        return sin
    if name == "gelu":
        quarter = one / 4

        def gelu(v1: Mpf, c: Mpf, v2: Mpf) -> tuple[Mpf, Mpf]:
            p = (1 + v1) * (1 + v2)
            delta = p - c * c
            sd = ctx.sqrt(delta)
            q = v1 * v2
            b = c * c * (1 - q) / p + q
            orth = quarter + ctx.atan2(c, sd) / two_pi
            nngp = c * orth + b / (two_pi * sd)
            dot = orth + c / (two_pi * sd) * (1 + 2 * (1 - q) / p + b / delta)
            return nngp, dot
        return gelu
    if name == "identity":
        return lambda v1, c, v2: (c, one)
    raise ValueError(f"unknown activation {name!r}")


def _activation_mean(ctx: Any, layer: dict[str, Any]) -> Callable[[Mpf], Mpf]:
    """``v -> E[σ(u)]``, ``u ~ N(0, v)``: the channel mean of an activation's output."""
    name = layer["name"]
    pi = ctx.pi
    if name == "relu":
        return lambda v: ctx.sqrt(v / (2 * pi))
    if name == "leaky_relu":
        alpha = ctx.mpf(layer["alpha"])
        return lambda v: (1 - alpha) * ctx.sqrt(v / (2 * pi))
    if name == "abs":
        return lambda v: ctx.sqrt(2 * v / pi)
    if name == "erf":
        c0 = ctx.mpf(layer.get("c", 0.0))
        return lambda v: c0
    if name == "sin":
        a, b, c0 = (ctx.mpf(layer.get(k, d)) for k, d in (("a", 1.0), ("b", 1.0), ("c", 0.0)))
        return lambda v: a * ctx.sin(c0) * ctx.exp(-b * b * v / 2)
    if name == "gelu":  # E[u Φ(u)] = v E[φ(u)] (Stein)
        return lambda v: v / ctx.sqrt(2 * pi * (1 + v))
    if name == "identity":
        return lambda v: ctx.mpf(0)
    raise ValueError(f"unknown activation {name!r}")


class _Evaluator:
    """Runs a compiled spec on one pair of inputs (cross) or on one input against itself (self)."""

    def __init__(self, ctx: Any, ops: list[_Op]) -> None:
        self.ctx = ctx
        self.consts: dict[int, Any] = {}
        self._prepare(ops)

    def _prepare(self, ops: list[_Op]) -> None:
        ctx = self.ctx
        for op in ops:
            layer = op.layer
            if op.kind == "residual":
                self._prepare(op.block)
            elif op.kind in ("dense", "conv"):
                n_taps = len(op.taps[0])
                w2 = ctx.mpf(layer.get("w_std", 1.0)) ** 2
                b_std = layer.get("b_std", 0.0)
                b2 = ctx.mpf(0) if b_std is None else ctx.mpf(b_std) ** 2
                param = layer.get("parameterization", "ntk")
                if param not in ("ntk", "standard"):
                    raise ValueError(f"unknown parameterization {param!r}")
                self.consts[op.uid] = (w2 / n_taps, b2, param == "standard", ctx.mpf(op.in_width),
                                       ctx.mpf(0 if b_std is None else 1))
            elif op.kind == "act":
                self.consts[op.uid] = (_activation(ctx, layer), _activation_mean(ctx, layer))
            elif op.kind == "layernorm":
                self.consts[op.uid] = ctx.mpf(layer.get("eps", 0.0))
            elif op.kind in ("avgpool", "sumpool"):  # per output pixel pair (q, q'): d(q) d(q')
                self.consts[op.uid] = [ctx.mpf(d) for d in op.divisors]
            elif op.kind == "gap":
                self.consts[op.uid] = ctx.mpf(op.n_in**2)
            elif op.kind == "flatten":
                self.consts[op.uid] = ctx.mpf(op.n_in)

    def run(self, ops: list[_Op], nn: Kernel, nt: Kernel, mean: Means, self_mode: bool, ra: Records,
            rb: Records) -> tuple[Kernel, Kernel, Means]:
        """Propagate ``(nn, nt)`` (and, in self mode, the channel means) through ``ops``.

        In self mode the variances and means the nonlinear ops read are recorded into ``ra`` (``ra is rb``);
        in cross mode they are read from the records ``ra`` / ``rb`` of the two inputs.
        """
        ctx = self.ctx
        fsum = ctx.fsum
        for op in ops:
            targets = op.self_upper if self_mode else op.need
            new_nn: Kernel = {}
            new_nt: Kernel = {}
            new_mean: Means = None
            n = op.n_out
            if op.kind == "residual":
                b_nn, b_nt, _ = self.run(op.block, nn, nt, mean, self_mode, ra, rb)  # the block ends centred
                new_mean = mean
                for pr in targets:
                    new_nn[pr] = nn[pr] + b_nn[pr]
                    new_nt[pr] = nt[pr] + b_nt[pr]
            elif op.kind in _NONLINEAR:
                if self_mode:
                    ra[op.uid] = ({p: nn[p * (n + 1)] for p in op.var_pixels},
                                  None if mean is None else {p: mean[p] for p in op.var_pixels})
                (var1, mean1), (var2, mean2) = ra[op.uid], rb[op.uid]
                if op.kind == "act":
                    dual, mean_fn = self.consts[op.uid]
                    for pr in targets:
                        p1, p2 = divmod(pr, n)
                        e, ed = dual(var1[p1], nn[pr], var2[p2])
                        new_nn[pr] = e
                        new_nt[pr] = nt[pr] * ed
                    if self_mode and op.layer["name"] != "identity":
                        new_mean = {p: mean_fn(var1[p]) for p in op.var_pixels}
                elif normalises_examples(op.layer):
                    new_nn, new_nt = layernorm_examples(ctx, self.consts[op.uid], ra[op.uid], rb[op.uid], n, targets,
                                                        nn, nt)
                else:
                    eps = self.consts[op.uid]
                    for pr in targets:
                        p1, p2 = divmod(pr, n)
                        if mean1 is None or mean2 is None:
                            scale = ctx.sqrt((eps + var1[p1]) * (eps + var2[p2]))
                            new_nn[pr] = nn[pr] / scale
                        else:  # subtract the channel means of a non-centred input
                            m1, m2 = mean1[p1], mean2[p2]
                            scale = ctx.sqrt((eps + var1[p1] - m1 * m1) * (eps + var2[p2] - m2 * m2))
                            new_nn[pr] = (nn[pr] - m1 * m2) / scale
                        new_nt[pr] = nt[pr] / scale
            elif op.kind in ("dense", "conv"):
                cw, b2, standard, n_in, bias1 = self.consts[op.uid]
                for pr in targets:
                    reads = op.reads[pr]
                    s_nn = fsum([nn[r] for r in reads])
                    s_nt = fsum([nt[r] for r in reads])
                    k = cw * s_nn + b2
                    new_nn[pr] = k
                    new_nt[pr] = n_in * s_nn + cw * s_nt + bias1 if standard else cw * s_nt + k
            else:  # pools, gap, flatten: window sums over a divisor
                pool = op.kind in ("avgpool", "sumpool")
                divisors = self.consts[op.uid]
                for pr in targets:
                    reads = op.reads[pr]
                    if pool:
                        q1, q2 = divmod(pr, n)
                        count = divisors[q1] * divisors[q2]
                    else:
                        count = divisors
                    new_nn[pr] = fsum([nn[r] for r in reads]) / count
                    new_nt[pr] = fsum([nt[r] for r in reads]) / count
                if self_mode and mean is not None:  # the channel mean at the needed output pixels
                    new_mean = {}
                    for pr in targets:
                        q, q2 = divmod(pr, n)
                        if q == q2:
                            pixels = op.windows[q] if pool else range(op.n_in)
                            new_mean[q] = fsum([mean[p] for p in pixels]) / (divisors[q] if pool else len(pixels))
            if self_mode:  # mirror the upper triangle
                for pr in targets:
                    q1, q2 = divmod(pr, n)
                    if q1 != q2:
                        new_nn[q2 * n + q1] = new_nn[pr]
                        new_nt[q2 * n + q1] = new_nt[pr]
            nn, nt, mean = new_nn, new_nt, new_mean
        return nn, nt, mean


def _columns(ctx: Any, row: np.ndarray) -> list[list[Mpf]]:
    """``row`` (C, npix) as, per pixel, the list of its C channel values (exact mpf)."""
    return [[ctx.mpf(float(v)) for v in row[:, p]] for p in range(row.shape[1])]


def reference_kernels(spec: Spec, x1: np.ndarray, x2: np.ndarray | None = None, *,
                      dps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Infinite-width ``(nngp, ntk)`` of ``spec`` between the rows of ``x1`` and ``x2``, float64 (n1, n2).

    ``x1`` is ``(n1, d)`` (vectors) or ``(n1, C, *S)`` (channels-first images); ``x2=None`` means
    ``x1`` against itself (computed on the upper triangle and mirrored). Computed in mpmath at
    ``dps`` significant digits and rounded to the nearest float64 at the end.
    """
    nngp, ntk = reference_kernels_mp(spec, x1, x2, dps=dps)
    to64 = np.vectorize(lambda v: to_float(v._mpf_, rnd=round_nearest), otypes=[np.float64])
    return to64(nngp), to64(ntk)


def reference_kernels_mp(spec: Spec, x1: np.ndarray, x2: np.ndarray | None = None, *,
                         dps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reference_kernels` before the rounding to float64: object arrays of mpmath ``mpf``."""
    x1 = np.asarray(x1, dtype=np.float64)
    symmetric = x2 is None
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    if x1.ndim < 2 or x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"incompatible input shapes {x1.shape} and {x2.shape}")
    shape = tuple(x1.shape[2:])
    width = x1.shape[1]
    ops, out_shape, _, _ = _compile(spec, shape, width, itertools.count())
    if out_shape != ():
        raise ValueError(f"the network must end in a vector state (gap / flatten), not {out_shape}")
    need_in, self_need_in = _propagate(ops, {0}, {0} if symmetric else set())
    n_pix = math.prod(shape)

    ctx = mpmath.MPContext()
    ctx.dps = dps
    evaluator = _Evaluator(ctx, ops)
    zero = ctx.mpf(0)
    inv_c = 1 / ctx.mpf(width)

    def input_kernel(a: list[list[Mpf]], b: list[list[Mpf]], pairs: set[int]) -> tuple[Kernel, Kernel]:
        nn = {pr: ctx.fdot(a[pr // n_pix], b[pr % n_pix]) * inv_c for pr in pairs}
        return nn, dict.fromkeys(pairs, zero)

    cache: dict[bytes, tuple[list[list[Mpf]], Records, Mpf, Mpf]] = {}

    def self_stream(row: np.ndarray) -> tuple[list[list[Mpf]], Records, Mpf, Mpf]:
        key = row.tobytes()
        if key not in cache:
            cols = _columns(ctx, row.reshape(width, n_pix))
            nn, nt = input_kernel(cols, cols, self_need_in)
            records: Records = {}
            nn, nt, _ = evaluator.run(ops, nn, nt, None, True, records, records)
            cache[key] = (cols, records, nn.get(0, zero), nt.get(0, zero))
        return cache[key]

    rows1 = [self_stream(x) for x in x1]
    rows2 = rows1 if symmetric else [self_stream(x) for x in x2]
    nngp = np.empty((len(x1), len(x2)), dtype=object)
    ntk = np.empty((len(x1), len(x2)), dtype=object)
    for i, (cols1, rec1, self_nn, self_nt) in enumerate(rows1):
        for j, (cols2, rec2, _, _) in enumerate(rows2):
            if symmetric and j < i:
                continue
            if symmetric and j == i:
                k, t = self_nn, self_nt
            else:
                nn, nt = input_kernel(cols1, cols2, need_in)
                out_nn, out_nt, _ = evaluator.run(ops, nn, nt, None, False, rec1, rec2)
                k, t = out_nn[0], out_nt[0]
            nngp[i, j], ntk[i, j] = k, t
            if symmetric:
                nngp[j, i], ntk[j, i] = nngp[i, j], ntk[i, j]
    return nngp, ntk
