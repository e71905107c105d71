"""The figure of ``ntkit dynamics``: NTK rows, trained outputs against the NTK-GP, movement against width.

Split from :mod:`ntkit.experiments.dynamics` (which runs the experiment and re-exports this name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntkit.experiments.dynamics_result import DynamicsResult


def plot_dynamics(result: DynamicsResult, path: str | Path) -> Path:
    """Write a three-panel PNG (NTK rows before/after training vs the limit; trained outputs vs the
    NTK-GP prediction; kernel movement and distances vs width, log-log). Needs matplotlib.

    Parameters
    ----------
    result : DynamicsResult
    path : str or Path
        Where to write the PNG.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from ntkit.experiments.dynamics import plot_dynamics, run_dynamics
    >>> res = run_dynamics(widths=[32, 64], n_inits=2, steps=5, n_test=8, progress=False)
    >>> png = plot_dynamics(res, pathlib.Path(tempfile.mkdtemp()) / "dynamics.png")
    >>> png.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'ntkit[plot]'") from err
    c = result.curves
    gamma = np.asarray(c["gamma"])
    widths = result.finished_widths()
    palette = ["tab:green", "tab:red", "tab:blue", "tab:purple", "tab:orange", "tab:brown"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    ax = axes[0]
    for j, w in enumerate(widths):
        col = palette[j % len(palette)]
        for r, (row0, rowt) in enumerate(zip(c["rows_init"][str(w)], c["rows_trained"][str(w)], strict=True)):
            ax.plot(gamma, row0, color=col, lw=0.8, alpha=0.6, ls="--", label=f"n={w}, t=0" if r == 0 else None)
            label = f"n={w}, t={result.config['steps']}" if r == 0 else None
            ax.plot(gamma, rowt, color=col, lw=0.8, alpha=0.9, label=label)
    ax.plot(gamma, c["limit_row"], "k-", lw=2, label=r"$\Theta_\infty$")
    ax.set_xlabel(r"$\gamma$, $x = (\cos\gamma, \sin\gamma)$")
    ax.set_ylabel(r"$\Theta(x_0, x)$, $x_0 = (1, 0)$")
    ax.set_title("NTK at initialisation (dashed) and after training (solid)")
    ax.legend(fontsize=8)

    ax = axes[1]
    mean, std = np.asarray(c["ensemble_mean"]), np.asarray(c["ensemble_std"])
    ax.fill_between(gamma, mean - 2 * std, mean + 2 * std, color="0.85", label="NTK-GP mean ± 2 sd")
    ax.plot(gamma, mean, "k-", lw=2, label="NTK-GP mean (eq. 15)")
    ax.plot(gamma, c["target"], "k:", lw=1.5, label=r"$f^*(x) = x_1 x_2$")
    for j, w in enumerate(widths):
        col = palette[j % len(palette)]
        for r, out in enumerate(c["outputs"][str(w)]):
            ax.plot(gamma, out, color=col, lw=0.8, alpha=0.7, label=f"trained, n={w}" if r == 0 else None)
    ax.set_xlabel(r"$\gamma$")
    ax.set_ylabel(r"$f_t(x)$")
    ax.set_title(f"outputs after {result.config['steps']} GD steps vs the kernel prediction")
    ax.legend(fontsize=8)

    ax = axes[2]
    w_arr = np.asarray(widths, float)
    for name, label, marker in (
        ("movement", r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$", "o"),
        ("dist_linearized", "RMS(trained - linearized)", "s"),
        ("dist_kernel", r"RMS(trained - $\Theta_\infty$ prediction)", "^"),
    ):
        data = getattr(result, name)
        m = np.asarray([np.mean(data[str(w)]) for w in widths])
        sd = np.asarray([np.std(data[str(w)], ddof=1) if len(data[str(w)]) > 1 else 0.0 for w in widths])
        slope = result.slope(name)
        ax.errorbar(w_arr, m, yerr=sd, fmt=marker + "-", capsize=3, label=f"{label}: slope {slope:.2f}")
    analysis = result.movement_analysis(n_boot=200)
    if analysis is not None and len(analysis.widths) >= 2:
        aw = np.asarray(analysis.widths, float)
        for part, marker in (("mean", "v"), ("fluctuation", "D")):
            vals = np.asarray([getattr(analysis.parts[w], part) for w in analysis.widths])
            fit = analysis.slopes[part]
            label = f"movement, {part} part: slope {fit.slope:.2f} ± {fit.stderr:.2f}"
            ax.plot(aw, vals, marker + "--", lw=1, label=label)
    if len(w_arr) >= 2:
        m0 = np.mean(result.movement[str(widths[0])])
        ax.plot(w_arr, m0 * (w_arr / w_arr[0]) ** -0.5, "k:", label="slope -1/2 (Jacot/Lee bound)")
        ax.plot(w_arr, m0 * (w_arr / w_arr[0]) ** -1.0, "k-.", lw=0.8, label="slope -1 (expected change)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width n")
    ax.set_title("movement and distance to the kernel prediction vs width")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["plot_dynamics"]
