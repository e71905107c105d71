"""Falkon-style Nystrom KRR: M = N is exact KRR, agreement with the dense Nystrom formula, resume, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import ntkit
from ntkit.solve import cho_solve, nystrom_krr, robust_cholesky
from tests.conftest import rel_err

F64 = torch.float64
N, D, REG = 150, 6, 5e-2
KW = dict(depth=3, w_std=2**0.5, b_std=0.1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # these problems are tiny: intra-op threads only add synchronisation (badly so on a loaded machine)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, D, dtype=F64, generator=g)
    xt = torch.randn(30, D, dtype=F64, generator=g)
    y = torch.stack([x[:, 0].cos(), x[:, 1].abs()], dim=1) + 0.1 * torch.randn(N, 2, dtype=F64, generator=g)
    return x, xt, y


@pytest.mark.parametrize("method", ["falkon", "gram"])
def test_all_centres_equals_exact_krr(data: tuple[torch.Tensor, ...], method: str) -> None:
    x, xt, y = data
    k = ntkit.fc_kernel(x, **KW).ntk  # type: ignore[arg-type]
    kt = ntkit.fc_kernel(xt, x, **KW).ntk  # type: ignore[arg-type]
    assert k is not None and kt is not None
    chol, _ = robust_cholesky(k, diag_reg=REG)
    exact = kt @ cho_solve(chol, y)
    model = nystrom_krr(x, y, n_centres=N, diag_reg=REG, method=method, tol=1e-12, max_iter=300, **KW)  # type: ignore[arg-type]
    assert model.cg.converged and model.cg.n_iter < 40  # Falkon's preconditioner is near-exact for M = N
    # measured 1.8e-13 (falkon) / 2.0e-13 (gram); float32 kernel tiles give 7.6e-5 / 1.6e-6
    assert rel_err(model.predict(xt), exact) < 1e-11


@pytest.mark.parametrize("method", ["falkon", "gram"])
def test_matches_dense_nystrom_formula(data: tuple[torch.Tensor, ...], method: str) -> None:
    x, xt, y = data
    g = torch.Generator().manual_seed(5)
    model = nystrom_krr(x, y, n_centres=40, diag_reg=REG, generator=g, method=method, tol=1e-12, **KW)  # type: ignore[arg-type]
    c = model.centres
    k_nm = ntkit.fc_kernel(x, c, **KW).ntk  # type: ignore[arg-type]
    k_mm = ntkit.fc_kernel(c, **KW).ntk  # type: ignore[arg-type]
    assert k_nm is not None and k_mm is not None
    alpha = torch.linalg.solve(k_nm.T @ k_nm + REG * k_mm, k_nm.T @ y)
    kt = ntkit.fc_kernel(xt, c, **KW).ntk  # type: ignore[arg-type]
    assert kt is not None
    # measured 1.9e-12 (falkon) / 1.6e-12 (gram); the float32 tiles below give 1.5e-5 / 1.1e-6
    assert rel_err(model.predict(xt), kt @ alpha) < 1e-10
    # float32 tiles: close, not identical
    m32 = nystrom_krr(
        x,
        y,
        centres=c,
        n_centres=40,
        diag_reg=REG,
        method=method,
        tile_dtype=torch.float32,
        tol=1e-10,
        **KW,  # type: ignore[arg-type]
    )
    assert rel_err(m32.predict(xt), kt @ alpha) < 1e-3


def test_warm_start_and_callback(data: tuple[torch.Tensor, ...]) -> None:
    x, _, y = data
    seen: list[torch.Tensor] = []
    kw = dict(n_centres=40, diag_reg=REG, centres=x[:40], tol=1e-10, cache_bytes=0, **KW)
    model = nystrom_krr(x, y[:, 0], callback=lambda i, a, r: seen.append(a), **kw)  # type: ignore[arg-type]
    assert len(seen) == model.cg.n_iter and seen[-1].shape == (40,)
    again = nystrom_krr(x, y[:, 0], alpha0=model.alpha, **kw)  # type: ignore[arg-type]
    assert again.cg.n_iter <= 1
    assert rel_err(again.alpha, model.alpha) < 1e-8


def test_gram_checkpoint_resumes(data: tuple[torch.Tensor, ...], tmp_path: Path) -> None:
    x, _, y = data
    ckpt = tmp_path / "gram.pt"
    kw = dict(n_centres=30, diag_reg=REG, centres=x[:30], method="gram", checkpoint=ckpt, tol=1e-10, **KW)
    first = nystrom_krr(x, y, **kw)  # type: ignore[arg-type]
    assert ckpt.exists()
    calls = []

    def counting_tile(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a.shape[0])
        k = ntkit.fc_kernel(a, b, **KW).ntk  # type: ignore[arg-type]
        assert k is not None
        return k

    resumed = nystrom_krr(x, y, tile_fn=counting_tile, **kw)  # type: ignore[arg-type]
    assert sum(calls) < N  # K_nm rows were not recomputed: only K_mm (30 rows) and nothing else
    assert rel_err(resumed.alpha, first.alpha) < 1e-8
    # different centres: the checkpoint does not match and is not used
    other = nystrom_krr(x, y, **{**kw, "centres": x[30:60]})  # type: ignore[arg-type]
    assert rel_err(other.alpha, first.alpha) > 1e-3


def test_bad_input(data: tuple[torch.Tensor, ...]) -> None:
    x, _, y = data
    with pytest.raises(ValueError, match=r"at most N = 150 centres"):
        nystrom_krr(x, y, n_centres=151, diag_reg=REG)
    bad = y.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="y_train: expected finite"):
        nystrom_krr(x, bad, n_centres=10, diag_reg=REG)
    with pytest.raises(ValueError, match="diag_reg"):
        nystrom_krr(x, y, n_centres=10, diag_reg=0.0)
    with pytest.raises(ValueError, match="centres"):
        nystrom_krr(x, y, n_centres=10, diag_reg=REG, centres=x[:5])
    with pytest.raises(ValueError, match="method"):
        nystrom_krr(x, y, n_centres=10, diag_reg=REG, method="direct")
