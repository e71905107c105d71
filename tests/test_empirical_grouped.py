"""The streamed engine's whole-kernel plan by groups of layers (:mod:`ntkit.empirical._streamed_grouped`).

Against brute force in float64 on the small ResNet-style and convolutional networks of
tests/test_empirical_real.py: one group and many (layers split by output channels across groups),
Gram products in pairs of row chunks, symmetric kernels and ``x2``, all three modes; the tiler and
the chooser use the plan; no plan for embeddings or too small a budget.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import ntkit
import ntkit.empirical._choice as choice
import ntkit.empirical._streamed_grouped as gm
from ntkit.empirical._common import select_parameters
from ntkit.empirical.tiling import tiled_kernel
from tests._empirical_models import brute_force_ntk, reduce
from tests.conftest import rel_err
from tests.test_empirical_real import inputs, make_real

MODES = ["full", "trace", "diagonal"]


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[Any, ...]]:
    out = {}
    for name in ("resnet", "conv1d", "ntkit"):
        model, shape = make_real(name)
        x1, x2 = inputs(shape, 5, 4)
        out[name] = (model, x1, x2, brute_force_ntk(model, x1, x2), brute_force_ntk(model, x1, x1))
    return out


def _engine(model: nn.Module, x1: torch.Tensor, k: int) -> gm.GroupedEngine:
    return gm.GroupedEngine(model, select_parameters(model, None), k, x1[:1], 1 << 30)


@pytest.mark.parametrize("name", ["resnet", "conv1d", "ntkit"])
@pytest.mark.parametrize("share", [0.6, 0.0])
def test_grouped_equals_brute_force(cases: dict, name: str, share: float, monkeypatch: Any) -> None:
    model, x1, x2, ref12, ref11 = cases[name]
    engine = _engine(model, x1, ref12.shape[-1])
    if share < 0.1:  # groups of a few output channels: every layer but the norms split across groups
        monkeypatch.setattr(gm, "MIN_SLICE", 0.0)
        share = 1e-9
        while True:  # the least share with a plan: what cannot be split (a norm's Jacobian, inputs) fills it
            monkeypatch.setattr(gm, "STORE_SHARE", share)
            if all(gm.make_plan(engine, 5, n2, m, 1 << 30, n2 == 5) for m in MODES for n2 in (4, 5)):
                break
            share *= 1.25
        monkeypatch.setattr(gm, "STORE_SHARE", share)
        real = gm.make_plan

        def small_work(*args: Any) -> gm.Plan | None:  # Gram products of one row pair at a time
            plan = real(*args)
            assert plan is not None
            plan.work = 64.0
            return plan

        monkeypatch.setattr(gm, "make_plan", small_work)
    sliced = False
    for mode in MODES:
        for x, ref, n2 in ((x2, ref12, 4), (None, ref11, 5)):
            plan = gm.make_plan(engine, 5, n2, mode, 1 << 30, x is None)
            assert plan is not None
            if share < 0.1:
                assert len(plan.groups) > 1
                sliced = sliced or any(it.layer is not it.base for g in plan.groups for it in g)
            got = engine.whole_kernel(x1, x, mode=mode, budget=1 << 30, progress=False, out=None, dtype=None)
            assert got is not None
            assert rel_err(got, reduce(ref, mode)) < 1e-12, (mode, x is None)
    assert sliced or share > 0.1  # some layer split by output channels across groups


def test_grouped_through_the_tiler_and_out(cases: dict) -> None:
    model, x1, x2, ref12, _ = cases["resnet"]
    engine = _engine(model, x1, 3)
    out = torch.full((5, 4), float("nan"), dtype=torch.float64)
    got = tiled_kernel(engine, x1, x2, mode="trace", pairs="all", budget=1 << 30, progress=False, out=out)
    assert got is out and rel_err(out, reduce(ref12, "trace")) < 1e-12
    pairs = tiled_kernel(engine, x1[:4], x2, mode="trace", pairs="diagonal", budget=1 << 30, progress=False, out=None)
    assert rel_err(pairs, torch.stack([reduce(ref12, "trace")[i, i] for i in range(4)])) < 1e-12


def test_no_plan_for_too_small_a_budget_or_embeddings(cases: dict) -> None:
    model, x1, _, _, _ = cases["resnet"]
    engine = _engine(model, x1, 3)
    assert gm.make_plan(engine, 5, 5, "trace", 1 << 16, True) is None
    assert engine.plan_flops(5, 5, "trace", 1 << 16, True) == float("inf")
    assert engine.whole_kernel(x1, None, mode="trace", budget=1 << 16, progress=False, out=None, dtype=None) is None
    emb = nn.Sequential(nn.Embedding(7, 4), nn.Flatten(), nn.Linear(12, 2)).double().eval()
    tokens = torch.randint(0, 7, (3, 3))
    eng = gm.GroupedEngine(emb, select_parameters(emb, None), 2, tokens[:1], 1 << 30)
    assert gm.make_plan(eng, 3, 3, "trace", 1 << 30, True) is None


def test_chooser_takes_the_plan_when_tiles_repeat_passes(cases: dict, monkeypatch: Any) -> None:
    model, x1, _, _, ref11 = cases["resnet"]
    params = select_parameters(model, None)
    monkeypatch.setattr(gm, "MIN_WORK", 0.0)
    monkeypatch.setattr(gm, "STORE_SHARE", 0.2)
    streamed = choice.StreamedEngine(model, params, 3, x1[:1], 1 << 30)
    budget = int(streamed.pass_bytes(4, 2, 2, "trace")) + 1  # streamed tiles of two rows
    engine = choice.choose_engine("structured", model, params, 3, x1, 5, 5, "trace", budget, sym=True)
    assert isinstance(engine, gm.GroupedEngine)
    got = ntkit.empirical_ntk(model, x1, mode="trace", memory_budget=budget, progress=False)
    assert rel_err(got, reduce(ref11, "trace")) < 1e-12
