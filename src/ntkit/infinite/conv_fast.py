"""Fast path of convolutional architectures: the spatial layers of a pair of images in one native loop.

The expensive part of a convolutional kernel (Arora et al. 2019, CNTK; Shankar et al. 2020, Myrtle) is
its spatial prefix: convolutions, activations and pooling on the pixel-by-pixel covariance of a pair
of images (``pixels^2`` entries for a pooled network, ``pixels`` with a flattening read-out), ending
in global average pooling or flatten. :func:`match_spatial` recognises such a prefix in an
:class:`~ntkit.infinite.walk.Architecture` and compiles it into a small program for
``_cntk_native.c``, which runs all its layers pair by pair in a workspace that stays in cache (for
small images) — no tensor of all the pairs' covariances is ever formed, so a tile of pairs costs
only its outputs. The vector tail after the read-out (dense layers, activations) then runs on the
reference evaluator, and identical pairs get their self values, as there.

Accepted prefix (everything else runs on the reference evaluator, which is also what this path is
tested against): ``Conv`` (NTK parameterization, ``same`` / ``valid`` zero padding, any filter and
stride), ``ConvTranspose`` (NTK parameterization: a zero-upsampling, then a stride-1 ``valid`` convolution),
``Pointwise`` of the ABReLU family (ReLU, leaky ReLU, abs), ``AvgPool``, ``Diagonal``, branches
merged by a weighted sum (``Parallel`` sums and concatenations, residual blocks, whose branches hold these ops:
a ``FORK`` saves the branch input, each branch ends with a ``JOIN`` that adds ``w_i K_i``, ``w_i T_i`` to an
accumulator; :meth:`NativeProgramBuilder.fork`), then ``GlobalPool`` or ``Flatten``; the tail must not need
channel means (no layer norm). CPU only (on a GPU the reference evaluator's batched tensor code runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit.activations import ABReLU
from ntkit.activations.arccos import abrelu_constants
from ntkit.infinite import native as _native
from ntkit.infinite.fused import fused_kind
from ntkit.infinite.ops import KernelOp
from ntkit.infinite.pair_threads import run_chunks
from ntkit.infinite.reference import distinct_rows, reference_kernel, run_ops, snap_duplicates
from ntkit.infinite.state import Layout, Pairs
from ntkit.infinite.walk import Architecture, describe_model, iter_ops
from ntkit.nn.branches import Parallel
from ntkit.nn.linear import Conv1d, Conv2d, Linear, conv_output_size
from ntkit.nn.structure import Activation as ActivationModule
from ntkit.nn.structure import GlobalAvgPool

Tensor = torch.Tensor

OP_CONV, OP_ACT, OP_POOL, OP_DIAG, OP_GAP, OP_FLAT, OP_FORK, OP_JOIN, OP_UPS = 1, 2, 3, 4, 5, 6, 7, 8, 9
NI, ND = 12, 8
#: Deepest nesting of branches the native loop holds (``MAX_SLOTS`` of ``_cntk_native.c``).
MAX_SLOTS = 8


@dataclass(frozen=True)
class SpatialProgram:
    """A spatial prefix compiled for the native loop.

    Attributes
    ----------
    ops : int32 array of shape (n_ops, 12), dps : float64 array of shape (n_ops, 8)
        The op records of ``_cntk_native.c``.
    channels, height, width : int
        Input images (1-D inputs have ``height = 1``).
    full : bool
        Input layout: every pixel pair (True) or same-pixel entries only.
    max_size : int
        Largest covariance array (entries) along the program.
    var_len : int
        Entries of one image's stored variances (all activations together).
    tail : tuple of KernelOp
        The layers after the read-out (run by the reference evaluator).
    """

    ops: np.ndarray
    dps: np.ndarray
    channels: int
    height: int
    width: int
    full: bool
    max_size: int
    var_len: int
    tail: tuple[KernelOp, ...]


def _axes(filt: tuple[int, ...], stride: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per-op (filter, stride) for (h, w); 1-D layers act on w with h = 1."""
    return ((filt[0], stride[0]), (filt[1], stride[1])) if len(filt) == 2 else ((1, 1), (filt[0], stride[0]))


