"""``ntkit bench fashion``: exact and sketched infinite-width kernels on the whole of Fashion-MNIST.

The protocol of Novak et al. (2019), "Bayesian deep convolutional networks with many channels are
Gaussian processes" (ICLR; Table 1: FCN-GP and CNN-GP without pooling on Fashion-MNIST), with the
targets and solves of Lee et al. (2018), "Deep neural networks as Gaussian processes" (ICLR), on the
data of Xiao et al. (2017). Data, preprocessing and split: :mod:`ntkit.experiments.fashion_data`
(50k train / 10k validation / 10k test, a final fit on all 60k).

Stages (``--stages``), each timed with its peak memory (:class:`~ntkit.experiments.fashion_meter.Meter`)
and recorded in ``OUT/records/<key>/<stage>.json`` so that a rerun skips finished work:

* ``fc`` / ``cnn``: exact NNGP and NTK of ``fcD`` (:func:`ntkit.nn.fc`, ``D`` hidden ReLU layers on the
  flattened image) and ``vD`` (CNTK-V / CNN-GP without pooling, :func:`ntkit.nn.cntk` with
  ``readout="flatten"``): first a sweep over the depths (``--fc-depths``, ``--cnn-depths``) on the
  first ``--n-sweep`` training images against the validation split -- blocks ``K(S, S)``, ``K(V, S)``,
  one Cholesky factorisation per ridge of the grid --, then, at the depth and ridge chosen for each
  of NNGP and NTK, the full-size blocks ``K(pool, pool)`` and ``K(test, pool)`` (pool = train + validation;
  NNGP and NTK in one pass when both chose the same kernel and the free disk holds both, else one kernel
  at a time: :meth:`Runner.shares_pass`) and the final solve (:func:`~ntkit.experiments.fashion_solve.solve_stored`:
  float64 Cholesky where it fits ``--memory-budget``, else a float32 factor with float64 iterative
  refinement; the unrefined float32 accuracy beside it). Kernel blocks live in ``OUT/kernels/<key>`` as ``.npy`` files,
  resumed tile by tile (:mod:`ntkit.experiments.fashion_kernels`). The accuracy at training sizes
  ``--sizes`` (prefixes of the pool, class-balanced) comes from sub-blocks of the same kernel.
* activations and variances: the sweep runs every depth with every activation of ``--fc-activations`` /
  ``--cnn-activations`` (ReLU by default; erf is the papers' other one), every weight variance of ``--fc-w-vars`` /
  ``--cnn-w-vars`` (``w_var = sigma_w^2``, the same in every layer; 2 by default) and every bias standard deviation
  of ``--fc-b-stds`` / ``--cnn-b-stds`` (``b_std``, the same in every layer), and the final fit takes the best
  (depth, activation, ``w_var``, ``b_std``, ridge) on the validation split for each of NNGP and NTK (ties: the
  shallowest depth, then the activation listed first, then the smallest ``w_var``, then the smallest ``b_std``,
  then the smallest ridge) --
  Lee et al. (2018) and Novak et al. (2019) search the same ``(sigma_w^2, sigma_b^2)`` plane. What each
  direction does: the ReLU recursions ``K^{l+1} = w^2 E[relu(u) relu(v)] + b^2`` and
  ``Theta^{l+1} = K^{l+1} + w^2 E[relu'(u) relu'(v)] Theta^l`` (``(u, v) ~ N(0, K^l)``) are positively
  homogeneous, so multiplying the first layer's ``w_std`` and every layer's ``b_std`` by ``c`` multiplies
  NNGP and NTK by ``c^2``, which the ridge (relative to the mean diagonal) absorbs: predictions depend
  on ``b_std / w_std`` of the first layer, not on the two apart. The weight variance of the layers
  above is another direction: ``w^2 = 2 a`` acts as ``w^2 = 2`` with biases ``b^2 / a^l`` decaying
  (``a > 1``) or growing (``a < 1``) over depth ``l``, up to scale; ``w^2 = 2`` is the ReLU value that keeps
  ``diag K`` fixed without biases. erf is bounded, not homogeneous: ``w_var`` and ``b_std`` each matter, and
  ``E[erf(u) erf(v)] = (2 / pi) arcsin(2 k_uv / sqrt((1 + 2 k_uu)(1 + 2 k_vv)))`` (Williams 1997) saturates
  as the variances grow. A bias grid of one value, ``0``, and the default weight grid, ``2``,
  give the sweep over depth and ridge alone (the kernels, records and results of a run without biases).
  The CNN grids are small by default: each value is a whole CNN sweep. A sweep's kernel blocks are deleted once
  its record is written (nothing reads them again; 3.2 GB per kernel at 10k + 10k).
* ``features``: CNTK-GAP / Myrtle kernels through random features (``--features gap3-rf1024 ...``):
  ridge regression in feature space (never an N x N matrix), ridge chosen on the validation split; the
  features are stored batch by batch in ``OUT/kernels/<key>/features`` and resumed (N x m float32).

Outputs: ``OUT/results.md`` (the table beside the published numbers, stage costs, learning curve),
``OUT/summary.json``, ``OUT/learning_curve.png`` (needs matplotlib, ``ntkit[plot]``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkit._io import write_text_atomic
from ntkit.experiments.fashion_data import N_CLASSES, load_fashion, paper_split, standardise_global
from ntkit.experiments.fashion_kernels import WHICH, exact_block, feature_fit, read_json
from ntkit.experiments.fashion_meter import Meter
from ntkit.experiments.fashion_report import write_report
from ntkit.experiments.fashion_solve import (
    REG_GRID,
    accuracy,
    choose,
    predict_stored,
    ridge_sweep,
    solve_stored,
)
from ntkit.experiments.images_data import standardise
from ntkit.experiments.images_eval import centred_targets
from ntkit.experiments.images_kernels import DEFAULT_ACTIVATION, RELU_W_VAR, KernelSpec, parse_kernels

RESULT_VERSION = 1
STAGES = ("fc", "cnn", "features")
#: Training sizes from which a final solve also reports the float32 factor's unrefined accuracy beside the
#: float64 (or refined) one; the full size always does.
PRECISION_FROM = 20_000
SIZES = (1000, 5000, 10000, 20000, 50000, 60000)
#: Bias standard deviations of the sweeps (module notes).
FC_B_STDS = (0.0, 0.1, 0.3, 1.0)
CNN_B_STDS = (0.0,)
#: Weight variance of the sweeps by default (``sigma_w^2 = 2``, ``w_std = sqrt(2)``: module notes).
W_VARS = (RELU_W_VAR,)
#: Activations of the sweeps by default (ReLU alone; ``--fc-activations relu erf`` adds erf).
ACTIVATIONS = (DEFAULT_ACTIVATION,)


@dataclass(frozen=True)
class Settings:
    """Everything ``ntkit bench fashion`` runs with (see :func:`ntkit.experiments.fashion_cli.add_arguments`)."""

    stages: tuple[str, ...] = STAGES
    n_train: int = 50_000
    n_val: int = 10_000
    n_test: int = 10_000
    n_sweep: int = 10_000
    fc_depths: tuple[int, ...] = (1, 2, 3, 4, 5)
    cnn_depths: tuple[int, ...] = (1, 2, 3, 4)
    fc_b_stds: tuple[float, ...] = FC_B_STDS
    cnn_b_stds: tuple[float, ...] = CNN_B_STDS
    fc_w_vars: tuple[float, ...] = W_VARS
    cnn_w_vars: tuple[float, ...] = W_VARS
    fc_activations: tuple[str, ...] = ACTIVATIONS
    cnn_activations: tuple[str, ...] = ACTIVATIONS
    features: tuple[str, ...] = ("gap3-rf256",)  # m = 1024 would take ~12 h on 2 cores at 28x28
    sizes: tuple[int, ...] = SIZES
    precision: str = "auto"
    memory_budget: str = "16G"
    kernel_dtype: str = "float64"
    preprocess: str = "global"
    seed: int = 0
    data_dir: str | None = None
    finals: tuple[str, ...] = WHICH
    final_ridge: str = "sweep"

    @property
    def key(self) -> str:
        """Folder name of this data configuration's kernels and records."""
        dtype = "" if self.kernel_dtype == "float64" else f"-{self.kernel_dtype}"
        return (f"fashion-{self.n_train}+{self.n_val}+{self.n_test}-sweep{min(self.n_sweep, self.n_train)}"
                f"-{self.preprocess}-seed{self.seed}{dtype}")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the exact kernels are computed and stored in (the solves accumulate in float64)."""
        return {"float64": torch.float64, "float32": torch.float32}[self.kernel_dtype]


@dataclass
class Data:
    """Preprocessed images (float64, ``(N, 1, 28, 28)``) and labels of every part of the split."""

    x_pool: torch.Tensor
    y_pool: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray
    n_fit: int  # the pool's first n_fit images are the training split, the rest the validation split
    n_sweep: int
    source: str

    @property
    def sweep(self) -> np.ndarray:
        """Positions in the pool of the sweep's fitting images (a prefix of the training split)."""
        return np.arange(self.n_sweep)

    @property
    def val(self) -> np.ndarray:
        """Positions in the pool of the validation split."""
        return np.arange(self.n_fit, len(self.y_pool))


