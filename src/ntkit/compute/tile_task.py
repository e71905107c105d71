"""One tile of a kernel matrix as a self-contained, picklable recipe, and its evaluation on a worker.

:class:`TileTask` holds everything one tile evaluation needs (the prepared inputs, row ids, the
architecture's :class:`~ntkit.infinite.tiles.KernelTiles` and the
:class:`~ntkit.compute.tiling.TilePlan`); :func:`run_tile` is the module-level
entry point that Dask workers call (:mod:`ntkit.compute.distributed`) and :func:`single_threaded`
the context in which tiles run, on workers and in the local thread pool of
:func:`ntkit.compute.compute_kernel` alike. Both the local and the distributed runners import from
here, so neither depends on the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ntkit.compute.tiling import TilePlan
from ntkit.infinite.tiles import KernelTiles, Rows

Tensor = torch.Tensor


@dataclass
class TileTask:
    """Everything one tile evaluation needs (picklable: sent to Dask workers once).

    Attributes
    ----------
    tiles : KernelTiles
        The architecture's block evaluator (fused fast path or reference).
    rows1 : Rows
        Row inputs, prepared by :meth:`KernelTiles.prepare` (prelude applied, rescaled).
    rows2 : Rows
        Column inputs (``rows1`` itself for a symmetric plan).
    ids1, ids2 : Tensor of shape (N1,), (N2,)
        Row ids (equal ids: identical inputs).
    which : tuple of str
        The kernels to stack, a subset of ``("nngp", "ntk")`` in that order.
    plan : TilePlan
        The tiling (tile edge, symmetry, diagonal mode).
    """

    tiles: KernelTiles
    rows1: Rows
    rows2: Rows
    ids1: Tensor
    ids2: Tensor
    which: tuple[str, ...]
    plan: TilePlan

    @property
    def device(self) -> torch.device:
        """Where the tiles are computed."""
        return self.rows1.data.device

    def __call__(self, i: int, j: int) -> Tensor:
        """The stacked requested kernels of tile ``(i, j)``: shape (k, h, w) (or (k, h) on a diagonal).

        A diagonal tile of a symmetric plan is exactly symmetric (its upper triangle mirrored).
        """
        plan, want_ntk = self.plan, "ntk" in self.which
        r = plan.rows(i)
        if plan.diag:
            nngp, ntk = self.tiles.diag(self.rows1[r], self.ids1[r], ntk=want_ntk)
            parts = [nngp if w == "nngp" else ntk for w in self.which]
            return torch.stack([p for p in parts if p is not None])
        c = plan.cols(j)
        a, b = self.rows1[r], self.rows2[c]
        block = torch.empty(len(self.which), len(a), len(b), dtype=a.data.dtype, device=a.data.device)
        views = dict(zip(self.which, block, strict=True))
        nngp_out = views["nngp"] if "nngp" in views else torch.empty_like(block[0])  # NTK only: scratch
        nngp, ntk = self.tiles.tile(a, b, self.ids1[r], self.ids2[c], ntk=want_ntk, out=(nngp_out, views.get("ntk")),
                                    symmetric=plan.symmetric and i == j)
        for name, value in (("nngp", nngp), ("ntk", ntk)):  # rescaled rows return new tensors
            if name in views and value is not None and value.data_ptr() != views[name].data_ptr():
                views[name].copy_(value)
        return block


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the body with one torch intra-op thread, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_tile(task: TileTask, i: int, j: int) -> np.ndarray:
    """Module-level entry point for Dask workers: tile ``(i, j)`` as a numpy array (k, h, w).

    Runs with single-threaded torch operations (a Dask worker's threads are its parallelism).
    """
    with single_threaded():
        return task(i, j).cpu().numpy()
