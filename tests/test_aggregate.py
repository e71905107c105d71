"""Graph aggregation (:class:`ntkit.nn.Aggregate`, :class:`ntkit.Graphs`): finite module, infinite-width kernel.

``tests/data/nt_reference_graphs.npz`` holds neural-tangents 0.6.5's float64 NNGP / NTK of the graph networks
of ``benchmarks/nt_reference_graphs.py`` (``stax.Aggregate`` with per-example adjacencies), written by
``benchmarks/nt_reference.py --graphs``. Node features are channel-first (N, C, V) after
``ntkit.nn.Conv1d(kernel_size=1)`` (the per-node dense layer).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import describe_model
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops import AggregateOp
from tests.arch_models import activation

DATA = Path(__file__).parent / "data"
REF = np.load(DATA / "nt_reference_graphs.npz")
META = json.loads((DATA / "nt_reference_graphs.json").read_text())
F64 = torch.float64


class GraphNet(nn.Module):
    """A graph network of a reference case's layers: ``forward(x, adjacency)`` over node features (N, C, V), or
    with ``tokens`` over node tokens (N, V, C) (per-node ``Linear`` layers, ``Aggregate(channel_axis=-1)``,
    pooling by ``x.mean(1)``)."""

    def __init__(self, layers: list[dict[str, Any]], shape: tuple[int, int], *, width: int | None = None,
                 device: str | None = "meta", generator: torch.Generator | None = None, tokens: bool = False) -> None:
        super().__init__()
        self.tokens = tokens
        self.layers = nn.ModuleList()
        channels, spatial = shape[0], [shape[1]]
        dense = [i for i, layer in enumerate(layers) if layer["op"] == "dense"]
        for i, layer in enumerate(layers):
            op = layer["op"]
            if op == "dense":
                out = layer["width"] if width is None or i == dense[-1] else width
                opts = {"w_std": layer["w_std"], "b_std": layer["b_std"], "parameterization": layer["parameterization"],
                        "device": device, "dtype": F64, "generator": generator}
                if spatial and not tokens:  # per node: a 1x1 convolution
                    self.layers.append(ntkit.nn.Conv1d(channels, out, 1, **opts))
                else:
                    self.layers.append(ntkit.nn.Linear(channels, out, **opts))
                channels = out
            elif op == "agg":
                self.layers.append(ntkit.nn.Aggregate(channel_axis=-1 if tokens else 1))
            elif op == "act":
                self.layers.append(ntkit.nn.Activation(activation(layer)))
            elif op == "gap":
                self.layers.append(ntkit.nn.GlobalAvgPool())
                spatial = []
            else:
                assert op == "flatten", op
                self.layers.append(nn.Flatten())
                channels, spatial = channels * spatial[0], []

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(layer, ntkit.nn.Aggregate):
                x = layer(x, adjacency)
            elif self.tokens and isinstance(layer, ntkit.nn.GlobalAvgPool):
                x = x.mean(1)
            else:
                x = layer(x)
        return x


def reference(name: str) -> tuple[ntkit.Graphs, ntkit.Graphs]:
    g = {k: torch.from_numpy(REF[f"{name}/{k}"]) for k in ("x1", "a1", "x2", "a2")}
    return ntkit.Graphs(g["x1"], g["a1"]), ntkit.Graphs(g["x2"], g["a2"])


def identical(g1: ntkit.Graphs, g2: ntkit.Graphs) -> np.ndarray:
    """``same[i, j]``: graph i of g1 is graph j of g2 (features and adjacency)."""
    def rows(g: ntkit.Graphs) -> torch.Tensor:
        return torch.cat([g.x.flatten(1), g.adjacency.flatten(1)], 1)

    r1, r2 = rows(g1), rows(g2)
    return (r1[:, None, :] == r2[None, :, :]).all(-1).numpy()


CASES = sorted(META["cases"])


def test_reference_file_covers_the_cases() -> None:
    assert len(CASES) >= 3 and all(f"{name}/cross/ntk" in REF for name in CASES)


@pytest.mark.parametrize("name", CASES)
def test_matches_neural_tangents(name: str) -> None:
    case = META["cases"][name]
    model = GraphNet(case["layers"], tuple(case["shape"]))
    g1, g2 = reference(name)
    same_features = (g1.x.flatten(1)[:, None] == g2.x.flatten(1)[None]).all(-1).numpy()
    assert (same_features & ~identical(g1, g2)).any()  # the same features on another graph: a distinct pair
    for kind, (b, same) in {"cross": (g2, identical(g1, g2)), "sym": (None, identical(g1, g1))}.items():
        k = ntkit.infinite_kernel(model, g1, b)
        for which in ("nngp", "ntk"):
            got, ref = getattr(k, which).numpy(), REF[f"{name}/{kind}/{which}"]
            err = np.abs(got - ref) / np.abs(ref).max()
            assert err[~same].max() < 1e-12, (kind, which, err[~same].max())
            assert err[same].max() < 1e-12, (kind, which, err[same].max())
            # identical graphs: exactly their own diagonal, and the symmetric kernel exactly symmetric
            diag = k.var1.numpy() if which == "nngp" else np.diagonal(
                ntkit.infinite_kernel(model, g1, which="ntk").numpy())
            rows, cols = np.nonzero(same)
            assert np.array_equal(got[rows, cols], diag[rows])
        if b is None:
            assert torch.equal(k.ntk, k.ntk.T) and torch.equal(k.nngp, k.nngp.T)


@pytest.mark.parametrize("name", CASES)
def test_node_tokens_match_neural_tangents(name: str) -> None:
    """The same networks on node tokens (N, V, C): per-node ``Linear`` and ``Aggregate(channel_axis=-1)``."""
    case = META["cases"][name]
    model = GraphNet(case["layers"], tuple(case["shape"]), tokens=True)
    g1, g2 = reference(name)
    t1, t2 = (ntkit.Graphs(g.x.transpose(1, 2), g.adjacency) for g in (g1, g2))
    assert describe_model(model, t1.x.shape[1:]).tokens
    k = ntkit.infinite_kernel(model, t1, t2)
    same = identical(g1, g2)
    for which in ("nngp", "ntk"):
        ref = REF[f"{name}/cross/{which}"]
        err = np.abs(getattr(k, which).numpy() - ref) / np.abs(ref).max()
        assert err.max() < 1e-12, (which, err.max())
    torch.testing.assert_close(k.ntk, ntkit.infinite_kernel(GraphNet(case["layers"], tuple(case["shape"])), g1,
                                                            g2).ntk, rtol=1e-13, atol=0)
    assert same.any()


def test_architecture_and_tiles() -> None:
    case = META["cases"]["gnn_gap_relu"]
    model = GraphNet(case["layers"], tuple(case["shape"]))
    arch = describe_model(model, case["shape"])
    aggs = [op for op in arch.ops if isinstance(op, AggregateOp)]
    assert len(aggs) == 2 and aggs[0].nodes == 6 and arch.pair_entries == 36 and not arch.prelude
    g1, g2 = reference("gnn_gap_relu")
    whole = ntkit.infinite_kernel(model, g1, g2)
    tiled = ntkit.compute_kernel(model, g1, g2, tile=1)  # one pair per tile: graphs sliced with their rows
    assert tiled.tiles_total == 12
    torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=1e-14, atol=0)
    sym = ntkit.compute_kernel(model, g1, tile=2, which="nngp")
    torch.testing.assert_close(sym.nngp, ntkit.infinite_kernel(model, g1, which="nngp"), rtol=1e-14, atol=0)
    diag = ntkit.compute_kernel(model, g1, pairs="diagonal", which="ntk").ntk
    torch.testing.assert_close(diag, ntkit.infinite_kernel(model, g1, which="ntk").diagonal(), rtol=1e-14, atol=0)


def test_resumable_output_is_keyed_by_the_adjacency(tmp_path: Path) -> None:
    case = META["cases"]["gnn_gap_relu"]
    model = GraphNet(case["layers"], tuple(case["shape"]))
    g1, _ = reference("gnn_gap_relu")
    out = tmp_path / "k.npy"
    ntkit.compute_kernel(model, g1, out=out, which="nngp")
    other = ntkit.Graphs(g1.x, g1.adjacency.flip(1))
    with pytest.raises(ValueError, match=r"other parameters|different|params"):
        ntkit.compute_kernel(model, other, out=out, which="nngp")


def test_permuted_graphs_and_layer_norm() -> None:
    """Relabelling the nodes of every graph (a permutation adjacency) does not change a pooled kernel, with a layer
    norm after the aggregation too (the channel means of the activation are aggregated with the features)."""
    gen = torch.Generator().manual_seed(3)
    n, c, v = 4, 3, 5
    x = torch.randn(n, c, v, dtype=F64, generator=gen)
    perm = torch.stack([torch.eye(v, dtype=F64)[torch.randperm(v, generator=gen)] for _ in range(n)])

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = ntkit.nn.Conv1d(c, 8, 1, b_std=0.5, device="meta")
            self.a = ntkit.nn.Aggregate()
            self.norm = ntkit.nn.LayerNorm(eps=0.0)
            self.mid = ntkit.nn.Conv1d(8, 8, 1, device="meta")
            self.pool = ntkit.nn.GlobalAvgPool()
            self.out = ntkit.nn.Linear(8, 1, device="meta")

        def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.inp(x))
            h = self.norm(self.a(h, adjacency))
            return self.out(self.pool(torch.tanh(self.mid(h))))

    plain = ntkit.infinite_kernel(Net(), ntkit.Graphs(x, torch.eye(v, dtype=F64).expand(n, v, v)))
    permuted = ntkit.infinite_kernel(Net(), ntkit.Graphs(x, perm))
    torch.testing.assert_close(permuted.ntk, plain.ntk, rtol=1e-12, atol=0)
    scaled = ntkit.infinite_kernel(Net(), ntkit.Graphs(x, 2.0 * perm))  # layer norm: scale-free
    torch.testing.assert_close(scaled.ntk, plain.ntk, rtol=1e-12, atol=0)


def test_random_features() -> None:
    """``phi' = phi A^T``: exact (relabelled nodes under a pooling give the plain network's features, draw for
    draw), and phi phi^T estimates the NTK."""
    case = META["cases"]["gnn_gap_relu"]
    model = GraphNet(case["layers"], tuple(case["shape"]))
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, 3, 6, dtype=F64, generator=gen)
    perm = torch.stack([torch.eye(6, dtype=F64)[torch.randperm(6, generator=gen)] for _ in range(5)])
    plain = nn.Sequential(*GraphNet([layer for layer in case["layers"] if layer["op"] != "agg"], (3, 6)).layers)
    for which in ("ntk", "nngp"):
        phi = ntkit.features(model, ntkit.Graphs(x, perm), n_features=64, seed=0, which=which, dtype=F64)
        torch.testing.assert_close(phi, ntkit.features(plain, x, n_features=64, seed=0, which=which, dtype=F64),
                                   rtol=1e-12, atol=1e-14)
    g = _graphs(6, 3, 6, seed=12)
    err = ntkit.random_features.feature_error(model, g, n_features=4096, seed=0, dtype=F64)
    assert err < 0.1
    with pytest.raises(ArchitectureError, match=r"module layers.1 \(Aggregate\) aggregates over each example's graph"):
        ntkit.features(model, g.x, n_features=16)


# --- the finite module ------------------------------------------------------------------------------------------


def test_module_forward() -> None:
    agg = ntkit.nn.Aggregate()
    gen = torch.Generator().manual_seed(0)
    x, a = torch.randn(3, 4, 5, generator=gen), torch.rand(3, 5, 5, generator=gen)
    expected = torch.einsum("nij,ncj->nci", a, x)
    torch.testing.assert_close(agg(x, a), expected)
    assert list(agg.parameters()) == []
    tokens = ntkit.nn.Aggregate(channel_axis=-1)
    torch.testing.assert_close(tokens(x.transpose(1, 2), a), expected.transpose(1, 2))
    assert repr(tokens) == "Aggregate(channel_axis=-1)" and repr(agg) == "Aggregate()"
    with pytest.raises(ValueError, match=r"expected channel_axis 1 \(features \(N, C, V\)\) or -1"):
        ntkit.nn.Aggregate(channel_axis=0)
    with pytest.raises(ValueError, match=r"adjacency of shape \(N, V, V\) = \(3, 4, 4\) for node features \(N, V, C\)"):
        tokens(x, a)
    with pytest.raises(ValueError, match=r"adjacency of shape \(N, V, V\) = \(3, 5, 5\).*\(3, 4, 4\)"):
        agg(x, a[:, :4, :4])
    with pytest.raises(ValueError, match=r"node features of shape \(N, C, V\)"):
        agg(x[0], a)


def _graphs(n: int, c: int, v: int, seed: int) -> ntkit.Graphs:
    gen = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, v, v, generator=gen) < 0.5).to(F64)
    a[0, 0] = 0.0
    return ntkit.Graphs(torch.randn(n, c, v, dtype=F64, generator=gen), a)


GAP = [{"op": "dense", "width": 1, "w_std": 1.5, "b_std": 0.1, "parameterization": "ntk"}, {"op": "agg"},
       {"op": "act", "name": "relu"}, {"op": "agg"}, {"op": "gap"},
       {"op": "dense", "width": 1, "w_std": 1.0, "b_std": 0.0, "parameterization": "ntk"}]


def test_finite_model_trains() -> None:
    g = _graphs(8, 3, 5, seed=1)
    y = torch.randn(8, 1, dtype=F64, generator=torch.Generator().manual_seed(2))
    model = GraphNet(GAP, (3, 5), width=64, device=None, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((model(g.x, g.adjacency) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0]


def test_empirical_ntk_of_graphs() -> None:
    g1, g2 = _graphs(4, 3, 5, seed=4), _graphs(3, 3, 5, seed=5)
    model = GraphNet(GAP, (3, 5), width=32, device=None, generator=torch.Generator().manual_seed(0))
    ref = ntkit.empirical_ntk(model, g1, g2, implementation="jacobian")
    assert ref.shape == (4, 3, 1, 1)
    for impl in ("ntvp", "structured"):
        torch.testing.assert_close(ntkit.empirical_ntk(model, g1, g2, implementation=impl), ref)
    full = ntkit.empirical_ntk(model, g1, mode="trace", memory_budget="20K")  # tiles of a few graphs
    by_hand = ntkit.empirical_ntk(model, g1, g1, mode="trace")
    torch.testing.assert_close(full, by_hand)
    # the graphs matter: the same features on other graphs give another kernel
    other = ntkit.empirical_ntk(model, ntkit.Graphs(g1.x, g1.adjacency.flip(2)), mode="trace")
    assert not torch.allclose(other, full)
    first = ntkit.empirical_ntk(model, g1, g2, mode="trace", parameters=["layers.0.weight"])
    assert first.shape == (4, 3) and not torch.allclose(first, ref[..., 0, 0])


@pytest.mark.slow
def test_empirical_ntk_converges_to_the_limit() -> None:
    """Monte Carlo over widths: the relative error of the empirical NTK falls like width^(-1/2)."""
    g = _graphs(4, 3, 5, seed=6)
    limit = ntkit.infinite_kernel(GraphNet(GAP, (3, 5)), g, which="ntk")
    widths, errors = [64, 256, 1024, 4096], []  # 16 initialisations each: slope -0.50 (deterministic seeds)
    for width in widths:
        errs = []
        for seed in range(16):
            model = GraphNet(GAP, (3, 5), width=width, device=None, generator=torch.Generator().manual_seed(seed))
            emp = ntkit.empirical_ntk(model, g, mode="trace")
            errs.append(float(torch.linalg.norm(emp - limit) / torch.linalg.norm(limit)))
        errors.append(math.sqrt(sum(e * e for e in errs) / len(errs)))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert -0.7 < slope < -0.3, (errors, slope)
    assert errors[-1] < 0.05


# --- errors -------------------------------------------------------------------------------------------------------


def _gnn() -> GraphNet:
    return GraphNet(GAP, (3, 5))


def test_errors_of_the_inputs() -> None:
    g = _graphs(4, 3, 5, seed=7)
    with pytest.raises(ValueError, match=r"x1.adjacency: expected shape \(N, V, V\) with N = 4"):
        ntkit.infinite_kernel(_gnn(), ntkit.Graphs(g.x, g.adjacency[:, :, :4]))
    with pytest.raises(ValueError, match=r"x1.adjacency: expected shape \(N, V, V\) with N = 4"):
        ntkit.infinite_kernel(_gnn(), ntkit.Graphs(g.x, g.adjacency[:3]))
    with pytest.raises(ValueError, match=r"x1\.adjacency: expected a 3-D array"):
        ntkit.infinite_kernel(_gnn(), ntkit.Graphs(g.x, g.adjacency[0]))
    with pytest.raises(ValueError, match=r"expected node features \(N, C, V\) for adjacencies over V = 4 nodes"):
        ntkit.infinite_kernel(_gnn(), ntkit.Graphs(g.x, g.adjacency[:, :4, :4]))
    with pytest.raises(ValueError, match=r"both ntkit\.Graphs.*or both plain arrays, got Graphs and Tensor"):
        ntkit.infinite_kernel(_gnn(), g, g.x)
    with pytest.raises(ValueError, match=r"both ntkit\.Graphs.*or both plain arrays, got Tensor and Graphs"):
        ntkit.compute_kernel(_gnn(), g.x, g)
    with pytest.raises(ValueError, match="x1 and x2: expected graphs of the same feature shape and node count"):
        ntkit.infinite_kernel(_gnn(), g, _graphs(2, 3, 4, seed=0))
    with pytest.raises(ValueError, match=r"x2\.adjacency: expected finite values"):
        ntkit.infinite_kernel(_gnn(), g, ntkit.Graphs(g.x, g.adjacency * float("nan")))


def test_errors_of_model_and_inputs() -> None:
    g = _graphs(4, 3, 5, seed=8)
    with pytest.raises(ArchitectureError, match=r"module layers.1 \(Aggregate\) aggregates over each example's "
                       r"graph: expected inputs given as ntkit.Graphs\(x, adjacency\), got plain tensors"):
        ntkit.infinite_kernel(_gnn(), g.x)
    plain = nn.Sequential(ntkit.nn.Conv1d(3, 4, 1), ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(4, 1))
    with pytest.raises(ArchitectureError, match=r"expected plain tensors for a model without ntkit\.nn\.Aggregate, got "
                       r"ntkit\.Graphs"):
        ntkit.infinite_kernel(plain, g)
    other = _graphs(4, 4, 4, seed=9)  # graphs of 4 nodes for features (C, V) = (4, 6): V mixed up with C
    wide = GraphNet(GAP, (4, 6))
    with pytest.raises(ArchitectureError, match=r"module layers.1 \(Aggregate\) aggregates over V = 6 nodes.*got "
                       r"adjacencies over 4 nodes"):
        ntkit.infinite_kernel(wide, ntkit.Graphs(torch.randn(4, 4, 6, dtype=F64), other.adjacency))
    with pytest.raises(ArchitectureError, match=r"Aggregate\) expected node features of shape \(C, V\)"):
        describe_model(nn.Sequential(ntkit.nn.Conv2d(3, 4, 1), ntkit.nn.Aggregate(), ntkit.nn.GlobalAvgPool(),
                                     ntkit.nn.Linear(4, 1)), (3, 4, 4))
    mixed = GraphNet(GAP, (3, 5), tokens=True)
    mixed.layers[1] = ntkit.nn.Aggregate()  # channel-first aggregation after a per-node Linear on tokens
    with pytest.raises(ArchitectureError, match=r"layers.1 \(Aggregate\) has channel_axis=1, got node tokens "
                       r"\(N, V, C\).*expected Aggregate\(channel_axis=-1\)"):
        ntkit.infinite_kernel(mixed, ntkit.Graphs(g.x.transpose(1, 2), g.adjacency))


def test_errors_of_captured_forwards() -> None:
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.agg = ntkit.nn.Conv1d(3, 4, 1, device="meta"), ntkit.nn.Aggregate()
            self.out = ntkit.nn.Linear(4, 1, device="meta")

        def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
            return self.out(self.agg(self.inp(x), adjacency * 2).mean(2))

    with pytest.raises(ArchitectureError, match="expected the forward's adjacency input itself as the graph"):
        describe_model(Doubled(), (3, 5))

    class OnItself(Doubled):
        def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(self.agg(h, h).mean(2))

    with pytest.raises(ArchitectureError, match="expected the forward's adjacency input itself as the graph"):
        describe_model(OnItself(), (3, 5))

    class ThreeInputs(Doubled):
        def forward(self, x: torch.Tensor, adjacency: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
            return self.out(self.agg(self.inp(x), adjacency).mean(2))

    with pytest.raises(ArchitectureError, match="expected a forward of one tensor input, or of node features and an "
                       "adjacency"):
        describe_model(ThreeInputs(), (3, 5))

    class Keyword(Doubled):
        def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
            return self.out(self.agg(self.inp(x), adjacency=adjacency).mean(2))

    k = ntkit.infinite_kernel(Keyword(), _graphs(3, 3, 5, seed=10))  # x.mean(2): the pooling of a captured forward
    assert k.ntk.shape == (3, 3)
