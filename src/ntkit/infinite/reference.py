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
variances. For a symmetric block (``b`` is ``a``) the layers that take a list of pairs run on its
upper triangle alone, about half the work (:func:`evaluate`). Step 3 writes in place into a layer's
fresh output (``O(duplicates)`` work), and copies only a kernel that shares memory with the layer's
input or its branches' outputs (an op may return a view).

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


#: The pairs of identical inputs of a batch: their index (``(rows, columns)`` of a block of pairs, ``(positions,)``
#: of a list of pairs), then the self batch's row of each.
Duplicates = tuple[Tensor, ...]


def snap_duplicates(cross: Pairs, rows: Pairs, dup: Duplicates, keep: Sequence[Tensor | None] | None = None) -> Pairs:
    """Give identical pairs the values of the self batch (see the module notes; ``dup``: :data:`Duplicates`).

    ``keep=None``: new tensors. Else ``keep`` lists the tensors that must stay unchanged (the layer's inputs,
    its branches' outputs): a kernel that shares memory with none of them, and has no overlapping entries,
    is the layer's own fresh result and is written in place (``O(len(dup))`` work instead of a copy).
    """
    *index, u = dup
    if u.numel() == 0:
        return cross
    nngp = _snap(cross.nngp, tuple(index), rows.nngp[u], keep)
    ntk = cross.ntk
    if ntk is not None and rows.ntk is not None:
        ntk = _snap(ntk, tuple(index), rows.ntk[u], keep)
    return cross.replace(nngp=nngp, ntk=ntk)


def _snap(t: Tensor, index: tuple[Tensor, ...], values: Tensor, keep: Sequence[Tensor | None] | None) -> Tensor:
    """``t`` with ``t[index] = values``: in place where ``t`` is owned (see :func:`snap_duplicates`), else a copy."""
    if keep is None or not _owned(t, keep):
        return t.index_put(index, values)
    return t.index_put_(index, values)


def _owned(t: Tensor, keep: Sequence[Tensor | None]) -> bool:
    """Whether ``t`` has no overlapping entries (no broadcast axis) and shares no storage with a tensor of ``keep``."""
    if t.requires_grad:
        return False
    dims = sorted((st, n) for st, n in zip(t.stride(), t.shape, strict=True) if n > 1)
    span = 1
    for st, n in dims:  # each axis steps over the whole block of the faster ones
        if st < span:
            return False
        span = st * n
    ptr = t.untyped_storage().data_ptr()
    return all(k is None or k.untyped_storage().data_ptr() != ptr for k in keep)


#: One step of :func:`iter_layers`: the layer, the self batch and the pairs' kernels after it, and for
#: an activation computed with the NTK the pairs' derivative kernel ``E[sigma'(u) sigma'(v)]`` (else None).
Step = tuple[KernelOp, Pairs, Pairs, Tensor | None]


def _walk(
    ops: Sequence[KernelOp], state: list[Pairs], left: Tensor, right: Tensor, dup: Duplicates, ntk: bool,
) -> Iterator[Step]:
    """Apply ``ops`` to ``state = [rows, cross]`` in place, yielding after every layer (inner branches inside:
    each branch runs from the op's input state, then the op merges the branches' output states)."""
    for op in ops:
        rows, cross = state
        dot: Tensor | None = None
        keep = [cross.nngp, cross.ntk]  # the layer's input (shared with other branches): never snapped in place
        if op.branches():
            outs = []
            for branch in op.branches():
                sub = [rows, cross]
                yield from _walk(branch, sub, left, right, dup, ntk)
                outs.append(sub)
                keep += [sub[1].nngp, sub[1].ntk]  # yielded: the caller may hold them
            rows, cross = op.merge([o[0] for o in outs], ntk), op.merge([o[1] for o in outs], ntk)
        else:
            new_rows = op.apply(rows, Context(rows), ntk)
            cross, dot = op.apply_dual(cross, Context(rows, left, right), ntk)
            rows = new_rows
        cross = snap_duplicates(cross, rows, dup, [*keep, dot])
        state[:] = [rows, cross]
        yield op, rows, cross, dot


