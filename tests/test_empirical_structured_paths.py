"""The structured engine's internal paths all give the brute-force kernel.

Vectorised backward (in one chunk or several) and plain passes; cotangent Grams accumulated
during the backward pass (one-tile trace blocks); the output layer as identity cotangents; row
blocks and the symmetric mirror of dense layers; a module whose ``forward`` cannot be shadowed.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import ntkit
import ntkit.empirical._choice as choice
import ntkit.empirical._structured_products as products
import ntkit.empirical.structured as st
from ntkit.empirical._common import select_parameters
from tests._empirical_models import brute_force_ntk, make, reduce, single_thread  # noqa: F401
from tests.conftest import rel_err

MODELS = ["fcnet", "mlp", "cnn", "conv1d", "unknown", "batchnorm", "shared"]
MODES = ["full", "trace", "diagonal"]


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[Any, ...]]:
    g = torch.Generator().manual_seed(11)
    out = {}
    for name in MODELS:
        model, d = make(name)
        x1 = torch.randn(7, d, generator=g, dtype=torch.float64)
        x2 = torch.randn(5, d, generator=g, dtype=torch.float64)
        out[name] = (model, x1, x2, brute_force_ntk(model, x1, x2), brute_force_ntk(model, x1, x1))
    return out


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Record which capture paths ran; a failing vectorised pass raises instead of falling back. The
    stored engine is used throughout (never the streamed one, tested in test_empirical_streamed.py)."""
    monkeypatch.setattr(choice, "STREAMED_MARGIN", float("inf"))
    calls: list[bool] = []
    original = st.StructuredEngine._capture_once

    def capture_once(self: st.StructuredEngine, x: torch.Tensor, vectorised: bool, trace_rows: int | None) -> Any:
        calls.append(vectorised)
        return original(self, x, vectorised, trace_rows)

    def capture(self: st.StructuredEngine, x: torch.Tensor, trace_rows: int | None = None) -> Any:
        return capture_once(self, x, st.VECTORISE, trace_rows)

    monkeypatch.setattr(st.StructuredEngine, "_capture_once", capture_once)
    monkeypatch.setattr(st.StructuredEngine, "_capture", capture)
    yield calls


def check_all(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, ref12: torch.Tensor, ref11: torch.Tensor) -> None:
    for mode in MODES:
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        assert rel_err(got, reduce(ref12, mode)) < 1e-10, (mode, "x2")
        sym = ntkit.empirical_ntk(model, x1, mode=mode, implementation="structured")
        assert rel_err(sym, reduce(ref11, mode)) < 1e-10, (mode, "x2=None")
        diag = ntkit.empirical_ntk(model, x1, mode=mode, implementation="structured", pairs="diagonal")
        want = torch.stack([reduce(ref11, mode)[i, i] for i in range(x1.shape[0])])
        assert rel_err(diag, want) < 1e-10, (mode, "pairs")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("setting", ["one chunk", "chunks", "plain passes", "row blocks"])
