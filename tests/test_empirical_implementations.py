"""All empirical-NTK implementations against each other and a brute-force per-parameter sum."""

from __future__ import annotations

import pytest
import torch

import ntkit
from ntkit.empirical._common import select_parameters
from ntkit.empirical.structured import StructuredEngine
from tests._empirical_models import brute_force_ntk, make, reduce, single_thread  # noqa: F401
from tests.conftest import rel_err

IMPLS = ["jacobian", "ntvp", "structured", "auto"]
MODES = ["full", "trace", "diagonal"]
MODELS = ["fcnet", "mlp", "cnn", "conv1d", "unknown", "batchnorm", "shared"]


@pytest.fixture(scope="module")
def references() -> dict[str, tuple]:
    out = {}
    g = torch.Generator().manual_seed(7)
    for name in MODELS:
        model, d = make(name)
        x1 = torch.randn(4, d, generator=g, dtype=torch.float64)
        x2 = torch.randn(3, d, generator=g, dtype=torch.float64)
        out[name] = (model, x1, x2, brute_force_ntk(model, x1, x2), brute_force_ntk(model, x1, x1))
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("impl", IMPLS)
def test_agrees_with_brute_force(references: dict, name: str, impl: str) -> None:
    model, x1, x2, ref12, ref11 = references[name]
    for mode in MODES:
        got = ntkit.empirical_ntk(model, x1, x2, mode=mode, implementation=impl)
        assert got.shape == reduce(ref12, mode).shape
        assert rel_err(got, reduce(ref12, mode)) < 1e-10, (mode, "x2")
        sym = ntkit.empirical_ntk(model, x1, mode=mode, implementation=impl)
        assert rel_err(sym, reduce(ref11, mode)) < 1e-10, (mode, "x2=None")
        diag = ntkit.empirical_ntk(model, x1, mode=mode, implementation=impl, pairs="diagonal")
        want = torch.stack([reduce(ref11, mode)[i, i] for i in range(x1.shape[0])])
        assert rel_err(diag, want) < 1e-10, (mode, "pairs")


def test_pairs_with_explicit_x2(references: dict) -> None:
    model, x1, _, _, _ = references["cnn"]
    x2 = x1.flip(0)
    ref = brute_force_ntk(model, x1, x2)
    for impl in ["jacobian", "ntvp", "structured"]:
        got = ntkit.empirical_ntk(model, x1, x2, implementation=impl, pairs="diagonal")
        assert rel_err(got, torch.stack([ref[i, i] for i in range(4)])) < 1e-10


@pytest.mark.parametrize("name", ["cnn", "conv1d", "shared"])
def test_structured_per_layer_methods_agree(references: dict, name: str) -> None:
    """Layers with several positions: pairwise-position Grams == per-layer Jacobians."""
    model, x1, x2, ref12, _ = references[name]
    params = select_parameters(model, None)
    k = ref12.shape[-1]
    for mode in MODES:
        results = []
        for method in ["factored", "jacobian"]:
            engine = StructuredEngine(model, params, k, x1[:1], 4, 3, mode)
            assert any(layer.positions > 1 for layer in engine.layers)
            for layer in engine.layers:
                layer.method = method
            with torch.no_grad():
                f1, f2 = engine.features(x1), engine.features(x2)
                results.append(engine.block(f1, f2, mode))
                assert rel_err(engine.pairs(f1, f1, mode), engine.block(f1, f1, mode)[range(4), range(4)]) < 1e-12
        assert rel_err(results[0], results[1]) < 1e-12
        assert rel_err(results[0], reduce(ref12, mode)) < 1e-10


def test_structured_uses_factored_layers_and_falls_back_only_for_unknown() -> None:
    model, _ = make("unknown")
    params = select_parameters(model, None)
    rng = torch.Generator().manual_seed(106)
    engine = StructuredEngine(model, params, 3, torch.randn(1, 5, dtype=torch.float64, generator=rng), 4, 4, "full")
    assert len(engine.layers) == 2
    assert sorted(engine.fallback_names) == ["1.bias", "1.weight", "2.c", "2.w"]


