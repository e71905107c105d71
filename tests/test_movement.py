"""Kernel movement split into mean and fluctuation parts, and its log-log slopes with bootstrap errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.experiments.dynamics import run_dynamics
from ntkit.experiments.movement import (
    bootstrap_slope,
    mean_slope,
    movement_parts,
    movement_vs_width,
    relative_changes,
)

# one torch thread per xdist worker: the training loops here oversubscribe 2 cores otherwise (conftest)
pytestmark = pytest.mark.usefixtures("single_thread")

WIDTHS = (100, 400, 1600, 6400)


def _synthetic(rng: np.random.Generator, *, a: float, b: float, seeds: int = 10, shape=(6, 6)) -> dict:
    """``R_s = a n^-1 M + b n^-1/2 Z_s``: mean part ``a ||M|| / n``, fluctuation ``b sqrt(prod shape) / sqrt n``."""
    m = np.ones(shape) / np.sqrt(np.prod(shape))  # ||M||_F = 1
    return {n: a / n * m + b / np.sqrt(n) * rng.standard_normal((seeds, *shape)) for n in WIDTHS}


def test_parts_add_in_squares_and_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    r = rng.standard_normal((7, 4, 5)) + 0.5
    p = movement_parts(r)
    assert p.n_seeds == 7
    assert p.total**2 == pytest.approx(p.mean**2 + p.fluctuation**2, rel=1e-12)
    assert p.total == pytest.approx(np.sqrt(np.mean([np.sum(x**2) for x in r])), rel=1e-12)
    dev = r - r.mean(axis=0)
    assert p.fluctuation**2 == pytest.approx(np.sum(dev**2) / 6, rel=1e-12)
    # relative changes normalise each seed by its own ||Theta_0||_F
    theta0 = rng.standard_normal((3, 4, 4)) * np.array([1.0, 10.0, 100.0])[:, None, None]
    expected = 0.01 * theta0 / np.linalg.norm(theta0, axis=(1, 2))[:, None, None]
    np.testing.assert_allclose(relative_changes(theta0, theta0 * 1.01), expected, rtol=1e-12)
    # the same relative change for every seed (kernels differ only in scale): no fluctuation part
    same = np.eye(4)[None] * np.array([1.0, 10.0, 100.0])[:, None, None]
    ch = relative_changes(torch.from_numpy(same), torch.from_numpy(same * 1.01))
    assert movement_parts(ch).fluctuation == pytest.approx(0.0, abs=1e-15)
    assert movement_parts(ch).total == pytest.approx(0.01, rel=1e-12)
    assert movement_parts(ch).mean == pytest.approx(0.01, rel=1e-12)


def test_mean_part_is_debiased() -> None:
    """Few seeds, large noise: ||Rbar||^2 overestimates ||E R||^2 by fluctuation^2 / S; the estimate does not."""
    rng = np.random.default_rng(1)
    mu = np.full((8, 8), 0.5)  # ||E R||_F^2 = 16; fluctuation^2 = 64 (unit noise on 64 entries)
    naive, est = [], []
    for _ in range(300):
        r = mu + rng.standard_normal((5, 8, 8))
        naive.append(np.sum(r.mean(axis=0) ** 2))
        est.append(movement_parts(r).mean ** 2)
    assert np.mean(naive) == pytest.approx(16 + 64 / 5, rel=0.05)
    assert abs(np.mean(est) - 16) < 4 * np.std(est) / np.sqrt(len(est))


def test_known_slopes_recovered_within_bootstrap_error() -> None:
    rng = np.random.default_rng(2)
    res = movement_vs_width(_synthetic(rng, a=1.0, b=0.002, seeds=20), n_boot=300, seed=0)
    assert res.widths == list(WIDTHS)
    mean, fluct, total = res.slopes["mean"], res.slopes["fluctuation"], res.slopes["total"]
    assert abs(mean.slope + 1.0) < 4 * mean.stderr + 0.02
    assert abs(fluct.slope + 0.5) < 4 * fluct.stderr + 0.02
    # the mean part dominates at small widths, the fluctuation at large ones: total slope in between
    assert -1.0 < total.slope < -0.5
    assert all(f.n_used == 300 and 0 < f.stderr < 0.1 for f in res.slopes.values())
    d = res.to_dict()
    assert set(d["parts"]) == {str(w) for w in WIDTHS} and d["slopes"]["mean"]["n_boot"] == 300


def test_bootstrap_standard_error_matches_spread_over_repeats() -> None:
    """The bootstrap s.e. of a slope agrees with the spread of slopes over independent data sets."""
    rng = np.random.default_rng(3)
    slopes, errs = [], []
    for rep in range(60):
        values = {n: n**-0.7 * np.exp(0.3 * rng.standard_normal(8)) for n in WIDTHS}
        fit = mean_slope(values, n_boot=150, seed=rep)
        slopes.append(fit.slope)
        errs.append(fit.stderr)
    assert np.mean(slopes) == pytest.approx(-0.7, abs=3 * np.std(slopes) / np.sqrt(60) + 0.01)
    # bootstrap with 8 seeds underestimates a little (factor ~ sqrt(7/8)); allow 35%
    assert np.mean(errs) == pytest.approx(np.std(slopes, ddof=1), rel=0.35)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds"):
        movement_parts(np.ones((1, 3, 3)))
    with pytest.raises(ValueError, match=r"theta_t: expected the shape of theta_0 \(2, 3, 3\)"):
        relative_changes(np.ones((2, 3, 3)), np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="all-zero kernel for seeds \\[1\\]"):
        relative_changes(np.stack([np.eye(2), np.zeros((2, 2))]), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="finite"):
        movement_parts(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="non-empty mapping"):
        movement_vs_width({})
    with pytest.raises(TypeError, match="expected an array"):
        bootstrap_slope({10: "abc"}, np.mean)
    # a part that is 0 at some width has no log-log slope: NaN, never an error or -inf
    fit = bootstrap_slope({10: np.ones(3), 20: np.zeros(3)}, np.mean, n_boot=5)
    assert np.isnan(fit.slope) and fit.n_used == 0


def test_small_real_run_splits_movement() -> None:
    """Real networks (depth 2, 4 inits): the parts are consistent with the per-network movement, the
    mean part falls faster than the n^-1/2 bound, and the summary carries slopes with errors."""
    res = run_dynamics(widths=[64, 256, 1024], n_inits=4, steps=30, n_test=8, depth=2, progress=False)
    d = res.to_dict(n_boot=200)
    for w in res.widths:
        movement = np.asarray(res.movement[str(w)])
        # total = root-mean-square of the per-network movement ||Theta_T - Theta_0||_F / ||Theta_0||_F
        assert d["movement_parts"][str(w)]["total"] == pytest.approx(np.sqrt(np.mean(movement**2)), rel=1e-10)
    fits = d["slope_fits"]
    names = ("movement", "movement_total", "movement_mean", "movement_fluctuation", "dist_linearized", "dist_kernel")
    for name in names:
        assert np.isfinite(fits[name]["slope"]) and 0 < fits[name]["stderr"] < 0.5, name
        assert fits[name]["slope"] < 0, name
    assert fits["movement_mean"]["slope"] < -0.5 - 2 * fits["movement_mean"]["stderr"]
    assert fits["movement_mean"]["slope"] < fits["movement_fluctuation"]["slope"]
