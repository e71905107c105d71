"""A kernel matrix as an operator: products with ``K(x1, x2)`` without storing it.

The NTK / NNGP matrix of ``N`` points needs ``8 N^2`` bytes in float64 (3.2 GB at N = 20k, 8 TB at
N = 1M). :class:`KernelOperator` multiplies it by a vector or a block of vectors by recomputing it
tile by tile (``O(tile_rows * tile_cols)`` memory), as GPyTorch's lazy kernels (Gardner et al.
2018) and Falkon (Meanti et al. 2020) do. Tiles come from a pluggable ``tile_fn(a, b) -> K(a, b)``;
the default, :class:`FCTiles`, evaluates the NNGP/NTK recursion of :func:`ntkit.fc_kernel` with the
per-row quantities (the layer variances ``Sigma(l)(x, x)``) computed once per row instead of once per
tile, and a fused closed form for ReLU. :class:`FusedTiles` streams tiles through the fused recursion
of :mod:`ntkit.compute.fused` instead (about 3x faster in float32 for ReLU networks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_choice, check_dtype, check_int
from ntkit.activations import Activation
from ntkit.activations.closed_form import ABReLU

Tensor = torch.Tensor
TileFn = Callable[[Tensor, Tensor], Tensor]

_INV_2PI = 1.0 / (2.0 * math.pi)


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


def _check_which(which: str, activation: Activation) -> str:
    """``which`` in {"ntk", "nngp"}; the NTK needs the activation's derivative map."""
    which = check_choice(which, "which", ("ntk", "nngp"))
    if which == "ntk" and not activation.has_derivative_map:
        raise ValueError(f"which: the ntk of activation {activation.name!r} is undefined; use 'nngp'")
    return which


