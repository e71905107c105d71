"""Fast path: fused per-tile evaluation of the fully connected NNGP / NTK recursion.

For a tile of inputs ``x1`` (t1 rows) and ``x2`` (t2 rows) the recursion of a fully connected
network in NTK parameterization (the architecture of :func:`ntkit.nn.fc`)

    Sigma(1)      = w_std^2 x.x' / n0 + beta^2
    Sigma(l+1)    = w_std^2 E[sigma(u) sigma(v)] + beta^2,      SigmaDot(l+1) = w_std^2 E[sigma'(u) sigma'(v)]
    Theta(l+1)    = Theta(l) SigmaDot(l+1) + Sigma(l+1)

(Jacot et al. 2018; Lee et al. 2018) is evaluated here with as few passes over the t1 x t2 tile as
the closed forms allow:

* everything that depends on one input only (the variances ``Sigma(l)(x, x)``, ``1/sqrt(1 + 2 b^2 v)``
  for erf, the positivity masks of ABReLU) is computed once per row, as a vector, by the *same*
  elementwise code applied to ``(v, v, v)`` -- so a duplicated input gives ``cov == var`` bit for
  bit at every layer and its angle stays exactly 0, as in the reference evaluator;
* NNGP and NTK are advanced in one pass per layer, with in-place operations on at most four
  tile-sized buffers (``cov``, ``ntk``, and two temporaries);
* for ABReLU (ReLU, leaky ReLU, abs; Cho & Saul 2009) the arc-cosine closed form of
  :func:`ntkit.activations.arccos.abrelu_closed_form` (the dual map's own definition), on the padded
  buffers below; for erf (Williams 1997) the ``arcsin`` form.

Any other activation, and any architecture that is not this plain fully connected stack, is
evaluated by the reference evaluator (:mod:`ntkit.infinite.reference`), which is also the
definition this fast path is tested against (:func:`match_fc` recognises the pattern).
On a CPU, ABReLU tiles and diagonals run instead in the compiled loop of :mod:`ntkit.infinite.native`
when it is available (all layers per entry in registers; 2-2.6x faster per tile): the torch code
below is its fallback and its reference.

The layer-1 Gram matrix is computed block by block on a fixed grid of :data:`GRAM_BLOCK` rows and
columns (tiles start on multiples of it), so every entry comes out of the same BLAS call whatever
the tiling: tiled, one-shot and distributed results are bitwise identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ntkit._validation import check_float, check_int
from ntkit.activations import ABReLU, Activation, Erf, Identity, get_activation
from ntkit.activations.arccos import abrelu_closed_form, abrelu_constants
from ntkit.infinite import native as _native
from ntkit.infinite.pair_threads import run_spans
from ntkit.infinite.row_ids import row_ids
from ntkit.infinite.walk import Architecture

Tensor = torch.Tensor

#: Rows / columns of the fixed Gram-matrix block grid (tile edges are multiples of it).
GRAM_BLOCK = 128

_PI = math.pi

#: Bytes per working buffer of the CPU layer loop (a strip of a tile that stays in a core's cache).
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class FCSpec:
    """The fully connected network whose infinite-width kernels are evaluated.

    Attributes
    ----------
    depth : int
        Hidden layers (``>= 0``).
    activation : Activation
    beta, w_std : float
        Bias and weight scales of :func:`ntkit.fc_kernel`.
    """

    depth: int
    activation: Activation
    beta: float = 0.0
    w_std: float = 1.0

    @staticmethod
    def make(depth: int, activation: Any = "relu", beta: float = 0.0, w_std: float = 1.0) -> FCSpec:
        """Validate the arguments (``expected ..., got ...`` errors) and build a spec."""
        return FCSpec(
            depth=check_int(depth, "depth", minimum=0),
            activation=get_activation(activation),
            beta=check_float(beta, "beta", minimum=0.0),
            w_std=check_float(w_std, "w_std", minimum=0.0, strict=True),
        )

    @property
    def fused_kind(self) -> str:
        """``"abrelu"``, ``"erf"``, ``"identity"`` (hand-fused closed forms) or ``"generic"`` (none)."""
        return fused_kind(self.activation)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (used to key resumable outputs)."""
        return {"depth": self.depth, "activation": repr(self.activation), "beta": self.beta, "w_std": self.w_std}


