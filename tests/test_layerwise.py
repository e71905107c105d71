"""Per-layer kernels and fixed-first-layers NTKs (ntkit.layerwise) against fc_kernel and an
independent NumPy transcription of Arora et al.'s NTK.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit
from ntkit.layerwise import (
    arora_kernels,
    fc_kernel_diag,
    fixed_layer_ntks,
    iter_arora_kernels,
    layer_kernels,
)
from tests.conftest import TOL, rel_err


def arora_reference(x: np.ndarray, max_dep: int) -> dict[tuple[int, int], np.ndarray]:
    """Arora et al.'s kernel_value_batch, transcribed literally (clip + arccos, c_sigma = 1)."""
    s = x @ x.T
    sigmas, dots = [s], [None]
    for _ in range(max_dep):
        d = np.sqrt(np.diag(s))
        rho = np.clip(s / np.outer(d, d), -1, 1)
        dots.append((math.pi - np.arccos(rho)) / (2 * math.pi))
        s = (rho * (math.pi - np.arccos(rho)) + np.sqrt(1 - rho**2)) * np.outer(d, d) / (2 * math.pi)
        sigmas.append(s)
    out = {}
    for dep in range(max_dep + 1):
        for fix in range(dep + 1):
            k = np.zeros_like(s)
            for h in range(fix, dep + 1):
                term = sigmas[h].copy()
                for hp in range(h + 1, dep + 1):
                    term = term * dots[hp]
                k += term
            out[dep, fix] = k
    return out


@pytest.mark.parametrize(("activation", "b_std", "w_std"), [("relu", 0.3, 1.3), ("erf", 0.1, 1.0), ("tanh", 0.2, 1.5)])
def test_layer_kernels_match_fc_kernel(gen: torch.Generator, activation: str, b_std: float, w_std: float) -> None:
    x1 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    lk = layer_kernels(x1, x2, depth=3, activation=activation, b_std=b_std, w_std=w_std)
    assert len(lk.sigma) == 4 and len(lk.sigma_dot) == 3 and lk.depth == 3
    for dep in range(4):
        ref = ntkit.fc_kernel(x1, x2, depth=dep, activation=activation, b_std=b_std, w_std=w_std)
        assert rel_err(lk.sigma[dep], ref.nngp) <= TOL[torch.float64]["exact"]
        assert rel_err(lk.ntk(dep), ref.ntk) <= TOL[torch.float64]["exact"]
        assert rel_err(lk.var1[dep], ref.var1) <= TOL[torch.float64]["exact"]
        diag = fc_kernel_diag(x1, depth=dep, activation=activation, b_std=b_std, w_std=w_std)
        full = ntkit.fc_kernel(x1, depth=dep, activation=activation, b_std=b_std, w_std=w_std)
        assert rel_err(diag, torch.diagonal(full.ntk)) <= 1e-12
        nngp_diag = fc_kernel_diag(x1, depth=dep, activation=activation, b_std=b_std, w_std=w_std, which="nngp")
        assert rel_err(nngp_diag, torch.diagonal(full.nngp)) <= 1e-12


def test_fixed_layer_ntks_all_at_once(gen: torch.Generator) -> None:
    x = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    lk = layer_kernels(x, depth=4, b_std=0.2)
    all_k = fixed_layer_ntks(x, depth=4, b_std=0.2)
    assert sorted(all_k) == [(d, f) for d in range(5) for f in range(d + 1)]
    for (dep, fix), k in all_k.items():
        # definition: sum_{h=fix..dep} Sigma(h+1) prod_{h'>h} SigmaDot(h'+1)
        direct = sum(
            (lk.sigma[h] * math.prod((lk.sigma_dot[hp - 1] for hp in range(h + 1, dep + 1)), start=1))
            for h in range(fix, dep + 1)
        )
        assert isinstance(direct, torch.Tensor)
        assert rel_err(k, direct) <= 1e-13
    assert rel_err(all_k[4, 0], ntkit.fc_kernel(x, depth=4, b_std=0.2).ntk) <= 1e-13  # fix=0: full NTK
    assert rel_err(all_k[4, 4], ntkit.fc_kernel(x, depth=4, b_std=0.2).nngp) <= 1e-13  # fix=dep: NNGP


def test_arora_kernels_reproduce_their_code(gen: torch.Generator) -> None:
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    ours = arora_kernels(x)
    ref = arora_reference(x.numpy(), 4)
    assert len(ours) == 15
    off = ~np.eye(30, dtype=bool)
    for key, k in ours.items():
        # Off the diagonal both compute the same numbers; on it their arccos of a rounded rho = 1 - eps
        # costs ~sqrt(eps) (we take the angle by atan2, exact 0 for x = x').
        assert np.abs(k.numpy() - ref[key])[off].max() <= 1e-11 * np.abs(ref[key]).max()
        assert np.abs(k.numpy() - ref[key]).max() <= 1e-7 * np.abs(ref[key]).max()
    # relation to ntkit's parameterization: K_Arora = n0 Theta(w_std=1); with w_std: w^(2 dep) w^2/n0 K_Arora
    w = 1.4
    for dep, fix in [(0, 0), (2, 1), (4, 0), (3, 3)]:
        theta = fixed_layer_ntks(x, depth=4, w_std=w)[dep, fix]
        assert rel_err(theta, w ** (2 * dep) * w**2 / 6 * ours[dep, fix]) <= 1e-12
    streamed = [(d, f, k.clone()) for d, f, k in iter_arora_kernels(x, max_dep=4)]
    assert [(d, f) for d, f, _ in streamed] == sorted(ours)
    assert all(torch.equal(k, ours[d, f]) for d, f, k in streamed)


def test_layerwise_bad_input() -> None:
    x = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="fix: expected an integer <= dep"):
        layer_kernels(x, depth=2).ntk(1, 2)
    with pytest.raises(ValueError, match="dep: expected an integer <= 2"):
        layer_kernels(x, depth=2).ntk(3)
    with pytest.raises(ValueError, match="expected finite values"):
        arora_kernels(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="depth: expected an integer"):
        fixed_layer_ntks(x, depth=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="which: expected one of"):
        fc_kernel_diag(x, depth=1, which="gp")


def test_fc_kernel_diag_nngp_of_an_activation_without_derivative_map() -> None:
    rng = torch.Generator().manual_seed(122)
    x = torch.randn(7, 3, dtype=torch.float64, generator=rng)
    full = ntkit.fc_kernel(x, depth=2, activation="step", b_std=0.2)
    assert torch.allclose(fc_kernel_diag(x, depth=2, activation="step", b_std=0.2, which="nngp"), full.nngp.diagonal(),
                          rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="undefined"):
        fc_kernel_diag(x, depth=2, activation="step")
