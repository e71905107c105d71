"""The kernels of ``ntkit bench images``: architectures, exact kernel blocks on disk, random-feature blocks.

A :class:`KernelSpec` names one architecture (``fc3``, ``v6``, ``gap3``, ``myrtle5``) and, optionally,
a random-feature estimate of its kernels (``gap3-rf1024``: :func:`ntkit.features` with ``m = 1024``
features per pixel). Both give the same two blocks, ``K(pool, pool)`` and ``K(test, pool)`` for the
NNGP and the NTK, so every downstream step of the protocol is shared:

* exact: :func:`ntkit.compute_kernel` into ``<kernel>_{pool,test}.npy``, resumed tile by tile;
* features: ``Phi(pool)`` and ``Phi(test)`` of shape (N, m) (float32, streamed over the images),
  then ``K = Phi Phi^T`` -- linear in N where the exact CNTK-GAP is quadratic in N *and* in the
  pixels. The blocks are saved once complete; the time recorded is features plus Gram products.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._io import write_text_atomic
from ntkit.compute.api import compute_kernel
from ntkit.experiments.images_data import pad_to_multiple
from ntkit.nn.builders import MYRTLE_STAGES, cntk, fc, myrtle
from ntkit.random_features.api import features

FAMILIES = {"fc": "FC", "v": "CNTK-V", "gap": "CNTK-GAP", "myrtle": "Myrtle"}
#: Families with a random-feature map (Myrtle's 2x2 average pooling has one too, but its exact kernel is
#: the point of the Myrtle rows).
FEATURE_FAMILIES = ("fc", "v", "gap")
#: The weight variance ``sigma_w^2`` of every layer by default: the ReLU value that keeps ``diag K`` fixed
#: without biases (He et al. 2015); names and tokens mention ``w_var`` only when it differs.
RELU_W_VAR = 2.0
#: The activation of every layer by default; names and tokens mention the activation only when it differs.
DEFAULT_ACTIVATION = "relu"
_TOKEN = re.compile(r"(fc|v|gap|myrtle)(\d+)(?:-rf(\d+))?")


@dataclass(frozen=True)
class KernelSpec:
    """One architecture of the benchmark: ``family`` (``fc``, ``v``, ``gap``, ``myrtle``) and ``depth``;
    ``n_features`` set: its random-feature estimate with that many features (``m``); ``b_std``: the bias
    standard deviation of every layer (0: no bias, the default); ``w_var``: the weight variance
    ``sigma_w^2`` of every layer (2, the ReLU value that keeps ``diag K`` fixed without biases, by default);
    ``activation``: the nonlinearity of every layer, a name of :func:`ntkit.activations.available_activations`
    (``relu`` by default; Myrtle is ReLU only)."""

    family: str
    depth: int
    n_features: int | None = None
    b_std: float = 0.0
    w_var: float = RELU_W_VAR
    activation: str = DEFAULT_ACTIVATION

    @property
    def token(self) -> str:
        """Command-line name, e.g. ``gap3`` or ``gap3-rf1024``; ``fc3-b0.1`` with a bias (a record and file name
        of ``ntkit bench fashion``, not read by :func:`parse_kernels`); ``fc3-w1.5-b0.1`` with a weight variance
        other than 2; ``fc3-erf-w1.5`` with an activation other than ReLU."""
        act = "" if self.activation == DEFAULT_ACTIVATION else f"-{self.activation}"
        weight = f"-w{float(self.w_var)!r}" if self.w_var != RELU_W_VAR else ""
        bias = f"-b{float(self.b_std)!r}" if self.b_std else ""
        return (f"{self.family}{self.depth}{act}{weight}{bias}"
                + ("" if self.n_features is None else f"-rf{self.n_features}"))

    @property
    def name(self) -> str:
        """Display name, e.g. ``CNTK-GAP-3``, ``CNTK-GAP-3 rf1024``, ``FC-3 b_std 0.1``, ``FC-3 w_var 1.5`` or
        ``FC-3 erf``."""
        act = "" if self.activation == DEFAULT_ACTIVATION else f" {self.activation}"
        weight = f" w_var {float(self.w_var)!r}" if self.w_var != RELU_W_VAR else ""
        bias = f" b_std {float(self.b_std)!r}" if self.b_std else ""
        return (f"{FAMILIES[self.family]}-{self.depth}{act}{weight}{bias}"
                + ("" if self.n_features is None else f" rf{self.n_features}"))

    @property
    def exact(self) -> KernelSpec:
        """The exact kernel this spec estimates (itself when exact)."""
        return KernelSpec(self.family, self.depth, b_std=self.b_std, w_var=self.w_var, activation=self.activation)

    def with_features(self, n_features: int) -> KernelSpec:
        """The random-feature estimate of this architecture with ``n_features`` features."""
        return KernelSpec(self.family, self.depth, n_features, self.b_std, self.w_var, self.activation)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's inputs from images ``(N, 1, H, W)``: flattened (FC), padded to a multiple of 8 (Myrtle)."""
        if self.family == "fc":
            return x.flatten(1)
        if self.family == "myrtle":
            return pad_to_multiple(x, 8)
        return x

    def model(self, image_shape: tuple[int, int], in_channels: int = 1) -> nn.Module:
        """The architecture on the meta device (``activation``, ``w_std = sqrt(w_var)`` and ``b_std`` in every
        layer).

        Raises
        ------
        ValueError
            Myrtle with an activation other than ReLU.
        """
        w_std, act = math.sqrt(self.w_var), self.activation
        if self.family == "fc":
            return fc(in_channels * image_shape[0] * image_shape[1], depth=self.depth, activation=act, w_std=w_std,
                      b_std=self.b_std, device="meta")
        if self.family == "v":
            return cntk(in_channels, self.depth, readout="flatten", image_shape=image_shape, activation=act,
                        w_std=w_std, b_std=self.b_std, device="meta")
        if self.family == "gap":
            return cntk(in_channels, self.depth, readout="gap", activation=act, w_std=w_std, b_std=self.b_std,
                        device="meta")
        if act != DEFAULT_ACTIVATION:
            raise ValueError(f"KernelSpec: Myrtle is ReLU only, got activation {act!r}")
        return myrtle(self.depth, in_channels, w_std=w_std, b_std=self.b_std, device="meta")


