"""Kernel blocks of ``ntkit bench fashion`` on disk: exact (out of core, resumable) and random-feature fits.

Exact kernels (``fcD``, ``vD``, and any token of :func:`ntkit.experiments.images_kernels.parse_kernels`)
are computed by :func:`ntkit.compute_kernel` into ``.npy`` files, NNGP and NTK together (shape
``(2, N1, N2)``, float64) or one of them (``(N1, N2)``): an interrupted run resumes tile by tile from
the file's ledger, and the blocks are returned as read-only memory maps, so a 60,000 x 60,000 block
(29 GB per kernel in float64) never has to fit in memory. NNGP and NTK of the full-size pool and test
images together take 67 GB of disk in float64 (34 GB in float32), so the pipeline stores them together only
where the disk holds both (:meth:`ntkit.experiments.fashion.Runner.shares_pass`). Two blocks per kernel and
scope: ``K(rows, rows)`` (symmetric: the upper tiles only) and ``K(cols, rows)``.

Random features (``gapD-rfM``, ``vD-rfM``, ``fcD-rfM``) never form an N x N matrix: the features
``Phi`` (N, m) of :func:`ntkit.random_features.feature_map` are streamed in batches into the normal
equations ``G = Phi^T Phi`` (m, m) and ``Phi^T Y`` (m, 10), accumulated in float64; a ridge ``lam``
solves ``(G + lam I) w = Phi^T Y`` (the kernel ridge regression of ``K ~ Phi Phi^T``, by the push-through
identity), so cost is ``O(N m^2 + m^3)`` and memory ``O(m^2)``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkit._io import write_text_atomic
from ntkit._progress import Progress
from ntkit.compute.api import compute_kernel
from ntkit.experiments.fashion_data import N_CLASSES
from ntkit.experiments.fashion_meter import Meter
from ntkit.experiments.fashion_solve import accuracy
from ntkit.experiments.images_eval import REG_GRID, centred_targets
from ntkit.experiments.images_kernels import KernelSpec
from ntkit.random_features.api import feature_map

WHICH = ("nngp", "ntk")


@dataclass
class Block:
    """One stored kernel block and what computing it cost.

    Attributes
    ----------
    kernels : dict of str to ndarray of shape (N1, N2), float64 or float32 (read-only memory maps)
        ``"nngp"`` and / or ``"ntk"``.
    seconds : float
        Compute time summed over the runs that computed tiles of it.
    pairs : float
        Pairs of images it holds (a symmetric block: one triangle).
    complete_this_run : bool
        Whether tiles were computed by this call (False: read back from disk).
    """

    kernels: dict[str, np.ndarray]
    seconds: float
    pairs: float
    complete_this_run: bool


def exact_block(spec: KernelSpec, x_a: torch.Tensor, x_b: torch.Tensor | None, path: Path, *,
                progress: bool, which: str = "both", memory_budget: str = "1G",
                dtype: torch.dtype = torch.float64) -> Block:
    """The kernels ``which`` of ``spec`` at ``(x_a, x_b)`` into ``path`` (``.npy``), resumed if begun (module notes).

    Parameters
    ----------
    spec : KernelSpec
        An exact kernel (``n_features`` None).
    x_a : Tensor of shape (N1, 1, H, W), float64
    x_b : Tensor of shape (N2, 1, H, W), optional
        None: the symmetric block ``K(x_a, x_a)``.
    path : Path
        The output; ``path.with_suffix(".json")`` keeps the compute time across interrupted runs.
    which : {"both", "nngp", "ntk"}
    dtype : torch.dtype
        What the kernels are computed and stored in (float64 or float32).
    """
    if spec.n_features is not None:
        raise ValueError(f"exact_block: expected an exact kernel, got the random-feature kernel {spec.token}")
    path.parent.mkdir(parents=True, exist_ok=True)
    timing_path = path.with_suffix(".json")
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"seconds": 0.0}
    model = spec.model((x_a.shape[2], x_a.shape[3]), x_a.shape[1])
    a = spec.inputs(x_a)
    b = None if x_b is None else spec.inputs(x_b)
    res = compute_kernel(model, a, b, which=which, out=path, progress=progress, memory_budget=memory_budget,
                         dtype=dtype)
    if res.tiles_computed:
        timing["seconds"] += res.seconds
        write_text_atomic(timing_path, json.dumps(timing))
    n1 = len(a)
    pairs = n1 * (n1 + 1) / 2 if b is None else float(n1 * len(b))
    k = np.load(path, mmap_mode="r")
    kernels = {w: k[i] for i, w in enumerate(WHICH)} if which == "both" else {which: k}
    return Block(kernels, float(timing["seconds"]), pairs, bool(res.tiles_computed))


class FeatureFit:
    """Normal equations of ridge regression on random features of one kernel (module notes).

    Parameters
    ----------
    spec : KernelSpec
        A random-feature kernel (``n_features`` set).
    which : {"nngp", "ntk"}
    image_shape : tuple of int
        ``(C, H, W)`` of the images.
    seed : int
        Seed of the feature map (one draw shared by every fit of this object).
    """

    def __init__(self, spec: KernelSpec, which: str, image_shape: tuple[int, int, int], *, seed: int) -> None:
        if spec.n_features is None:
            raise ValueError(f"FeatureFit: expected a random-feature kernel (-rfM), got {spec.token}")
        self.spec = spec
        model = spec.model((image_shape[1], image_shape[2]), image_shape[0])
        probe = spec.inputs(torch.zeros((1, *image_shape), dtype=torch.float32))
        self.fmap = feature_map(model, tuple(probe.shape[1:]), n_features=spec.n_features, which=which,
                                seed=seed, dtype=torch.float32)
        self.seed = seed
        self.feature_seconds = 0.0

    @property
    def m(self) -> int:
        """Number of features."""
        return int(self.fmap.m)

    def phi(self, x: torch.Tensor, *, progress: bool = False, desc: str = "features",
            store: Path | None = None) -> torch.Tensor:
        """Features ``(N, m)`` (float32) of images ``(N, C, H, W)``, in batches.

        ``store``: a ``.npy`` file the features are written into batch by batch, with a ledger
        ``store.with_suffix(".json")`` of the rows done (written after the rows), so that an interrupted
        run resumes at the first missing batch. The ledger names the map (kernel, seed, ``m``) and a digest
        of the inputs; a store of other inputs or another map is recomputed from its first row.
        ``feature_seconds`` adds the compute time of every run that computed rows of it.
        """
        xin = self.spec.inputs(x).to(torch.float32)
        n = len(xin)
        done, spent = 0, 0.0
        if store is None:
            out: torch.Tensor | np.memmap = torch.empty(n, self.m, dtype=torch.float32)
        else:
            store.parent.mkdir(parents=True, exist_ok=True)
            ledger_path = store.with_suffix(".json")
            identity = {"kernel": self.spec.token, "seed": self.seed, "m": self.m, "n": n,
                        "inputs": hashlib.sha256(xin.contiguous().numpy().tobytes()).hexdigest()}
            ledger = read_json(ledger_path)
            if ledger is not None and ledger.get("identity") == identity and store.is_file():
                done, spent = int(ledger["rows"]), float(ledger["seconds"])
                out = np.load(store, mmap_mode="r+")
            else:
                out = np.lib.format.open_memmap(store, mode="w+", dtype=np.float32, shape=(n, self.m))
        bar = Progress(n, desc, enabled=progress)
        bar.update(done)
        start = time.perf_counter()
        for rows, batch in self.fmap.batches(xin[done:], self.fmap.batch_size()):
            at = slice(done + rows.start, done + rows.stop)
            if isinstance(out, np.memmap):
                out[at] = batch.cpu().numpy()
                out.flush()
                write_text_atomic(ledger_path, json.dumps({"identity": identity, "rows": at.stop,
                                                           "seconds": spent + time.perf_counter() - start}))
            else:
                out[at] = batch.cpu()
            bar.update(batch.shape[0])
        bar.close()
        self.feature_seconds += spent + time.perf_counter() - start
        return torch.from_numpy(np.array(out)) if isinstance(out, np.memmap) else out

    @staticmethod
    def normal_equations(phi: torch.Tensor, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Phi^T Phi, Phi^T Y)`` accumulated in float64 over row chunks."""
        m = phi.shape[1]
        gram = torch.zeros(m, m, dtype=torch.float64)
        rhs = torch.zeros(m, targets.shape[1], dtype=torch.float64)
        y = torch.as_tensor(targets, dtype=torch.float64)
        for r0 in range(0, len(phi), 4096):
            p = phi[r0:r0 + 4096].double()
            gram += p.T @ p
            rhs += p.T @ y[r0:r0 + 4096]
        return gram, rhs

    @staticmethod
    def solve(gram: torch.Tensor, rhs: torch.Tensor, reg: float) -> torch.Tensor:
        """Weights ``(G + reg I)^-1 Phi^T Y`` of shape (m, k); ``reg`` absolute."""
        a = gram + reg * torch.eye(gram.shape[0], dtype=gram.dtype)
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            raise ValueError(f"ridge {reg:g}: expected G + ridge I positive definite, got a failed Cholesky "
                             f"(increase the ridge)")
        return torch.cholesky_solve(rhs, chol)


