"""Kernel movement versus width: its mean part and its seed-to-seed fluctuation, with slopes.

For seeds ``s = 1..S`` of a network of width ``n``, trained identically, let

    R_s = (Theta_t^(s) - Theta_0^(s)) / ||Theta_0^(s)||_F          (the relative change, any shape)

and ``Rbar = (1/S) sum_s R_s``. The movement splits into a **mean part** (the change every seed
shares, ``E R``) and a **fluctuation part** (each seed's deviation ``R_s - E R``). With the unbiased
estimators

    fluctuation^2 = 1/(S-1) sum_s ||R_s - Rbar||_F^2,
    mean^2        = ||Rbar||_F^2 - fluctuation^2 / S          (clipped at 0),
    total^2       = 1/S sum_s ||R_s||_F^2 = mean^2 + fluctuation^2     (exactly),

``total`` is the root-mean-square over seeds of the movement ``||Theta_t - Theta_0||_F /
||Theta_0||_F`` (:func:`ntkit.train.kernel_movement`) and the two parts add in squares.
(``||Rbar||^2`` alone overestimates ``||E R||^2`` by ``fluctuation^2 / S``; the correction removes
that bias, so a mean part buried in the noise of few seeds shows as small, not as the noise.)

**Theory.** Jacot et al. (2018, Theorem 2) and Lee et al. (2019, Theorem 2.1) bound the movement
by ``O(n^{-1/2})``: an upper bound, not a rate. The *expected* change of the NTK during training is
``O(1/n)`` (Dyer & Gur-Ari 2019, "Asymptotics of wide networks from Feynman diagrams"; Huang & Yau
2020, "Dynamics of deep neural networks and neural tangent hierarchy"), while the kernel's
fluctuations at initialisation, ``Theta_0 - Theta_inf``, are ``O(n^{-1/2})`` and feed the
seed-to-seed part of the change. So the mean part should fall with slope about ``-1`` on a log-log
plot, the fluctuation part no faster, and the total slope lies between ``-1`` (mean-dominated) and
``-1/2`` (fluctuation-dominated), depending on the regime (widths, training time, data).

Slopes are least-squares fits of ``log value`` on ``log n``; their standard errors come from a
bootstrap over seeds (resample the seeds of every width with replacement, recompute the values,
refit; the standard deviation of the refitted slopes).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> changes = {n: n**-1.0 * np.ones((8, 5, 5)) + n**-0.5 * 0.02 * rng.standard_normal((8, 5, 5))
...            for n in (100, 400, 1600, 6400)}
>>> res = movement_vs_width(changes, n_boot=200, seed=0)
>>> bool(abs(res.slopes["mean"].slope + 1.0) < 0.1), bool(abs(res.slopes["fluctuation"].slope + 0.5) < 0.1)
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ntkit._validation import check_int, describe

PARTS = ("total", "mean", "fluctuation")


@dataclass(frozen=True)
class MovementParts:
    """Movement of one width: ``total^2 = mean^2 + fluctuation^2`` (module docstring), over ``n_seeds``.

    Attributes
    ----------
    total, mean, fluctuation : float
        Root-mean-square movement, its part shared by the seeds, and the seeds' deviation from it.
    n_seeds : int

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import movement_parts
    >>> parts = movement_parts(np.array([[0.1, 0.0], [0.1, 0.0]]))  # two seeds moving alike
    >>> round(parts.mean, 6), round(parts.fluctuation, 6)
    (0.1, 0.0)
    """

    total: float
    mean: float
    fluctuation: float
    n_seeds: int

    def as_dict(self) -> dict[str, float | int]:
        return {"total": self.total, "mean": self.mean, "fluctuation": self.fluctuation, "n_seeds": self.n_seeds}


@dataclass(frozen=True)
class SlopeFit:
    """Log-log slope ``s`` of ``value = exp(a) n^s``, its bootstrap standard error, and how many of
    the ``n_boot`` resamples gave a finite slope (a resample whose value is 0 at some width has none).

    Attributes
    ----------
    slope, stderr, intercept : float
    n_boot, n_used : int

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import mean_slope
    >>> fit = mean_slope({100: [0.1, 0.1], 400: [0.05, 0.05], 1600: [0.025, 0.025]}, n_boot=200)
    >>> round(fit.slope, 6), round(fit.stderr, 6)
    (-0.5, 0.0)
    """

    slope: float
    stderr: float
    intercept: float
    n_boot: int
    n_used: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "slope": self.slope,
            "stderr": self.stderr,
            "intercept": self.intercept,
            "n_boot": self.n_boot,
            "n_used": self.n_used,
        }


@dataclass
class MovementAnalysis:
    """Result of :func:`movement_vs_width`: parts per width and the slope of each part.

    Attributes
    ----------
    widths : list of int
    parts : dict mapping width to MovementParts
    slopes : dict mapping "total" | "mean" | "fluctuation" to SlopeFit

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import movement_vs_width
    >>> rng = np.random.default_rng(0)
    >>> changes = {n: 1 / n + rng.standard_normal((4, 3, 3)) / n**0.5 for n in (100, 400, 1600)}
    >>> analysis = movement_vs_width(changes, n_boot=50)
    >>> analysis.widths, sorted(analysis.slopes)
    ([100, 400, 1600], ['fluctuation', 'mean', 'total'])
    """

    widths: list[int]
    parts: dict[int, MovementParts]
    slopes: dict[str, SlopeFit] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "parts": {str(w): self.parts[w].as_dict() for w in self.widths},
            "slopes": {k: v.as_dict() for k, v in self.slopes.items()},
            "theory": {"mean": -1.0, "fluctuation_at_init": -0.5, "total": "between -1 and -0.5"},
        }


def relative_changes(theta_0: Any, theta_t: Any) -> np.ndarray:
    """``R_s = (Theta_t^(s) - Theta_0^(s)) / ||Theta_0^(s)||_F`` for stacked kernels.

    Parameters
    ----------
    theta_0, theta_t : array-like of shape (S, ...)
        The kernels of ``S`` seeds before and after training (any trailing shape, the same for both).

    Returns
    -------
    ndarray of shape (S, ...), float64

    Raises
    ------
    ValueError
        Different shapes, fewer than 1 seed, a ``theta_0`` that is all zeros, non-finite entries.

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import relative_changes
    >>> theta_0 = np.stack([np.eye(2), 2 * np.eye(2)])
    >>> relative_changes(theta_0, 1.1 * theta_0).round(6)[:, 0, 0].tolist()
    [0.070711, 0.070711]
    """
    a = _as_stack(theta_0, "theta_0")
    b = _as_stack(theta_t, "theta_t")
    if a.shape != b.shape:
        raise ValueError(f"theta_t: expected the shape of theta_0 {a.shape}, got {b.shape}")
    norms = np.sqrt((a.reshape(a.shape[0], -1) ** 2).sum(axis=1))
    if np.any(norms == 0):
        zero = np.flatnonzero(norms == 0).tolist()
        raise ValueError(f"theta_0: expected non-zero kernels, got an all-zero kernel for seeds {zero}")
    return (b - a) / norms.reshape((-1,) + (1,) * (a.ndim - 1))


def movement_parts(changes: Any) -> MovementParts:
    """Split relative changes ``R_s`` (array of shape (S, ...), ``S >= 2``) into mean and fluctuation.

    See the module docstring for the estimators; ``total^2 = mean^2 + fluctuation^2`` holds exactly
    unless the mean part was clipped at 0.

    Parameters
    ----------
    changes : array-like of shape (S, ...)
        Relative changes ``R_s`` of ``S >= 2`` seeds (:func:`relative_changes`).

    Returns
    -------
    MovementParts

    Raises
    ------
    ValueError
        Fewer than 2 seeds, non-finite entries.

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import movement_parts
    >>> parts = movement_parts(np.array([[0.3, 0.0], [-0.3, 0.0]]))  # opposite moves: no shared part
    >>> round(parts.mean, 6), parts.fluctuation > 0
    (0.0, True)
    """
    r = _as_stack(changes, "changes")
    s = r.shape[0]
    if s < 2:
        raise ValueError(f"changes: expected at least 2 seeds to separate mean and fluctuation, got {s}")
    flat = r.reshape(s, -1)
    rbar = flat.mean(axis=0)
    total2 = float((flat**2).sum(axis=1).mean())
    fluct2 = float(((flat - rbar) ** 2).sum()) / (s - 1)
    mean2 = float((rbar**2).sum()) - fluct2 / s
    return MovementParts(
        total=float(np.sqrt(total2)),
        mean=float(np.sqrt(max(mean2, 0.0))),
        fluctuation=float(np.sqrt(fluct2)),
        n_seeds=s,
    )


def fit_slope(widths: Sequence[float], values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Least-squares ``log v = a + s log n``; ``(s, a)``, NaN when fewer than 2 widths or a value <= 0.

    Parameters
    ----------
    widths : sequence of float
    values : sequence of float

    Returns
    -------
    (slope, intercept) : float, float

    Examples
    --------
    >>> from ntkit.experiments.movement import fit_slope
    >>> slope, _ = fit_slope([100, 400, 1600], [0.1, 0.05, 0.025])
    >>> round(slope, 6)
    -0.5
    """
    w = np.asarray(widths, float)
    v = np.asarray(values, float)
    if len(w) < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return float("nan"), float("nan")
    s, a = np.polyfit(np.log(w), np.log(v), 1)
    return float(s), float(a)


