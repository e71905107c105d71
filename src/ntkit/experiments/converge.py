"""Convergence of the empirical NTK to its infinite-width limit (Jacot et al. 2018, Fig. 1).

For each width ``n`` of a sweep and each of several seeds, a network with ``depth`` hidden layers
of width ``n`` is drawn, its empirical NTK ``Theta_n`` (full output blocks) is computed on the
inputs, and the relative Frobenius distance

    d(n) = || Theta_n - Theta_inf (x) I_k ||_F / || Theta_inf (x) I_k ||_F

is recorded. Theory: fluctuations of the finite-width NTK are ``O(n^{-1/2})``, so the fitted
log-log slope of the mean distance against width is close to ``-1/2``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkit._io import write_text_atomic
from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_float, check_int, describe, renamed_keyword
from ntkit.activations import get_activation
from ntkit.compute import fc_kernel, infinite_kernel
from ntkit.data import circle_inputs, load_array
from ntkit.empirical import empirical_ntk
from ntkit.experiments._options import add_b_std_argument
from ntkit.kernel import Kernel
from ntkit.networks import FCNetwork
from ntkit.nn.arch_spec import ArchSpec, load_arch

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_SEEDS = 10
#: ``ntkit converge --quick``: a few widths and seeds (about 5 s on 2 cores)
QUICK_WIDTHS = (64, 256, 1024)
QUICK_SEEDS = 4


@dataclass
class ConvergenceResult:
    """Outcome of :func:`run_convergence`.

    ``distances[i][s]`` is the relative Frobenius distance of seed ``s`` at ``widths[i]``.
    ``slope`` / ``intercept`` fit ``log d = intercept + slope log n`` to the per-width means
    (``nan`` with fewer than two widths).

    Attributes
    ----------
    widths : list of int
        The finished widths.
    distances : list of list of float
    config : dict
        The settings of the run (inputs, architecture, seeds, dtype).
    slope, intercept : float
    seconds : float
    curves : dict
        ``"limit"``: the row ``Theta_inf(x0, .)``; ``"rows"``: rows of the narrowest and widest networks.
    complete : bool
        False after an interruption.

    Examples
    --------
    >>> from ntkit.experiments.converge import run_convergence
    >>> res = run_convergence(widths=[16, 64], n_seeds=2, progress=False)
    >>> res.widths, len(res.distances[0]), res.complete
    ([16, 64], 2, True)
    >>> sorted(res.to_dict())[:4]
    ['complete', 'config', 'distances', 'intercept']
    """

    widths: list[int]
    distances: list[list[float]]
    config: dict[str, Any]
    slope: float = float("nan")
    intercept: float = float("nan")
    seconds: float = 0.0
    curves: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    @property
    def mean(self) -> list[float]:
        return [float(np.mean(d)) for d in self.distances]

    @property
    def std(self) -> list[float]:
        return [float(np.std(d, ddof=1)) if len(d) > 1 else 0.0 for d in self.distances]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("curves")
        out["mean"] = self.mean
        out["std"] = self.std
        return out


def fit_loglog_slope(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit ``log v = a + s log w``; returns ``(s, a)``.

    Parameters
    ----------
    widths, values : sequence of float
        Positive numbers, one value per width.

    Returns
    -------
    (slope, intercept) : float, float
        NaN with fewer than two widths.

    Examples
    --------
    >>> from ntkit.experiments.converge import fit_loglog_slope
    >>> slope, intercept = fit_loglog_slope([64, 256, 1024], [0.4, 0.2, 0.1])
    >>> round(slope, 6)
    -0.5
    """
    if len(widths) < 2:
        return float("nan"), float("nan")
    s, a = np.polyfit(np.log(np.asarray(widths, float)), np.log(np.asarray(values, float)), 1)
    return float(s), float(a)


def relative_distance(empirical: torch.Tensor, limit_blocks: torch.Tensor) -> float:
    """``||empirical - limit||_F / ||limit||_F``.

    Parameters
    ----------
    empirical : Tensor
        The empirical NTK, e.g. of shape (N, N, k, k).
    limit_blocks : Tensor
        The limit of the same shape (:meth:`ntkit.Kernel.blocks`).

    Returns
    -------
    float

    Examples
    --------
    >>> import torch
    >>> from ntkit.experiments.converge import relative_distance
    >>> relative_distance(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    1.0
    """
    return float(torch.linalg.vector_norm(empirical - limit_blocks) / torch.linalg.vector_norm(limit_blocks))


