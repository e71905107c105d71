"""Shared test configuration: one tolerance table per dtype, seeded generators, data locations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ntkit.compute.tile_task import single_threaded

#: Relative tolerances used across the suite, by dtype and kind of comparison.
TOL = {
    torch.float64: {"exact": 1e-12, "closed_form": 1e-10, "quadrature_smooth": 1e-8, "quadrature_kinked": 1e-6},
    torch.float32: {"exact": 1e-5, "closed_form": 1e-5, "quadrature_smooth": 1e-4, "quadrature_kinked": 1e-4},
}

#: The shared data folder beside the checkout (may be absent: tests using it skip with a reason).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` (0 when both are 0)."""
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator (fresh per test)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch intra-op thread for the module (restored after): the suite runs with ``pytest -n 2``
    on few cores, where each worker's default thread pool oversubscribes the CPUs and small
    matrix products of training loops slow down many times over. Use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    with single_threaded():
        yield


def reference_fc(
    x1: torch.Tensor, x2: torch.Tensor | None = None, *, depth: int, activation: object = "relu", beta: float = 0.0,
    w_std: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(nngp, ntk)`` of the fully connected network by the reference evaluator alone (no fast path)."""
    from ntkit.infinite.reference import reference_kernel
    from ntkit.infinite.walk import describe_model, fc_model

    arch = describe_model(fc_model(x1.shape[1], depth=depth, activation=activation, beta=beta, w_std=w_std),
                          (x1.shape[1],))
    return reference_kernel(arch, x1, x2, ntk=arch.has_ntk)
