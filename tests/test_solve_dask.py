"""The Dask kernel operator gives the same products as the local one (LocalCluster, 2 processes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ntkit.solve import KernelOperator, conjugate_gradient, pivoted_cholesky_preconditioner
from tests.conftest import rel_err

distributed = pytest.importorskip("distributed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # these problems are tiny: intra-op threads only add synchronisation (badly so on a loaded machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", scheduler_port=0, silence_logs=40
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_dask_matvec_equals_local(client: Any) -> None:
    from ntkit.solve import DaskKernelOperator

    g = torch.Generator().manual_seed(0)
    x = torch.randn(230, 7, dtype=torch.float64, generator=g)
    x2 = torch.randn(90, 7, dtype=torch.float64, generator=g)
    v = torch.randn(230, 3, dtype=torch.float64, generator=g)
    local = KernelOperator(x, depth=3, beta=0.2, tile_rows=50, tile_cols=40)
    dop = DaskKernelOperator(local, client, n_blocks=5)
    assert dop.shape == (230, 230) and dop.symmetric
    assert rel_err(dop @ v, local @ v) < 1e-12
    assert rel_err(dop @ v[:, 1], local @ v[:, 1]) < 1e-12
    cross = KernelOperator(x2, x, depth=3, which="nngp", tile_dtype=torch.float32)
    assert rel_err(DaskKernelOperator(cross, client) @ v, cross @ v) < 1e-12
    # drop-in for CG and the preconditioners
    pre = pivoted_cholesky_preconditioner(dop, 30, diag_reg=1e-2)  # type: ignore[arg-type]
    a = conjugate_gradient(lambda u: dop @ u + 1e-2 * u, v, precond=pre, tol=1e-3)
    b = conjugate_gradient(lambda u: local @ u + 1e-2 * u, v, precond=pre, tol=1e-3)
    assert a.n_iter == b.n_iter and rel_err(a.x, b.x) < 1e-9
    with pytest.raises(ValueError, match="expected shape"):
        dop @ torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="Client"):
        DaskKernelOperator(local, object())


def test_import_ntkit_does_not_import_dask() -> None:
    code = "import sys, ntkit, ntkit.solve; assert 'distributed' not in sys.modules and 'dask' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
