"""One block of a kernel matrix at a time: the unit of work of every evaluation of an architecture.

:class:`KernelTiles` is what :mod:`ntkit.compute` (tiled, on disk, on Dask) and
:mod:`ntkit.solve` (kernel operators, solvers) call. It prepares the rows once
(:meth:`KernelTiles.prepare`: the prelude, a power-of-two rescaling of rows whose norms overflow,
and the per-row quantities of the fast path) and then evaluates any block ``K(a, b)`` by

* the fused fully connected recursion of :mod:`ntkit.infinite.fused` (and its native loop) when
  the architecture is that pattern (:func:`ntkit.infinite.fused.match_fc`),
* the native spatial loop of :mod:`ntkit.infinite.conv_fast` for the convolutional prefix of a CNN
  (convolutions, ReLU-family activations, pooling, a global-pooling or flattening read-out) on a
  CPU, the vector tail on the reference evaluator (without pooling and strides, the pairs of a tile
  run several per vector: :mod:`ntkit.infinite.diag_fast`),
* the native token loop of :mod:`ntkit.infinite.tokens_fast` for the prefix of a transformer encoder on
  tokens (self-attention with linear scaling, per-token dense layers and layer norm, ReLU-family MLPs,
  residual sums, the mean over the tokens) on a CPU, the vector tail on the reference evaluator, or
* the reference evaluator (:mod:`ntkit.infinite.reference`) otherwise.

Both give identical pairs (equal row ids) their exact kernel, and both are exact on the diagonal.
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass

import torch

from ntkit.infinite import conv_fast, diag_fast, fused, reference, tokens_fast
from ntkit.infinite.conv_fast import SpatialProgram, match_spatial
from ntkit.infinite.fused import FCSpec, match_fc
from ntkit.infinite.ops.aggregate import check_adjacency
from ntkit.infinite.row_ids import row_ids
from ntkit.infinite.scaling import row_exponents, scale_rows, unscale
from ntkit.infinite.tokens_fast import TokenProgram, match_tokens
from ntkit.infinite.walk import Architecture

Tensor = torch.Tensor


@dataclass(frozen=True)
class Rows:
    """Inputs ready for tiles: the data after the prelude, rescaled, with per-row quantities.

    Attributes
    ----------
    data : Tensor of shape (N, *data_shape)
    exponents : int64 Tensor of shape (N,) or None
        Row ``i`` was divided by ``2^exponents[i]`` (None: not rescaled).
    variances : Tensor of shape (N,) or None
        Layer-1 variances of the fully connected fast path.
    adjacency : Tensor of shape (N, V, V) or None
        Each row's graph (:class:`ntkit.Graphs`), for the aggregation layers; None without graphs.
    """

    data: Tensor
    exponents: Tensor | None
    variances: Tensor | None
    adjacency: Tensor | None = None

    def __getitem__(self, index: slice | Tensor) -> Rows:
        return Rows(
            self.data[index],
            None if self.exponents is None else self.exponents[index],
            None if self.variances is None else self.variances[index],
            None if self.adjacency is None else self.adjacency[index],
        )

    def __len__(self) -> int:
        return int(self.data.shape[0])


@dataclass(frozen=True)
class PreparedPair:
    """Inputs validated and prepared once for every evaluation of one call (a kernel and its diagonals).

    Attributes
    ----------
    x1, x2 : Tensor
        The inputs (``x2`` None: the kernel of ``x1`` with itself).
    rows1, rows2 : Rows
        Prepared by :meth:`KernelTiles.prepare` (``rows2`` is ``rows1`` when ``x2`` is None).
    ids1, ids2 : int64 Tensor of shapes (N1,), (N2,)
        Equal ids (over ``x1`` and ``x2`` together) mean bitwise-identical rows.
    """

    x1: Tensor
    x2: Tensor | None
    rows1: Rows
    rows2: Rows
    ids1: Tensor
    ids2: Tensor

    def first(self) -> PreparedPair:
        """``x1`` alone (for its diagonal), with its ids of the pair."""
        return PreparedPair(self.x1, None, self.rows1, self.rows1, self.ids1, self.ids1)

    def second(self) -> PreparedPair:
        """``x2`` alone as the first input (for its diagonal), with its ids of the pair."""
        if self.x2 is None:
            return self
        return PreparedPair(self.x2, None, self.rows2, self.rows2, self.ids2, self.ids2)


#: :meth:`KernelTiles.of`: ``id(arch) -> (weak reference to arch, its tiles)``.
_shared: dict[int, tuple[weakref.ref[Architecture], KernelTiles]] = {}
_shared_lock = threading.Lock()


def _forget(
    key: int, ref: weakref.ref[Architecture], table: dict[int, tuple[weakref.ref[Architecture], KernelTiles]] = _shared,
    lock: threading.Lock = _shared_lock,
) -> None:
    """Drop the shared tiles of an architecture that is gone (unless its id already holds a newer one); the table
    is bound at definition, as module globals may be cleared at interpreter exit before the last callbacks run."""
    with lock:
        if key in table and table[key][0] is ref:
            del table[key]


class KernelTiles:
    """Blocks of the infinite-width kernels of an architecture.

    Parameters
    ----------
    arch : Architecture
        From :func:`ntkit.infinite.walk.describe_model`.
    native : bool or None
        Fast path only: use the compiled loop (None: when available).

    Attributes
    ----------
    spec : FCSpec or None
        The fully connected fast path's description, or None.
    program : SpatialProgram or None
        The convolutional fast path's compiled prefix, or None.
    token_program : TokenProgram or None
        The token fast path's compiled prefix (:func:`ntkit.infinite.tokens_fast.match_tokens`), or None.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import KernelTiles, describe_model
    >>> from ntkit.infinite.row_ids import row_ids
    >>> tiles = KernelTiles(describe_model(ntkit.nn.fc(3, depth=2, device="meta"), (3,)))
    >>> x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> rows, ids = tiles.prepare(x), row_ids(x)[0]
    >>> nngp, ntk = tiles.tile(rows[:2], rows, ids[:2], ids, ntk=True)  # the block K(x[:2], x)
    >>> tiles.path, ntk.shape, bool(torch.allclose(ntk, ntkit.fc_kernel(x, depth=2).ntk[:2]))
    ('fused', torch.Size([2, 4]), True)
    """

    def __init__(self, arch: Architecture, *, native: bool | None = None) -> None:
        self.arch = arch
        self.spec: FCSpec | None = match_fc(arch)
        self.program: SpatialProgram | None = None if self.spec is not None else match_spatial(arch)
        #: The program runs on the lane-parallel loop of :mod:`ntkit.infinite.diag_fast` (no pooling, stride 1).
        self.lanes = diag_fast.match_diag(self.program)
        self.token_program: TokenProgram | None = (
            match_tokens(arch) if self.spec is None and self.program is None else None)
        self.native = native

    @classmethod
    def of(cls, arch: Architecture) -> KernelTiles:
        """The :class:`KernelTiles` of ``arch`` (default ``native``), made once and shared while ``arch`` lives.

        The description cache (:mod:`ntkit.infinite.describe_cache`) returns the same :class:`Architecture` for
        an unchanged model, so repeated evaluations of one model skip matching the fast paths again.
        """
        key = id(arch)
        with _shared_lock:
            hit = _shared.get(key)
            if hit is not None and hit[0]() is arch:
                return hit[1]
        tiles = cls(arch)
        with _shared_lock:
            _shared[key] = (weakref.ref(arch, functools.partial(_forget, key)), tiles)
        return tiles

    def _spatial(self, x: Tensor) -> bool:
        return self.program is not None and self.native is not False and conv_fast.usable(x)

    def _tokens(self, x: Tensor) -> bool:
        return self.token_program is not None and self.native is not False and tokens_fast.usable(x)

    def path_for(self, x: Tensor) -> str:
        """``"fused"`` (fully connected), ``"spatial"`` (convolutional prefix, native), ``"tokens"`` (token
        prefix with attention, native) or ``"reference"``."""
        if self.spec is not None:
            return "fused"
        if self._spatial(x):
            return "spatial"
        return "tokens" if self._tokens(x) else "reference"

    @property
    def path(self) -> str:
        """The path of float64 CPU inputs (see :meth:`path_for`)."""
        return self.path_for(torch.zeros(1, dtype=torch.float64))

    def pair_entries(self, x: Tensor) -> int:
        """Covariance entries one pair holds in a tile (the memory a tile of pairs costs per pair).

        The fast paths hold only the pair's outputs (their per-pair work lives in a fixed workspace).
        """
        return 1 if self.path_for(x) != "reference" else self.arch.pair_entries

    def workspace_bytes(self, x: Tensor) -> int:
        """Memory of one thread of the native spatial or token path (its per-pair workspace), else 0."""
        path = self.path_for(x)
        if path == "tokens":
            assert self.token_program is not None
            return tokens_fast.workspace_entries(self.token_program, x.element_size()) * x.element_size()
        if path != "spatial":
            return 0
        assert self.program is not None
        return conv_fast.workspace_entries(self.program) * x.element_size()

    def input_bytes(self, x: Tensor) -> int:
        """Memory a tile holds per distinct input like ``x`` beyond its pairs (the token path's per-input stored
        attention matrices, layer-norm factors and start factors), else 0."""
        if self.path_for(x) != "tokens":
            return 0
        assert self.token_program is not None
        return tokens_fast.input_entries(self.token_program, x.element_size()) * x.element_size()

    def prepare(self, x: Tensor, adjacency: Tensor | None = None) -> Rows:
        """The rows of ``x`` (shape (N, *input_shape), already validated) ready for :meth:`tile`; ``adjacency``
        (N, V, V): their graphs (:class:`ntkit.Graphs`), required exactly by a model with an aggregation layer."""
        check_adjacency(self.arch.ops, adjacency)
        data = self.arch.prepare(x)
        exps = row_exponents(self.arch, data)
        data = scale_rows(data, exps)
        var = fused.input_variances(data, self.spec) if self.spec is not None else None
        return Rows(data, exps, var, adjacency)

    def prepare_pair(
        self, x1: Tensor, x2: Tensor | None = None, adjacency: tuple[Tensor | None, Tensor | None] = (None, None)
    ) -> PreparedPair:
        """Prepare ``x1`` (and ``x2``: None for the kernel of ``x1`` with itself) and number their distinct rows.

        ``adjacency``: the graphs of ``x1`` and ``x2`` (see :meth:`prepare`); rows are then identical when both
        their features and their graphs are. The ids are the one duplicate-row identity of an evaluation:
        every tile and diagonal of it uses them.
        """
        a1, a2 = adjacency
        rows1 = self.prepare(x1) if a1 is None else self.prepare(x1, a1)
        key1 = x1 if a1 is None else torch.cat([x1.flatten(1), a1.flatten(1)], 1)
        if x2 is None:
            ids = row_ids(key1)[0]
            return PreparedPair(x1, None, rows1, rows1, ids, ids)
        key2 = x2 if a2 is None else torch.cat([x2.flatten(1), a2.flatten(1)], 1)
        ids1, ids2 = row_ids(key1, key2)
        return PreparedPair(x1, x2, rows1, self.prepare(x2) if a2 is None else self.prepare(x2, a2), ids1, ids2)

    def tile(
        self, a: Rows, b: Rows, ids_a: Tensor, ids_b: Tensor, *, ntk: bool, symmetric: bool = False,
        out: tuple[Tensor, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """NNGP and NTK (None unless ``ntk``) of the block ``K(a, b)``, shape (len(a), len(b)).

        ``ids_a`` / ``ids_b`` mark identical rows (equal ids over the whole data). ``symmetric``:
        ``b`` is ``a`` (a diagonal block): exactly symmetric, and only its upper triangle is
        guaranteed on the fast path until mirrored (the result here is mirrored). ``out``: where to
        write (fast path; else copied into).
        """
        if self.spec is not None:
            assert a.variances is not None and b.variances is not None
            nngp, th = fused.fc_tile(a.data, b.data, self.spec, ntk=ntk, ids=(ids_a, ids_b),
                                     var=(a.variances, b.variances), out=out, upper=symmetric, native=self.native)
            if symmetric:
                nngp = _mirror_upper(nngp)
                th = None if th is None else _mirror_upper(th)
        else:
            if self._spatial(a.data):
                assert self.program is not None
                evaluate = diag_fast.evaluate_diag if self.lanes and diag_fast.usable(a.data) else \
                    conv_fast.evaluate_spatial
                nngp, th, *_ = evaluate(self.arch, self.program, a.data, b.data, ids_a, ids_b, ntk=ntk,
                                        symmetric=symmetric)
            elif self._tokens(a.data):
                assert self.token_program is not None
                nngp, th, *_ = tokens_fast.evaluate_tokens(self.arch, self.token_program, a.data, b.data, ids_a,
                                                           ids_b, ntk=ntk, symmetric=symmetric)
            else:
                graphs = None if a.adjacency is None or b.adjacency is None else (a.adjacency, b.adjacency)
                nngp, th, *_ = reference.evaluate(self.arch, a.data, b.data, ids_a, ids_b, ntk=ntk,
                                                  symmetric=symmetric, adjacency=graphs)
            if out is not None:
                out[0].copy_(nngp)
                nngp = out[0]
                if th is not None and out[1] is not None:
                    out[1].copy_(th)
                    th = out[1]
        deg = self.arch.degree or 0
        if a.exponents is not None or b.exponents is not None:
            nngp = unscale(nngp, deg, a.exponents, b.exponents)
            th = None if th is None else unscale(th, deg, a.exponents, b.exponents)
        return nngp, th

    def diag(self, a: Rows, ids: Tensor, *, ntk: bool) -> tuple[Tensor, Tensor | None]:
        """``K(a_i, a_i)`` (NNGP and NTK or None), shape (len(a),), in O(len(a)) work."""
        if self.spec is not None:
            nngp, th = fused.fc_diag(a.data, self.spec, ntk=ntk, native=self.native)
        elif self._spatial(a.data):
            assert self.program is not None
            nngp, th = conv_fast.evaluate_spatial_diagonal(self.program, a.data, ids, ntk=ntk)
        elif self._tokens(a.data):
            assert self.token_program is not None
            nngp, th = tokens_fast.evaluate_tokens_diagonal(self.token_program, a.data, ids, ntk=ntk)
        else:
            nngp, th = reference.evaluate_diagonal(self.arch, a.data, ids, ntk=ntk, adjacency=a.adjacency)
        if a.exponents is not None:
            deg = self.arch.degree or 0
            nngp = unscale(nngp, deg, a.exponents, None)
            th = None if th is None else unscale(th, deg, a.exponents, None)
        return nngp, th


def _mirror_upper(t: Tensor) -> Tensor:
    """Copy the upper triangle of the square ``t`` onto its lower triangle, in place."""
    idx = torch.tril_indices(t.shape[0], t.shape[1], -1, device=t.device)
    t[idx[0], idx[1]] = t[idx[1], idx[0]]
    return t


__all__ = ["KernelTiles", "PreparedPair", "Rows"]