class FCTiles:
    """Tiles of the infinite-width NNGP or NTK of a fully connected network (see :func:`ntkit.fc_kernel`).

    ``tiles(a, b)`` equals ``fc_kernel(a, b, depth=..., ...).ntk`` (or ``.nngp``) up to rounding.
    Duplicate rows are not detected by comparing inputs; in the fused ReLU path a correlation within
    ``16 eps`` of 1 is snapped to 1 (angle 0), which gives duplicates their exact kernel value (else
    the angle ``acos(1 - O(eps))`` would carry an ``O(sqrt(eps))`` error).

    Per-row statistics ``Sigma(l)(x, x)`` for ``l = 1 .. depth+1`` (:meth:`row_stats`) are computed
    in O(N depth) and passed to :meth:`tile` so that a tile costs one GEMM plus ``depth`` elementwise
    layer updates. For ReLU (and any ``a min(x,0) + b max(x,0)`` with ``a = 0``) the layer update is
    fused in terms of the correlation ``rho = c / sqrt(v1 v2)`` (Cho & Saul 2009):

        Sigma(l+1)    = w^2 sqrt(v1 v2) (sqrt(1 - rho^2) + (pi - acos rho) rho) / (2 pi) + beta^2
        SigmaDot(l+1) = w^2 (pi - acos rho) / (2 pi)

    Other activations use their ``expect`` / ``expect_derivative`` maps.

    Parameters
    ----------
    depth, activation, beta, w_std
        As in :func:`ntkit.fc_kernel`.
    which : {"ntk", "nngp"}
    """

    def __init__(
        self,
        *,
        depth: int,
        activation: str | Activation | Any = "relu",
        beta: float = 0.0,
        w_std: float = 1.0,
        which: str = "ntk",
    ) -> None:
        from ntkit.compute.fused import FCSpec

        spec = FCSpec.make(depth, activation, beta, w_std)
        self.depth, self.activation, self.beta, self.w_std = spec.depth, spec.activation, spec.beta, spec.w_std
        self.which = _check_which(which, spec.activation)
        act = self.activation
        self._relu = isinstance(act, ABReLU) and act.a == 0.0 and act.b > 0

    def __repr__(self) -> str:
        return (
            f"FCTiles(depth={self.depth}, activation={self.activation!r}, beta={self.beta}, "
            f"w_std={self.w_std}, which={self.which!r})"
        )

    def row_stats(self, x: Tensor) -> Tensor:
        """``Sigma(l)(x, x)`` for ``l = 1 .. depth + 1``: a tensor of shape (N, depth + 1)."""
        w2, b2 = self.w_std**2, self.beta**2
        var = w2 / x.shape[1] * (x * x).sum(-1) + b2
        out = [var]
        for _ in range(self.depth):
            var = w2 * self.activation.expect_diag(var) + b2
            out.append(var)
        return torch.stack(out, dim=1)

    def diag(self, x: Tensor) -> Tensor:
        """The diagonal ``K(x_i, x_i)`` of shape (N,) in O(N depth) (no N x N work)."""
        stats = self.row_stats(x)
        if self.which == "nngp":
            return stats[:, -1]
        w2 = self.w_std**2
        ntk = stats[:, 0]
        for layer in range(self.depth):
            v = stats[:, layer]
            sdot = w2 * self.activation.expect_derivative(v, v, v)
            ntk = ntk * sdot + stats[:, layer + 1]
        return ntk

    def tile(self, a: Tensor, b: Tensor, stats_a: Tensor, stats_b: Tensor) -> Tensor:
        """``K(a, b)`` of shape (len(a), len(b)) from precomputed :meth:`row_stats`."""
        w2, b2 = self.w_std**2, self.beta**2
        cov = (a @ b.T).mul_(w2 / a.shape[1]).add_(b2)
        if self._relu and bool((stats_a[:, : self.depth] > 0).all()) and bool((stats_b[:, : self.depth] > 0).all()):
            return self._relu_tile(cov, stats_a, stats_b)
        ntk: Tensor | None = cov.clone() if self.which == "ntk" else None
        for layer in range(self.depth):
            v1, v2 = stats_a[:, layer, None], stats_b[None, :, layer]
            if ntk is not None:
                sdot = w2 * self.activation.expect_derivative(v1, cov, v2)
            cov = w2 * self.activation.expect(v1, cov, v2) + b2
            if ntk is not None:
                ntk = ntk * sdot + cov
        return ntk if ntk is not None else cov

    def _relu_tile(self, cov: Tensor, stats_a: Tensor, stats_b: Tensor) -> Tensor:
        # sigma = b relu: E[sigma sigma] = b^2 J1, E[sigma' sigma'] = b^2 (pi - theta) / (2 pi).
        scale = self.w_std**2 * self.activation.b**2  # type: ignore[attr-defined]
        b2 = self.beta**2
        snap = 1.0 - 16 * torch.finfo(cov.dtype).eps
        ntk: Tensor | None = cov.clone() if self.which == "ntk" else None
        for layer in range(self.depth):
            s = stats_a[:, layer, None].sqrt() * stats_b[None, :, layer].sqrt()
            rho = cov.div_(s).clamp_(-1.0, 1.0)
            rho.masked_fill_(rho > snap, 1.0)  # (near-)duplicates: angle exactly 0, as fc_kernel's
            pm = torch.acos(rho).neg_().add_(math.pi)  # pi - theta
            cov = (1.0 - rho * rho).clamp_(min=0.0).sqrt_().add_(rho.mul_(pm)).mul_(s).mul_(scale * _INV_2PI).add_(b2)
            if ntk is not None:
                ntk.mul_(pm.mul_(scale * _INV_2PI)).add_(cov)
        return ntk if ntk is not None else cov

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """``K(a, b)`` (computes the row statistics of both blocks)."""
        return self.tile(a, b, self.row_stats(a), self.row_stats(b))


_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64 (splitmix64 finaliser)
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


def _row_hashes(x: Tensor) -> Tensor:
    """A 64-bit hash of each row's float64 bits, shape (N,): identical rows hash identically.

    Exact integer arithmetic (wrapping), so the value depends only on the row's contents, never on
    its position or on the batch. Different rows may collide (rarely); :meth:`FusedTiles.tile` checks.
    """
    bits = (x.to(torch.float64) + 0.0).contiguous().view(torch.int64)  # + 0.0 maps -0.0 to 0.0
    g = torch.Generator().manual_seed(0x5EED)
    mult = torch.randint(-(2**62), 2**62, (x.shape[1],), generator=g, dtype=torch.int64) * 2 + 1
    h = torch.empty(x.shape[0], dtype=torch.int64)
    for r0 in range(0, x.shape[0], 65536):  # row blocks: int64 temporaries stay small
        b = bits[r0 : r0 + 65536]
        b = b ^ (b >> 31)
        b = b * _MIX1
        b = b ^ (b >> 29)
        h[r0 : r0 + 65536] = (b * mult).sum(1)
    return h