def _not_overridden(act: Activation, cls: type, *names: str) -> bool:
    return all(getattr(type(act), n) is getattr(cls, n) for n in names)


def fused_kind(activation: Activation) -> str:
    """Which hand-fused recursion serves ``activation`` (``"generic"``: none, the reference evaluator does)."""
    names = ("expect", "expect_derivative", "expect_diag")
    if isinstance(activation, ABReLU) and _not_overridden(activation, ABReLU, *names):
        return "abrelu"
    if isinstance(activation, Erf) and _not_overridden(activation, Erf, *names):
        return "erf"
    if isinstance(activation, Identity) and _not_overridden(activation, Identity, *names):
        return "identity"
    return "generic"


def block_gram(x1: Tensor, x2: Tensor, *, out: Tensor | None = None) -> Tensor:
    """``x1 @ x2.T`` computed on the fixed :data:`GRAM_BLOCK` grid (bitwise tiling-invariant).

    Shapes: ``x1`` (t1, d), ``x2`` (t2, d) -> (t1, t2).
    """
    t1, t2 = x1.shape[0], x2.shape[0]
    if out is None:
        out = torch.empty(t1, t2, dtype=x1.dtype, device=x1.device)
    for i in range(0, t1, GRAM_BLOCK):
        a = x1[i : i + GRAM_BLOCK]
        for j in range(0, t2, GRAM_BLOCK):
            torch.matmul(a, x2[j : j + GRAM_BLOCK].T, out=out[i : i + GRAM_BLOCK, j : j + GRAM_BLOCK])
    return out


def _apply_duplicates(cov: Tensor, var1: Tensor, ids1: Tensor, ids2: Tensor) -> None:
    """Set ``cov[i, j] = var1[i]`` in place where rows i of x1 and j of x2 are identical."""
    rows = torch.nonzero(torch.isin(ids1, ids2)).flatten()
    if rows.numel() == 0:
        return
    sub = ids1[rows, None] == ids2[None, :]
    cov[rows] = torch.where(sub, var1[rows, None].expand(-1, cov.shape[1]), cov[rows])


# --- hand-fused layers --------------------------------------------------------------------------
# Tile-sized quantities live in flat buffers padded to :func:`padded_size` and every non-broadcast
# operation runs over the whole padded buffer. PyTorch evaluates the tail of each thread's chunk
# with scalar code that may round differently from its SIMD code (atan2, asin, fused multiply-add);
# with chunks that are whole multiples of the SIMD width, an entry's value no longer depends on its
# position in the tile, hence not on the tiling. Broadcast operations (outer products, masks) are
# exactly rounded in either path and run on the (t1, t2) views.
#
# Each layer takes (v1b, v2b, c, ntk, shape): v1b / v2b broadcast against ``shape`` ((t1, 1) and
# (1, t2) for a tile, or the same 1-D vector for a diagonal); c and ntk are padded flat buffers it
# owns (it may overwrite them) and it returns the next (c, ntk). Applied to (v, v, v) it yields the
# next variances with the same arithmetic as the tile entries.

_GRAIN = 32768  # ATen's elementwise grain size
_SIMD = 64  # a multiple of every SIMD width (elements)