class NativeProgramBuilder:
    """The instruction set of ``_cntk_native.c``: ops append their step with these methods.

    Each op's :meth:`~ntkit.infinite.ops.base.KernelOp.lower_native` calls the method of its step
    and returns its answer (False: the step cannot run natively here, e.g. pooling on a ``diag``
    layout). The builder tracks the spatial size, the layout and the workspace as it goes;
    :meth:`readout` ends the program.
    """

    def __init__(self, c: int, h: int, w: int, full: bool) -> None:
        self.c, self.h, self.w, self.full = c, h, w, full
        self.records: list[list[int]] = []
        self.params: list[list[float]] = []
        self.max_size = self._size()
        self.var_len = 0
        self.done = False
        #: Open forks: (input state, the first branch's output state or None), innermost last.
        self.forks: list[tuple[tuple[int, int, bool], tuple[int, int, bool] | None]] = []

    def _size(self) -> int:
        return (self.h * self.w) ** 2 if self.full else self.h * self.w

    def _emit(self, rec: list[int], dp: list[float]) -> bool:
        self.records.append(rec + [0] * (NI - len(rec)))
        self.params.append(dp + [0.0] * (ND - len(dp)))
        self.max_size = max(self.max_size, self._size())
        return True

    def conv(self, filt: tuple[int, ...], stride: tuple[int, ...], padding: str, w2: float, b2: float) -> bool:
        """A convolution (zero padding ``same`` / ``valid``): ``K' = w2 A(K) + b2``, ``T' = w2 A(T) + K'``."""
        (kh, sh), (kw, sw) = _axes(filt, stride)
        ho, ph, _ = conv_output_size(self.h, kh, sh, padding) if kh > 1 or sh > 1 else (self.h, 0, 0)
        wo, pw, _ = conv_output_size(self.w, kw, sw, padding)
        self.h, self.w = ho, wo
        return self._emit([OP_CONV, kh, kw, sh, sw, ph, pw, ho, wo], [w2, b2])

    def activation(self, act: Any) -> bool:
        """A pointwise activation: the ABReLU family only (its arc-cosine constants)."""
        if fused_kind(act) != "abrelu":
            return False
        assert isinstance(act, ABReLU)
        rec = [OP_ACT, self.var_len]
        self.var_len += self.h * self.w
        return self._emit(rec, list(abrelu_constants(act.a, act.b)[:5]))  # k1, k2, ka, kb, kc (unfactored)

    def pool(self, window: tuple[int, ...], stride: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """Average pooling without padding (needs the ``full`` layout)."""
        if not self.full:
            return False
        (kh, sh), (kw, sw) = _axes(window, stride)
        self.h, self.w = (1, out[0]) if len(out) == 1 else out
        return self._emit([OP_POOL, kh, kw, sh, sw, self.h, self.w], [])

    def upsample(self, stride: tuple[int, ...], before: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """A transposed convolution's zero-upsampling (both sides): pixel ``i`` moves to ``before + stride i`` of an
        output of spatial shape ``out`` (per axis, as the convolution's)."""
        if len(stride) == 1:
            stride, before, out = (1, *stride), (0, *before), (1, *out)
        self.h, self.w = out
        return self._emit([OP_UPS, stride[0], stride[1], before[0], before[1], out[0], out[1]], [])

    def diagonal(self) -> bool:
        """Drop the cross-pixel entries (``full -> diag``)."""
        if not self.full:
            return False
        self._emit([OP_DIAG], [])
        self.full = False
        return True

    def fork(self) -> int | None:
        """Open branches from the current state: returns the fork's slot (None: nested too deep).

        Each branch's ops follow, each ended by :meth:`join`; the branches start from the state at the fork.
        """
        if len(self.forks) >= MAX_SLOTS:
            return None
        slot = len(self.forks)
        self.forks.append(((self.h, self.w, self.full), None))
        self._emit([OP_FORK, slot], [])
        return slot

    def join(self, slot: int, weight: float, last: bool) -> bool:
        """End a branch of the fork ``slot``: ``weight`` times its output is added to the merge (``last``: the
        merge becomes the current state). False where a branch ends in another shape or layout than the first."""
        start, end = self.forks[slot]
        here = (self.h, self.w, self.full)
        if slot != len(self.forks) - 1 or self.done or (end is not None and end != here):
            return False
        self._emit([OP_JOIN, slot, int(last)], [weight])
        if last:
            self.forks.pop()
        else:
            self.forks[slot] = (start, here)
            self.h, self.w, self.full = start
        return True

    def readout(self, global_pool: bool) -> bool:
        """Global average pooling (needs ``full``) or flatten: the end of the program."""
        if (global_pool and not self.full) or self.forks:
            return False
        self.records.append([OP_GAP if global_pool else OP_FLAT] + [0] * (NI - 1))
        self.params.append([0.0] * ND)
        self.done = True
        return True


def match_spatial(arch: Architecture) -> SpatialProgram | None:
    """The compiled spatial prefix of ``arch``, or None where the reference evaluator must run."""
    shape = arch.data_shape
    if arch.input_mode not in ("full", "diag") or len(shape) not in (2, 3):
        return None
    c, h, w = (shape[0], 1, shape[1]) if len(shape) == 2 else shape
    prog = NativeProgramBuilder(c, h, w, arch.input_mode == "full")
    for n_done, op in enumerate(arch.ops):
        if not op.lower_native(prog):
            return None
        if prog.done:
            tail = arch.ops[n_done + 1 :]
            if any(t.mean_role == "sink" for t in iter_ops(tail)):
                return None  # a layer norm would need the channel means of the prefix
            return SpatialProgram(np.asarray(prog.records, dtype=np.int32), np.asarray(prog.params, dtype=np.float64),
                                  c, arch.data_shape[1] if len(shape) == 3 else 1, arch.data_shape[-1],
                                  arch.input_mode == "full", prog.max_size, max(prog.var_len, 1), tuple(tail))
    return None


def workspace_entries(prog: SpatialProgram) -> int:
    """Entries the native loop allocates per call: six covariance buffers, four per nesting depth of branches (the
    fork's input and the merge, NNGP and NTK), and scratch rows for the largest image along the program (and a
    filter width of slack)."""
    ops = prog.ops
    forks = ops[ops[:, 0] == OP_FORK, 1]
    slots = int(forks.max()) + 1 if forks.size else 0
    conv, resized = ops[:, 0] == OP_CONV, (ops[:, 0] == OP_POOL) | (ops[:, 0] == OP_UPS)
    h = max([prog.height, *ops[conv, 7].tolist(), *ops[resized, 5].tolist()])
    w = max([prog.width, *ops[conv, 8].tolist(), *ops[resized, 6].tolist()])
    k = max([1, *ops[conv, 2].tolist()])  # slack: the shifted sums of a convolution read past their block
    return (6 + 4 * slots) * prog.max_size + 2 * h * w + 2 * w * w + k


def usable(x: Tensor) -> bool:
    """Whether the native loop can serve inputs ``x`` (CPU, float32/float64) and is built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return _native.library("spatial") is not None




def spatial_pairs(
    prog: SpatialProgram, images: Tensor, ia: Tensor, ib: Tensor, selfs: Tensor, variances: Tensor, ntk: bool
) -> tuple[Tensor, Tensor | None]:
    """Read-out NNGP / NTK (None) of the pairs ``(images[ia[p]], images[ib[p]])``, shape (n,) in float64.

    ``selfs[p]`` marks an image with itself (it stores that image's variances in ``variances``, of
    shape (n_images, var_len)); the other pairs read them, so self pairs must be computed first.
    Pairs are split over torch's intra-op threads (the loop releases the GIL).
    """
    lib = _native.library("spatial")
    assert lib is not None
    n = int(ia.shape[0])
    out_n = torch.empty(n, dtype=torch.float64)
    out_t = torch.empty(n, dtype=torch.float64) if ntk else None
    if n == 0:
        return out_n, out_t
    images = images.contiguous()
    ia, ib = ia.to(torch.int64).contiguous(), ib.to(torch.int64).contiguous()
    selfs = selfs.to(torch.uint8).contiguous()
    fn = getattr(lib, "ntk_spatial_pairs_f32" if images.dtype == torch.float32 else "ntk_spatial_pairs_f64")
    ops, dps = np.ascontiguousarray(prog.ops), np.ascontiguousarray(prog.dps)

    def run(p0: int, p1: int) -> None:
        code = fn(
            images.data_ptr(), prog.channels, prog.height, prog.width, int(prog.full), p1 - p0,
            ia.data_ptr() + 8 * p0, ib.data_ptr() + 8 * p0, selfs.data_ptr() + p0, ops.ctypes.data,
            dps.ctypes.data, len(ops), prog.max_size, variances.data_ptr(), prog.var_len,
            out_n.data_ptr() + 8 * p0, 0 if out_t is None else out_t.data_ptr() + 8 * p0,
        )
        if code != 0:
            raise MemoryError(f"spatial kernel: could not allocate its workspace ({workspace_entries(prog)} entries)")

    run_chunks(run, n, max(1, torch.get_num_threads()), name="spatial")
    return out_n, out_t


def evaluate_spatial(
    arch: Architecture, prog: SpatialProgram, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, *, ntk: bool,
    symmetric: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    """Kernels of the pairs ``(a_i, b_j)`` by the native spatial prefix and the reference tail.

    Same arguments and results as :func:`ntkit.infinite.reference.evaluate`.
    """
    rows_data, left, right = distinct_rows(a, b, ids_a, ids_b)
    u = rows_data.shape[0]
    dtype = rows_data.dtype
    variances = torch.zeros(u, prog.var_len, dtype=dtype)
    idx = torch.arange(u)
    self_n, self_t = spatial_pairs(prog, rows_data, idx, idx, torch.ones(u, dtype=torch.uint8), variances, ntk)
    na, nb = a.shape[0], b.shape[0]
    if symmetric:
        iu = torch.triu_indices(na, nb)
        ia, ib = left[iu[0]], right[iu[1]]
    else:
        ia = left.repeat_interleave(nb)
        ib = right.repeat(na)
    cross_n, cross_t = spatial_pairs(prog, rows_data, ia, ib, torch.zeros(ia.shape[0], dtype=torch.uint8),
                                     variances, ntk)

    def matrix(values: Tensor) -> Tensor:
        if not symmetric:
            return values.reshape(na, nb).to(dtype)
        out = torch.empty(na, nb, dtype=torch.float64)
        out[iu[0], iu[1]] = values
        out[iu[1], iu[0]] = values
        return out.to(dtype)

    none = Layout((), "none")
    rows = Pairs(self_n.to(dtype), None if self_t is None else self_t.to(dtype), none, 1)
    cross = Pairs(matrix(cross_n), None if cross_t is None else matrix(cross_t), none, 2)
    r, c = torch.nonzero(left[:, None] == right[None, :], as_tuple=True)
    dup = (r, c, left[r])
    cross = snap_duplicates(cross, rows, dup)
    rows, cross = run_ops(prog.tail, rows, cross, left, right, dup, ntk)
    return cross.nngp, cross.ntk, rows.nngp, rows.ntk, left, right


def evaluate_spatial_diagonal(
    prog: SpatialProgram, a: Tensor, ids: Tensor, *, ntk: bool
) -> tuple[Tensor, Tensor | None]:
    """``K(a_i, a_i)`` (shape (Na,)) by the native prefix and the reference tail: self pairs only."""
    rows_data, left, _ = distinct_rows(a, a[:0], ids, ids[:0])
    u = rows_data.shape[0]
    variances = torch.zeros(u, prog.var_len, dtype=rows_data.dtype)
    idx = torch.arange(u)
    self_n, self_t = spatial_pairs(prog, rows_data, idx, idx, torch.ones(u, dtype=torch.uint8), variances, ntk)
    none = Layout((), "none")
    rows = Pairs(self_n.to(a.dtype), None if self_t is None else self_t.to(a.dtype), none, 1)
    empty = torch.zeros(0, dtype=torch.long)
    cross = Pairs(torch.zeros(0, 0, dtype=a.dtype), None if not ntk else torch.zeros(0, 0, dtype=a.dtype), none, 2)
    rows, _ = run_ops(prog.tail, rows, cross, empty, empty, (empty, empty, empty), ntk)
    return rows.nngp[left], None if rows.ntk is None else rows.ntk[left]


__all__ = ["SpatialProgram", "evaluate_spatial", "evaluate_spatial_diagonal", "match_spatial", "spatial_pairs",
           "usable", "workspace_entries"]


def _check_models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Small models covering the native ops: pooled (full) and flattened (diag) 2-D, a 1-D one, branches."""
    meta: dict[str, Any] = {"device": "meta"}

    def relu(a: float = 0.0) -> nn.Module:
        return ActivationModule(ABReLU(a, 1.0))

    pooled = nn.Sequential(Conv2d(2, 3, 3, b_std=0.2, **meta), relu(), nn.AvgPool2d(2),
                           Conv2d(3, 3, 2, padding="valid", **meta), relu(0.2), GlobalAvgPool(),
                           Linear(3, 1, b_std=0.1, **meta))
    flat = nn.Sequential(Conv2d(1, 3, 3, stride=2, b_std=0.3, **meta), relu(), Conv2d(3, 3, 2, **meta), relu(),
                         nn.Flatten(), Linear(3 * 3 * 3, 1, **meta))
    one_d = nn.Sequential(Conv1d(2, 3, 3, **meta), relu(), GlobalAvgPool(), Linear(3, 1, **meta))
    # a projection-shortcut sum, then a concatenation with the identity (nested forks)
    block = Parallel(nn.Sequential(Conv2d(3, 3, 3, stride=2, **meta), relu(), Conv2d(3, 3, 3, b_std=0.1, **meta)),
                     Conv2d(3, 3, 1, stride=2, **meta))
    grow = Parallel(nn.Identity(), nn.Sequential(Conv2d(3, 2, 3, **meta), Parallel(
        Conv2d(2, 2, 1, **meta), nn.Sequential(relu(), Conv2d(2, 2, 3, **meta))), relu()), merge="concat")
    branched = nn.Sequential(Conv2d(2, 3, 3, **meta), relu(), block, relu(), grow, Conv2d(5, 3, 1, **meta), relu(),
                             GlobalAvgPool(), Linear(3, 1, **meta))
    return [(pooled, (2, 6, 5)), (flat, (1, 6, 5)), (one_d, (2, 7)), (branched, (2, 6, 5))]


def _self_check() -> str:
    """Compare the native loop with the reference evaluator on small CNNs; "" if they agree."""
    gen = torch.Generator().manual_seed(0)
    for model, shape in _check_models():
        arch = describe_model(model, shape)
        prog = match_spatial(arch)
        if prog is None:
            return f"self-check failed: no spatial program for {shape}"
        x = torch.randn(5, *shape, generator=gen, dtype=torch.float64)
        x[4] = x[0]
        _, ids = torch.unique(x.reshape(5, -1), dim=0, return_inverse=True)
        got = evaluate_spatial(arch, prog, x, x, ids, ids, ntk=True, symmetric=True)
        ref = reference_kernel(arch, x)
        for g, r in zip(got[:2], ref, strict=True):
            assert g is not None and r is not None
            err = float((g - r).abs().max() / r.abs().max())
            if not err < 1e-12:
                return f"self-check failed: native and reference spatial kernels differ by {err:.1e} (relative)"
    return ""


_native.set_self_check(_self_check, "spatial")
