"""Infinite-width kernels of an architecture: the maths, below the evaluation machinery of :mod:`ntkit.compute`.

* :mod:`~ntkit.infinite.walk`: a torch model -> its :class:`~ntkit.infinite.walk.Architecture`, the
  sequence of kernel transforms (clear errors for what has none);
* :mod:`~ntkit.infinite.ops`: one module per layer kind (its transform on the record of
  :mod:`~ntkit.infinite.state` — covariances with ``none`` / ``diag`` / ``full`` spatial layout —, its
  shape rule, its lowerings) and the registry from torch module types to ops;
* :mod:`~ntkit.infinite.reference`: the reference evaluator (every entry exact, the diagonal and
  duplicated inputs included);
* :mod:`~ntkit.infinite.fused`, :mod:`~ntkit.infinite.native`: the fast path of the fully connected
  pattern (fused torch code, a compiled C loop), tested against the reference;
* :mod:`~ntkit.infinite.tiles`: one block of the kernel at a time, by whichever path applies;
  :mod:`~ntkit.infinite.scaling`: exact evaluation of inputs whose norms overflow.

The public entry points are :func:`ntkit.infinite_kernel` and :func:`ntkit.compute_kernel`.
"""

from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.walk import Architecture, ArchitectureError, describe_model

__all__ = ["Architecture", "ArchitectureError", "KernelTiles", "describe_model"]