def run_ops(
    ops: Sequence[KernelOp], rows: Pairs, cross: Pairs, left: Tensor, right: Tensor,
    dup: Duplicates, ntk: bool,
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
    adjacency: tuple[Tensor, Tensor] | None = None,
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
        ``b`` is ``a``: the result is made exactly symmetric (its upper triangle mirrored); the leading layers
        that take a list of pairs (:meth:`~ntkit.infinite.ops.KernelOp.pairs_as_list`) run on the pairs
        ``i <= j`` alone (:func:`_run_upper`).
    adjacency : (Tensor of shape (Na, V, V), Tensor of shape (Nb, V, V)), optional
        The graphs of the rows of ``a`` and ``b`` (:class:`ntkit.Graphs`; the ids then number equal
        ``(x, adjacency)`` pairs).

    Returns
    -------
    (nngp, ntk, self_nngp, self_ntk, left, right)
        ``nngp`` / ``ntk`` of shape (Na, Nb); the kernels of each distinct input with itself
        (shape (U,)) and the index of each row of ``a`` / ``b`` among them.
    """
    state, left, right, dup = _start(arch, a, b, ids_a, ids_b, ntk, adjacency)
    (rows, cross), ops = state, arch.ops
    lead = 0
    while symmetric and lead < len(ops) and ops[lead].pairs_as_list():
        lead += 1
    if lead:  # the layers that take a list of pairs run on the upper triangle alone
        rows, cross = _run_upper(ops[:lead], rows, cross, left, right, ntk)
    rows, cross = run_ops(ops[lead:], rows, cross, left, right, dup, ntk)
    nngp, out_ntk = cross.nngp, cross.ntk
    if symmetric:
        nngp = _mirror(nngp)
        out_ntk = None if out_ntk is None else _mirror(out_ntk)
    return nngp, out_ntk, rows.nngp, rows.ntk, left, right


def _run_upper(
    ops: Sequence[KernelOp], rows: Pairs, cross: Pairs, left: Tensor, right: Tensor, ntk: bool
) -> tuple[Pairs, Pairs]:
    """:func:`run_ops` on the pairs ``i <= j`` of a symmetric block ``cross`` (N, N, *pair) as a list of pairs
    (each op :meth:`~ntkit.infinite.ops.KernelOp.pairs_as_list`; about half the work), then the block again:
    ``K(x_j, x_i)`` is ``K(x_i, x_j)`` with the two pixel halves of the pair swapped."""
    n = cross.nngp.shape[0]
    i, j = torch.triu_indices(n, n, device=cross.nngp.device)
    li, rj = left[i], right[j]
    same = torch.nonzero(li == rj).flatten()
    pairs = cross.replace(nngp=cross.nngp[i, j], ntk=None if cross.ntk is None else cross.ntk[i, j], batch_ndim=1)
    rows, pairs = run_ops(ops, rows, pairs, li, rj, (same, li[same]), ntk)
    lay = pairs.layout
    return rows, pairs.replace(nngp=_upper_block(pairs.nngp, i, j, n, lay), batch_ndim=2,
                               ntk=None if pairs.ntk is None else _upper_block(pairs.ntk, i, j, n, lay))


def _upper_block(t: Tensor, i: Tensor, j: Tensor, n: int, layout: Layout) -> Tensor:
    """The (n, n, *pair) block of the list ``t`` of its pairs ``(i, j)``, ``i <= j``, and their mirror images."""
    out = t.new_empty((n, n, *t.shape[1:]))
    d = len(layout.spatial) if layout.mode == "full" else 0
    out[j, i] = t.permute(0, *range(1 + d, 1 + 2 * d), *range(1, 1 + d)) if d else t
    out[i, j] = t  # after the mirror images: the diagonal pairs keep their own (snapped) values
    return out


def _start(
    arch: Architecture, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, ntk: bool,
    adjacency: tuple[Tensor, Tensor] | None = None,
) -> tuple[list[Pairs], Tensor, Tensor, Duplicates]:
    """Input covariances ``[rows, cross]``, the row indices and the duplicate pairs."""
    rows_data, left, right = distinct_rows(a, b, ids_a, ids_b)
    layout = Layout(tuple(arch.data_shape[1:]), arch.input_mode)
    rows = _with_graphs(input_pairs(rows_data, None, layout, ntk), left, right, adjacency)
    cross = input_pairs(a, b, layout, ntk)
    r, c = torch.nonzero(left[:, None] == right[None, :], as_tuple=True)
    dup = (r, c, left[r])
    return [rows, snap_duplicates(cross, rows, dup, (a, b))], left, right, dup


def _with_graphs(rows: Pairs, left: Tensor, right: Tensor, adjacency: tuple[Tensor, Tensor] | None) -> Pairs:
    """The self batch with the graph of each distinct row (rows ``left`` of ``a``, ``right`` of ``b``)."""
    if adjacency is None:
        return rows
    a, b = adjacency
    graphs = a.new_empty((rows.nngp.shape[0], *a.shape[1:]))
    graphs[left], graphs[right] = a, b  # equal ids: equal graphs
    return rows.replace(adjacency=graphs)


def iter_layers(arch: Architecture, a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, *, ntk: bool) -> Iterator[Step]:
    """The reference evaluation as a stream of :data:`Step`: ``(layer, self batch, pairs, derivative or None)``.

    The self batch holds one entry per distinct row (:func:`distinct_rows` gives each input's).

    Layers inside residual blocks and parallel branches are yielded too (before the op that merges them).
    Holding on to the yielded tensors is up to the caller (at most the current layer's are alive
    otherwise): the per-layer kernels of :mod:`ntkit.layerwise` come from here.
    """
    state, left, right, dup = _start(arch, a, b, ids_a, ids_b, ntk)
    yield from _walk(arch.ops, state, left, right, dup, ntk)


def evaluate_diagonal(
    arch: Architecture, a: Tensor, ids: Tensor, *, ntk: bool, adjacency: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``K(a_i, a_i)`` for every row (shapes (Na,)): the self batch alone, O(Na) work (``adjacency``: the rows'
    graphs, (Na, V, V), as in :func:`evaluate`)."""
    rows_data, left, _ = distinct_rows(a, a[:0], ids, ids[:0])
    layout = Layout(tuple(arch.data_shape[1:]), arch.input_mode)
    rows = _with_graphs(input_pairs(rows_data, None, layout, ntk), left, left[:0],
                        None if adjacency is None else (adjacency, adjacency[:0]))
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