def test_paths_agree_with_brute_force(
    cases: dict, name: str, setting: str, strict: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    if setting == "chunks":
        monkeypatch.setattr(st, "CHUNK_BYTES", 1)  # one output per vectorised pass
        monkeypatch.setattr(st, "TRACE_CHUNK_BYTES", 1)
        monkeypatch.setattr(st, "TRACE_CHUNK_MIN", 1)
    elif setting == "plain passes":
        monkeypatch.setattr(st, "VECTORISE", False)
    elif setting == "row blocks":
        monkeypatch.setattr(products, "FULL_BLOCK_BYTES", 1)  # one row per block, mirrored when symmetric
    check_all(*cases[name])
    assert strict and all(v == (setting != "plain passes") for v in strict)


def test_vectorised_chunks_follow_the_budget(cases: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x1, *_ = cases["mlp"]
    engine = st.StructuredEngine(model, select_parameters(model, None), 3, x1[:1], 7, 7, "full")
    monkeypatch.setattr(st, "CHUNK_BYTES", 1 << 30)
    assert engine._chunk(7, 8) == 3
    monkeypatch.setattr(st, "CHUNK_BYTES", 7 * 12 * 8 * 2)  # two outputs' largest activations
    assert engine._chunk(7, 8) == 2
    monkeypatch.setattr(st, "CHUNK_BYTES", 1)
    assert engine._chunk(7, 8) == 1
    assert engine._chunk(7, 8, 7 * 12 * 8 * 2) == 2  # an explicit limit (trace Grams) wins
    assert engine._chunk(7, 8, 1, 2) == 2  # and a least number of outputs
    assert engine._chunk(7, 8, 1, 5) == 3  # but never more than k


class Scaled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


@pytest.mark.parametrize("tail", ["linear", "scaled", "two calls"])
def test_output_layer_identity_only_when_the_output_is_the_layer_output(tail: str) -> None:
    torch.manual_seed(3)
    head = nn.Linear(6, 3)
    layers: list[nn.Module] = [nn.Linear(4, 6), nn.Tanh(), head]
    if tail == "scaled":
        layers.append(Scaled())
    model: nn.Module = nn.Sequential(*layers).double()
    if tail == "two calls":  # the output layer is also applied to an intermediate value

        class Twice(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a = nn.Linear(4, 3)
                self.b = nn.Linear(3, 3)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.b(torch.tanh(self.b(torch.tanh(self.a(x)))))

        model = Twice().double()
    rng = torch.Generator().manual_seed(112)
    x1 = torch.randn(5, 4, dtype=torch.float64, generator=rng)
    x2 = torch.randn(3, 4, dtype=torch.float64, generator=rng)
    ref = brute_force_ntk(model, x1, x2)
    for mode in MODES:
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        assert rel_err(got, reduce(ref, mode)) < 1e-10


def test_module_with_its_own_forward_attribute() -> None:
    """A layer whose ``forward`` is an instance attribute keeps it (the output is then recorded)."""
    model, d = make("mlp")
    model[2].forward = types.MethodType(nn.Linear.forward, model[2])
    rng = torch.Generator().manual_seed(113)
    x1 = torch.randn(4, d, dtype=torch.float64, generator=rng)
    x2 = torch.randn(3, d, dtype=torch.float64, generator=rng)
    ref = brute_force_ntk(model, x1, x2)
    for mode in MODES:
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        assert rel_err(got, reduce(ref, mode)) < 1e-10
    assert "forward" in model[2].__dict__


def test_forward_attributes_restored_after_an_error() -> None:
    model, d = make("mlp")
    rng = torch.Generator().manual_seed(114)
    bad = torch.randn(3, d + 1, dtype=torch.float64, generator=rng)
    with pytest.raises(ValueError):
        ntkit.empirical_ntk(model, torch.randn(3, d, dtype=torch.float64, generator=rng), bad,
                            implementation="structured")
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_float32_paths() -> None:
    """float32 on CPU: oneDNN products, vectorised chunks and Grams during the backward pass."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(20, 160), nn.ReLU(), nn.Linear(160, 160), nn.ReLU(), nn.Linear(160, 4))
    rng = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(40, 20, generator=rng), torch.randn(30, 20, generator=rng)
    ref = ntkit.empirical_ntk(net.double(), x1.double(), x2.double(), implementation="jacobian")
    net = net.float()
    for mode in MODES:
        got = ntkit.empirical_ntk(net, x1, x2, mode=mode, implementation="structured")
        assert rel_err(got.double(), reduce(ref, mode)) < 1e-5
        sym = ntkit.empirical_ntk(net, x1, mode=mode, implementation="structured")
        swapped = sym.permute(1, 0, 3, 2) if mode == "full" else sym.transpose(0, 1)
        assert rel_err(sym, swapped) < 1e-6


@pytest.mark.parametrize("mode", ["trace", "full"])
def test_capture_leaves_no_cycles_holding_recorders(mode: str) -> None:
    """A call leaves no recorder (and so none of its recorded inputs) for the cyclic garbage collector:
    in one-tile trace blocks each dense layer's Gram sink referred to its recorder, which referred to it."""
    import gc

    from ntkit.empirical._cotangents import Recorder

    model, d = make("unknown")  # not a dense chain: the autograd capture with recorders
    g = torch.Generator().manual_seed(12)
    x1 = torch.randn(6, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, d, generator=g, dtype=torch.float64)
    ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(3):
            ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        alive = [o for o in gc.get_objects() if type(o) is Recorder]
    finally:
        if enabled:
            gc.enable()
    assert not alive, f"{len(alive)} recorders kept alive by reference cycles"
