"""The Dask kernel operator gives the same products as the local one (LocalCluster, 2 processes)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ntkit.solve import DaskKernelOperator, KernelOperator, conjugate_gradient, pivoted_cholesky_preconditioner
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
    g = torch.Generator().manual_seed(0)
    x = torch.randn(230, 7, dtype=torch.float64, generator=g)
    x2 = torch.randn(90, 7, dtype=torch.float64, generator=g)
    v = torch.randn(230, 3, dtype=torch.float64, generator=g)
    local = KernelOperator(x, depth=3, b_std=0.2, tile_rows=50, tile_cols=40)
    dop = DaskKernelOperator(local, client, n_blocks=5)
    assert dop.shape == (230, 230) and dop.symmetric
    assert rel_err(dop @ v, local @ v) < 1e-12
    assert rel_err(dop @ v[:, 1], local @ v[:, 1]) < 1e-12
    cross = KernelOperator(x2, x, depth=3, which="nngp", tile_dtype=torch.float32)
    assert rel_err(DaskKernelOperator(cross, client) @ v, cross @ v) < 1e-12
    # drop-in for CG and the preconditioners
    tol, reg = 1e-3, 1e-2
    pre = pivoted_cholesky_preconditioner(dop, 30, diag_reg=reg)  # type: ignore[arg-type]
    a = conjugate_gradient(lambda u: dop @ u + reg * u, v, precond=pre, tol=tol)
    b = conjugate_gradient(lambda u: local @ u + reg * u, v, precond=pre, tol=tol)
    # The two runs are not compared with each other at a tight bound: their matvecs differ by ~1e-13
    # (Dask sums the row blocks in another order) and CG amplifies such differences from one
    # iteration to the next (24 iterations at tol = 1e-3 once left the iterates 1.3e-9 apart). How
    # far apart two solutions that both meet tol may lie is set by tol and the conditioning (here
    # about 2e3), not by rounding. So each is checked against what CG was asked for: its error
    # against the exact dense solve, measured as CG measures it, ||A (x - x*)|| / ||v|| =
    # ||A x - v|| / ||v||, must be <= tol on the true matrix A = K + reg I. A Dask product with a
    # missing, duplicated or misplaced block fails this (residual ~1); subtler errors fail the tight
    # matvec comparisons above.
    a_mat = local.dense() + reg * torch.eye(230, dtype=torch.float64)
    exact = torch.linalg.solve(a_mat, v)
    for res in (a, b):
        assert res.converged
        error = (a_mat @ (res.x - exact)).norm(dim=0) / v.norm(dim=0)
        assert float(error.max()) <= tol * (1 + 1e-6)  # slack: CG's recursive vs the true residual
    assert abs(a.n_iter - b.n_iter) <= 1  # rounding may move the last crossing of tol by one step
    with pytest.raises(ValueError, match="expected shape"):
        dop @ torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="Client"):
        DaskKernelOperator(local, object())


def test_import_ntkit_does_not_import_dask() -> None:
    code = "import sys, ntkit, ntkit.solve; assert 'distributed' not in sys.modules and 'dask' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