def bootstrap_slope(
    samples: Mapping[int, Any],
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> SlopeFit:
    """Log-log slope of ``statistic(samples[n])`` over the widths ``n``, with a bootstrap over seeds.

    Parameters
    ----------
    samples : mapping width -> array of shape (S_n, ...)
        Per-seed data of each width (the first axis indexes seeds).
    statistic : callable
        Maps the (possibly resampled) array of one width to a positive number.
    n_boot : int
        Bootstrap resamples: for each, the seeds of every width are drawn with replacement
        (conditioned on at least 2 distinct seeds per width when it has 2 or more).
    seed : int
        Seed of the resampling (same seed, same standard error).

    Returns
    -------
    SlopeFit
        ``stderr`` is the standard deviation (ddof 1) of the finite resampled slopes (NaN when fewer
        than 2 are finite).

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import bootstrap_slope
    >>> samples = {n: np.array([1.0, 1.1, 0.9]) / n for n in (10, 100, 1000)}
    >>> fit = bootstrap_slope(samples, np.mean, n_boot=100)
    >>> round(fit.slope, 6), fit.n_used
    (-1.0, 100)
    """
    return _bootstrap(samples, lambda d: (statistic(d),), n_boot=n_boot, seed=seed)[0]


def _bootstrap(
    samples: Mapping[int, Any],
    statistics: Callable[[np.ndarray], Sequence[float]],
    *,
    n_boot: int,
    seed: int,
) -> list[SlopeFit]:
    """:func:`bootstrap_slope` for several statistics of the same resamples at once."""
    if not samples:
        raise ValueError("samples: expected a non-empty mapping width -> per-seed values, got an empty one")
    widths = sorted(samples)
    data = [_as_stack(samples[w], f"samples[{w}]") for w in widths]
    n_boot = check_int(n_boot, "n_boot", minimum=0)
    point = np.asarray([statistics(d) for d in data], float)  # (widths, m)
    rng = np.random.default_rng(check_int(seed, "seed"))
    boot = np.empty((n_boot, point.shape[1]))
    for b in range(n_boot):
        vals = np.asarray([statistics(d[_resample(rng, d.shape[0])]) for d in data], float)
        boot[b] = [fit_slope(widths, vals[:, j])[0] for j in range(point.shape[1])]
    fits = []
    for j in range(point.shape[1]):
        slope, intercept = fit_slope(widths, point[:, j])
        finite = boot[np.isfinite(boot[:, j]), j]
        stderr = float(np.std(finite, ddof=1)) if len(finite) >= 2 else float("nan")
        fits.append(SlopeFit(slope=slope, stderr=stderr, intercept=intercept, n_boot=n_boot, n_used=len(finite)))
    return fits


def _resample(rng: np.random.Generator, s: int) -> np.ndarray:
    """``s`` indices drawn with replacement, redrawn while they name fewer than 2 distinct seeds
    (when ``s >= 2``): a resample of copies of one seed carries no information on fluctuations."""
    while True:
        idx = rng.integers(0, s, s)
        if s < 2 or np.any(idx != idx[0]):
            return idx


def movement_vs_width(changes: Mapping[int, Any], *, n_boot: int = 1000, seed: int = 0) -> MovementAnalysis:
    """Movement parts per width and the log-log slope (bootstrap standard error) of each part.

    Parameters
    ----------
    changes : mapping width -> array of shape (S, ...)
        Relative changes ``R_s`` of each width (:func:`relative_changes`), ``S >= 2`` seeds.
    n_boot, seed
        Bootstrap over seeds (:func:`bootstrap_slope`).

    Returns
    -------
    MovementAnalysis
        ``parts[n]`` and ``slopes["total" | "mean" | "fluctuation"]``.

    Raises
    ------
    ValueError
        An empty mapping, fewer than 2 seeds at a width, non-finite entries.

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.experiments.movement import movement_vs_width
    >>> rng = np.random.default_rng(0)
    >>> changes = {n: rng.standard_normal((5, 4)) / n**0.5 for n in (100, 400, 1600)}
    >>> analysis = movement_vs_width(changes, n_boot=100)
    >>> -1.0 < analysis.slopes["fluctuation"].slope < 0.0  # about -1/2
    True
    """
    if not isinstance(changes, Mapping) or not changes:
        raise ValueError(f"changes: expected a non-empty mapping width -> per-seed changes, got {describe(changes)}")
    data = {check_int(w, "width", minimum=1): _as_stack(v, f"changes[{w}]") for w, v in changes.items()}
    widths = sorted(data)
    parts = {w: movement_parts(data[w]) for w in widths}
    fits = _bootstrap(
        data, lambda d: [getattr(movement_parts(d), name) for name in PARTS], n_boot=n_boot, seed=seed
    )
    return MovementAnalysis(widths=widths, parts=parts, slopes=dict(zip(PARTS, fits, strict=True)))


def mean_slope(values: Mapping[int, Sequence[float]], *, n_boot: int = 1000, seed: int = 0) -> SlopeFit:
    """Log-log slope of the per-width mean of a scalar measured per seed (e.g. the distance between the
    trained network and its linearization), with a bootstrap standard error over seeds.

    Parameters
    ----------
    values : mapping width -> sequence of float
        The scalar of each seed at each width.
    n_boot, seed
        Bootstrap over seeds (:func:`bootstrap_slope`).

    Returns
    -------
    SlopeFit

    Examples
    --------
    >>> from ntkit.experiments.movement import mean_slope
    >>> fit = mean_slope({250: [0.2, 0.22], 1000: [0.1, 0.11], 4000: [0.05, 0.055]}, n_boot=100)
    >>> round(fit.slope, 2)
    -0.5
    """
    return bootstrap_slope(
        {int(w): np.asarray(v, float) for w, v in values.items()},
        lambda d: float(np.mean(d)),
        n_boot=n_boot,
        seed=seed,
    )


def _as_stack(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected an array of shape (seeds, ...), got {describe(value)}") from err
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected an array of shape (seeds, ...) with at least one seed, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return arr


__all__ = [
    "MovementAnalysis",
    "MovementParts",
    "SlopeFit",
    "bootstrap_slope",
    "fit_slope",
    "mean_slope",
    "movement_parts",
    "movement_vs_width",
    "relative_changes",
]
