"""Fast path of convolutional programs without pooling: several pairs of images per vector.

A convolutional network whose read-out flattens its last feature map (the CNN-GP / CNTK without pooling of
Novak et al. 2019; the ``v`` kernels of ``ntkit bench fashion``) needs, for a pair of images ``(x, x')``, only
the same-pixel covariances: the ``diag`` layout of :mod:`ntkit.infinite.conv_fast`. With ``P = H W`` pixels, a
layer costs ``O(P)`` per pair:

.. math::

    K_1(p) = \\frac{1}{C} \\sum_c x_c(p) x'_c(p), \\qquad
    K'(q) = \\frac{w^2}{k_h k_w} \\sum_{t} K(q + t - \\mathrm{pad}) + b^2, \\qquad
    T'(q) = \\frac{w^2}{k_h k_w} \\sum_{t} T(q + t - \\mathrm{pad}) + K'(q),

the ABReLU arc-cosine map at each pixel (with the two images' own variances ``K(x, x)(p)``, ``K(x', x')(p)``),
and the mean over the pixels at the read-out. ``_cntk_native.c`` runs these pair by pair; ``_diag_native.c``
pairs one image of a tile's rows with ``L`` images of its columns in the lanes of a vector (``L = 8`` in
float64, 16 in float32), arrays laid out ``[pixel][lane]``, so the ``atan2`` / ``sqrt`` of the arc-cosine map
and the stencil sums are lane-parallel. Each lane does the same operations in the same order as the pair loop but
for ``atan2``, a branch-free polynomial here (within 1.5 eps of the exact value; glibc's vector ``atan2`` was 60%
of the time): the two agree to about 1e-15 relative in float64 (measured: <= 1.2e-15 on Fashion-MNIST, depths
1-5) and to float32 rounding in float32. On the benchmark's machine (2 cores, AVX-512) a pair of 28x28 images
costs about half the pair loop's CPU time in float64 and a third in float32 (``benchmarks/bench_diag.py``).

:func:`match_diag` accepts a :class:`~ntkit.infinite.conv_fast.SpatialProgram` of the ``diag`` layout made
only of stride-1 convolutions (any filter, ``same`` / ``valid`` zero padding), ABReLU-family activations and
the flattening read-out; anything else (pooling, strides, branches, the ``full`` layout) stays on the pair
loop. :func:`evaluate_diag` is :func:`~ntkit.infinite.conv_fast.evaluate_spatial` with the pairs of a tile
computed here: the self pairs (each distinct row's variances and its kernel with itself) still come from the
pair loop, so the diagonal and the duplicated rows get exactly the self values of
:func:`~ntkit.infinite.conv_fast.evaluate_spatial_diagonal`. CPU only.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit.activations import ABReLU
from ntkit.infinite import native as _native
from ntkit.infinite.conv_fast import OP_ACT, OP_CONV, OP_FLAT, SpatialProgram, match_spatial, spatial_pairs
from ntkit.infinite.pair_threads import run_spans
from ntkit.infinite.reference import distinct_rows, reference_kernel, run_ops, snap_duplicates
from ntkit.infinite.state import Layout, Pairs
from ntkit.infinite.walk import Architecture, describe_model
from ntkit.nn.linear import Conv1d, Conv2d, Linear
from ntkit.nn.structure import Activation as ActivationModule

Tensor = torch.Tensor

#: Pairs per vector of ``_diag_native.c``, per dtype (one AVX-512 register).
LANES = {torch.float64: 8, torch.float32: 16}


def match_diag(prog: SpatialProgram | None) -> bool:
    """Whether the lane-parallel loop serves ``prog``: ``diag`` layout, stride-1 convolutions, activations, flatten.

    Parameters
    ----------
    prog : SpatialProgram or None
        From :func:`ntkit.infinite.conv_fast.match_spatial` (None: no native program).

    Returns
    -------
    bool
        False for the ``full`` layout (pooled networks), strides, pooling, upsampling or branches: the pair loop
        of :mod:`ntkit.infinite.conv_fast` then runs.
    """
    if prog is None or prog.full or len(prog.ops) == 0:
        return False
    codes = prog.ops[:, 0]
    if codes[-1] != OP_FLAT or not np.isin(codes[:-1], (OP_CONV, OP_ACT)).all():
        return False
    conv = prog.ops[codes == OP_CONV]
    return bool((conv[:, 3] == 1).all() and (conv[:, 4] == 1).all())


def usable(x: Tensor) -> bool:
    """Whether the lane-parallel loop can serve inputs ``x`` (CPU, float32/float64) and is built."""
    if x.device.type != "cpu" or x.dtype not in LANES:
        return False
    return _native.library("diag") is not None


def _grouped(t: Tensor, index: Tensor, lanes: int, fill: float) -> Tensor:
    """Rows ``t[index]`` of ``t`` (n, k) as ``(ceil(len(index) / lanes), k, lanes)``: each group of ``lanes``
    rows in the lanes, the last group padded with ``fill``. Built a few groups at a time (no full copy of
    ``t[index]`` besides the result)."""
    n, k = int(index.shape[0]), int(t.shape[1])
    groups = -(-n // lanes)
    out = torch.empty(groups, k, lanes, dtype=t.dtype)
    step = max(1, (1 << 20) // max(1, k * lanes))  # about 1M entries per block
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        block = torch.full(((g1 - g0) * lanes, k), fill, dtype=t.dtype)
        rows = index[g0 * lanes : min(n, g1 * lanes)]
        torch.index_select(t, 0, rows, out=block[: rows.shape[0]])
        out[g0:g1] = block.reshape(g1 - g0, lanes, k).transpose(1, 2)
    return out


def _check_tile(prog: SpatialProgram, images: Tensor, variances: Tensor, rows: Tensor, cols: Tensor) -> None:
    """Raise ValueError unless the arguments of :func:`diag_tile` fit ``prog`` and each other."""
    if not match_diag(prog):
        raise ValueError("diag_tile: expected a program accepted by match_diag (diag layout, stride-1 convolutions, "
                         "activations, flatten), got one with other ops or the full layout")
    if images.dtype not in LANES or images.device.type != "cpu":
        raise ValueError(f"diag_tile: expected float32 / float64 CPU images, got {images.dtype} on {images.device}")
    entries = prog.channels * prog.height * prog.width
    if images.dim() < 2 or images.shape[1:].numel() != entries:
        raise ValueError(f"diag_tile: expected images of shape (n, {prog.channels}, "
                         f"{'' if prog.height == 1 else f'{prog.height}, '}{prog.width}), got {tuple(images.shape)}")
    if variances.dtype != images.dtype or tuple(variances.shape) != (images.shape[0], prog.var_len):
        raise ValueError(f"diag_tile: expected variances of shape ({images.shape[0]}, {prog.var_len}) in "
                         f"{images.dtype}, got {tuple(variances.shape)} in {variances.dtype}")
    for name, idx in (("rows", rows), ("cols", cols)):
        if idx.dim() != 1 or idx.dtype != torch.int64:
            raise ValueError(f"diag_tile: expected {name} as an int64 vector, got {idx.dtype} of shape "
                             f"{tuple(idx.shape)}")
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < images.shape[0]):
            raise ValueError(f"diag_tile: expected {name} in [0, {images.shape[0]}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")




def diag_tile(
    prog: SpatialProgram, images: Tensor, variances: Tensor, rows: Tensor, cols: Tensor, *, ntk: bool,
    upper: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Read-out NNGP and NTK (None) of the pairs ``(images[rows[i]], images[cols[j]])``, shape (na, nb), float64.

    Parameters
    ----------
    prog : SpatialProgram
        Accepted by :func:`match_diag`.
    images : Tensor of shape (n, C, H, W) (1-D: (n, C, W)), float32 or float64
    variances : Tensor of shape (n, var_len)
        The images' own variances, as the self pairs of :func:`~ntkit.infinite.conv_fast.spatial_pairs` store
        them.
    rows, cols : int64 Tensor of shapes (na,), (nb,)
        The images of the tile's rows and columns.
    ntk : bool
        Also the NTK.
    upper : bool
        ``cols`` is ``rows`` (a diagonal block): only the entries ``j >= i`` are computed (the others are left
        uninitialised).

    Returns
    -------
    (Tensor, Tensor or None)
        Rows are split over torch's intra-op threads (the loop releases the GIL). Memory besides the results:
        the columns' images and variances once, regrouped by lanes.

    Raises
    ------
    ValueError
        A program :func:`match_diag` declines, or arguments that do not fit it or each other.
    """
    _check_tile(prog, images, variances, rows, cols)
    lib = _native.library("diag")
    assert lib is not None
    na, nb = int(rows.shape[0]), int(cols.shape[0])
    out_n = torch.empty(na, nb, dtype=torch.float64)
    out_t = torch.empty(na, nb, dtype=torch.float64) if ntk else None
    if na == 0 or nb == 0:
        return out_n, out_t
    lanes = LANES[images.dtype]
    xa = images.reshape(images.shape[0], -1).contiguous()
    va = variances.contiguous()
    ia = rows.contiguous()
    xbt = _grouped(xa, cols, lanes, 0.0)
    vbt = _grouped(va, cols, lanes, 1.0)
    fn = getattr(lib, "ntk_diag_tile_f32" if images.dtype == torch.float32 else "ntk_diag_tile_f64")
    ops, dps = np.ascontiguousarray(prog.ops), np.ascontiguousarray(prog.dps)

    def run(r0: int, r1: int) -> None:
        code = fn(xa.data_ptr(), ia.data_ptr(), xbt.data_ptr(), va.data_ptr(), vbt.data_ptr(), prog.var_len,
                  prog.channels, prog.height, prog.width, r0, r1, nb, int(upper), ops.ctypes.data, dps.ctypes.data,
                  len(ops), out_n.data_ptr(), 0 if out_t is None else out_t.data_ptr(), nb)
        if code != 0:
            raise MemoryError("diag kernel: could not allocate its workspace")

    threads = max(1, torch.get_num_threads())
    if threads == 1 or na < 2:
        run(0, na)
        return out_n, out_t
    parts = 4 * threads
    if upper:  # spans of equal work: row i costs about na - i pairs
        bounds = [0] + [int(na - na * np.sqrt(1 - k / parts)) for k in range(1, parts)] + [na]
    else:
        bounds = [*range(0, na, max(1, -(-na // parts))), na]
    spans = sorted({(b0, b1) for b0, b1 in itertools.pairwise(bounds) if b1 > b0})
    run_spans(run, spans, threads, name="diag")
    return out_n, out_t


def evaluate_diag(
    arch: Architecture, prog: SpatialProgram, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, *, ntk: bool,
    symmetric: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    """Kernels of the pairs ``(a_i, b_j)``: :func:`~ntkit.infinite.conv_fast.evaluate_spatial` with the pairs of
    the tile computed by :func:`diag_tile` (``prog`` accepted by :func:`match_diag`).

    Same arguments and results as :func:`ntkit.infinite.reference.evaluate`.
    """
    rows_data, left, right = distinct_rows(a, b, ids_a, ids_b)
    u = rows_data.shape[0]
    dtype = rows_data.dtype
    variances = torch.zeros(u, prog.var_len, dtype=dtype)
    idx = torch.arange(u)
    self_n, self_t = spatial_pairs(prog, rows_data, idx, idx, torch.ones(u, dtype=torch.uint8), variances, ntk)
    cross_n, cross_t = diag_tile(prog, rows_data, variances, left, right, ntk=ntk, upper=symmetric)

    def matrix(values: Tensor) -> Tensor:
        if symmetric:
            low = torch.tril_indices(values.shape[0], values.shape[1], -1)
            values[low[0], low[1]] = values[low[1], low[0]]
        return values.to(dtype)

    none = Layout((), "none")
    rows = Pairs(self_n.to(dtype), None if self_t is None else self_t.to(dtype), none, 1)
    cross = Pairs(matrix(cross_n), None if cross_t is None else matrix(cross_t), none, 2)
    r, c = torch.nonzero(left[:, None] == right[None, :], as_tuple=True)
    dup = (r, c, left[r])
    cross = snap_duplicates(cross, rows, dup)
    rows, cross = run_ops(prog.tail, rows, cross, left, right, dup, ntk)
    return cross.nngp, cross.ntk, rows.nngp, rows.ntk, left, right


__all__ = ["LANES", "diag_tile", "evaluate_diag", "match_diag", "usable"]


def _check_models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Small programs the loop accepts: 2-D with ``same`` and ``valid`` padding, leaky ReLU, bias; 1-D."""
    meta: dict[str, Any] = {"device": "meta"}
    two_d = nn.Sequential(Conv2d(2, 3, 3, b_std=0.3, **meta), ActivationModule(ABReLU(0.2, 1.0)),
                          Conv2d(3, 3, 2, padding="valid", **meta), ActivationModule(ABReLU(0.0, 1.0)),
                          nn.Flatten(), Linear(3 * 5 * 4, 1, b_std=0.1, **meta))
    one_d = nn.Sequential(Conv1d(1, 3, 3, **meta), ActivationModule(ABReLU(0.0, 1.0)), nn.Flatten(),
                          Linear(3 * 7, 1, **meta))
    return [(two_d, (2, 6, 5)), (one_d, (1, 7))]


def _self_check() -> str:
    """Compare the loop with the reference evaluator on small CNNs; "" if they agree."""
    gen = torch.Generator().manual_seed(0)
    for model, shape in _check_models():
        arch = describe_model(model, shape)
        prog = match_spatial(arch)
        if prog is None or not match_diag(prog):
            return f"self-check failed: no diag program for {shape}"
        x = torch.randn(19, *shape, generator=gen, dtype=torch.float64)
        x[4] = x[0]
        _, ids = torch.unique(x.reshape(19, -1), dim=0, return_inverse=True)
        for symmetric in (False, True):
            got = evaluate_diag(arch, prog, x, x, ids, ids, ntk=True, symmetric=symmetric)
            ref = reference_kernel(arch, x)
            for g, r in zip(got[:2], ref, strict=True):
                assert g is not None and r is not None
                err = float((g - r).abs().max() / r.abs().max())
                if not err < 1e-12:
                    return f"self-check failed: diag and reference kernels differ by {err:.1e} (relative)"
    return ""


_native.set_self_check(_self_check, "diag")
