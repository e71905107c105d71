"""A kernel matrix as an operator: products with ``K(x1, x2)`` without storing it.

The NTK / NNGP matrix of ``N`` points needs ``8 N^2`` bytes in float64 (3.2 GB at N = 20k, 8 TB at
N = 1M). :class:`KernelOperator` multiplies it by a vector or a block of vectors by recomputing it
tile by tile (``O(tile_rows * tile_cols)`` memory), as GPyTorch's lazy kernels (Gardner et al.
2018) and Falkon (Meanti et al. 2020) do. Tiles come from a pluggable ``tile_fn(a, b) -> K(a, b)``;
the default, :class:`ModelTiles`, evaluates the kernel of a model (any architecture
:func:`ntkit.infinite_kernel` understands) with the per-row work (the model's prelude, the fast
path's layer-1 variances, a hash that finds identical rows) done once per row. This module does no
kernel maths: it calls :mod:`ntkit.infinite`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_choice, check_dtype, check_int, parse_memory_budget, renamed_keyword
from ntkit.activations import DualActivation
from ntkit.compute import architecture
from ntkit.compute.sizing import fit_tile_shape
from ntkit.compute.tiling import DEFAULT_BUDGET
from ntkit.infinite.row_ids import row_ids
from ntkit.infinite.tiles import KernelTiles, Rows
from ntkit.infinite.walk import fc_model

Tensor = torch.Tensor
TileFn = Callable[[Tensor, Tensor], Tensor]


def _cast_stats(stats: Any, dtype: torch.dtype) -> Any:
    """Row statistics (a tensor or a tuple of tensors, rows first) with floating parts in ``dtype``."""
    if isinstance(stats, tuple):
        return tuple(_cast_stats(s, dtype) for s in stats)
    return stats.to(dtype) if stats.is_floating_point() else stats


def _slice_stats(stats: Any, r0: int | slice | Tensor, r1: int | None = None) -> Any:
    """Rows ``r0:r1`` (or the rows indexed by ``r0``) of row statistics (a tensor or a tuple of tensors)."""
    idx = slice(r0, r1) if isinstance(r0, int) else r0
    if isinstance(stats, tuple):
        return tuple(s[idx] for s in stats)
    return stats[idx]


_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64 (splitmix64 finaliser)
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _row_hashes(x: Tensor) -> Tensor:
    """A 64-bit hash of each row's float64 bits, shape (N,): identical rows hash identically.

    Exact integer arithmetic (wrapping), so the value depends only on the row's contents, never on
    its position or on the batch. Different rows may collide (rarely); :meth:`ModelTiles.tile` checks.
    """
    flat = x.reshape(x.shape[0], -1)
    bits = (flat.to(torch.float64) + 0.0).contiguous().view(torch.int64)  # + 0.0 maps -0.0 to 0.0
    g = torch.Generator().manual_seed(0x5EED)
    mult = torch.randint(-(2**62), 2**62, (flat.shape[1],), generator=g, dtype=torch.int64) * 2 + 1
    h = torch.empty(x.shape[0], dtype=torch.int64)
    for r0 in range(0, x.shape[0], 65536):  # row blocks: int64 temporaries stay small
        b = bits[r0 : r0 + 65536]
        b = b ^ (b >> 31)
        b = b * _MIX1
        b = b ^ (b >> 29)
        h[r0 : r0 + 65536] = (b * mult.to(b.device)).sum(1).cpu()
    return h


class ModelTiles:
    """Tiles of the infinite-width NNGP or NTK of a model: the default ``tile_fn`` of :class:`KernelOperator`.

    ``tiles(a, b)`` equals ``ntkit.infinite_kernel(model, a, b, which=which)`` (to rounding): the same
    :class:`~ntkit.infinite.tiles.KernelTiles` (the fused fully connected path where it applies,
    the reference evaluator otherwise). Per-row statistics (:meth:`row_stats`: the prepared rows and
    a 64-bit hash of each input) are computed once per row; a tile gives identical rows of ``a`` and
    ``b`` (equal hashes, confirmed bitwise) their exact kernel, as :func:`ntkit.compute_kernel` does
    with its global row ids.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The architecture (see :func:`ntkit.infinite_kernel`), read when the first rows arrive.
    depth, activation, b_std, w_std
        Instead of ``model``: the fully connected network of :func:`ntkit.nn.fc`.
    which : {"ntk", "nngp"}
    beta : float, optional
        Deprecated spelling of ``b_std``.

    Raises
    ------
    ValueError
        Both ``model`` and ``depth``, an unknown ``which``; when the first rows arrive, a model without
        an infinite-width kernel.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> tiles = ModelTiles(ntkit.nn.fc(3, depth=2, device="meta"))
    >>> bool(torch.allclose(tiles(x, x), ntkit.fc_kernel(x, depth=2).ntk))
    True
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        depth: int | None = None,
        activation: str | DualActivation | Any = "relu",
        b_std: float = 0.0,
        w_std: float = 1.0,
        which: str = "ntk",
        beta: float | None = None,
    ) -> None:
        b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
        self.which = check_choice(which, "which", ("ntk", "nngp"))
        if model is None:  # the shortcut: validate (and describe) it now
            model = fc_model(1, depth=1 if depth is None else depth, activation=activation, b_std=b_std, w_std=w_std)
            self._shortcut: dict[str, Any] | None = {"depth": 1 if depth is None else depth, "activation": activation,
                                                     "b_std": b_std, "w_std": w_std}
        elif depth is not None:
            raise ValueError("model and depth: expected one of them, got both")
        else:
            self._shortcut = None
        self.model = model
        self._tiles: dict[tuple[int, ...], KernelTiles] = {}

    def tiles_for(self, shape: tuple[int, ...]) -> KernelTiles:
        """The :class:`KernelTiles` of inputs of shape ``shape`` (one example)."""
        if shape not in self._tiles:
            arch = architecture(None if self._shortcut else self.model, shape, **(self._shortcut or {}))
            if self.which == "ntk" and not arch.has_ntk:
                raise ValueError("which: the ntk of this model is undefined (an activation has no derivative map); "
                                 "use 'nngp'")
            self._tiles[shape] = KernelTiles(arch)
        return self._tiles[shape]

    def __repr__(self) -> str:
        what = type(self.model).__name__
        if self._shortcut:
            what = ", ".join(f"{k}={v!r}" for k, v in self._shortcut.items())
        return f"{type(self).__name__}({what}, which={self.which!r})"

    def row_stats(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(data, exponents, variances, hashes)``: the rows prepared for tiles, shape (N, ...) each.

        ``exponents`` (int64; zeros when no row is rescaled) and ``variances`` (the fast path's
        layer-1 variances; zeros on the reference path) keep the tuple all-tensor.
        """
        tiles = self.tiles_for(tuple(x.shape[1:]))
        rows = tiles.prepare(x)
        n = x.shape[0]
        exps = rows.exponents if rows.exponents is not None else torch.zeros(n, dtype=torch.int64, device=x.device)
        var = rows.variances if rows.variances is not None else torch.zeros(n, dtype=x.dtype, device=x.device)
        return rows.data, exps, var, _row_hashes(x).to(x.device)

    def _rows(self, stats: tuple[Tensor, ...], tiles: KernelTiles) -> Rows:
        data, exps, var, _ = stats
        return Rows(data, exps if bool(exps.any()) else None, var if tiles.spec is not None else None)

    def diag(self, x: Tensor) -> Tensor:
        """The diagonal ``K(x_i, x_i)`` of shape (N,) (no N x N work)."""
        tiles = self.tiles_for(tuple(x.shape[1:]))
        stats = self.row_stats(x)
        nngp, ntk = tiles.diag(self._rows(stats, tiles), stats[3], ntk=self.which == "ntk")
        out = ntk if self.which == "ntk" else nngp
        assert out is not None
        return out

    def tile(self, a: Tensor, b: Tensor, stats_a: tuple[Tensor, ...], stats_b: tuple[Tensor, ...]) -> Tensor:
        """``K(a, b)`` of shape (len(a), len(b)) from precomputed :meth:`row_stats`."""
        tiles = self.tiles_for(tuple(a.shape[1:]))
        ha, hb = stats_a[3], stats_b[3]
        ids = (ha, hb)
        hit = torch.isin(ha, hb)
        if bool(hit.any()):
            # confirm the hash matches bitwise; on any collision fall back to exact ids for this tile
            ra, cb = torch.nonzero(ha[:, None] == hb[None, :], as_tuple=True)
            if not bool((a[ra] == b[cb]).all()):
                ids = row_ids(a, b)
        nngp, ntk = tiles.tile(self._rows(stats_a, tiles), self._rows(stats_b, tiles), ids[0], ids[1],
                               ntk=self.which == "ntk")
        out = ntk if self.which == "ntk" else nngp
        assert out is not None
        return out

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """``K(a, b)`` (computes the row statistics of both blocks)."""
        return self.tile(a, b, self.row_stats(a), self.row_stats(b))


class FusedTiles(ModelTiles):
    """:class:`ModelTiles` of the fully connected shortcut (``depth``, ``activation``, ``b_std``, ``w_std``).

    Parameters
    ----------
    depth : int
        Hidden layers.
    activation : str, DualActivation or callable
    b_std, w_std : float
        Bias and weight scales.
    which : {"ntk", "nngp"}
    beta : float, optional
        Deprecated spelling of ``b_std``.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(FusedTiles(depth=2)(x, x), ntkit.fc_kernel(x, depth=2).ntk))
    True
    """

    def __init__(self, *, depth: int, activation: str | DualActivation | Any = "relu", b_std: float = 0.0,
                 w_std: float = 1.0, which: str = "ntk", beta: float | None = None) -> None:
        b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
        super().__init__(depth=depth, activation=activation, b_std=b_std, w_std=w_std, which=which)


#: The former name of :class:`FusedTiles` (one implementation serves both).
FCTiles = FusedTiles


class KernelOperator:
    """The kernel matrix ``K(x1, x2)`` of shape (N1, N2) as an operator (never stored).

    ``op @ v`` computes ``K v`` for ``v`` of shape (N2,) or (N2, m) tile by tile: a tile of
    ``tile_rows x tile_cols`` entries is evaluated in ``tile_dtype`` and its product with ``v``
    accumulated in ``dtype`` (float64 by default). With ``x2`` omitted the operator is symmetric and a
    product evaluates only the tiles on and above the diagonal (half the kernel work).

    Parameters
    ----------
    x1 : array-like of shape (N1, *input_shape)
    x2 : array-like of shape (N2, *input_shape), optional
        Defaults to ``x1`` (symmetric operator).
    model : torch.nn.Module, optional
        The architecture whose kernel this is (see :func:`ntkit.infinite_kernel`): tiles come from
        :class:`ModelTiles` of it.
    tile_fn : callable ``(a, b) -> Tensor of shape (len(a), len(b))``, optional
        Any kernel tile function instead (for instance :func:`ntkit.kernel_tile_fn`). Objects with
        ``row_stats`` / ``tile`` / ``diag`` methods (as :class:`ModelTiles`) get the per-row
        precomputation and the cheap diagonal.
    depth, activation, b_std, w_std
        Without ``model`` and ``tile_fn``: the fully connected shortcut (:func:`ntkit.nn.fc`; ``depth``
        1 by default).
    which : {"ntk", "nngp"}
    dtype : torch.dtype
        Accumulation and result dtype (float64 reference).
    tile_dtype : torch.dtype, optional
        Dtype the tiles are evaluated in (``torch.float32`` roughly doubles the speed; the
        relative error of a product is then ~1e-6). Defaults to ``dtype``.
    tile_rows, tile_cols : int
        Largest tile shape; memory is ``O(tile_rows * tile_cols)`` (a few temporaries of that size).
        With a model whose pairs cost more than one entry (a convolutional network on the
        reference evaluator: up to pixels squared) the tiles shrink until they fit ``memory_budget``
        (:attr:`tile_shape`), by the rule of :func:`ntkit.compute.compute_kernel`.
    progress : bool
        Report products that take more than a second (stderr).
    memory_budget : int or str
        Working memory of one tile of a model's kernel in bytes (``"512M"`` accepted; default
        :data:`ntkit.compute.tiling.DEFAULT_BUDGET`, 256 MiB).
    beta : float, optional
        Deprecated spelling of ``b_std``.

    Attributes
    ----------
    budget : int
        ``memory_budget`` in bytes (may be set: ``"512M"`` accepted).
    tile_shape : (int, int)
        The tile shape products use (``(tile_rows, tile_cols)`` unless shrunk to the budget).

    Raises
    ------
    TypeError
        ``tile_fn`` is not callable.
    ValueError
        Both ``model`` and ``tile_fn``, inputs of different shapes, NaN / inf inputs, a model without an
        infinite-width kernel (when the first tile is evaluated).

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.solve import KernelOperator
    >>> x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> op = KernelOperator(x, depth=2, tile_rows=16, tile_cols=16)
    >>> k = ntkit.fc_kernel(x, depth=2).ntk
    >>> v = torch.ones(50, dtype=torch.float64)
    >>> bool(torch.allclose(op @ v, k @ v))
    True
    """

    def __init__(
        self,
        x1: Any,
        x2: Any | None = None,
        *,
        model: nn.Module | None = None,
        tile_fn: TileFn | None = None,
        depth: int | None = None,
        activation: str | DualActivation | Any = "relu",
        b_std: float = 0.0,
        w_std: float = 1.0,
        which: str = "ntk",
        dtype: torch.dtype = torch.float64,
        tile_dtype: torch.dtype | None = None,
        tile_rows: int = 1024,
        tile_cols: int = 2048,
        progress: bool = False,
        memory_budget: int | str = DEFAULT_BUDGET,
        beta: float | None = None,
    ) -> None:
        b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
        self.dtype = check_dtype(dtype)
        self.tile_dtype = check_dtype(tile_dtype) if tile_dtype is not None else self.dtype
        self.x1 = as_tensor(x1, "x1", dtype=self.dtype, ndim=None)
        self.symmetric = x2 is None
        self.x2 = self.x1 if x2 is None else as_tensor(x2, "x2", dtype=self.dtype, device=self.x1.device, ndim=None)
        if self.x1.shape[1:] != self.x2.shape[1:]:
            raise ValueError(
                f"x1 and x2: expected the same feature shape, got {tuple(self.x1.shape[1:])} and "
                f"{tuple(self.x2.shape[1:])}"
            )
        if tile_fn is None:
            if model is not None:
                tile_fn = ModelTiles(model, which=which)
            else:
                tile_fn = ModelTiles(depth=depth, activation=activation, b_std=b_std, w_std=w_std, which=which)
        elif model is not None:
            raise ValueError("model and tile_fn: expected one of them, got both")
        elif not callable(tile_fn):
            raise TypeError(f"tile_fn: expected a callable (a, b) -> Tensor, got {type(tile_fn).__name__}")
        self.tile_fn = tile_fn
        self.tile_rows = check_int(tile_rows, "tile_rows", minimum=1)
        self.tile_cols = check_int(tile_cols, "tile_cols", minimum=1)
        self.progress = bool(progress)
        self._budget = parse_memory_budget(memory_budget)
        self._t1 = self.x1.to(self.tile_dtype)
        self._t2 = self._t1 if self.symmetric else self.x2.to(self.tile_dtype)
        self._stats1: Any = None
        self._stats2: Any = None
        if hasattr(tile_fn, "row_stats") and hasattr(tile_fn, "tile"):
            # per-row statistics in float64, floating ones cast to the tile dtype
            self._stats1 = _cast_stats(tile_fn.row_stats(self.x1), self.tile_dtype)
            self._stats2 = self._stats1 if self.symmetric else _cast_stats(tile_fn.row_stats(self.x2), self.tile_dtype)

    @property
    def budget(self) -> int:
        """Working memory of one tile of a model's kernel, in bytes."""
        return self._budget

    @budget.setter
    def budget(self, value: int | str) -> None:
        self._budget = parse_memory_budget(value)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """The tiles' ``(rows, cols)``: ``(tile_rows, tile_cols)``, for a model shrunk until a tile fits the budget."""
        if not isinstance(self.tile_fn, ModelTiles):
            return self.tile_rows, self.tile_cols
        tiles = self.tile_fn.tiles_for(tuple(self._t1.shape[1:]))
        return fit_tile_shape(tiles, self._t1, self.tile_rows, self.tile_cols, budget=self._budget,
                              threads=max(1, torch.get_num_threads()))

    @property
    def shape(self) -> tuple[int, int]:
        """``(N1, N2)``."""
        return (int(self.x1.shape[0]), int(self.x2.shape[0]))

    def _tile(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        a, b = self._t1[r0:r1], self._t2[c0:c1]
        if self._stats1 is not None and self._stats2 is not None:
            sa, sb = _slice_stats(self._stats1, r0, r1), _slice_stats(self._stats2, c0, c1)
            return self.tile_fn.tile(a, b, sa, sb)  # type: ignore[attr-defined]
        return self.tile_fn(a, b)

    def block(self, rows: Tensor | slice | None = None, cols: Tensor | slice | None = None) -> Tensor:
        """The dense sub-matrix ``K[rows][:, cols]`` in ``dtype`` (index tensors or slices; None = all).

        Meant for preconditioners and small problems: it is stored, of shape (len(rows), len(cols)).
        """
        a = self.x1 if rows is None else self.x1[rows]
        b = self.x2 if cols is None else self.x2[cols]
        a, b = a.to(self.dtype), b.to(self.dtype)
        fn = self.tile_fn
        fused = self._stats1 is not None and self._stats2 is not None
        sa = sb = None
        if fused:
            # the cached row statistics serve when they are in the block's dtype; else recomputed
            same = self.tile_dtype == self.dtype
            whole = slice(None)
            sa = _slice_stats(self._stats1, rows if rows is not None else whole) if same else fn.row_stats(a)  # type: ignore[attr-defined]
            sb = _slice_stats(self._stats2, cols if cols is not None else whole) if same else fn.row_stats(b)  # type: ignore[attr-defined]
        out = torch.empty(a.shape[0], b.shape[0], dtype=self.dtype, device=a.device)
        tile_rows, tile_cols = self.tile_shape
        # filled tile by tile: temporaries stay O(tile_rows * tile_cols)
        for r0 in range(0, a.shape[0], tile_rows):
            r1 = min(r0 + tile_rows, a.shape[0])
            for c0 in range(0, b.shape[0], tile_cols):
                c1 = min(c0 + tile_cols, b.shape[0])
                if sa is not None and sb is not None:
                    ta, tb = _slice_stats(sa, r0, r1), _slice_stats(sb, c0, c1)
                    t = fn.tile(a[r0:r1], b[c0:c1], ta, tb)  # type: ignore[attr-defined]
                else:
                    t = fn(a[r0:r1], b[c0:c1])
                out[r0:r1, c0:c1] = t
        return out

    def dense(self) -> Tensor:
        """The full matrix of shape (N1, N2) (only for small problems and tests)."""
        return self.block()

    def diag(self) -> Tensor:
        """The diagonal ``K(x_i, x_i)`` of shape (N,) of a symmetric operator, in O(N) kernel work."""
        if not self.symmetric:
            raise ValueError("diag: expected a symmetric operator (x2 omitted), got distinct x1 and x2")
        fn = self.tile_fn
        if hasattr(fn, "diag"):
            return fn.diag(self.x1).to(self.dtype)
        out = torch.empty(self.shape[0], dtype=self.dtype, device=self.x1.device)
        step = max(1, min(self.tile_rows, 256))
        for r0 in range(0, self.shape[0], step):
            r1 = min(r0 + step, self.shape[0])
            rows = self.x1[r0:r1]
            # K(x_i, x_i) one row at a time, batched as the diagonal of small blocks
            out[r0:r1] = torch.stack([fn(rows[i : i + 1], rows[i : i + 1])[0, 0] for i in range(r1 - r0)])
        return out

    def matmul(self, v: Any) -> Tensor:
        """``K v`` for ``v`` of shape (N2,) or (N2, m); returns shape (N1,) or (N1, m) in ``dtype``."""
        v = as_tensor(v, "v", dtype=self.dtype, device=self.x1.device, ndim=None)
        if v.ndim > 2 or v.shape[0] != self.shape[1]:
            raise ValueError(f"v: expected shape ({self.shape[1]},) or ({self.shape[1]}, m), got {tuple(v.shape)}")
        vec = v.ndim == 1
        vv = (v[:, None] if vec else v).to(self.tile_dtype)
        n1, n2 = self.shape
        out = torch.zeros(n1, vv.shape[1], dtype=self.dtype, device=v.device)
        tile_rows, tile_cols = self.tile_shape
        row_starts = range(0, n1, tile_rows)
        if self.symmetric:
            total = sum(len(range(r0, n2, tile_cols)) for r0 in row_starts)
        else:
            total = len(row_starts) * len(range(0, n2, tile_cols))
        bar = Progress(total, "kernel matvec", enabled=self.progress, interval=1.0)
        try:
            for r0 in row_starts:
                r1 = min(r0 + tile_rows, n1)
                c_start = r0 if self.symmetric else 0
                for c0 in range(c_start, n2, tile_cols):
                    c1 = min(c0 + tile_cols, n2)
                    t = self._tile(r0, r1, c0, c1)
                    out[r0:r1] += (t @ vv[c0:c1]).to(self.dtype)
                    if self.symmetric and c1 > r1:
                        # tiles straddling the diagonal: the part right of it is mirrored below
                        lo = max(r1 - c0, 0)
                        out[c0 + lo : c1] += (t[:, lo:].T @ vv[r0:r1]).to(self.dtype)
                    bar.update()
        finally:
            bar.close()
        return out[:, 0] if vec else out

    def __matmul__(self, v: Any) -> Tensor:
        return self.matmul(v)

    def __repr__(self) -> str:
        return f"KernelOperator(shape={self.shape}, tile_fn={self.tile_fn!r}, tile_dtype={self.tile_dtype})"