@pytest.mark.parametrize("name", ["mlp", "fcnet", "cnn"])
def test_float32_matches_float64(name: str) -> None:
    model64, d = make(name)
    model32, _ = make(name, torch.float32)
    rng = torch.Generator().manual_seed(107)
    x1 = torch.randn(9, d, dtype=torch.float64, generator=rng)
    x2 = torch.randn(7, d, dtype=torch.float64, generator=rng)
    for mode in MODES:
        ref = ntkit.empirical_ntk(model64, x1, x2, mode=mode, implementation="jacobian")
        for impl in ["structured", "jacobian"]:
            got = ntkit.empirical_ntk(model32, x1.float(), x2.float(), mode=mode, implementation=impl)
            assert got.dtype == torch.float32
            assert rel_err(got.double(), ref) < 1e-5


def test_float32_fast_linear_path_wide() -> None:
    """Wide enough for the oneDNN products and recorded cotangents to be used (float32, CPU)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 160), torch.nn.ReLU(), torch.nn.Linear(160, 160), torch.nn.ReLU(), torch.nn.Linear(160, 4)
    )
    rng = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(40, 20, generator=rng), torch.randn(30, 20, generator=rng)
    ref = ntkit.empirical_ntk(net.double(), x1.double(), x2.double(), implementation="jacobian")
    got = ntkit.empirical_ntk(net.float(), x1, x2, implementation="structured")
    assert rel_err(got.double(), ref) < 1e-5


@pytest.mark.parametrize("subset", [["4.weight"], ["0.bias", "4.weight"], ["2.weight"], "2.bias"])
def test_parameter_subsets(subset: list[str] | str) -> None:
    model, d = make("mlp")
    rng = torch.Generator().manual_seed(108)
    x1 = torch.randn(3, d, dtype=torch.float64, generator=rng)
    x2 = torch.randn(2, d, dtype=torch.float64, generator=rng)
    names = [subset] if isinstance(subset, str) else subset
    ref = brute_force_ntk(model, x1, x2, names)
    for impl in IMPLS:
        got = ntkit.empirical_ntk(model, x1, x2, implementation=impl, parameters=subset)
        assert rel_err(got, ref) < 1e-10
    full = ntkit.empirical_ntk(model, x1, x2)
    parts = sum(ntkit.empirical_ntk(model, x1, x2, parameters=[n]) for n, _ in model.named_parameters())
    assert rel_err(parts, full) < 1e-12


def test_frozen_parameters_are_constants() -> None:
    model, d = make("unknown")
    model[1].weight.requires_grad_(False)
    rng = torch.Generator().manual_seed(109)
    x = torch.randn(3, d, dtype=torch.float64, generator=rng)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ref = brute_force_ntk(model, x, x, names)
    for impl in IMPLS:
        assert rel_err(ntkit.empirical_ntk(model, x, implementation=impl), ref) < 1e-10


def test_fc_alias_and_infinite_width_sanity() -> None:
    net = ntkit.FCNetwork(3, [256, 256], 2, seed=0)
    rng = torch.Generator().manual_seed(110)
    x = torch.randn(5, 3, dtype=torch.float64, generator=rng)
    a = ntkit.empirical_ntk(net, x, mode="trace", implementation="fc")
    b = ntkit.empirical_ntk(net, x, mode="trace", implementation="jacobian")
    assert rel_err(a, b) < 1e-12
    inf = net.infinite_kernel(x).ntk
    assert rel_err(a, inf) < 0.3  # finite width 256: close to the limit, not equal


def test_symmetric_result_is_symmetric() -> None:
    model, d = make("cnn")
    rng = torch.Generator().manual_seed(111)
    x = torch.randn(6, d, dtype=torch.float64, generator=rng)
    full = ntkit.empirical_ntk(model, x, implementation="structured")
    assert rel_err(full, full.permute(1, 0, 3, 2)) < 1e-14
    assert rel_err(full, ntkit.empirical_ntk(model, x, x.clone(), implementation="structured")) < 1e-12