def prepare(s: Settings) -> Data:
    """Load, split and preprocess (statistics of the pool's pixels; test images never enter them)."""
    raw = load_fashion(s.data_dir)
    split = paper_split(raw.y_train, raw.y_test, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test, seed=s.seed)
    pool = split.pool
    images = np.concatenate([raw.x_train[pool], raw.x_test[split.test]])
    if s.preprocess == "global":
        x = torch.as_tensor(standardise_global(images, np.arange(len(pool))))[:, None]
    else:
        x = standardise(torch.as_tensor(images.astype(np.float64) / 255.0)[:, None], np.arange(len(pool)), "image")
    return Data(x[: len(pool)], raw.y_train[pool], x[len(pool):], raw.y_test[split.test], len(split.train),
                min(s.n_sweep, len(split.train)), raw.source)


class Runner:
    """Runs the stages of one configuration into ``out`` (module notes)."""

    def __init__(self, s: Settings, data: Data, out: Path, *, progress: bool) -> None:
        self.s, self.data, self.out, self.progress = s, data, out, progress
        self.kernels = out / "kernels" / s.key
        self.records = out / "records" / s.key
        #: what every record depends on: the data (the kernels' folder key says the same)
        self.protocol = {"version": RESULT_VERSION, "key": s.key}

    def say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    def cached(self, name: str, compute: Callable[[], dict[str, Any]], **depends: Any) -> dict[str, Any]:
        """The record ``name`` (recomputed when absent or made with other settings), with its cost.

        ``depends``: the settings besides the data that the record depends on (JSON-serialisable).
        """
        path = self.records / f"{name}.json"
        rec = read_json(path)
        protocol = json.loads(json.dumps({**self.protocol, **depends}))  # tuples as lists, as a record reads back
        if rec is not None and rec.get("protocol") == protocol:
            self.say(f"  {name}: done before ({rec['cost']['seconds']:.1f} s)")
            return rec
        with Meter() as meter:
            rec = compute()
        rec = {"protocol": protocol, "name": name, **rec, "cost": meter.record()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(rec))
        cost = rec["cost"]
        self.say(f"  {name}: {cost['seconds']:.1f} s, peak {cost['peak_anon_gb']:.2f} GB (load {cost['load']})")
        return rec

    # ------------------------------------------------------------------------------ exact kernels

    def sweep(self, spec: KernelSpec) -> dict[str, Any]:
        """Blocks on the sweep subset and the validation split; validation accuracy per ridge."""
        d = self.data
        x_fit, x_val = d.x_pool[: d.n_sweep], d.x_pool[d.val]
        t_fit = centred_targets(d.y_pool[: d.n_sweep], N_CLASSES)

        def compute() -> dict[str, Any]:
            with Meter() as m_kernel:
                fit = exact_block(spec, x_fit, None, self.kernels / "sweep" / f"{spec.token}_fit.npy",
                                  progress=self.progress, dtype=self.s.dtype)
                val = exact_block(spec, x_val, x_fit, self.kernels / "sweep" / f"{spec.token}_val.npy",
                                  progress=self.progress, dtype=self.s.dtype)
            grids = {}
            with Meter() as m_solve:
                for which in WHICH:
                    grids[which] = ridge_sweep(fit.kernels[which], t_fit, val.kernels[which], d.y_pool[d.val])
            return {"kernel": spec.token, "depth": spec.depth, "activation": spec.activation, "b_std": spec.b_std,
                    "w_var": spec.w_var, "regs": list(REG_GRID),
                    "val_acc": grids,
                    "kernel_cost": {**m_kernel.record(), "compute_seconds": fit.seconds + val.seconds,
                                    "pairs": fit.pairs + val.pairs},
                    "solve_cost": m_solve.record()}

        rec = self.cached(f"sweep-{spec.token}", compute)
        for part in ("fit", "val"):  # the record holds all the sweep needs: free the disk (module notes)
            block = self.kernels / "sweep" / f"{spec.token}_{part}.npy"
            for path in (block, block.with_suffix(".json"), block.with_name(block.name + ".ledger")):
                path.unlink(missing_ok=True)
        return rec

    def final(self, spec: KernelSpec, which: str, reg: float, *, stored: str | None = None) -> dict[str, Any]:
        """Full-size blocks of ``spec``, the final solve of ``which`` at ``reg``, test accuracy and learning curve.

        ``stored``: what the blocks hold, ``which`` (default) or ``"both"`` when the NNGP and NTK finals share
        one kernel pass (:meth:`shares_pass`).
        """
        d = self.data
        folder = self.kernels / "final"
        stored = which if stored is None else stored

        def blocks() -> tuple[Any, Any, dict[str, Any]]:
            with Meter() as meter:
                pool = exact_block(spec, d.x_pool, None, folder / f"{spec.token}_{stored}_pool.npy", which=stored,
                                   progress=self.progress, dtype=self.s.dtype)
                test = exact_block(spec, d.x_test, d.x_pool, folder / f"{spec.token}_{stored}_test.npy",
                                   which=stored, progress=self.progress, dtype=self.s.dtype)
            cost = {**meter.record(), "compute_seconds": pool.seconds + test.seconds, "pairs": pool.pairs + test.pairs}
            return pool, test, cost

        def compute() -> dict[str, Any]:
            pool, test, kernel_cost = blocks()
            k_pool, k_test = pool.kernels[which], test.kernels[which]
            choice, solved = (None, {}) if self.s.final_ridge == "sweep" else \
                self.full_size_ridge(spec, which, k_pool, reg)
            chosen = reg if choice is None else choice["reg"]
            sizes = sorted({n for n in self.s.sizes if n < len(d.y_pool)} | {len(d.y_pool)})
            curve = []
            for n in sizes:
                self.say(f"  {spec.name} {which}: solve on {n} images")
                last = n == len(d.y_pool)
                shared = solved.get(chosen) if n == d.n_fit else None  # solved for the ridge choice already
                with Meter() as meter:
                    acc, info = self.fit_predict(k_pool, k_test, n, chosen, self.s.precision, solved=shared)
                row = {"n": n, "test_acc": acc, **info, "cost": meter.record()}
                if shared is not None:
                    row["solved_in"] = "ridge_choice"  # its solve's cost is in the ridge choice's record
                first = row.pop("first_acc", None)
                compare = last or n >= PRECISION_FROM  # the precision effect (Lee et al. 2020) at the large sizes
                if compare and row["precision"] == "float32":  # the unrefined float32 answer came with it
                    row["float32_plain"] = {"test_acc": first, "residuals": row["residuals"][:1], "cost": None}
                elif compare and row["precision"] == "float64":
                    with Meter() as meter:
                        acc32, info32 = self.fit_predict(k_pool, k_test, n, chosen, "float32-plain")
                    row["float32_plain"] = {"test_acc": acc32, **info32, "cost": meter.record()}
                curve.append(row)
            return {"kernel": spec.token, "activation": spec.activation, "b_std": spec.b_std, "w_var": spec.w_var,
                    "which": which, "reg": chosen,
                    "sweep_reg": reg, "ridge_choice": choice, "n_pool": len(d.y_pool), "n_test": len(d.y_test),
                    "test_acc": curve[-1]["test_acc"], "curve": curve, "kernel_cost": kernel_cost}

        full = {} if self.s.final_ridge == "sweep" else {"final_ridge": self.s.final_ridge}  # old records stay valid
        return self.cached(f"final-{spec.token}-{which}", compute, reg=reg, sizes=self.s.sizes,
                           precision=self.s.precision, memory_budget=self.s.memory_budget, **full)

    def full_size_ridge(self, spec: KernelSpec, which: str, k_pool: np.ndarray, reg: float
                        ) -> tuple[dict[str, Any], dict[float, tuple[np.ndarray, dict[str, Any]]]]:
        """The ridge of the final fit chosen at full size (``--final-ridge validation``): the sweep's ridge and
        its half-decade neighbours, each fitted on the whole training split (the pool's first ``n_fit``
        images: blocks of the stored final kernel) and scored on the validation split, the best one kept
        (ties: the smallest). The papers' protocol (50k train / 10k validation); three training-size solves.

        Returns the record and every candidate's solve ``{ridge: (alpha, info)}`` (the learning curve's point at
        the training split's size reuses the chosen one)."""
        d = self.data
        regs = [float(f"{reg * f:.3g}") for f in (10**-0.5, 1.0, 10**0.5)]
        val_acc, solved = [], {}
        targets = centred_targets(d.y_pool[: d.n_fit], N_CLASSES)
        with Meter() as meter:
            for r in regs:
                self.say(f"  {spec.name} {which}: ridge {r:g} on {d.n_fit} training images, scored on validation")
                alpha, info = solve_stored(k_pool[: d.n_fit, : d.n_fit], targets, r, precision=self.s.precision,
                                           memory_budget=self.s.memory_budget, keep_first=True)
                solved[r] = (alpha, info)
                val_acc.append(accuracy(predict_stored(k_pool[d.n_fit:, : d.n_fit], alpha, info["scale"]),
                                        d.y_pool[d.n_fit:]))
        best = int(np.argmax(val_acc))
        self.say(f"  {spec.name} {which}: validation " + ", ".join(f"{r:g}: {100 * a:.2f}%" for r, a in
                                                                  zip(regs, val_acc, strict=True)))
        record = {"regs": regs, "val_acc": val_acc, "reg": regs[best], "n_train": d.n_fit, "cost": meter.record()}
        return record, solved

    def fit_predict(self, k_pool: np.ndarray, k_test: np.ndarray, n: int, reg: float, precision: str, *,
                    solved: tuple[np.ndarray, dict[str, Any]] | None = None) -> tuple[float, dict[str, Any]]:
        """Test accuracy of the fit on the pool's first ``n`` images (``info["first_acc"]``: before refinement).

        ``k_pool[:n, :n]`` stays a view of the stored block: the solve reads it in row chunks. ``solved``: that
        solve done already (``solve_stored(..., keep_first=True)``'s answer), only the prediction left.
        """
        if solved is None:
            alpha, info = solve_stored(k_pool[:n, :n], centred_targets(self.data.y_pool[:n], N_CLASSES), reg,
                                       precision=precision, memory_budget=self.s.memory_budget, keep_first=True)
        else:
            alpha, info = solved[0], dict(solved[1])
        k_eval = k_test[:, :n]
        info["first_acc"] = accuracy(predict_stored(k_eval, info.pop("alpha_first"), info["scale"]), self.data.y_test)
        return accuracy(predict_stored(k_eval, alpha, info["scale"]), self.data.y_test), info

    def exact_family(self, family: str, depths: tuple[int, ...], b_stds: tuple[float, ...] = (0.0,),
                     w_vars: tuple[float, ...] = W_VARS, activations: tuple[str, ...] = ACTIVATIONS
                     ) -> dict[str, Any]:
        """Sweep the depths x ``activations`` x ``w_vars`` x ``b_stds``, then the final fit at the choice of each
        of NNGP and NTK."""
        sweeps, specs = [], {}
        grid = [(act, w_var, b_std) for act in dict.fromkeys(activations)  # as given: the tie order
                for w_var in sorted(set(w_vars)) for b_std in sorted(set(b_stds))]  # ascending
        for depth in depths:
            for act, w_var, b_std in grid:
                spec = KernelSpec(family, depth, b_std=float(b_std), w_var=float(w_var), activation=act)
                specs[spec.token] = spec
                self.say(f"[{family}] sweep {spec.name} on {self.data.n_sweep} + {len(self.data.val)} images")
                sweeps.append(self.sweep(spec))
        choices = {which: choose(sweeps, which) for which in WHICH}
        shared = (len(self.s.finals) == 2 and len({token for token, _, _ in choices.values()}) == 1
                  and self.shares_pass(choices["nngp"][0]))
        finals = []
        for which in self.s.finals:
            token, reg, acc = choices[which]
            spec = specs[token]
            self.say(f"[{family}] {which}: chose {spec.name}, ridge {reg:g} (validation {100 * acc:.2f}%); "
                     f"final fit on {len(self.data.y_pool)} images" + (" (NNGP and NTK in one pass)" if shared else ""))
            finals.append(self.final(spec, which, reg, stored="both" if shared else which))
        return {"sweeps": sweeps, "finals": finals}

    def shares_pass(self, token: str) -> bool:
        """Whether the NNGP and NTK finals of ``token`` take one kernel pass (``"both"`` blocks) over two.

        One pass costs about what the NTK alone costs (its recursion carries the NNGP), so it saves the NNGP
        pass; but it stores both kernels at once. Taken when both blocks fit the free disk with 5% to spare,
        or when its files exist already (a resumed run); else one kernel at a time (a float64 full-size pair,
        67 GB, rarely fits). A run that began one kernel at a time goes on so (its tiles are kept).
        """
        folder = self.kernels / "final"
        if (folder / f"{token}_both_pool.npy").is_file():
            return True
        if any((folder / f"{token}_{which}_pool.npy").is_file() for which in WHICH):
            return False
        n_pool, n_test = len(self.data.y_pool), len(self.data.y_test)
        need = 2 * self.s.dtype.itemsize * (n_pool * n_pool + n_test * n_pool)
        existing = self.kernels  # the nearest folder that exists (the kernels' folder once a run has begun)
        while not existing.is_dir():
            existing = existing.parent
        return bool(shutil.disk_usage(existing).free >= 1.05 * need)

    # ---------------------------------------------------------------------------- random features

    def feature_stage(self, token: str) -> dict[str, Any]:
        """Random-feature ridge regression of ``token`` (NTK), ridge chosen on the validation split."""
        spec = parse_kernels([token])[0]
        if spec.n_features is None:
            raise ValueError(f"--features: expected random-feature kernels such as gap3-rf1024, got {token!r}")
        d = self.data
        self.say(f"[features] {spec.name} on {len(d.y_pool)} + {len(d.y_test)} images")
        return self.cached(f"features-{spec.token}", lambda: feature_fit(
            spec, (d.x_pool, d.y_pool), (d.x_test, d.y_test), d.n_sweep, d.val, self.kernels / "features",
            seed=self.s.seed, progress=self.progress, sizes=self.s.sizes), sizes=self.s.sizes)


