"""The reference evaluator: the kernels of an :class:`~ntkit.infinite.walk.Architecture`, layer by layer.

For inputs ``a`` (Na rows) and ``b`` (Nb rows), already through the architecture's prelude:

1. the input covariances ``K0(x, x')[p, p'] = sum_c x[c, p] x'[c, p'] / C`` (``x.x' / d`` for
   vectors) of every pair ``(a_i, b_j)`` and of every distinct input with itself;
2. every layer's transform (:mod:`ntkit.infinite.ops`) applied to
   both; the variances feeding the dual maps are read from the self batch;
3. after every layer, the pairs of *identical* inputs (equal ids) get the self batch's values.

Step 3 makes every duplicated pair, and the diagonal of ``K(X, X)``, exact at every depth: the dual
maps then see ``K(x, x') == K(x, x) == K(x', x')`` bit for bit, so the angle of the arc-cosine
kernels is exactly 0 (an error of one ulp there costs ``sqrt(eps) ~ 1e-8`` through ``arccos``).
The self batch is computed once per distinct input, so two copies of an input share the same
variances.

This is the definition every fast path (:mod:`ntkit.infinite.fused`, the native loop) is tested
against; it favours clarity over speed and holds all pairs of the batch in memory (the tiled
evaluation of :mod:`ntkit.compute` bounds that).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ntkit.infinite.ops import KernelOp
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.infinite.walk import Architecture

Tensor = torch.Tensor


def input_pairs(a: Tensor, b: Tensor | None, layout: Layout, ntk: bool) -> Pairs:
    """Covariances of the raw features: of ``a`` with ``b`` (``batch_ndim = 2``) or of each ``a`` with itself.

    ``a``: (Na, d) or (Na, C, *S); ``b`` the same with Nb rows. The NTK of the input is 0.
    """
    na = a.shape[0]
    if layout.mode == "none":
        d = math.prod(a.shape[1:])
        a2 = a.reshape(na, d)
        if b is None:
            nngp = (a2 * a2).sum(-1) / d
        else:
            nngp = (a2 @ b.reshape(b.shape[0], d).T) / d
    else:
        c, p = a.shape[1], layout.pixels
        aa = a.reshape(na, c, p)
        if b is None:
            if layout.mode == "diag":
                nngp = (aa * aa).sum(1) / c
            else:
                nngp = torch.einsum("icp,icq->ipq", aa, aa) / c
        else:
            nb = b.shape[0]
            bb = b.reshape(nb, c, p)
            if layout.mode == "diag":
                nngp = torch.einsum("icp,jcp->ijp", aa, bb) / c
            else:
                rows = aa.transpose(1, 2).reshape(na * p, c)
                cols = bb.transpose(1, 2).reshape(nb * p, c)
                nngp = (rows @ cols.T).reshape(na, p, nb, p).permute(0, 2, 1, 3) / c
        batch = (na,) if b is None else (na, b.shape[0])
        nngp = nngp.reshape(*batch, *layout.pair_shape)
    return Pairs(nngp, torch.zeros_like(nngp) if ntk else None, layout, 1 if b is None else 2)


def snap_duplicates(cross: Pairs, rows: Pairs, dup: tuple[Tensor, Tensor, Tensor]) -> Pairs:
    """Give identical pairs the values of the self batch (see the module notes)."""
    r, c, u = dup
    if r.numel() == 0:
        return cross
    nngp = cross.nngp.index_put((r, c), rows.nngp[u])
    ntk = cross.ntk
    if ntk is not None and rows.ntk is not None:
        ntk = ntk.index_put((r, c), rows.ntk[u])
    return cross.replace(nngp=nngp, ntk=ntk)


#: One step of :func:`iter_layers`: the layer, the self batch and the pairs' kernels after it, and for
#: an activation computed with the NTK the pairs' derivative kernel ``E[sigma'(u) sigma'(v)]`` (else None).
Step = tuple[KernelOp, Pairs, Pairs, Tensor | None]


def _walk(
    ops: Sequence[KernelOp], state: list[Pairs], left: Tensor, right: Tensor, dup: tuple[Tensor, Tensor, Tensor],
    ntk: bool,
) -> Iterator[Step]:
    """Apply ``ops`` to ``state = [rows, cross]`` in place, yielding after every layer (inner branches inside:
    each branch runs from the op's input state, then the op merges the branches' output states)."""
    for op in ops:
        rows, cross = state
        dot: Tensor | None = None
        if op.branches():
            outs = []
            for branch in op.branches():
                sub = [rows, cross]
                yield from _walk(branch, sub, left, right, dup, ntk)
                outs.append(sub)
            rows, cross = op.merge([o[0] for o in outs], ntk), op.merge([o[1] for o in outs], ntk)
        else:
            new_rows = op.apply(rows, Context(rows), ntk)
            cross, dot = op.apply_dual(cross, Context(rows, left, right), ntk)
            rows = new_rows
        cross = snap_duplicates(cross, rows, dup)
        state[:] = [rows, cross]
        yield op, rows, cross, dot


def run_ops(
    ops: Sequence[KernelOp], rows: Pairs, cross: Pairs, left: Tensor, right: Tensor,
    dup: tuple[Tensor, Tensor, Tensor], ntk: bool,
) -> tuple[Pairs, Pairs]:
    """Apply ``ops`` to the self batch ``rows`` and the pairs ``cross`` (rows ``left[i]``, ``right[j]``)."""
    state = [rows, cross]
    for _ in _walk(ops, state, left, right, dup, ntk):
        pass
    return state[0], state[1]


def distinct_rows(a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, left, right)``: one row per distinct id, and the index of each row of ``a`` / ``b`` in it."""
    ids = torch.cat([ids_a, ids_b])
    uniq, inverse = torch.unique(ids, return_inverse=True)
    position = torch.arange(ids.shape[0], device=ids.device)
    first = torch.full((uniq.shape[0],), ids.shape[0], dtype=position.dtype, device=ids.device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")
    both = torch.cat([a, b])
    return both[first], inverse[: a.shape[0]], inverse[a.shape[0] :]


def evaluate(
    arch: Architecture, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, *, ntk: bool, symmetric: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor]:
    """Kernels of the pairs ``(a_i, b_j)`` by the reference evaluator.

    Parameters
    ----------
    arch : Architecture
    a, b : Tensor of shapes (Na, *data_shape), (Nb, *data_shape)
        Inputs after the prelude (:meth:`Architecture.prepare`).
    ids_a, ids_b : int64 Tensor of shapes (Na,), (Nb,)
        Equal ids mark bitwise-identical inputs (over ``a`` and ``b`` together).
    ntk : bool
        Also compute the NTK.
    symmetric : bool
        ``b`` is ``a``: the result is made exactly symmetric (its upper triangle mirrored).

    Returns
    -------
    (nngp, ntk, self_nngp, self_ntk, left, right)
        ``nngp`` / ``ntk`` of shape (Na, Nb); the kernels of each distinct input with itself
        (shape (U,)) and the index of each row of ``a`` / ``b`` among them.
    """
    state, left, right, dup = _start(arch, a, b, ids_a, ids_b, ntk)
    rows, cross = run_ops(arch.ops, state[0], state[1], left, right, dup, ntk)
    nngp, out_ntk = cross.nngp, cross.ntk
    if symmetric:
        nngp = _mirror(nngp)
        out_ntk = None if out_ntk is None else _mirror(out_ntk)
    return nngp, out_ntk, rows.nngp, rows.ntk, left, right


def _start(
    arch: Architecture, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, ntk: bool
) -> tuple[list[Pairs], Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Input covariances ``[rows, cross]``, the row indices and the duplicate pairs."""
    rows_data, left, right = distinct_rows(a, b, ids_a, ids_b)
    layout = Layout(tuple(arch.data_shape[1:]), arch.input_mode)
    rows = input_pairs(rows_data, None, layout, ntk)
    cross = input_pairs(a, b, layout, ntk)
    r, c = torch.nonzero(left[:, None] == right[None, :], as_tuple=True)
    dup = (r, c, left[r])
    return [rows, snap_duplicates(cross, rows, dup)], left, right, dup


def iter_layers(arch: Architecture, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, *, ntk: bool) -> Iterator[Step]:
    """The reference evaluation as a stream of :data:`Step`: ``(layer, self batch, pairs, derivative or None)``.

    The self batch holds one entry per distinct row (:func:`distinct_rows` gives each input's).

    Layers inside residual blocks and parallel branches are yielded too (before the op that merges them).
    Holding on to the yielded tensors is up to the caller (at most the current layer's are alive
    otherwise): the per-layer kernels of :mod:`ntkit.layerwise` come from here.
    """
    state, left, right, dup = _start(arch, a, b, ids_a, ids_b, ntk)
    yield from _walk(arch.ops, state, left, right, dup, ntk)


def evaluate_diagonal(arch: Architecture, a: Tensor, ids: Tensor, *, ntk: bool) -> tuple[Tensor, Tensor | None]:
    """``K(a_i, a_i)`` for every row (shapes (Na,)): the self batch alone, O(Na) work."""
    rows_data, left, _ = distinct_rows(a, a[:0], ids, ids[:0])
    layout = Layout(tuple(arch.data_shape[1:]), arch.input_mode)
    rows = input_pairs(rows_data, None, layout, ntk)
    empty = torch.zeros(0, dtype=torch.long, device=a.device)
    cross = input_pairs(rows_data[:0], rows_data[:0], layout, ntk)
    rows, _ = run_ops(arch.ops, rows, cross, empty, empty, (empty, empty, empty), ntk)
    return rows.nngp[left], None if rows.ntk is None else rows.ntk[left]


def reference_kernel(
    arch: Architecture, x1: Tensor, x2: Tensor | None = None, *, ntk: bool = True
) -> tuple[Tensor, Tensor | None]:
    """NNGP and NTK (or None) of ``x1`` against ``x2`` (default ``x1``) by the reference evaluator alone.

    No tiling, no fast path, no rescaling: the definition fast paths are tested against. Inputs of
    shape (N, *input_shape); identical rows are found by comparing them.
    """
    a = arch.prepare(x1)
    b = a if x2 is None else arch.prepare(x2)
    both = torch.cat([a, b]).reshape(a.shape[0] + b.shape[0], -1)
    _, ids = torch.unique(both, dim=0, return_inverse=True)
    nngp, out_ntk, *_ = evaluate(arch, a, b, ids[: a.shape[0]], ids[a.shape[0] :], ntk=ntk, symmetric=x2 is None)
    return nngp, out_ntk


def _mirror(t: Tensor) -> Tensor:
    upper = torch.triu(t, 1)
    return upper + upper.T + torch.diag_embed(torch.diagonal(t))


__all__ = [
    "Step", "distinct_rows", "evaluate", "evaluate_diagonal", "input_pairs", "iter_layers", "reference_kernel",
    "run_ops", "snap_duplicates",
]
