"""The in-place blocked Cholesky factorisation of the full-size Fashion-MNIST solves
(:mod:`ntkit.experiments.inplace_cholesky`) against LAPACK's, on awkward sizes and blocks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ntkit.experiments import inplace_cholesky
from ntkit.experiments.inplace_cholesky import cholesky_inplace


def _spd(n: int, dtype: type[np.floating], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, n // 2 + 3))
    return (x @ x.T / x.shape[1] + 0.1 * np.eye(n)).astype(dtype)


@pytest.mark.parametrize(("n", "block"), [(1, 4), (5, 2), (97, 16), (300, 64), (301, 300), (256, 256)])
def test_factor_equals_lapack_and_solves(n: int, block: int) -> None:
    a = _spd(n, np.float64)
    ref = scipy.linalg.cholesky(a, lower=True)
    b = a.copy()
    assert cholesky_inplace(b, block=block) is b
    np.testing.assert_allclose(np.tril(b), ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    y = np.random.default_rng(1).standard_normal((n, 3))
    x = scipy.linalg.cho_solve((b.T, False), y)  # the F-ordered transpose: no copy, the upper triangle L^T
    np.testing.assert_allclose(a @ x, y, atol=1e-10)


def test_float32_and_panel_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inplace_cholesky, "PANEL_ROWS", 7)  # several row chunks per panel
    a = _spd(200, np.float32)
    ref = scipy.linalg.cholesky(a.astype(np.float64), lower=True)
    b = a.copy()
    cholesky_inplace(b, block=32)
    assert b.dtype == np.float32
    assert np.abs(np.tril(b) - ref).max() / np.abs(ref).max() < 1e-5


def test_not_positive_definite_and_bad_arrays() -> None:
    a = _spd(50, np.float64)
    a[30, 30] = -1.0
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        cholesky_inplace(a, block=8)
    with pytest.raises(ValueError, match="expected a square, C-contiguous, writeable float32 / float64 array"):
        cholesky_inplace(np.eye(3).T[:, :2])
    with pytest.raises(ValueError, match="dtype int64"):
        cholesky_inplace(np.eye(3, dtype=np.int64))
    with pytest.raises(ValueError, match="C-contiguous False"):
        cholesky_inplace(np.asfortranarray(_spd(4, np.float64))[:, :].T.copy(order="F"))


def test_images_ridge_predict_uses_it_and_matches_a_direct_solve() -> None:
    from ntkit.experiments.images_eval import ridge_predict

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 40))
    k, t = x @ x.T / 40, rng.standard_normal((300, 3))
    want = k[:50] @ np.linalg.solve(k + 1e-1 * np.eye(300), t)
    np.testing.assert_allclose(ridge_predict(k, t, k[:50], 1e-1), want, rtol=1e-10, atol=1e-12)
    # slightly indefinite (a PSD kernel's rounding): Cholesky fails and the clipped eigendecomposition answers
    indefinite = np.ones((4, 4)) - 1e-9 * np.eye(4)
    assert np.isfinite(ridge_predict(indefinite, np.eye(4)[:, :2], indefinite, 1e-12)).all()
