"""Tiling under a memory budget, symmetry, pairs, ``out``, progress, train-mode and bad-input errors."""

from __future__ import annotations

import re
import weakref

import pytest
import torch
from torch import nn

import ntkit
from ntkit.empirical._common import parse_memory
from tests._empirical_models import make, single_thread  # noqa: F401
from tests.conftest import rel_err

MODES = ["full", "trace", "diagonal"]


def one_tile_need(model: nn.Module, x: torch.Tensor, **kwargs: object) -> int:
    """The budget a 1 x 1 tile needs, read from the error raised for a 1-byte budget."""
    with pytest.raises(ValueError, match="memory_budget: expected at least") as info:
        ntkit.empirical_ntk(model, x, memory_budget=1, **kwargs)  # type: ignore[arg-type]
    return int(re.search(r"at least (\d+) bytes", str(info.value)).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("impl", ["structured", "jacobian", "ntvp"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_tiled_equals_untiled(
    impl: str, name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NTKIT_PROGRESS", "1")  # captured stderr is not a terminal: ask for the bar
    model, d = make(name)
    rng = torch.Generator().manual_seed(115)
    x1 = torch.randn(11, d, dtype=torch.float64, generator=rng)
    x2 = torch.randn(7, d, dtype=torch.float64, generator=rng)
    for mode in MODES:
        ref = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
        ref_sym = ntkit.empirical_ntk(model, x1, mode=mode, implementation=impl)
        ref_pairs = ntkit.empirical_ntk(model, x1, mode=mode, implementation=impl, pairs="diagonal")
        # a budget that allows a few rows per tile only
        budget = 3 * one_tile_need(model, x1, x2=x2, mode=mode, implementation=impl)
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation=impl, memory_budget=budget)
        got_sym = ntkit.empirical_ntk(model, x1, mode=mode, implementation=impl, memory_budget=budget)
        got_pairs = ntkit.empirical_ntk(
            model, x1, mode=mode, implementation=impl, pairs="diagonal", memory_budget=budget
        )
        assert rel_err(got, ref) < 1e-12
        assert rel_err(got_sym, ref_sym) < 1e-12
        assert rel_err(got_pairs, ref_pairs) < 1e-12
    ntkit.empirical_ntk(model, x1, x2, implementation=impl, memory_budget=budget, progress=True)
    assert "empirical_ntk" in capsys.readouterr().err


def test_out_is_filled_and_progress_can_be_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    model, d = make("mlp")
    rng = torch.Generator().manual_seed(116)
    x = torch.randn(20, d, dtype=torch.float64, generator=rng)
    out = torch.full((20, 20), float("nan"), dtype=torch.float64)
    res = ntkit.empirical_ntk(model, x, mode="trace", memory_budget=20_000, out=out, progress=False)
    assert res is out and bool(torch.isfinite(out).all())
    assert rel_err(out, ntkit.empirical_ntk(model, x, mode="trace")) < 1e-12
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="out: expected a tensor of shape"):
        ntkit.empirical_ntk(model, x, mode="full", out=out)


def test_budget_too_small_for_one_tile() -> None:
    model, d = make("cnn")
    rng = torch.Generator().manual_seed(117)
    x = torch.randn(3, d, dtype=torch.float64, generator=rng)
    for impl in ["structured", "jacobian", "ntvp", "auto"]:
        with pytest.raises(ValueError, match=r"memory_budget: expected at least \d+ bytes .* one 1 x 1 tile"):
            ntkit.empirical_ntk(model, x, implementation=impl, memory_budget=100)


def test_parse_memory() -> None:
    assert parse_memory("2GB") == 2 << 30
    assert parse_memory("1.5 MB") == int(1.5 * 2**20)
    assert parse_memory(4096) == 4096
    for bad in ["lots", "-1GB", 0, True, "1 XB"]:
        with pytest.raises((ValueError, TypeError), match="memory_budget"):
            parse_memory(bad)


class _Bilinear(nn.Module):
    """An unknown module holding most of the parameters."""

    def __init__(self, n: int) -> None:
        super().__init__()
        rng = torch.Generator().manual_seed(118)
        self.w = nn.Parameter(torch.randn(n, n, dtype=torch.float64, generator=rng) / n**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_auto_falls_back_to_ntvp_when_jacobians_do_not_fit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 40), nn.Tanh(), _Bilinear(40), nn.Tanh(), nn.Linear(40, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = ntkit.empirical_ntk(model, x, implementation="jacobian")
    needs = {impl: one_tile_need(model, x, implementation=impl) for impl in ["ntvp", "jacobian", "structured"]}
    assert needs["ntvp"] < min(needs["jacobian"], needs["structured"])
    assert rel_err(ntkit.empirical_ntk(model, x, memory_budget=needs["ntvp"]), ref) < 1e-10


class _BadOutput(nn.Module):
    def __init__(self, shape: str) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6).double()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y.sum(-1) if self.shape == "1d" else y.view(-1, 2, 3)


@pytest.mark.parametrize("impl", ["structured", "jacobian", "ntvp", "auto"])
def test_bad_inputs(impl: str) -> None:
    model, d = make("mlp")
    rng = torch.Generator().manual_seed(119)
    x = torch.randn(3, d, dtype=torch.float64, generator=rng)
    for shape in ["1d", "3d"]:
        with pytest.raises(ValueError, match=r"model: expected an output of shape \(N, k\)"):
            ntkit.empirical_ntk(_BadOutput(shape), torch.randn(3, 4, generator=rng), implementation=impl)
    with pytest.raises(ValueError, match="x1 and x2: expected the same feature shape"):
        ntkit.empirical_ntk(model, x, torch.randn(3, d + 1, generator=rng), implementation=impl)
    with pytest.raises(ValueError, match=r"parameters: expected names of trainable parameters.*'nope'"):
        ntkit.empirical_ntk(model, x, implementation=impl, parameters=["0.weight", "nope"])
    with pytest.raises(ValueError, match="x1 and x2: expected the same number of rows for pairs='diagonal'"):
        ntkit.empirical_ntk(model, x, x[:2], implementation=impl, pairs="diagonal")
    with pytest.raises(ValueError, match="pairs: expected one of"):
        ntkit.empirical_ntk(model, x, implementation=impl, pairs="diag")
    with pytest.raises(ValueError, match="implementation: expected one of"):
        ntkit.empirical_ntk(model, x, implementation="fast")
    with pytest.raises(ValueError, match="x1: expected finite values"):
        ntkit.empirical_ntk(model, torch.full((2, d), float("nan")), implementation=impl)
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        ntkit.empirical_ntk(lambda t: t, x, implementation=impl)  # type: ignore[arg-type]


def test_train_mode_batchnorm_and_dropout_are_refused() -> None:
    model, d = make("batchnorm")
    rng = torch.Generator().manual_seed(120)
    x = torch.randn(3, d, dtype=torch.float64, generator=rng)
    ntkit.empirical_ntk(model, x)  # eval mode: fine (running statistics are constants)
    model.train()
    with pytest.raises(ValueError, match=r"model: expected BatchNorm and Dropout layers in eval mode.*model.eval\(\)"):
        ntkit.empirical_ntk(model, x)
    model.eval()
    model[3].train()  # only the dropout in train mode
    with pytest.raises(ValueError, match="random masks"):
        ntkit.empirical_ntk(model, x)


def test_float32_tiled_big_enough_for_fast_path() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(16, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 5))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    ref = ntkit.empirical_ntk(net.double(), x.double(), mode="trace", implementation="jacobian")
    got = ntkit.empirical_ntk(net.float(), x, mode="trace", implementation="structured", memory_budget="3MB")
    assert rel_err(got.double(), ref) < 1e-5


class _CountingEngine:
    """A linear-kernel engine that records, whenever a block is contracted, the bytes alive: every feature
    tensor still referenced (rows, columns, cached ones) plus the block's temporaries."""

    k = 1
    itemsize = 8
    splits = False

    def __init__(self, row_bytes: float, block_bytes_per_pair: float) -> None:
        self.rb, self.bb = row_bytes, block_bytes_per_pair
        self.live: dict[int, int] = {}
        self.peaks: list[float] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = x.clone()
        key = id(f)
        self.live[key] = f.shape[0]
        weakref.finalize(f, self.live.pop, key, None)
        return f

    def block_into(self, f1: torch.Tensor, f2: torch.Tensor, mode: str, out: torch.Tensor) -> None:
        self.peaks.append(self.rb * sum(self.live.values()) + self.bb * f1.shape[0] * f2.shape[0])
        out.copy_((f1 @ f2.T).reshape(out.shape))

    def row_bytes(self) -> float:
        return self.rb

    def tile_bytes(self, b1: int, b2: int, mode: str) -> float:
        return self.bb * b1 * b2

    def sym_tile_bytes(self, b: int, mode: str) -> float:
        return self.tile_bytes(b, b, mode)


@pytest.mark.parametrize("budget", [2_500, 4_000, 9_000])
def test_symmetric_tiles_charge_both_sides_within_budget(budget: int) -> None:
    """An off-diagonal tile of a symmetric kernel holds its rows' and its columns' features: the tile
    sizes must keep both (plus the block) within the budget, and the kernel must be exact."""
    from ntkit.empirical.tiling import tiled_kernel

    x = torch.randn(60, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    engine = _CountingEngine(row_bytes=100.0, block_bytes_per_pair=1.0)
    k = tiled_kernel(engine, x, None, mode="trace", pairs="all", budget=budget, progress=False, out=None)  # type: ignore[arg-type]
    assert len(engine.peaks) > 1  # several tiles
    assert max(engine.peaks) <= budget
    assert torch.allclose(k.reshape(60, 60), x @ x.T, rtol=0, atol=1e-12)