def run_fashion_benchmark(s: Settings, out_dir: str | Path, *, progress: bool = True, plot: bool = True
                          ) -> dict[str, Any]:
    """Run (or resume) the stages of ``s``; write ``results.md``, ``summary.json``, ``learning_curve.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Meter() as meter:
        data = prepare(s)
    runner = Runner(s, data, out, progress=progress)
    runner.say(f"fashion-mnist ({data.source}): pool {len(data.y_pool)} (train {data.n_fit} + validation "
               f"{len(data.val)}), sweep on {data.n_sweep}, test {len(data.y_test)}; load {meter.seconds:.1f} s")
    summary: dict[str, Any] = {"settings": asdict(s), "source": data.source, "n_pool": len(data.y_pool),
                               "n_fit": data.n_fit, "n_val": len(data.val), "n_sweep": data.n_sweep,
                               "n_test": len(data.y_test), "load_cost": meter.record(), "stages": {},
                               "complete": False}
    try:
        if "fc" in s.stages:
            summary["stages"]["fc"] = runner.exact_family("fc", s.fc_depths, s.fc_b_stds, s.fc_w_vars,
                                                           s.fc_activations)
        if "cnn" in s.stages:
            summary["stages"]["cnn"] = runner.exact_family("v", s.cnn_depths, s.cnn_b_stds, s.cnn_w_vars,
                                                            s.cnn_activations)
        if "features" in s.stages:
            summary["stages"]["features"] = [runner.feature_stage(t) for t in s.features]
        summary["complete"] = True
    except KeyboardInterrupt:
        runner.say(f"\ninterrupted: finished tiles and stages are kept in {out}; rerun the same command to resume")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    write_report(summary, out, plot=plot)
    return summary


__all__ = ["ACTIVATIONS", "CNN_B_STDS", "FC_B_STDS", "SIZES", "STAGES", "W_VARS", "Data", "Runner", "Settings",
           "prepare", "run_fashion_benchmark"]