def run_convergence(
    x: Any | None = None,
    *,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    n_seeds: int = 10,
    depth: int = 3,
    activation: Any = "relu",
    b_std: float = 0.1,
    w_std: float = 1.0,
    out_features: int = 1,
    init: str = "gaussian",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    curve_seeds: int = 10,
    progress: bool = True,
    on_width: Any | None = None,
    arch: str | ArchSpec | None = None,
    beta: float | None = None,
) -> ConvergenceResult:
    """Sample networks over a width sweep and measure their NTK's distance to the limit.

    Parameters
    ----------
    x : array-like of shape (N, n0), optional
        Inputs; default: 64 points on the unit circle (``n0 = 2``).
    widths : sequence of int
        Hidden widths to sweep (every hidden layer has the same width).
    n_seeds : int
        Networks per width (``>= 1``; ``>= 2`` for a spread).
    depth, activation, b_std, w_std, out_features, init
        The fully connected network (:class:`ntkit.FCNetwork`; ``b_std`` the bias scale, ``w_std`` the
        weight scale).
    seed, dtype, device
        Seed of the first network, precision and device of the networks.
    curve_seeds : int
        For the narrowest and widest width, keep the row ``Theta(x0, .)`` of this many networks
        (``x0`` is the input at index ``N // 2``) for plotting.
    on_width : callable, optional
        Called as ``on_width(partial_result)`` after each finished width (used to save progress).
    arch : str or ArchSpec, optional
        Any architecture instead of the fully connected one (text such as
        ``"dense residual(relu, dense, relu, dense) relu dense"`` or a ``.py`` file, see
        :mod:`ntkit.nn.arch_spec`): ``depth``, ``activation`` and ``init`` are then unused, ``b_std`` and
        ``w_std`` are the default scales of its weight layers. The limit is
        :func:`ntkit.infinite_kernel` of the same model.
    progress : bool
        Print progress with an ETA to stderr.
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).

    Returns
    -------
    ConvergenceResult
        If interrupted (Ctrl-C), the widths finished so far with ``complete=False``.

    Raises
    ------
    ValueError
        An empty or non-positive width list, ``n_seeds < 1``, ``depth < 0``, ``b_std < 0``, an unknown
        activation, inputs that are not a 2-D array of finite numbers, an architecture the limit does
        not cover.

    Examples
    --------
    >>> from ntkit.experiments.converge import run_convergence
    >>> res = run_convergence(widths=[32, 128, 512], n_seeds=3, progress=False)
    >>> res.mean[0] > res.mean[-1], -1.0 < res.slope < 0.0  # theory: slope -1/2
    (True, True)
    >>> res = run_convergence(widths=[32, 128], n_seeds=2, progress=False, arch="dense layernorm relu dense")
    >>> res.config["arch"]
    'dense layernorm relu dense'
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.1)
    if x is None:
        x_t, _ = circle_inputs(64, dtype=dtype)
    else:
        x_t = as_tensor(x, "x", dtype=dtype)
    if device is not None:
        x_t = x_t.to(device)
    if isinstance(widths, (int, str)) or len(widths) == 0:
        raise ValueError(f"widths: expected a non-empty list of positive integers, got {describe(widths)}")
    widths = [check_int(w, "widths", minimum=1) for w in widths]
    n_seeds = check_int(n_seeds, "n_seeds", minimum=1)
    depth = check_int(depth, "depth", minimum=0)
    check_float(b_std, "b_std", minimum=0.0)
    act = get_activation(activation)
    spec = load_arch(arch) if isinstance(arch, str) else arch
    in_shape = tuple(int(n) for n in x_t.shape[1:])

    def network(width: int, gen: torch.Generator) -> torch.nn.Module:
        if spec is not None:
            return spec.build(width, in_shape, out_features, w_std=w_std, b_std=b_std, generator=gen, dtype=dtype)
        return FCNetwork(x_t.shape[1], [width] * depth, out_features, activation=act, b_std=b_std, w_std=w_std,
                         init=init, generator=gen, dtype=dtype)

    if spec is None:
        limit = fc_kernel(x_t, depth=depth, activation=act, b_std=b_std, w_std=w_std, dtype=dtype)
    else:  # the widths do not enter the (NTK-parameterized) limit: any width describes it
        limit = infinite_kernel(network(8, torch.Generator().manual_seed(0)), x_t, dtype=dtype)
        assert isinstance(limit, Kernel)
    limit_blocks = limit.blocks(out_features)
    i0 = x_t.shape[0] // 2
    config = {
        "n_inputs": int(x_t.shape[0]),
        "n0": int(x_t.shape[1]),
        "depth": depth,
        "activation": act.name,
        "arch": None if spec is None else spec.source,
        "beta": b_std,  # the key of the summary files
        "w_std": w_std,
        "out_features": out_features,
        "init": init,
        "n_seeds": n_seeds,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
    }
    result = ConvergenceResult(widths=[], distances=[], config=config, complete=False)
    result.curves = {"limit": limit.get("ntk")[i0].cpu().tolist(), "x0_index": i0, "rows": {}}
    cost = [float(w) * w * max(depth - 1, 0) + w for w in widths]  # ~ parameter count per network
    bar = Progress(sum(cost) * n_seeds, "converge", enabled=progress, show_counts=False)
    start = time.perf_counter()
    keep_curves = {widths[0], widths[-1]}
    try:
        for wi, width in enumerate(widths):
            dists: list[float] = []
            rows: list[list[float]] = []
            for s in range(n_seeds):
                gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + width * 1009 + s)
                net = network(width, gen).to(x_t.device)
                theta = empirical_ntk(net, x_t, mode="full")
                dists.append(relative_distance(theta, limit_blocks))
                if width in keep_curves and s < curve_seeds:
                    rows.append(theta[i0, :, 0, 0].cpu().tolist())
                del net, theta
                bar.update(cost[wi], note=f"width {width} seed {s + 1}/{n_seeds} d={dists[-1]:.3g}")
            result.widths.append(width)
            result.distances.append(dists)
            if rows:
                result.curves["rows"][str(width)] = rows
            result.slope, result.intercept = fit_loglog_slope(result.widths, result.mean)
            result.seconds = time.perf_counter() - start
            if on_width is not None:
                on_width(result)
        result.complete = True
    except KeyboardInterrupt:
        result.complete = False
        if progress:
            sys.stderr.write("\ninterrupted: keeping the widths finished so far\n")
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def plot_convergence(result: ConvergenceResult, path: str | Path, *, circle: bool = True) -> Path:
    """Write a two-panel PNG: ``Theta(x0, x)`` of narrow and wide networks against the limit, and
    the distance against width on log-log axes with the fitted slope. Needs matplotlib.

    Parameters
    ----------
    result : ConvergenceResult
    path : str or Path
        Where to write the PNG.
    circle : bool
        The inputs are :func:`ntkit.data.circle_inputs` (plot against the angle); otherwise the inputs
        are sorted by ``Theta_inf(x0, x)``.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from ntkit.experiments.converge import plot_convergence, run_convergence
    >>> res = run_convergence(widths=[16, 64], n_seeds=2, progress=False)
    >>> png = plot_convergence(res, pathlib.Path(tempfile.mkdtemp()) / "ntk.png")
    >>> png.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'ntkit[plot]'") from err
    limit = np.asarray(result.curves["limit"])
    n = limit.shape[0]
    if circle:
        xs = np.linspace(-math.pi, math.pi, n + 1)[:-1]
        xlabel = r"angle $\gamma$ of $x = (\cos\gamma, \sin\gamma)$"
        order: np.ndarray = np.arange(n)
    else:
        order = np.argsort(limit)
        xs = np.arange(n, dtype=float)
        xlabel = r"inputs, sorted by $\Theta_\infty(x_0, x)$"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {0: "tab:green", 1: "tab:red"}
    for idx, (width, rows) in enumerate(sorted(result.curves["rows"].items(), key=lambda kv: int(kv[0]))):
        for r, row in enumerate(rows):
            ax1.plot(xs, np.asarray(row)[order], color=colors[idx % 2], alpha=0.5, lw=1,
                     label=f"width {width}" if r == 0 else None)
    ax1.plot(xs, limit[order], "k--", lw=2, label=r"$\Theta_\infty$")
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel(r"$\Theta(x_0, x)$")
    arch_text = result.config.get("arch")
    what = arch_text if arch_text else f"depth {result.config['depth']}, {result.config['activation']}"
    ax1.set_title(f"NTK at initialisation, {what}")
    ax1.legend()
    w = np.asarray(result.widths, float)
    mean, std = np.asarray(result.mean), np.asarray(result.std)
    ax2.errorbar(w, mean, yerr=std, fmt="o", capsize=3, label="mean ± std over seeds")
    if len(w) >= 2:
        ax2.plot(w, np.exp(result.intercept) * w**result.slope, "k-", label=f"fit: slope {result.slope:.3f}")
        ax2.plot(w, mean[0] * (w / w[0]) ** -0.5, "k:", label="slope -1/2")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("width n")
    ax2.set_ylabel(r"$\|\Theta_n - \Theta_\infty \otimes I\|_F / \|\Theta_\infty \otimes I\|_F$")
    ax2.set_title("convergence to the infinite-width limit")
    ax2.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit converge``."""
    parser.add_argument("--data", help=".npy or .csv file of inputs (rows); default: 64 points on the unit circle")
    parser.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS), help="hidden widths to sweep")
    parser.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, help=f"networks per width (default {DEFAULT_SEEDS})"
    )
    parser.add_argument("--arch", help="any architecture instead of the fully connected one: text such as "
                        "'dense residual(relu, dense, relu, dense) relu dense' or a .py file defining "
                        "build(width, in_shape, out_features) (see ntkit.nn.arch_spec)")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3, i.e. L = 4)")
    parser.add_argument("--activation", default="relu", help="activation name (default relu)")
    add_b_std_argument(parser, 0.1)
    parser.add_argument("--w-std", type=float, default=1.0, help="weight scale (default 1)")
    parser.add_argument("--outputs", type=int, default=1, help="output dimension n_L (default 1)")
    parser.add_argument("--init", default="gaussian", choices=["gaussian", "orthogonal"])
    parser.add_argument("--float32", action="store_true", help="float32 networks (default float64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true",
        help=f"a quick run (seconds): widths {' '.join(map(str, QUICK_WIDTHS))}, {QUICK_SEEDS} seeds (unless given)",
    )
    parser.add_argument("--out", default="ntkit-output/converge", help="output folder for summary.json and ntk.png")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit converge``: print the table and slope, write summary.json and ntk.png."""
    if getattr(args, "quick", False):
        if args.widths == list(DEFAULT_WIDTHS):
            args.widths = list(QUICK_WIDTHS)
        if args.seeds == DEFAULT_SEEDS:
            args.seeds = QUICK_SEEDS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = None if args.data is None else load_array(args.data)
    summary_path = out / "summary.json"

    def save(result: ConvergenceResult) -> None:
        write_text_atomic(summary_path, json.dumps(result.to_dict(), indent=2))

    result = run_convergence(
        x,
        widths=args.widths,
        n_seeds=args.seeds,
        depth=args.depth,
        activation=args.activation,
        b_std=args.b_std,
        w_std=args.w_std,
        out_features=args.outputs,
        init=args.init,
        seed=args.seed,
        dtype=torch.float32 if args.float32 else torch.float64,
        progress=not args.quiet,
        on_width=save,
        arch=args.arch,
    )
    save(result)
    print(f"{'width':>8} {'mean rel. dist':>15} {'std':>10}")
    for w, m, s in zip(result.widths, result.mean, result.std, strict=True):
        print(f"{w:>8d} {m:>15.5f} {s:>10.5f}")
    print(f"log-log slope: {result.slope:.3f} (theory: -0.5)")
    if result.widths:
        try:
            png = plot_convergence(result, out / "ntk.png", circle=x is None)
            print(f"wrote {summary_path} and {png}")
        except ImportError as err:
            print(f"wrote {summary_path}; no plot: {err}")
    if not result.complete:
        print("interrupted: the summary holds the widths finished so far")
        return 130
    return 0


__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_WIDTHS",
    "QUICK_SEEDS",
    "QUICK_WIDTHS",
    "ConvergenceResult",
    "add_arguments",
    "fit_loglog_slope",
    "main",
    "plot_convergence",
    "relative_distance",
    "run_convergence",
]