def parse_kernels(tokens: Sequence[str], features: Sequence[int] = ()) -> list[KernelSpec]:
    """``["fc3", "gap6-rf512", "myrtle5"]`` -> kernel specs (duplicates dropped, order kept).

    Every ``m`` of ``features`` adds, after each exact ``fc``, ``v`` and ``gap`` kernel, its
    random-feature estimate ``<kernel>-rf<m>``.

    Raises
    ------
    ValueError
        An unknown family, a bad depth (FC >= 0, convolutional >= 1, Myrtle one of 5, 7, 10), features
        of a Myrtle network or fewer than 1.
    """
    for count in features:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"features: expected feature counts >= 1, got {count!r}")
    specs: list[KernelSpec] = []
    for tok in tokens:
        match = _TOKEN.fullmatch(str(tok).strip().lower())
        if match is None:
            raise ValueError(f"kernels: expected names like fc3, v6, gap3, myrtle5, gap3-rf1024 (families "
                             f"{sorted(FAMILIES)}, a depth, optionally -rf and a feature count), got {tok!r}")
        m = None if match.group(3) is None else int(match.group(3))
        spec = KernelSpec(match.group(1), int(match.group(2)), m)
        if spec.family == "myrtle" and spec.depth not in MYRTLE_STAGES:
            raise ValueError(f"kernels: Myrtle depth must be one of {sorted(MYRTLE_STAGES)}, got {tok!r}")
        if spec.family in ("v", "gap") and spec.depth < 1:
            raise ValueError(f"kernels: a CNTK needs at least one convolution, got {tok!r}")
        if m is not None and (spec.family not in FEATURE_FAMILIES or m < 1):
            raise ValueError(f"kernels: random features (-rfM, M >= 1) are offered for {list(FEATURE_FAMILIES)}, "
                             f"got {tok!r}")
        extra = [spec.with_features(f) for f in features if m is None and spec.family in FEATURE_FAMILIES]
        for s in (spec, *extra):
            if s not in specs:
                specs.append(s)
    if not specs:
        raise ValueError("kernels: expected at least one kernel, got none")
    return specs


def pairs_of(n_pool: int, n_test: int) -> int:
    """Pairs of images in ``K(pool, pool)`` (one triangle) and ``K(test, pool)``."""
    return n_pool * (n_pool + 1) // 2 + n_test * n_pool