def feature_fit(spec: KernelSpec, pool: tuple[torch.Tensor, np.ndarray], test: tuple[torch.Tensor, np.ndarray],
                n_sweep: int, val: np.ndarray, store: Path, *, seed: int, progress: bool,
                sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """Random-feature ridge regression (NTK features of ``spec``) of the pool's images, scored on the test images.

    The ridge (relative to the mean ``|phi|^2``) is chosen on the validation positions ``val`` of the pool,
    fitting the first ``n_sweep`` pool images; the final fit takes the whole pool, and the learning curve the
    pool's first ``n`` images for each of ``sizes`` below the pool's size (the exact finals' prefixes), at the
    same ridge. The features of pool and test are stored in ``store`` (``<token>_pool.npy``,
    ``<token>_test.npy``) and resumed (:meth:`FeatureFit.phi`).
    """
    (x_pool, y_pool), (x_test, y_test) = pool, test
    fit = FeatureFit(spec, "ntk", (int(x_pool.shape[1]), int(x_pool.shape[2]), int(x_pool.shape[3])), seed=seed)
    with Meter() as m_feat:
        phi_pool, phi_test = (fit.phi(x, progress=progress, desc=f"{spec.name} features ({part})",
                                      store=store / f"{spec.token}_{part}.npy")
                              for part, x in (("pool", x_pool), ("test", x_test)))
    with Meter() as m_solve:
        phi_s = phi_pool[:n_sweep]
        scale = float((phi_s.double() ** 2).sum(1).mean())
        gram, rhs = fit.normal_equations(phi_s, centred_targets(y_pool[:n_sweep], N_CLASSES))
        phi_val = phi_pool[val].double()
        val_acc: list[float | None] = []
        for reg in REG_GRID:
            try:
                w = fit.solve(gram, rhs, reg * scale)
                val_acc.append(accuracy((phi_val @ w).numpy(), y_pool[val]))
            except ValueError:  # a ridge too small for the Cholesky factorisation
                val_acc.append(None)
        reg = REG_GRID[int(np.argmax([-1.0 if a is None else a for a in val_acc]))]
        curve = []
        for n in sorted({n for n in sizes if n < len(y_pool)} | {len(y_pool)}):
            scale_n = float((phi_pool[:n].double() ** 2).sum(1).mean())
            gram, rhs = fit.normal_equations(phi_pool[:n], centred_targets(y_pool[:n], N_CLASSES))
            w = fit.solve(gram, rhs, reg * scale_n)
            curve.append({"n": n, "test_acc": accuracy((phi_test.double() @ w).numpy(), y_test)})
    return {"kernel": spec.token, "which": "ntk", "n_features": fit.m, "regs": list(REG_GRID), "val_acc": val_acc,
            "reg": reg, "n_pool": len(y_pool), "test_acc": curve[-1]["test_acc"], "curve": curve,
            "feature_cost": {**m_feat.record(), "feature_seconds": fit.feature_seconds},
            "solve_cost": m_solve.record()}


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON record, or None when absent or unreadable (a half-written file is recomputed)."""
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError):
        return None


__all__ = ["WHICH", "Block", "FeatureFit", "exact_block", "feature_fit", "read_json"]
