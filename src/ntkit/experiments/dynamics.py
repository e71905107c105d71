"""Training dynamics: real networks trained by gradient descent against what the NTK predicts.

The default is the setting of Jacot et al. (2018), Fig. 1: ``depth = 3`` hidden ReLU layers
(``L = 4``), ``n0 = 2``, ``b_std = 0.1``, NTK parameterization, widths 500 and 10000, 10
initialisations each, trained by 200 full-batch gradient-descent steps with learning rate 1.0 on
``f*(x) = x1 x2`` at ``n_train = 8`` training inputs drawn from ``N(0, I_2)`` (the paper does not
state the count; 8 points keep the smallest eigen-direction of ``eta Theta t / N`` at order one, so
the training is visibly in progress at ``t = 200``), and evaluated on ``n_test = 64`` inputs on the
unit circle. Loss ``1/(2N) sum (f - y)^2`` (see :mod:`ntkit.predict`).

For each network it records

* the kernel movement ``||Theta_T - Theta_0||_F / ||Theta_0||_F`` on training and test inputs
  (bounded by ``O(n^{-1/2})``, Jacot et al. 2018, Theorem 2; Lee et al. 2019, Theorem 2.1; its
  expected part is ``O(1/n)``, Dyer & Gur-Ari 2019), and its split across initialisations into a
  mean part and a fluctuation part with bootstrap slopes (:mod:`ntkit.experiments.movement`);
* the RMS distance on the test inputs between the trained network and (a) its linearization
  trained identically (closed form with its own empirical ``Theta_0``), (b) the infinite-width
  kernel prediction from its own ``f_0`` (closed form with ``Theta_inf``) — both vanish as the
  width grows;
* the relative distance of ``Theta_0`` to ``Theta_inf``, and rows ``Theta(x0, .)`` along the circle
  before and after training for the figure.

The NTK-GP over initialisations (Lee et al. 2019, eqs. 15-16) gives the predicted mean and
spread of the trained outputs drawn in the figure. Empirical NTKs use the structured
(layer-factored) implementation of :func:`ntkit.empirical_ntk`: Gram products of layer inputs and
cotangents, never a Jacobian.

The result record is :mod:`ntkit.experiments.dynamics_result`, the figure
:mod:`ntkit.experiments.dynamics_plot`; this module runs the experiment and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkit._io import write_text_atomic
from ntkit._progress import Progress
from ntkit._validation import check_float, check_int, describe, renamed_keyword
from ntkit.activations import get_activation
from ntkit.compute import fc_kernel
from ntkit.data import circle_inputs
from ntkit.empirical import empirical_ntk
from ntkit.experiments._options import add_b_std_argument
from ntkit.experiments.dynamics_plot import plot_dynamics
from ntkit.experiments.dynamics_result import MEASURES, N_BOOT, DynamicsResult
from ntkit.networks import FCNetwork
from ntkit.predict import LearningRateWarning, gradient_descent_mse, gradient_descent_mse_ensemble, max_learning_rate
from ntkit.train import kernel_movement, train_gd

DEFAULT_WIDTHS = (500, 10000)


def target_function(x: torch.Tensor) -> torch.Tensor:
    """``f*(x) = x1 x2`` as a column (N, 1).

    Parameters
    ----------
    x : Tensor of shape (N, 2)

    Returns
    -------
    Tensor of shape (N, 1)

    Examples
    --------
    >>> import torch
    >>> from ntkit.experiments.dynamics import target_function
    >>> target_function(torch.tensor([[2.0, 3.0]]))
    tensor([[6.]])
    """
    return (x[:, 0] * x[:, 1])[:, None]


def run_dynamics(
    *,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    n_inits: int = 10,
    n_train: int = 8,
    n_test: int = 64,
    depth: int = 3,
    activation: Any = "relu",
    b_std: float = 0.1,
    learning_rate: float = 1.0,
    steps: int = 200,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
    on_init: Callable[[DynamicsResult], None] | None = None,
    beta: float | None = None,
) -> DynamicsResult:
    """Train networks of each width from several initialisations and compare with the NTK predictions.

    Parameters
    ----------
    widths : sequence of int
        Hidden widths (every hidden layer has the same width).
    n_inits : int
        Initialisations per width.
    n_train : int
        Training inputs ``x ~ N(0, I_2)`` (seeded by ``seed``) with targets ``x1 x2``.
    n_test : int
        Test inputs on the unit circle (:func:`ntkit.data.circle_inputs`); ``x0 = (1, 0)``.
    depth, activation, b_std
        The architecture (``n0 = 2``, one output, NTK parameterization; ``b_std`` the bias scale).
    learning_rate, steps
        Full-batch gradient descent on ``1/(2N) sum (f - y)^2``.
    on_init : callable, optional
        Called with the partial result after each finished network (to save progress).
    beta : float, optional
        Deprecated alias of ``b_std`` (a ``DeprecationWarning``).

    Returns
    -------
    DynamicsResult
        On Ctrl-C, the networks finished so far with ``complete=False``.

    Raises
    ------
    ValueError
        An empty or non-positive width list, ``n_inits < 1``, ``n_train < 1``, ``n_test < 2``,
        ``depth < 1``, ``b_std < 0``, ``learning_rate <= 0``, ``steps < 0``, an unknown activation.

    Examples
    --------
    >>> from ntkit.experiments.dynamics import run_dynamics
    >>> res = run_dynamics(widths=[32, 128], n_inits=2, steps=20, n_test=8, progress=False)
    >>> [round(m, 1) for m in res.means("final_loss")] < [1.0, 1.0], len(res.means("movement"))
    (True, 2)
    """
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.1)
    if isinstance(widths, (int, str)) or len(widths) == 0:
        raise ValueError(f"widths: expected a non-empty list of positive integers, got {describe(widths)}")
    widths = [check_int(w, "widths", minimum=1) for w in widths]
    n_inits = check_int(n_inits, "n_inits", minimum=1)
    n_train = check_int(n_train, "n_train", minimum=1)
    n_test = check_int(n_test, "n_test", minimum=2)
    depth = check_int(depth, "depth", minimum=1)
    b_std = check_float(b_std, "b_std", minimum=0.0)
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    steps = check_int(steps, "steps", minimum=0)
    act = get_activation(activation)

    gen = torch.Generator().manual_seed(check_int(seed, "seed"))
    x_train = torch.randn(n_train, 2, generator=gen, dtype=torch.float64).to(dtype)
    y_train = target_function(x_train)
    x_test, gamma = circle_inputs(n_test, dtype=dtype)
    x_all = torch.cat([x_train, x_test])
    i0 = n_train + n_test // 2  # x0 = (1, 0) in x_all

    lim = fc_kernel(x_all, depth=depth, activation=act, b_std=b_std, dtype=torch.float64)
    ntk_inf, nngp_inf = lim.get("ntk"), lim.nngp
    tr, te = slice(0, n_train), slice(n_train, None)
    kernel_fn = gradient_descent_mse(ntk_inf[tr, tr], y_train, learning_rate=learning_rate, discrete=True)
    ens = gradient_descent_mse_ensemble(
        ntk_inf[tr, tr], nngp_inf[tr, tr], y_train, learning_rate=learning_rate, discrete=True
    )(steps, ntk_inf[te, tr], nngp_inf[te, tr], nngp_inf[te, te].diagonal())
    assert ens.cov is not None
    lr_max = max_learning_rate(ntk_inf[tr, tr])
    if learning_rate >= lr_max:
        warnings.warn(
            f"learning_rate {learning_rate:.4g} is above the maximum stable rate {lr_max:.4g} of the limiting NTK",
            LearningRateWarning,
            stacklevel=2,
        )
    config = {
        "depth": depth,
        "activation": act.name,
        "beta": b_std,  # the key of the summary files
        "n0": 2,
        "n_train": n_train,
        "n_test": n_test,
        "n_inits": n_inits,
        "learning_rate": learning_rate,
        "steps": steps,
        "seed": seed,
        "loss": "1/(2N) sum (f - y)^2",
        "max_learning_rate_infinite": lr_max,
        "dtype": str(dtype).replace("torch.", ""),
    }
    result = DynamicsResult(widths=widths, config=config)
    result.curves = {
        "gamma": gamma.tolist(),
        "limit_row": ntk_inf[i0, te].tolist(),
        "target": target_function(x_test)[:, 0].tolist(),
        "ensemble_mean": ens.mean[:, 0].tolist(),
        "ensemble_std": ens.cov.sqrt().tolist(),
        "rows_init": {},
        "rows_trained": {},
        "outputs": {},
    }
    # work per network ~ (hidden-to-hidden weights + a fixed per-step overhead) x steps
    cost = [(float(w) * w * max(depth - 1, 1) + 2e6) * (steps + 2) for w in widths]
    bar = Progress(sum(cost) * n_inits, "dynamics", enabled=progress, show_counts=False)
    start = time.perf_counter()
    try:
        for wi, width in enumerate(widths):
            key = str(width)
            for name in MEASURES:
                getattr(result, name)[key] = []
            result.changes[key] = []
            for name in ("rows_init", "rows_trained", "outputs"):
                result.curves[name][key] = []
            for s in range(n_inits):
                g = torch.Generator().manual_seed(seed * 1_000_003 + width * 1009 + s)
                net = FCNetwork(2, [width] * depth, 1, activation=act, b_std=b_std, generator=g, dtype=dtype)
                theta0 = empirical_ntk(net, x_all, mode="trace", implementation="structured").to(torch.float64)
                with torch.no_grad():
                    f0 = net(x_all).to(torch.float64)
                lin = gradient_descent_mse(theta0[tr, tr], y_train, learning_rate=learning_rate, discrete=True)(
                    steps, f0[tr], f0[te], theta0[te, tr]
                )
                kern = kernel_fn(steps, f0[tr], f0[te], ntk_inf[te, tr])
                hist = train_gd(
                    net, x_train, y_train, learning_rate=learning_rate, steps=steps, check_learning_rate=False
                )
                theta_t = empirical_ntk(net, x_all, mode="trace", implementation="structured").to(torch.float64)
                with torch.no_grad():
                    ft = net(x_test).to(torch.float64)
                assert lin.test is not None and kern.test is not None
                result.movement[key].append(kernel_movement(theta0, theta_t))
                result.changes[key].append(((theta_t - theta0) / torch.linalg.vector_norm(theta0)).numpy())
                result.dist_linearized[key].append(float(torch.sqrt(((ft - lin.test) ** 2).mean())))
                result.dist_kernel[key].append(float(torch.sqrt(((ft - kern.test) ** 2).mean())))
                result.init_distance[key].append(
                    float(torch.linalg.vector_norm(theta0 - ntk_inf) / torch.linalg.vector_norm(ntk_inf))
                )
                result.final_loss[key].append(hist.loss[-1])
                result.curves["rows_init"][key].append(theta0[i0, te].tolist())
                result.curves["rows_trained"][key].append(theta_t[i0, te].tolist())
                result.curves["outputs"][key].append(ft[:, 0].tolist())
                del net
                result.seconds = time.perf_counter() - start
                bar.update(
                    cost[wi],
                    note=f"width {width} init {s + 1}/{n_inits} movement {result.movement[key][-1]:.3g}",
                )
                if on_init is not None:
                    on_init(result)
        result.complete = True
    except KeyboardInterrupt:
        result.complete = False
        if progress:
            sys.stderr.write("\ninterrupted: keeping the networks finished so far\n")
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit dynamics``."""
    parser.add_argument(
        "--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS), help="hidden widths (default 500 10000)"
    )
    parser.add_argument("--inits", type=int, default=10, help="initialisations per width (default 10)")
    parser.add_argument("--steps", type=int, default=200, help="gradient-descent steps (default 200)")
    parser.add_argument("--lr", type=float, default=1.0, help="learning rate (default 1.0; loss 1/(2N) sum (f-y)^2)")
    parser.add_argument("--train-points", type=int, default=8, help="training inputs ~ N(0, I) (default 8)")
    parser.add_argument("--test-points", type=int, default=64, help="test inputs on the unit circle (default 64)")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3, i.e. L = 4)")
    parser.add_argument("--activation", default="relu", help="activation name (default relu)")
    add_b_std_argument(parser, 0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float32", action="store_true", help="float32 networks (default float64)")
    parser.add_argument(
        "--quick", action="store_true", help="a quick run: widths 250 1000 4000, 4 inits, 100 steps (unless given)"
    )
    parser.add_argument("--out", default="ntkit-output/dynamics", help="folder for summary.json and dynamics.png")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit dynamics``: print the table and slopes, write summary.json and dynamics.png."""
    if args.quick:
        if args.widths == list(DEFAULT_WIDTHS):
            args.widths = [250, 1000, 4000]
        if args.inits == 10:
            args.inits = 4
        if args.steps == 200:
            args.steps = 100
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"

    def save(result: DynamicsResult, n_boot: int = N_BOOT) -> dict[str, Any]:
        summary = result.to_dict(n_boot=n_boot)
        write_text_atomic(summary_path, json.dumps(summary, indent=2))
        return summary

    def progress_save(result: DynamicsResult) -> None:
        save(result, n_boot=0)  # after each network: slopes without standard errors (cheap)

    result = run_dynamics(
        widths=args.widths,
        n_inits=args.inits,
        n_train=args.train_points,
        n_test=args.test_points,
        depth=args.depth,
        activation=args.activation,
        b_std=args.b_std,
        learning_rate=args.lr,
        steps=args.steps,
        seed=args.seed,
        dtype=torch.float32 if args.float32 else torch.float64,
        progress=not args.quiet,
        on_init=progress_save,
    )
    fits = save(result)["slope_fits"]
    print(f"{'width':>8} {'inits':>5} {'movement':>12} {'trained-lin':>12} {'trained-kernel':>15} {'|Th0-Thinf|':>12}")
    for w in result.finished_widths():
        k = str(w)
        print(
            f"{w:>8d} {len(result.movement[k]):>5d} {np.mean(result.movement[k]):>12.4g} "
            f"{np.mean(result.dist_linearized[k]):>12.4g} {np.mean(result.dist_kernel[k]):>15.4g} "
            f"{np.mean(result.init_distance[k]):>12.4g}"
        )

    def fmt(name: str) -> str:
        f = fits.get(name)
        return "n/a" if f is None else f"{f['slope']:.3f} ± {f['stderr']:.3f}"

    print(
        f"log-log slopes vs width (± bootstrap s.e. over inits): movement {fmt('movement')} "
        f"[mean part {fmt('movement_mean')}, fluctuation part {fmt('movement_fluctuation')}]; "
        f"trained-linearized {fmt('dist_linearized')}; trained-kernel {fmt('dist_kernel')} "
        "(movement: bound -1/2, expected change -1)"
    )
    print(f"runtime {result.seconds:.1f} s")
    if result.finished_widths():
        try:
            png = plot_dynamics(result, out / "dynamics.png")
            print(f"wrote {summary_path} and {png}")
        except ImportError as err:
            print(f"wrote {summary_path}; no plot: {err}")
    if not result.complete:
        print("interrupted: the summary holds the networks finished so far")
        return 130
    return 0


__all__ = [
    "DEFAULT_WIDTHS",
    "DynamicsResult",
    "add_arguments",
    "main",
    "plot_dynamics",
    "run_dynamics",
    "target_function",
]
