"""The kernel operator's products on Dask workers (optional extra ``ntkit[dask]``).

:class:`DaskKernelOperator` wraps a :class:`~ntkit.solve.KernelOperator` and computes ``K v`` by
row blocks on the workers of a ``dask.distributed`` client: the row blocks of ``x1`` and the whole of
``x2`` are scattered once; each product ships only ``v`` (broadcast) and gathers the (N1/p, m)
results. It offers the same interface (``@``, ``shape``, ``symmetric``, ``diag``, ``block``), so it
drops into :func:`~ntkit.solve.conjugate_gradient` and the preconditioners unchanged. Row blocks
evaluate every tile (the symmetric half-saving of the local operator is not used across workers).
"""

from __future__ import annotations

from typing import Any

import torch

from ntkit._validation import as_tensor, check_int
from ntkit.solve.operator import KernelOperator

Tensor = torch.Tensor


def _block_product(x_rows: Tensor, x_cols: Tensor, v: Tensor, options: dict[str, Any]) -> Tensor:
    """``K(x_rows, x_cols) v`` on a worker (a local, non-symmetric operator)."""
    return KernelOperator(x_rows, x_cols, **options) @ v


class DaskKernelOperator:
    """A :class:`~ntkit.solve.KernelOperator` whose products run on Dask workers.

    Parameters
    ----------
    op : KernelOperator
        The local operator (its inputs, tile function and tile options are sent to the workers).
    client : dask.distributed.Client
    n_blocks : int, optional
        Row blocks (tasks) per product; defaults to twice the number of worker threads.

    Raises
    ------
    ImportError
        dask.distributed is not installed.
    TypeError
        ``op`` is not a :class:`KernelOperator` or ``client`` not a ``dask.distributed.Client``.

    Examples
    --------
    With a two-process local cluster (``tests/test_solve_dask.py`` runs exactly this)::

        from dask.distributed import Client, LocalCluster
        client = Client(LocalCluster(n_workers=2, processes=True))
        dop = DaskKernelOperator(KernelOperator(x, depth=3), client)
        torch.allclose(dop @ v, KernelOperator(x, depth=3) @ v)  # True
    """

    def __init__(self, op: KernelOperator, client: Any, *, n_blocks: int | None = None) -> None:
        try:
            from distributed import Client
        except ImportError as err:  # pragma: no cover - exercised without the extra
            raise ImportError("DaskKernelOperator needs dask.distributed: pip install 'ntkit[dask]'") from err
        if not isinstance(op, KernelOperator):
            raise TypeError(f"op: expected a KernelOperator, got {type(op).__name__}")
        if not isinstance(client, Client):
            raise TypeError(f"client: expected a dask.distributed.Client, got {type(client).__name__}")
        self.op = op
        self.client = client
        if n_blocks is None:
            threads = sum(client.nthreads().values()) or 1
            n_blocks = 2 * threads
        n1 = op.shape[0]
        self.n_blocks = min(check_int(n_blocks, "n_blocks", minimum=1), n1)
        step = -(-n1 // self.n_blocks)
        self._bounds = [(r0, min(r0 + step, n1)) for r0 in range(0, n1, step)]
        self._options: dict[str, Any] = dict(
            tile_fn=op.tile_fn,
            dtype=op.dtype,
            tile_dtype=op.tile_dtype,
            tile_rows=op.tile_rows,
            tile_cols=op.tile_cols,
        )
        self._rows = [client.scatter(op.x1[r0:r1].clone()) for r0, r1 in self._bounds]
        self._cols = client.scatter(op.x2, broadcast=True)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N1, N2)``."""
        return self.op.shape

    @property
    def symmetric(self) -> bool:
        """Whether ``x2`` is ``x1``."""
        return self.op.symmetric

    @property
    def dtype(self) -> torch.dtype:
        """Result dtype."""
        return self.op.dtype

    @property
    def x1(self) -> Tensor:
        """Row inputs."""
        return self.op.x1

    def diag(self) -> Tensor:
        """The diagonal (computed locally: O(N))."""
        return self.op.diag()

    def block(self, rows: Tensor | slice | None = None, cols: Tensor | slice | None = None) -> Tensor:
        """Dense sub-matrix (computed locally)."""
        return self.op.block(rows, cols)

    def matmul(self, v: Any) -> Tensor:
        """``K v`` for ``v`` of shape (N2,) or (N2, m), computed by row blocks on the workers."""
        n2 = self.shape[1]
        vt = as_tensor(v, "v", dtype=self.op.dtype, ndim=None)
        if vt.ndim > 2 or vt.shape[0] != n2:
            raise ValueError(f"v: expected shape ({n2},) or ({n2}, m), got {tuple(vt.shape)}")
        v_future = self.client.scatter(vt, broadcast=True)
        futures = [
            self.client.submit(_block_product, rows, self._cols, v_future, self._options, pure=False)
            for rows in self._rows
        ]
        parts = self.client.gather(futures)
        return torch.cat(parts, dim=0)

    def __matmul__(self, v: Any) -> Tensor:
        return self.matmul(v)

    def __repr__(self) -> str:
        return f"DaskKernelOperator(shape={self.shape}, n_blocks={len(self._bounds)})"