def padded_size(n: int) -> int:
    """Flat length for ``n`` tile entries such that every thread chunk is a multiple of 64 entries."""
    if n <= _GRAIN:
        return -(-n // _SIMD) * _SIMD
    step = _GRAIN * max(1, torch.get_num_threads())
    return -(-n // step) * step


def padded_empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A flat buffer of :func:`padded_size` entries, zero in its padding."""
    n = math.prod(shape)
    flat = torch.empty(padded_size(n), dtype=like.dtype, device=like.device)
    flat[n:] = 0
    return flat


def _view(flat: Tensor, shape: tuple[int, ...]) -> Tensor:
    return flat[: math.prod(shape)].view(shape)


def _abrelu_layer(
    v1b: Tensor, v2b: Tensor, c: Tensor, ntk: Tensor | None, shape: tuple[int, ...], act: ABReLU, w2: float,
    b2: float,
) -> tuple[Tensor, Tensor | None]:
    # Sigma' = w2 E[sigma sigma] + b2 and SigmaDot = w2 E[sigma' sigma'] = ks g by the one closed form
    # (:mod:`ntkit.activations.arccos`); the same arithmetic for every entry whatever the other rows of the
    # tile, so results do not depend on the tiling.
    k = abrelu_constants(act.a, act.b, w2, factored=True)
    s, g = abrelu_closed_form(v1b, v2b, c, k, derivative=ntk is not None, shift=b2, shape=shape)
    assert s is not None
    if ntk is not None and g is not None:
        ntk = torch.addcmul(s, ntk, g, value=k.ks, out=ntk)
    return s, ntk


def _erf_layer(
    v1b: Tensor, v2b: Tensor, c: Tensor, ntk: Tensor | None, shape: tuple[int, ...], act: Erf, w2: float, b2: float
) -> tuple[Tensor, Tensor | None]:
    bb = act.b * act.b
    q: Tensor | None = None
    if ntk is not None:  # SigmaDot = w2 (4 a^2 b^2 / pi) / sqrt(1 + 2 b^2 (v1 + v2) + 4 b^4 det)
        q = padded_empty(shape, c)
        qv = _view(q, shape)
        torch.mul(v1b, v2b, out=qv)
        q.sub_(c * c).clamp_min_(0).mul_(4 * bb * bb)
        qv.add_(v1b * (2 * bb)).add_(v2b * (2 * bb))
        q.add_(1).rsqrt_()
    # Sigma' = w2 (a^2 (2/pi) arcsin(2 b^2 c / sqrt((1 + 2 b^2 v1)(1 + 2 b^2 v2))) + c0^2) + b2
    arg = padded_empty(shape, c)
    torch.mul((1 + 2 * bb * v1b).rsqrt(), (1 + 2 * bb * v2b).rsqrt(), out=_view(arg, shape))
    arg.mul_(c).mul_(2 * bb).clamp_(-1, 1).asin_()
    arg.mul_(w2 * act.a**2 * (2 / _PI)).add_(w2 * act.c**2 + b2)
    if ntk is not None and q is not None:
        ntk = torch.addcmul(arg, ntk, q, value=w2 * 4 * act.a**2 * bb / _PI, out=ntk)
    return arg, ntk


def _identity_layer(c: Tensor, ntk: Tensor | None, w2: float, b2: float) -> tuple[Tensor, Tensor | None]:
    c = c.mul_(w2)
    if b2 != 0.0:
        c.add_(b2)
    if ntk is not None:
        ntk = torch.add(c, ntk, alpha=w2, out=ntk)
    return c, ntk


def _layer(
    spec: FCSpec, kind: str, v1b: Tensor, v2b: Tensor, c: Tensor, ntk: Tensor | None, shape: tuple[int, ...]
) -> tuple[Tensor, Tensor | None]:
    w2, b2 = spec.w_std**2, spec.beta**2
    act = spec.activation
    if kind == "abrelu":
        assert isinstance(act, ABReLU)
        return _abrelu_layer(v1b, v2b, c, ntk, shape, act, w2, b2)
    if kind == "erf":
        assert isinstance(act, Erf)
        return _erf_layer(v1b, v2b, c, ntk, shape, act, w2, b2)
    return _identity_layer(c, ntk, w2, b2)


def _next_var(spec: FCSpec, kind: str, v: Tensor) -> Tensor:
    """``Sigma(l+1)(x, x)`` from ``Sigma(l)(x, x)`` per row, by the tile arithmetic."""
    shape = (v.shape[0],)
    c = padded_empty(shape, v)
    _view(c, shape).copy_(v)
    return _view(_layer(spec, kind, v, v, c, None, shape)[0], shape)


def input_variances(x: Tensor, spec: FCSpec) -> Tensor:
    """``Sigma(1)(x, x) = w_std^2 |x|^2 / n0 + beta^2`` per row (same arithmetic as fc_kernel)."""
    return (spec.w_std**2 / x.shape[1]) * (x * x).sum(-1) + spec.beta**2


def fc_diag(
    x: Tensor, spec: FCSpec, *, ntk: bool = True, native: bool | None = None
) -> tuple[Tensor, Tensor | None]:
    """Diagonals ``(Sigma(L)(x, x), Theta(L)(x, x))`` of shape (N,), per row, without any N x N work.

    ``native``: use the compiled ABReLU kernel of :mod:`ntkit.infinite.native` (None: when available;
    the diagonal then equals the diagonal entries of :func:`fc_tile`'s native tiles bit for bit).
    """
    var = input_variances(x, spec)
    kind = spec.fused_kind
    if kind == "abrelu" and _use_native(native, var):
        return _native.abrelu_diag(var, spec, ntk=ntk)
    if kind == "generic":
        raise ValueError(f"fc_diag: no fused recursion for activation {spec.activation!r} (use the reference path)")
    shape = (var.shape[0],)
    v = var
    c = padded_empty(shape, var)
    _view(c, shape).copy_(var)
    th: Tensor | None = c.clone() if ntk else None
    for layer in range(spec.depth):
        c, th = _layer(spec, kind, v, v, c, th, shape)
        if layer < spec.depth - 1:
            v = _view(c, shape).clone()
    return _view(c, shape), None if th is None else _view(th, shape)


def _chunk_rows(t2: Tensor | int, itemsize: int, device: torch.device) -> int:
    """Rows per pass of the layer loop: on CPU, buffers of about :data:`CHUNK_BYTES` (cache-resident)."""
    n2 = int(t2) if isinstance(t2, int) else t2.shape[0]
    if device.type != "cpu":
        return 1 << 62  # one pass over the whole tile: large kernels suit accelerators
    return max(1, CHUNK_BYTES // (itemsize * max(1, n2)))


def fc_tile(
    x1: Tensor,
    x2: Tensor,
    spec: FCSpec,
    *,
    ntk: bool = True,
    ids: tuple[Tensor, Tensor] | None = None,
    var: tuple[Tensor, Tensor] | None = None,
    out: tuple[Tensor, Tensor | None] | None = None,
    upper: bool = False,
    native: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """NNGP and NTK of one tile: ``(Sigma(L)(x1, x2), Theta(L)(x1, x2))`` of shape (t1, t2).

    On CPU the layer loop runs over strips of rows whose working buffers stay in cache
    (:data:`CHUNK_BYTES` each): every layer's elementwise passes then read and write the cache, not
    main memory. Entries are computed by the same padded elementwise code whatever the strip, so the
    result does not depend on the strip height (nor on the tiling).

    Parameters
    ----------
    x1 : Tensor of shape (t1, d)
    x2 : Tensor of shape (t2, d)
    spec : FCSpec
    ntk : bool
        Also compute the NTK (else the second output is None).
    ids : (Tensor (t1,), Tensor (t2,)), optional
        Row ids (equal id = identical row, :func:`row_ids` over the whole data); computed from
        the tile when omitted.
    var : (Tensor (t1,), Tensor (t2,)), optional
        Layer-1 variances :func:`input_variances` of the rows (recomputed when omitted).
    out : (Tensor (t1, t2), Tensor (t1, t2) or None), optional
        Where to write the NNGP and NTK (e.g. views of a larger block); new tensors when omitted.
    upper : bool
        ``x1`` and ``x2`` are the same rows (a diagonal tile of a symmetric kernel): only the upper
        triangle ``(a, b), b >= a`` is guaranteed (less work); the caller mirrors it.
    native : bool or None
        ABReLU activations on the CPU: run all layers in the compiled kernel of
        :mod:`ntkit.infinite.native` (None: whenever it is available; False: the torch code below;
        True: require it). The two paths agree to rounding; each is tiling-invariant on its own.
    """
    if ids is None:
        ids = row_ids(x1, x2)
    v1, v2 = (input_variances(x1, spec), input_variances(x2, spec)) if var is None else var
    t1, t2 = x1.shape[0], x2.shape[0]
    kind = spec.fused_kind
    if out is None:
        out = (torch.empty(t1, t2, dtype=x1.dtype, device=x1.device),
               torch.empty(t1, t2, dtype=x1.dtype, device=x1.device) if ntk else None)
    nngp_out, ntk_out = out
    if kind == "generic":
        raise ValueError(f"fc_tile: no fused recursion for activation {spec.activation!r} (use the reference path)")
    if kind == "abrelu" and _use_native(native, x1, nngp_out, ntk_out):
        _native_tile(x1, x2, spec, ids, (v1, v2), (nngp_out, ntk_out), upper)
        return nngp_out, ntk_out if ntk else None
    gram = block_gram(x1, x2, out=nngp_out)  # raw x1.x2; each strip is scaled in its padded buffer
    vars1, vars2 = [v1], [v2]  # the variances feeding each layer, by the same arithmetic as the entries
    for _ in range(spec.depth - 1):
        vars1.append(_next_var(spec, kind, vars1[-1]))
        vars2.append(_next_var(spec, kind, vars2[-1]))
    step = _chunk_rows(t2, x1.element_size(), x1.device)
    for r0 in range(0, t1, step):
        r1 = min(r0 + step, t1)
        c0 = r0 if upper else 0  # every entry is computed alike wherever it sits: columns may start anywhere
        shape = (r1 - r0, t2 - c0)
        c = padded_empty(shape, x1)
        cv = _view(c, shape)
        cv.copy_(gram[r0:r1, c0:])
        c.mul_(spec.w_std**2 / x1.shape[1]).add_(spec.beta**2)
        _apply_duplicates(cv, v1[r0:r1], ids[0][r0:r1], ids[1][c0:])
        th: Tensor | None = c.clone() if ntk else None
        for layer in range(spec.depth):
            c, th = _layer(spec, kind, vars1[layer][r0:r1, None], vars2[layer][None, c0:], c, th, shape)
        nngp_out[r0:r1, c0:] = _view(c, shape)
        if ntk_out is not None and th is not None:
            ntk_out[r0:r1, c0:] = _view(th, shape)
    return nngp_out, ntk_out if ntk else None


def _use_native(native: bool | None, *tensors: Tensor | None) -> bool:
    if native is False:
        return False
    ok = _native.usable(*tensors)
    if native and not ok:
        raise RuntimeError(f"native=True: the compiled kernel cannot be used here ({_native.status()})")
    return ok


#: Entries of a tile above which the native kernel splits its rows over torch's intra-op threads.
NATIVE_SPLIT = 1 << 18


def _native_tile(
    x1: Tensor, x2: Tensor, spec: FCSpec, ids: tuple[Tensor, Tensor], var: tuple[Tensor, Tensor],
    out: tuple[Tensor, Tensor | None], upper: bool,
) -> None:
    """:func:`fc_tile` by the compiled kernel: Gram matrix by BLAS, then every layer per entry in C."""
    nngp_out, ntk_out = out
    t1, t2 = x1.shape[0], x2.shape[0]
    block_gram(x1, x2, out=nngp_out)
    vars1 = _native.layer_variances(var[0].contiguous(), spec)
    vars2 = _native.layer_variances(var[1].contiguous(), spec, pad=_native.LANES)
    id1, id2 = ids[0].to(torch.int64).contiguous(), ids[1].to(torch.int64).contiguous()
    dup = torch.isin(id1, id2).to(torch.uint8)

    def rows(r0: int, r1: int) -> None:
        _native.abrelu_tile(
            nngp_out, ntk_out, (r0, r1), t2, upper=upper, vars1=vars1, vars2=vars2, dup=dup, id1=id1, id2=id2,
            spec=spec, scale_in=spec.w_std**2 / x1.shape[1],
        )

    threads = torch.get_num_threads()
    if threads <= 1 or t1 * t2 < NATIVE_SPLIT or t1 < 2:
        rows(0, t1)
        return
    step = max(1, min(64, t1 // (4 * threads)))  # interleaved row blocks balance a triangle too
    run_spans(rows, [(r0, min(r0 + step, t1)) for r0 in range(0, t1, step)], threads, name="fc")


class FCProgramBuilder:
    """The fused fully connected program: ops append themselves with :meth:`dense` / :meth:`activation`.

    Each op's :meth:`~ntkit.infinite.ops.base.KernelOp.lower_fc` calls the method of its step and
    returns its answer; the builder accepts the pattern ``Dense, (Pointwise, Dense) * depth`` with
    every weight layer in NTK parameterization with the same ``w_std`` and bias variance and one
    activation of a fused kind (ABReLU family, erf, identity) throughout.
    """

    def __init__(self) -> None:
        self.first: Any = None
        self.activation: Activation | None = None
        self.depth = 0
        self.expect_dense = True

    def dense(self, w_std: float, b_std: float, bias: bool, parameterization: str) -> bool:
        """A weight layer ``K' = w^2 K + b^2``; False if it breaks the pattern."""
        if not self.expect_dense or parameterization != "ntk":
            return False
        b2 = b_std**2 if bias else 0.0
        if self.first is None:
            self.first = (w_std, b2, b_std if bias else 0.0)
        elif w_std != self.first[0] or b2 != self.first[1]:
            return False
        self.expect_dense = False
        return True

    def activation_step(self, fn: Activation) -> bool:
        """An activation between two weight layers; False if it breaks the pattern."""
        if self.expect_dense or self.first is None:
            return False
        if self.activation is None:
            if fused_kind(fn) == "generic":
                return False
            self.activation = fn
        elif fn is not self.activation and (type(fn) is not type(self.activation) or repr(fn) != repr(self.activation)):
            return False
        self.depth += 1
        self.expect_dense = True
        return True

    def spec(self) -> FCSpec | None:
        """The program, once it ends with a weight layer."""
        if self.first is None or self.expect_dense:
            return None
        activation = self.activation if self.activation is not None else Identity()
        return FCSpec(depth=self.depth, activation=activation, beta=self.first[2], w_std=self.first[0])


def match_fc(arch: Architecture) -> FCSpec | None:
    """The :class:`FCSpec` of ``arch`` if it is a plain fully connected stack with a fused recursion, else None.

    Every op lowers itself (:meth:`~ntkit.infinite.ops.base.KernelOp.lower_fc`) into an
    :class:`FCProgramBuilder`; anything it refuses runs on the reference evaluator.
    """
    if arch.input_mode != "none":
        return None
    prog = FCProgramBuilder()
    for op in arch.ops:
        if not op.lower_fc(prog):
            return None
    return prog.spec()


def _native_self_check() -> str:
    """Compare the native tile and diagonal with the torch path on random data; "" if they agree."""
    gen = torch.Generator().manual_seed(0)
    for spec in (FCSpec.make(3, "relu"), FCSpec.make(2, ABReLU(a=-0.3, b=1.2), beta=0.4, w_std=1.3)):
        x = torch.randn(70, 9, generator=gen, dtype=torch.float64)
        y = torch.cat([x[:5], torch.randn(60, 9, generator=gen, dtype=torch.float64)])
        pairs = [
            *zip(fc_tile(x, y, spec, native=True), fc_tile(x, y, spec, native=False), strict=True),
            *zip(fc_diag(x, spec, native=True), fc_diag(x, spec, native=False), strict=True),
        ]
        for got, ref in pairs:
            assert got is not None and ref is not None
            err = float((got - ref).abs().max() / ref.abs().max())
            if not err < 1e-12:
                return f"self-check failed: native and torch paths differ by {err:.1e} (relative)"
    return ""


_native.set_self_check(_native_self_check, "fc")
