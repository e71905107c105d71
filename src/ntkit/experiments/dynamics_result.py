"""The record of ``ntkit dynamics``: per-width measurements of the trained networks and their summary.

:class:`DynamicsResult` holds, per width and per initialisation, the kernel movement
``||Theta_T - Theta_0||_F / ||Theta_0||_F``, the RMS distances of the trained network to its
linearization and to the infinite-width kernel prediction, ``||Theta_0 - Theta_inf||_F / ||Theta_inf||_F``
and the final loss; its summary fits log-log slopes against the width (bootstrap standard errors
over initialisations, :mod:`ntkit.experiments.movement`).

Split from :mod:`ntkit.experiments.dynamics` (which runs the experiment and re-exports these names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ntkit.experiments.converge import fit_loglog_slope
from ntkit.experiments.movement import MovementAnalysis, mean_slope, movement_vs_width

#: Bootstrap resamples (over initialisations) for the slopes' standard errors in the summary.
N_BOOT = 1000
#: The scalar measurements recorded per network.
MEASURES = ("movement", "dist_linearized", "dist_kernel", "init_distance", "final_loss")


@dataclass
class DynamicsResult:
    """Outcome of :func:`run_dynamics`; per-width lists hold one value per finished initialisation.

    Attributes
    ----------
    widths : list of int
    config : dict
        The settings of the run.
    movement, dist_linearized, dist_kernel, init_distance, final_loss : dict of str to list of float
        Per width (the key is ``str(width)``), one value per network: the kernel movement
        ``||Theta_T - Theta_0|| / ||Theta_0||``, the RMS distances of the trained network to its
        linearization and to the kernel prediction, ``||Theta_0 - Theta_inf|| / ||Theta_inf||``, the
        final training loss.
    curves : dict
        The rows and outputs the figure draws.
    seconds : float
    complete : bool

    Examples
    --------
    >>> from ntkit.experiments.dynamics import run_dynamics
    >>> res = run_dynamics(widths=[32, 64], n_inits=2, steps=5, n_test=8, progress=False)
    >>> res.finished_widths(), len(res.movement["32"]), res.complete
    ([32, 64], 2, True)
    """

    widths: list[int]
    config: dict[str, Any]
    movement: dict[str, list[float]] = field(default_factory=dict)
    dist_linearized: dict[str, list[float]] = field(default_factory=dict)
    dist_kernel: dict[str, list[float]] = field(default_factory=dict)
    init_distance: dict[str, list[float]] = field(default_factory=dict)
    final_loss: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    #: per width, the relative kernel changes ``(Theta_T - Theta_0) / ||Theta_0||_F`` (N, N) per network
    changes: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = False

    def means(self, which: str) -> list[float]:
        data: dict[str, list[float]] = getattr(self, which)
        return [float(np.mean(data[str(w)])) for w in self.widths if data.get(str(w))]

    def finished_widths(self) -> list[int]:
        return [w for w in self.widths if self.movement.get(str(w))]

    def slope(self, which: str) -> float:
        return fit_loglog_slope(self.finished_widths(), self.means(which))[0]

    def movement_analysis(self, *, n_boot: int = N_BOOT, seed: int = 0) -> MovementAnalysis | None:
        """Mean / fluctuation split of the kernel change over the widths with >= 2 finished networks
        (:func:`ntkit.experiments.movement.movement_vs_width`); ``None`` when there are none."""
        changes = {w: np.stack(c) for w in self.widths if len(c := self.changes.get(str(w), [])) >= 2}
        return movement_vs_width(changes, n_boot=n_boot, seed=seed) if changes else None

    def to_dict(self, *, n_boot: int = N_BOOT) -> dict[str, Any]:
        out = asdict(self)
        out.pop("curves")
        out.pop("changes")
        summary = {}
        for name in MEASURES:
            data = getattr(self, name)
            summary[name] = {
                str(w): {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
                for w in self.widths
                if (v := data.get(str(w)))
            }
        out["summary"] = summary
        out["slopes"] = {
            "movement": self.slope("movement"),
            "dist_linearized": self.slope("dist_linearized"),
            "dist_kernel": self.slope("dist_kernel"),
            "theory_bound": -0.5,
            "theory_mean_change": -1.0,
        }
        # slopes of the per-width means with bootstrap standard errors (resampling initialisations)
        fits = {}
        for name in ("movement", "dist_linearized", "dist_kernel", "init_distance"):
            data = {w: v for w in self.finished_widths() if (v := getattr(self, name).get(str(w)))}
            if data:
                fits[name] = mean_slope(data, n_boot=n_boot).as_dict()
        analysis = self.movement_analysis(n_boot=n_boot)
        if analysis is not None:
            for part, fit in analysis.slopes.items():
                fits[f"movement_{part}"] = fit.as_dict()
            out["movement_parts"] = analysis.to_dict()["parts"]
        out["slope_fits"] = fits
        return out


__all__ = ["MEASURES", "N_BOOT", "DynamicsResult"]
