"""Fast path of token models: every layer of a pair of token inputs in one native loop (``_tokens_native.c``).

A transformer encoder on tokens (:class:`ntkit.nn.SelfAttention` with linear scaling, per-token ``Linear``
and ``LayerNorm``, ReLU-family MLPs, residual sums, a mean over the tokens) has, at infinite width, the
token-pair covariances ``K(x, x')[p, p']`` (``L x L`` per pair) as its state. Every layer but the
attention is pointwise in the token pair; the attention is ``G_x K G_x'^T`` with ``G_x`` fixed by the
input's own covariance (Hron et al. 2020; :mod:`ntkit.infinite.ops.attention`). :func:`match_tokens`
compiles such a prefix into a program; the native loop then runs all its layers pair by pair in an
``L x L`` workspace that stays in cache: the per-input quantities (layer-norm factors, activation
variances, attention matrices ``G`` and ``G^T``) are computed once by each input's self pair and stored,
the other pairs read them, and each attention is two register-blocked GEMMs on NNGP and NTK together. No
tensor of all the pairs' ``L x L`` covariances is formed, so a tile of pairs costs only its outputs. The
vector tail after the token mean runs on the reference evaluator, and identical pairs get their self
values, as there (:mod:`ntkit.infinite.conv_fast` is the same design for convolutions). The leading layers
that are linear in each input (before the first activation) may instead run per input as factors
(:mod:`ntkit.infinite.tokens_factors`), where a cost estimate says that is cheaper: the loop then starts from
their Gram products.

Accepted prefix (everything else runs on the reference evaluator, which is also what this path is tested
against): ``TokenDense`` (NTK parameterization), ``LayerNormOp`` over each token's channels (no channel
means: not after an activation that tracks them), ``Pointwise`` of the ABReLU family (ReLU, leaky ReLU,
abs), ``Attention`` with linear scaling (any mechanism, bias, positional embeddings; NTK parameterization),
``Residual`` and ``Parallel`` sums and concatenations of these, then ``GlobalPool`` / ``GlobalSumPool`` (the
mean / sum over the tokens), with at least one attention. Token inputs of any number of token axes
(``(N, *S, C)``, the positions flattened). CPU only (on a GPU the reference evaluator's batched tensor code runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit.activations import ABReLU
from ntkit.activations.arccos import abrelu_constants
from ntkit.infinite import native as _native
from ntkit.infinite import tokens_factors as factors
from ntkit.infinite.fused import fused_kind
from ntkit.infinite.ops import KernelOp
from ntkit.infinite.ops.attention import Attention
from ntkit.infinite.ops.branches import Parallel
from ntkit.infinite.ops.global_pool import GlobalPool
from ntkit.infinite.ops.layer_norm import LayerNormOp
from ntkit.infinite.ops.pointwise import Pointwise
from ntkit.infinite.ops.residual import Residual
from ntkit.infinite.ops.spatial_mean import GlobalSumPool
from ntkit.infinite.ops.tokens import TokenDense
from ntkit.infinite.pair_threads import run_chunks, torch_serial
from ntkit.infinite.reference import distinct_rows, reference_kernel, run_ops, snap_duplicates
from ntkit.infinite.state import Layout, Pairs
from ntkit.infinite.walk import Architecture, describe_model, iter_ops

Tensor = torch.Tensor

OP_DENSE, OP_LN, OP_ACT, OP_ATTN, OP_FORK, OP_JOIN, OP_MEAN = 1, 2, 3, 4, 5, 6, 7
NI, ND = 8, 8
#: Pairs x tokens^2 below which :func:`token_pairs` runs on the calling thread alone (a hand-off to a pool thread
#: costs tens of microseconds; 64 self pairs of 16 tokens take about 0.3 ms).
_PARALLEL_ENTRIES = 1 << 16
#: Deepest nesting of branches the native loop holds (``MAX_SLOTS`` of ``_tokens_native.c``).
MAX_SLOTS = 8
#: Attention mechanisms of the native loop (their code in its ``ATTN`` record).
MECHANISMS = {"softmax": 0, "relu": 1, "abs": 2, "identity": 3}
#: Rows of the GEMM micro-kernel (``MR``) and the widest SIMD vector in bytes of ``_tokens_native.c``.
_MR, _VECTOR_BYTES = 4, 64


@dataclass(frozen=True)
class TokenProgram:
    """A token prefix compiled for the native loop.

    Attributes
    ----------
    ops : int32 array of shape (n_ops, 8), dps : float64 array of shape (n_ops, 8)
        The op records of ``_tokens_native.c`` (the layers after ``prefix``).
    channels, tokens : int
        Input channels ``C`` and tokens ``L`` (all token axes together).
    slots : int
        Nesting depth of the branches.
    tail : tuple of KernelOp
        The layers after the read-out (run by the reference evaluator).
    prefix : tuple of KernelOp
        The leading layers evaluated per input as factors (:mod:`ntkit.infinite.tokens_factors`; empty: the
        native loop starts from the inputs).
    """

    ops: np.ndarray
    dps: np.ndarray
    channels: int
    tokens: int
    slots: int
    tail: tuple[KernelOp, ...]
    prefix: tuple[KernelOp, ...] = ()

    def padded(self, itemsize: int) -> tuple[int, int]:
        """``(Lp, Lr)``: the workspace's columns (a multiple of the vector width) and rows (of the micro-kernel)."""
        w = _VECTOR_BYTES // itemsize
        return -(-self.tokens // w) * w, -(-self.tokens // _MR) * _MR

    def store_len(self, itemsize: int) -> int:
        """Entries stored per input: ``L`` per layer norm and activation, ``2 Lr Lp`` per attention (G, G^T)."""
        lp, lr = self.padded(itemsize)
        per = {OP_LN: lp, OP_ACT: lp, OP_ATTN: 2 * lr * lp}
        return max(1, sum(per.get(int(code), 0) for code in self.ops[:, 0]))

    def offsets(self, itemsize: int) -> np.ndarray:
        """The op records with the store offsets of this element size filled in (column 1 of LN / ACT / ATTN)."""
        lp, lr = self.padded(itemsize)
        per = {OP_LN: lp, OP_ACT: lp, OP_ATTN: 2 * lr * lp}
        ops = self.ops.copy()
        at = 0
        for row in ops:
            if int(row[0]) in per:
                row[1] = at
                at += per[int(row[0])]
        return ops


class TokenProgramBuilder:
    """The instruction set of ``_tokens_native.c``; :func:`match_tokens` appends the steps of each op."""

    def __init__(self) -> None:
        self.records: list[list[int]] = []
        self.params: list[list[float]] = []
        self.done = False
        self.depth = 0

    def emit(self, rec: list[int], dp: list[float]) -> bool:
        self.records.append(rec + [0] * (NI - len(rec)))
        self.params.append(dp + [0.0] * (ND - len(dp)))
        return True

    def op(self, op: KernelOp) -> bool:
        """Append ``op``'s steps; False where the native loop has none for it (the reference evaluator runs)."""
        if self.done:
            return False
        if type(op) is TokenDense:
            if op.parameterization != "ntk":
                return False
            return self.emit([OP_DENSE], [op.w_std**2, op.b2])
        if type(op) is LayerNormOp:
            return self.emit([OP_LN], [op.eps])
        if type(op) is Pointwise:
            if op.track_mean or fused_kind(op.fn) != "abrelu":
                return False
            assert isinstance(op.fn, ABReLU)
            return self.emit([OP_ACT], list(abrelu_constants(op.fn.a, op.fn.b)[:5]))
        if type(op) is Attention:
            if not op.linear_scaling or getattr(op, "parameterization", "ntk") != "ntk":
                return False
            if op.mechanism not in MECHANISMS:
                return False
            return self.emit([OP_ATTN, 0, MECHANISMS[op.mechanism]],
                             [op.qk_std, op.ov_std**2, op.b2, op.input_weight, op.pos_weight])
        if type(op) is Residual:
            return self._branches([(), op.block], [1.0, op.scale * op.scale])
        if type(op) is Parallel:
            if op.rule not in ("sum", "concat"):
                return False
            total = float(sum(op.widths))
            return self._branches(list(op.paths), [w / total if op.rule == "concat" else 1.0 for w in op.widths])
        if type(op) in (GlobalPool, GlobalSumPool):
            n = float(math.prod(op.in_shape[1:]))
            self.done = True
            return self.emit([OP_MEAN], [n * n if type(op) is GlobalSumPool else 1.0])
        return False

    def _branches(self, paths: list[Any], weights: list[float]) -> bool:
        """FORK, then each branch's steps and its JOIN (weight ``w_i``; the last one makes the merge current)."""
        if self.depth >= MAX_SLOTS:
            return False
        slot = self.depth
        self.depth += 1
        self.emit([OP_FORK, slot], [])
        first, base = True, False
        for i, (path, weight) in enumerate(zip(paths, weights, strict=True)):
            last = i == len(paths) - 1
            if first and not path and weight == 1.0 and not last:
                base = True  # a first identity branch: the merge starts from the saved input itself
                continue
            if not all(self.op(o) for o in path) or self.done:
                return False
            self.emit([OP_JOIN, slot, int(last), int(first), int(base)], [weight])
            first = base = False
        self.depth -= 1
        return True


def match_tokens(arch: Architecture) -> TokenProgram | None:
    """The compiled token prefix of ``arch``, or None where the reference evaluator must run.

    The leading layers that are linear in each input's features run as per-input factors
    (:mod:`ntkit.infinite.tokens_factors`) as far as that lowers the estimated cost (:func:`_cost`).
    """
    shape = arch.data_shape
    if arch.input_mode != "full" or len(shape) < 2:
        return None
    prog = TokenProgramBuilder()
    marks = [0]
    for n_done, op in enumerate(arch.ops):
        if not prog.op(op):
            return None
        marks.append(len(prog.records))
        if prog.done:
            tail = tuple(arch.ops[n_done + 1 :])
            if any(t.mean_role == "sink" for t in iter_ops(tail)):
                return None
            if not any(r[0] == OP_ATTN for r in prog.records):
                return None  # no attention: the convolutional paths serve such models
            head = arch.ops[: n_done + 1]
            cut = _cut(head, marks, prog.records, shape[0], math.prod(shape[1:]))
            records, params = prog.records[marks[cut] :], prog.params[marks[cut] :]
            forks = [r[1] for r in records if r[0] == OP_FORK]
            return TokenProgram(np.asarray(records, dtype=np.int32), np.asarray(params, dtype=np.float64),
                                shape[0], math.prod(shape[1:]), max(forks, default=-1) + 1, tail, tuple(head[:cut]))
    return None


def _cost(records: list[list[int]], tokens: int) -> float:
    """Estimated work of program records per pair, in units of ``L^2`` multiply-adds (NNGP and NTK)."""
    per = {OP_DENSE: 2.0, OP_LN: 2.0, OP_ACT: 12.0, OP_ATTN: 4.0 * tokens + 2.0, OP_FORK: 1.0, OP_JOIN: 2.0,
           OP_MEAN: 2.0}
    return sum(per[r[0]] for r in records)


def _cut(head: Sequence[KernelOp], marks: list[int], records: list[list[int]], channels: int, tokens: int) -> int:
    """How many leading layers of ``head`` run as factors: the cheapest estimate (the input product of rank
    ``r_K + r_T`` per pair, then the program's records)."""
    best, cut = channels + _cost(records, tokens), 0
    r = (channels, 0)
    for k, op in enumerate(head[:-1]):
        if not factors.factorable(op):
            break
        r = factors.ranks([op], r)
        cost = r[0] + r[1] + _cost(records[marks[k + 1] :], tokens)
        if cost < best:
            best, cut = cost, k + 1
    return cut


def workspace_entries(prog: TokenProgram, itemsize: int = 8) -> int:
    """Entries the native loop allocates per thread: the state and the GEMM product, two per branch depth."""
    lp, lr = prog.padded(itemsize)
    return (2 + 2 * prog.slots) * lr * 2 * lp


def input_entries(prog: TokenProgram, itemsize: int = 8) -> int:
    """Entries held per distinct input of a tile: its stored quantities (:meth:`TokenProgram.store_len`: ``2 Lr Lp``
    per attention), the padded factors of :func:`start` and, while they are made, ``L^2`` per attention of the
    factored prefix."""
    lp, lr = prog.padded(itemsize)
    rk, rt = factors.ranks(prog.prefix, (prog.channels, 0))
    prefix_attention = sum(1 for op in iter_ops(prog.prefix) if type(op) is Attention)
    return prog.store_len(itemsize) + (rk + rt) * (lr + lp) + prefix_attention * prog.tokens**2


def usable(x: Tensor) -> bool:
    """Whether the native loop can serve inputs ``x`` (CPU, float32/float64) and is built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return _native.library("tokens") is not None


def token_pairs(
    prog: TokenProgram, x: Start, ia: Tensor, ib: Tensor, selfs: Tensor, store: Tensor,
    ntk: bool, threads: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Read-out NNGP / NTK (None) of the pairs ``(ia[p], ib[p])`` of the distinct inputs, shape (n,) in float64.

    ``x``: :func:`start` of the distinct inputs. ``selfs[p]`` marks an input with itself (it stores that
    input's per-input quantities in ``store``, shape (U, store_len)); the other pairs read them, so self pairs
    must be computed first. Pairs are split over ``threads`` threads (default: torch's intra-op threads; the loop
    releases the GIL).
    """
    lib = _native.library("tokens")
    assert lib is not None
    n = int(ia.shape[0])
    out_n = torch.empty(n, dtype=torch.float64)
    out_t = torch.empty(n, dtype=torch.float64) if ntk else None
    if n == 0:
        return out_n, out_t
    ka, kb, ta, tb, div = x
    ia, ib = ia.to(torch.int64).contiguous(), ib.to(torch.int64).contiguous()
    selfs = selfs.to(torch.uint8).contiguous()
    fn = getattr(lib, "ntk_tokens_pairs_f32" if ka.dtype == torch.float32 else "ntk_tokens_pairs_f64")
    ops, dps = np.ascontiguousarray(prog.offsets(ka.element_size())), np.ascontiguousarray(prog.dps)

    def run(p0: int, p1: int) -> None:
        code = fn(
            ka.data_ptr(), kb.data_ptr(), kb.shape[1], ta.data_ptr(), tb.data_ptr(), tb.shape[1], div, prog.tokens,
            p1 - p0,
            ia.data_ptr() + 8 * p0, ib.data_ptr() + 8 * p0,
            selfs.data_ptr() + p0, ops.ctypes.data, dps.ctypes.data, len(ops), store.data_ptr(), store.shape[1],
            out_n.data_ptr() + 8 * p0, 0 if out_t is None else out_t.data_ptr() + 8 * p0,
        )
        if code != 0:
            raise MemoryError(f"token kernel: could not allocate its workspace "
                              f"({workspace_entries(prog, ka.element_size())} entries)")

    threads = max(1, torch.get_num_threads() if threads is None else threads)
    if n * prog.tokens**2 < _PARALLEL_ENTRIES:
        threads = 1  # a thread hand-off costs more than the pairs' work
    run_chunks(run, n, threads, name="tokens")
    return out_n, out_t


#: The native loop's inputs (:func:`start`).
Start = tuple[Tensor, Tensor, Tensor, Tensor, float]


def start(prog: TokenProgram, x: Tensor) -> Start:
    """The native loop's inputs for the distinct inputs ``x`` (U, C, *S): ``(A, B, A', B', div)``, its covariances
    at the start being ``K = A_x B_x' / div`` and ``T = A'_x B'_x'``: ``A_x = x^T`` (L, C), ``B_x = x`` (C, L)
    and ``div = C`` (``T = 0``), or the factors ``Phi, Phi^T, Psi, Psi^T`` after :attr:`TokenProgram.prefix`
    (``div = 1``); padded with zeros to ``Lr`` rows and ``Lp`` columns (:meth:`TokenProgram.padded`)."""
    u, c = x.shape[0], x.shape[1]
    if prog.prefix:
        phi, psi = factors.apply_factors(prog.prefix, *factors.input_factors(x))
        div = 1.0
    else:
        phi = x.reshape(u, c, -1).transpose(1, 2)
        psi, div = phi[..., :0], float(c)
    lp, lr = prog.padded(x.element_size())
    out: list[Tensor] = []
    for f in (phi, psi):
        rows = f.new_zeros(u, lr, f.shape[-1])
        rows[:, : prog.tokens] = f
        cols = f.new_zeros(u, f.shape[-1], lp)
        cols[:, :, : prog.tokens] = f.transpose(1, 2)
        out += [rows, cols]
    return out[0], out[1], out[2], out[3], div


def _self_pass(
    prog: TokenProgram, x: Tensor, ntk: bool, threads: int
) -> tuple[Tensor, Tensor | None, Tensor, Start]:
    """Every distinct input with itself: its read-out kernels, its stored quantities and the loop's inputs."""
    u = x.shape[0]
    store = torch.zeros(u, prog.store_len(x.element_size()), dtype=x.dtype)
    idx = torch.arange(u)
    begin = start(prog, x)
    self_n, self_t = token_pairs(prog, begin, idx, idx, torch.ones(u, dtype=torch.uint8), store, ntk, threads)
    return self_n, self_t, store, begin


def evaluate_tokens(
    arch: Architecture, prog: TokenProgram, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, *, ntk: bool,
    symmetric: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    """Kernels of the pairs ``(a_i, b_j)`` by the native token prefix and the reference tail.

    Same arguments and results as :func:`ntkit.infinite.reference.evaluate`.
    """
    with torch_serial() as threads:
        return _evaluate(arch, prog, a, b, ids_a, ids_b, ntk, symmetric, threads)


def _evaluate(
    arch: Architecture, prog: TokenProgram, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, ntk: bool,
    symmetric: bool, threads: int,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    rows_data, left, right = distinct_rows(a, b, ids_a, ids_b)
    dtype = rows_data.dtype
    self_n, self_t, store, begin = _self_pass(prog, rows_data, ntk, threads)
    na, nb = a.shape[0], b.shape[0]
    if symmetric:  # the diagonal is the self pass's: only the pairs i < j
        iu = torch.triu_indices(na, nb, offset=1)
        ia, ib = left[iu[0]], right[iu[1]]
    else:
        ia = left.repeat_interleave(nb)
        ib = right.repeat(na)
    cross_n, cross_t = token_pairs(prog, begin, ia, ib, torch.zeros(ia.shape[0], dtype=torch.uint8), store, ntk,
                                   threads)

    def matrix(values: Tensor, selves: Tensor) -> Tensor:
        if not symmetric:
            return values.reshape(na, nb).to(dtype)
        out = torch.empty(na, nb, dtype=dtype)
        v = values.to(dtype)
        out[iu[0], iu[1]] = v
        out[iu[1], iu[0]] = v
        out.diagonal().copy_(selves[left])
        return out

    none = Layout((), "none")
    rows = Pairs(self_n.to(dtype), None if self_t is None else self_t.to(dtype), none, 1)
    cross = Pairs(matrix(cross_n, rows.nngp),
                  None if cross_t is None or rows.ntk is None else matrix(cross_t, rows.ntk), none, 2)
    r, c = torch.nonzero(left[:, None] == right[None, :], as_tuple=True)
    dup = (r, c, left[r])
    cross = snap_duplicates(cross, rows, dup, keep=())  # its own fresh tensors: in place
    rows, cross = run_ops(prog.tail, rows, cross, left, right, dup, ntk)
    return cross.nngp, cross.ntk, rows.nngp, rows.ntk, left, right


def evaluate_tokens_diagonal(prog: TokenProgram, a: Tensor, ids: Tensor, *, ntk: bool) -> tuple[Tensor, Tensor | None]:
    """``K(a_i, a_i)`` (shape (Na,)) by the native prefix and the reference tail: self pairs only."""
    rows_data, left, _ = distinct_rows(a, a[:0], ids, ids[:0])
    with torch_serial() as threads:
        self_n, self_t, *_ = _self_pass(prog, rows_data, ntk, threads)
    none = Layout((), "none")
    rows = Pairs(self_n.to(a.dtype), None if self_t is None else self_t.to(a.dtype), none, 1)
    empty = torch.zeros(0, dtype=torch.long)
    cross = Pairs(torch.zeros(0, 0, dtype=a.dtype), None if not ntk else torch.zeros(0, 0, dtype=a.dtype), none, 2)
    rows, _ = run_ops(prog.tail, rows, cross, empty, empty, (empty, empty, empty), ntk)
    return rows.nngp[left], None if rows.ntk is None else rows.ntk[left]


__all__ = ["Start", "TokenProgram", "TokenProgramBuilder", "evaluate_tokens", "evaluate_tokens_diagonal",
           "input_entries", "match_tokens", "start", "token_pairs", "torch_serial", "usable", "workspace_entries"]


def _check_models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Small token models covering the native ops: an encoder block (softmax), relu attention with a bias and
    positional embeddings, a concatenation, an odd number of tokens."""
    from ntkit.nn import LayerNorm, Linear, Parallel, Residual, SelfAttention

    meta: dict[str, Any] = {"device": "meta"}

    class Mean(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.mean(dim=1)

    block = nn.Sequential(
        Linear(3, 4, b_std=0.1, **meta),
        Residual(LayerNorm(4), SelfAttention(4, 4, n_heads=2, **meta)),
        Residual(LayerNorm(4), Linear(4, 4, b_std=0.2, **meta), nn.ReLU(), Linear(4, 4, **meta)),
        Mean(), Linear(4, 1, b_std=0.1, **meta))
    other = nn.Sequential(
        Linear(2, 4, **meta), nn.ReLU(),
        SelfAttention(4, 4, mechanism="relu", b_std=0.3, pos_emb="sum", n_tokens=5, **meta),
        Parallel(Linear(4, 2, **meta), nn.Sequential(nn.ReLU(), Linear(4, 3, **meta)), merge="concat", dim=-1),
        Mean(), Linear(5, 1, **meta))
    return [(block, (7, 3)), (other, (5, 2))]


def _self_check() -> str:
    """Compare the native loop with the reference evaluator on small token models; "" if they agree."""
    try:
        return _compare()
    except Exception as err:  # any failure means: use the reference evaluator, and say why
        return f"self-check failed: {type(err).__name__}: {err}"


def _compare() -> str:
    gen = torch.Generator().manual_seed(0)
    for model, shape in _check_models():
        arch = describe_model(model, shape)
        prog = match_tokens(arch)
        if prog is None:
            return f"self-check failed: no token program for {shape}"
        x = torch.randn(4, *shape, generator=gen, dtype=torch.float64)
        x[3] = x[0]
        data = arch.prepare(x)
        _, ids = torch.unique(data.reshape(4, -1), dim=0, return_inverse=True)
        got = evaluate_tokens(arch, prog, data, data, ids, ids, ntk=True, symmetric=True)
        ref = reference_kernel(arch, x)
        for g, r in zip(got[:2], ref, strict=True):
            assert g is not None and r is not None
            err = float((g - r).abs().max() / r.abs().max())
            if not err < 1e-12:
                return f"self-check failed: native and reference token kernels differ by {err:.1e} (relative)"
    return ""


_native.set_self_check(_self_check, "tokens")