def kernel_blocks(
    spec: KernelSpec, x: torch.Tensor, pool: np.ndarray, test: np.ndarray, folder: Path, *, progress: bool,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """NNGP and NTK of ``spec`` on the pool and test images, computed (or resumed) on disk.

    Returns
    -------
    k_pool : ndarray of shape (2, N_pool, N_pool)
        ``[nngp, ntk]`` of the training pool.
    k_test : ndarray of shape (2, N_test, N_pool)
    timing : dict
        ``seconds`` spent computing (over all runs that computed tiles), ``pairs`` of images they
        evaluated, ``seconds_per_pair``.
    """
    if spec.n_features is not None:
        return feature_blocks(spec, x, pool, test, folder, progress=progress, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    xin = spec.inputs(x)
    model = spec.model((x.shape[2], x.shape[3]), x.shape[1])
    timing_path = folder / f"{spec.token}_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"seconds": 0.0, "pairs": 0.0}
    xp, xt = xin[torch.as_tensor(pool)], xin[torch.as_tensor(test)]
    blocks = []
    for part, (a, b) in (("pool", (xp, None)), ("test", (xt, xp))):
        res = compute_kernel(model, a, b, which="both", out=folder / f"{spec.token}_{part}.npy",
                             progress=progress)
        blocks.append(np.stack([np.array(res.nngp), np.array(res.ntk)]))
        if res.tiles_computed:
            n_pairs = len(pool) * (len(pool) + 1) / 2 if b is None else len(test) * len(pool)
            timing["seconds"] += res.seconds
            timing["pairs"] += n_pairs * res.tiles_computed / res.tiles_total
            write_text_atomic(timing_path, json.dumps(timing))
    timing["seconds_per_pair"] = timing["seconds"] / timing["pairs"] if timing["pairs"] else None
    return blocks[0], blocks[1], timing


def feature_blocks(
    spec: KernelSpec, x: torch.Tensor, pool: np.ndarray, test: np.ndarray, folder: Path, *, progress: bool,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The blocks of :func:`kernel_blocks` from random features: ``Phi(a) Phi(pool)^T`` per NNGP / NTK.

    One feature map per kernel (seeded by ``seed``), applied to the pool and the test images in
    float32 batches; the Gram products in float32, returned as float64. Saved to
    ``<token>_{pool,test}.npy`` with ``<token>_timing.json`` once both are complete (a rerun reads them).
    ``timing["feature_seconds"]`` is the features' share of ``timing["seconds"]``.
    """
    assert spec.n_features is not None
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{spec.token}_{part}.npy" for part in ("pool", "test")]
    timing_path = folder / f"{spec.token}_timing.json"
    if timing_path.is_file() and all(p.is_file() for p in paths):
        timing = json.loads(timing_path.read_text())
        return np.load(paths[0]), np.load(paths[1]), timing
    xin = spec.inputs(x).to(torch.float32)
    model = spec.model((x.shape[2], x.shape[3]), x.shape[1])
    xp, xt = xin[torch.as_tensor(pool)], xin[torch.as_tensor(test)]
    k_pool = np.empty((2, len(pool), len(pool)))
    k_test = np.empty((2, len(test), len(pool)))
    start = time.perf_counter()
    feature_seconds = 0.0
    for i, which in enumerate(("nngp", "ntk")):
        t0 = time.perf_counter()
        both = features(model, torch.cat([xp, xt]), n_features=spec.n_features, which=which, seed=seed,
                        progress=progress)
        feature_seconds += time.perf_counter() - t0
        phi_pool, phi_test = both[: len(pool)], both[len(pool) :]
        k_pool[i] = (phi_pool @ phi_pool.T).numpy()
        k_test[i] = (phi_test @ phi_pool.T).numpy()
    seconds = time.perf_counter() - start
    n_pairs = pairs_of(len(pool), len(test))
    timing = {"seconds": seconds, "pairs": float(n_pairs), "seconds_per_pair": seconds / n_pairs,
              "feature_seconds": feature_seconds, "n_features": spec.n_features}
    for path, block in zip(paths, (k_pool, k_test), strict=True):
        np.save(path, block)
    write_text_atomic(timing_path, json.dumps(timing))
    return k_pool, k_test, timing


def projected_seconds(spec: KernelSpec, x: torch.Tensor, n: int, n_pool: int, n_test: int) -> float:
    """Projected seconds of ``spec``'s NNGP + NTK blocks on ``n_pool`` + ``n_test`` images, from a probe
    on the first ``n`` images of ``x``.

    Exact kernels: ``K(x[:n], x[:n])`` in memory after a warm-up, per pair times
    :func:`pairs_of`. Random features: the features of ``n`` images, per image times
    ``n_pool + n_test`` (they are linear in N), plus their Gram products scaled to the pairs.
    """
    xin = spec.inputs(x[:n])
    model = spec.model((x.shape[2], x.shape[3]), x.shape[1])
    pairs = pairs_of(n_pool, n_test)
    if spec.n_features is not None:
        feature_seconds = gram_seconds = 0.0
        for which in ("nngp", "ntk"):
            start = time.perf_counter()
            phi = features(model, xin.to(torch.float32), n_features=spec.n_features, which=which)
            feature_seconds += time.perf_counter() - start
            start = time.perf_counter()
            torch.mm(phi, phi.T)
            gram_seconds += time.perf_counter() - start
        return feature_seconds / n * (n_pool + n_test) + gram_seconds / (n * n) * pairs
    compute_kernel(model, xin[:2], which="both")  # warm-up (native builds, caches)
    start = time.perf_counter()
    compute_kernel(model, xin, which="both")
    return (time.perf_counter() - start) / (n * (n + 1) / 2) * pairs


__all__ = [
    "FAMILIES",
    "FEATURE_FAMILIES",
    "KernelSpec",
    "feature_blocks",
    "kernel_blocks",
    "pairs_of",
    "parse_kernels",
    "projected_seconds",
]
