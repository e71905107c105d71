"""Analytic kernels at scale: tiling under a memory budget, resumable on-disk outputs (``.npy``,
zarr) and distribution over Dask, for any model :func:`ntkit.infinite_kernel` understands.

Public API: :func:`compute_kernel` (whole kernels, in memory or on disk), :func:`infinite_kernel`
and :func:`fc_kernel` (in memory), :func:`kernel_tile_fn` (one block at a time, for iterative
solvers). The kernel maths lives in :mod:`ntkit.infinite`. Importing this package imports neither
dask nor zarr.
"""

from ntkit.compute.api import KernelResult, architecture, compute_kernel
from ntkit.compute.model_kernels import fc_kernel, infinite_kernel, kernel_tile_fn

__all__ = ["KernelResult", "architecture", "compute_kernel", "fc_kernel", "infinite_kernel", "kernel_tile_fn"]