class FusedTiles:
    """Tiles of the fully connected NNGP or NTK by the fused recursion of :func:`ntkit.compute.fc_tile`.

    The same kernel as :class:`FCTiles` (and :func:`ntkit.fc_kernel`), evaluated with the in-place,
    hand-fused layer updates of :mod:`ntkit.compute.fused` (``atan2`` form for ReLU-like
    activations, ``arcsin`` form for erf; other activations through the generic recursion). Per-row
    statistics (:meth:`row_stats`) are the layer-1 variances and a 64-bit hash of the row; a tile
    gives identical rows of ``a`` and ``b`` (equal hashes, confirmed bitwise) their exact
    covariance, as :func:`ntkit.compute.compute_kernel` does with its global row ids.

    Parameters
    ----------
    depth, activation, beta, w_std
        As in :func:`ntkit.fc_kernel`.
    which : {"ntk", "nngp"}

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> tiles = FusedTiles(depth=2)
    >>> bool(torch.allclose(tiles(x, x), ntkit.fc_kernel(x, depth=2).ntk))
    True
    """

    def __init__(
        self,
        *,
        depth: int,
        activation: str | Activation | Any = "relu",
        beta: float = 0.0,
        w_std: float = 1.0,
        which: str = "ntk",
    ) -> None:
        from ntkit.compute.fused import FCSpec

        self.spec = FCSpec.make(depth, activation, beta, w_std)
        self.which = _check_which(which, self.spec.activation)

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"FusedTiles(depth={s.depth}, activation={s.activation!r}, beta={s.beta}, w_std={s.w_std}, "
            f"which={self.which!r})"
        )

    def row_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(Sigma(1)(x, x) of shape (N,), row hashes int64 of shape (N,))``."""
        from ntkit.compute.fused import input_variances

        return input_variances(x, self.spec), _row_hashes(x)

    def diag(self, x: Tensor) -> Tensor:
        """The diagonal ``K(x_i, x_i)`` of shape (N,) (no N x N work)."""
        from ntkit.compute.fused import fc_diag

        nngp, ntk = fc_diag(x, self.spec, ntk=self.which == "ntk")
        out = ntk if self.which == "ntk" else nngp
        assert out is not None
        return out

    def tile(self, a: Tensor, b: Tensor, stats_a: tuple[Tensor, Tensor], stats_b: tuple[Tensor, Tensor]) -> Tensor:
        """``K(a, b)`` of shape (len(a), len(b)) from precomputed :meth:`row_stats`."""
        from ntkit.compute.fused import fc_tile, row_ids

        (va, ha), (vb, hb) = stats_a, stats_b
        ids = (ha, hb)
        hit = torch.isin(ha, hb)
        if bool(hit.any()):
            # confirm the hash matches bitwise; on any collision fall back to exact ids for this tile
            ra, cb = torch.nonzero(ha[:, None] == hb[None, :], as_tuple=True)
            if not bool((a[ra] == b[cb]).all()):
                ids = row_ids(a, b)
        nngp, ntk = fc_tile(a, b, self.spec, ntk=self.which == "ntk", ids=ids, var=(va, vb))
        out = ntk if self.which == "ntk" else nngp
        assert out is not None
        return out

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """``K(a, b)`` (computes the row statistics of both blocks)."""
        return self.tile(a, b, self.row_stats(a), self.row_stats(b))


class KernelOperator:
    """The kernel matrix ``K(x1, x2)`` of shape (N1, N2) as an operator (never stored).

    ``op @ v`` computes ``K v`` for ``v`` of shape (N2,) or (N2, m) tile by tile: a tile of
    ``tile_rows x tile_cols`` entries is evaluated in ``tile_dtype`` and its product with ``v``
    accumulated in ``dtype`` (float64 by default). With ``x2`` omitted the operator is symmetric and a
    product evaluates only the tiles on and above the diagonal (half the kernel work).

    Parameters
    ----------
    x1 : array-like of shape (N1, n0)
    x2 : array-like of shape (N2, n0), optional
        Defaults to ``x1`` (symmetric operator).
    tile_fn : callable ``(a, b) -> Tensor of shape (len(a), len(b))``, optional
        Any kernel tile function (for instance a fused one from :mod:`ntkit.compute`). Defaults to
        :class:`FCTiles` built from ``depth``, ``activation``, ``beta``, ``w_std`` and ``which``.
        Objects with ``row_stats`` / ``tile`` / ``diag`` methods (as :class:`FCTiles`) get the
        per-row precomputation and the cheap diagonal.
    depth, activation, beta, w_std, which
        The fully connected network (see :func:`ntkit.fc_kernel`) when ``tile_fn`` is omitted.
    dtype : torch.dtype
        Accumulation and result dtype (float64 reference).
    tile_dtype : torch.dtype, optional
        Dtype the tiles are evaluated in (``torch.float32`` roughly doubles the speed; the
        relative error of a product is then ~1e-6). Defaults to ``dtype``.
    tile_rows, tile_cols : int
        Tile shape; memory is ``O(tile_rows * tile_cols)`` (a few temporaries of that size).
    progress : bool
        Report products that take more than a second (stderr).

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
        tile_fn: TileFn | None = None,
        depth: int = 1,
        activation: str | Activation | Any = "relu",
        beta: float = 0.0,
        w_std: float = 1.0,
        which: str = "ntk",
        dtype: torch.dtype = torch.float64,
        tile_dtype: torch.dtype | None = None,
        tile_rows: int = 1024,
        tile_cols: int = 2048,
        progress: bool = False,
    ) -> None:
        self.dtype = check_dtype(dtype)
        self.tile_dtype = check_dtype(tile_dtype) if tile_dtype is not None else self.dtype
        self.x1 = as_tensor(x1, "x1", dtype=self.dtype)
        self.symmetric = x2 is None
        self.x2 = self.x1 if x2 is None else as_tensor(x2, "x2", dtype=self.dtype, device=self.x1.device)
        if self.x1.shape[1] != self.x2.shape[1]:
            raise ValueError(
                f"x1 and x2: expected the same number of features, got {self.x1.shape[1]} and {self.x2.shape[1]}"
            )
        if tile_fn is None:
            tile_fn = FCTiles(depth=depth, activation=activation, beta=beta, w_std=w_std, which=which)
        elif not callable(tile_fn):
            raise TypeError(f"tile_fn: expected a callable (a, b) -> Tensor, got {type(tile_fn).__name__}")
        self.tile_fn = tile_fn
        self.tile_rows = check_int(tile_rows, "tile_rows", minimum=1)
        self.tile_cols = check_int(tile_cols, "tile_cols", minimum=1)
        self.progress = bool(progress)
        self._t1 = self.x1.to(self.tile_dtype)
        self._t2 = self._t1 if self.symmetric else self.x2.to(self.tile_dtype)
        self._stats1: Any = None
        self._stats2: Any = None
        if hasattr(tile_fn, "row_stats") and hasattr(tile_fn, "tile"):
            # per-row statistics in float64, floating ones cast to the tile dtype
            self._stats1 = _cast_stats(tile_fn.row_stats(self.x1), self.tile_dtype)
            self._stats2 = self._stats1 if self.symmetric else _cast_stats(tile_fn.row_stats(self.x2), self.tile_dtype)

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
        # filled tile by tile: temporaries stay O(tile_rows * tile_cols)
        for r0 in range(0, a.shape[0], self.tile_rows):
            r1 = min(r0 + self.tile_rows, a.shape[0])
            for c0 in range(0, b.shape[0], self.tile_cols):
                c1 = min(c0 + self.tile_cols, b.shape[0])
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
        row_starts = range(0, n1, self.tile_rows)
        if self.symmetric:
            total = sum(len(range(r0, n2, self.tile_cols)) for r0 in row_starts)
        else:
            total = len(row_starts) * len(range(0, n2, self.tile_cols))
        bar = Progress(total, "kernel matvec", enabled=self.progress, interval=1.0)
        try:
            for r0 in row_starts:
                r1 = min(r0 + self.tile_rows, n1)
                c_start = r0 if self.symmetric else 0
                for c0 in range(c_start, n2, self.tile_cols):
                    c1 = min(c0 + self.tile_cols, n2)
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

