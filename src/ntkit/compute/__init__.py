"""Analytic kernels at scale: fused per-tile recursion, tiling under a memory budget, resumable
on-disk outputs (``.npy``, zarr) and distribution over Dask.

Public API: :func:`compute_kernel` (whole kernels) and :func:`kernel_tile_fn` (one block at a time,
for iterative solvers). Importing this package imports neither dask nor zarr.
"""

from ntkit.compute.api import KernelResult, compute_kernel
from ntkit.compute.fused import FCSpec, fc_diag, fc_tile, kernel_tile_fn

__all__ = ["FCSpec", "KernelResult", "compute_kernel", "fc_diag", "fc_tile", "kernel_tile_fn"]
