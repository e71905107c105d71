"""The native path of token models with self-attention (ntkit.infinite.tokens_fast) against the reference evaluator."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import native, tokens_factors
from ntkit.infinite.reference import reference_kernel
from ntkit.infinite.tiles import KernelTiles
from ntkit.infinite.tokens_fast import _cut, match_tokens, torch_serial
from ntkit.infinite.walk import describe_model
from ntkit.nn import LayerNorm, Linear, Parallel, Residual, SelfAttention
from tests.arch_cases import make_inputs
from tests.arch_cases_tokens import CASES
from tests.conftest import rel_err
from tests.prerequisites import needs_c_compiler
from tests.test_tokens_nt import TokenMean, build_tokens

F64 = torch.float64
META = {"device": "meta"}


@pytest.fixture(autouse=True)
def _native_built() -> None:
    needs_c_compiler()
    assert native.library("tokens") is not None, native.status("tokens")


def _encoder(c: int, width: int, blocks: int, mechanism: str = "softmax", **attn: object) -> nn.Module:
    layers: list[nn.Module] = [Linear(c, width, b_std=0.1, **META)]
    for _ in range(blocks):
        layers.append(Residual(LayerNorm(width), SelfAttention(width, width, n_heads=2, mechanism=mechanism,
                                                               **attn, **META)))  # type: ignore[arg-type]
        layers.append(Residual(LayerNorm(width), Linear(width, width, b_std=0.1, **META), nn.ReLU(),
                               Linear(width, width, b_std=0.1, **META)))
    return nn.Sequential(*layers, TokenMean(), Linear(width, 1, b_std=0.1, **META))


def _models() -> list[tuple[str, nn.Module, int]]:
    """(name, model, tokens L): encoders of 1 and 2 blocks, every mechanism, a bias, positional embeddings,
    branches, an attention straight after an activation and one on the data."""
    relu_first = nn.Sequential(Linear(3, 6, **META), nn.LeakyReLU(0.2), SelfAttention(6, 5, mechanism="abs", **META),
                               nn.ReLU(), SelfAttention(5, 4, b_std=0.2, w_out_std=1.3, **META), TokenMean(),
                               Linear(4, 2, **META))
    branches = nn.Sequential(
        SelfAttention(3, 4, pos_emb="concat", n_tokens=7, pos_emb_features=5, pos_emb_std=0.8, **META),
        Parallel(Linear(4, 3, **META), nn.Sequential(nn.ReLU(), Linear(4, 2, b_std=0.3, **META)), merge="concat",
                 dim=-1),
        Linear(5, 5, b_std=0.2, **META), nn.ReLU(),
        Parallel(Linear(5, 4, **META), SelfAttention(5, 4, mechanism="identity", **META)),
        TokenMean(), Linear(4, 1, **META))
    return [
        ("encoder1", _encoder(3, 8, 1), 7),
        ("encoder2", _encoder(3, 8, 2), 7),
        ("encoder2_identity", _encoder(3, 8, 2, "identity"), 6),
        ("encoder1_relu_bias_pos", _encoder(3, 8, 1, "relu", b_std=0.3, pos_emb="sum", n_tokens=5), 5),
        ("relu_first", relu_first, 9),
        ("branches", branches, 7),
    ]


MODELS = _models()


@pytest.mark.parametrize("name,model,length", MODELS, ids=[m[0] for m in MODELS])
def test_native_matches_the_reference(name: str, model: nn.Module, length: int) -> None:
    arch = describe_model(model, (length, 3))
    tiles = KernelTiles(arch)
    assert tiles.path == "tokens"
    x1, x2 = make_inputs(name, [length, 3], 5, 4)  # x1[-1] == x1[0], x2[0] == x1[1], x2[-1] == x1[0]
    a, b = torch.from_numpy(x1), torch.from_numpy(x2)
    for rhs in (b, None):
        got = ntkit.infinite_kernel(model, a, rhs)
        ref = reference_kernel(arch, a, rhs)
        assert rel_err(got.nngp, ref[0]) < 1e-13 and rel_err(got.ntk, ref[1]) < 1e-13
        got32 = ntkit.infinite_kernel(model, a.float(), None if rhs is None else rhs.float(), dtype=torch.float32)
        assert got32.ntk.dtype == torch.float32
        assert rel_err(got32.ntk.double(), ref[1]) < 2e-5 and rel_err(got32.nngp.double(), ref[0]) < 2e-5
    # identical inputs: exactly the self value; the diagonal exactly the diagonal pass
    whole = ntkit.infinite_kernel(model, a)
    cross = ntkit.infinite_kernel(model, a, b)
    assert whole.ntk[0, -1] == whole.ntk[0, 0] and torch.equal(whole.ntk, whole.ntk.T)
    assert cross.ntk[1, 0] == whole.ntk[1, 1] and cross.nngp[0, -1] == whole.nngp[0, 0]
    diag = ntkit.compute_kernel(model, a, pairs="diagonal")
    assert torch.equal(diag.ntk, whole.ntk.diagonal()) and torch.equal(diag.nngp, whole.var1)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_token_cases_match_the_reference_where_native(case: tuple) -> None:
    name, spec, shape, n1, n2 = case
    model, _ = build_tokens(spec, shape)
    arch = describe_model(model, tuple(shape))
    prog = match_tokens(arch)
    if prog is None:  # erf, flatten, square-root scaling: the reference evaluator runs
        assert KernelTiles(arch).path == "reference"
        return
    x1, x2 = make_inputs(name, shape, n1, n2)
    a, b = torch.from_numpy(x1), torch.from_numpy(x2)
    got = ntkit.infinite_kernel(model, a, b)
    ref = reference_kernel(arch, a, b)
    assert rel_err(got.nngp, ref[0]) < 1e-13 and rel_err(got.ntk, ref[1]) < 1e-13


def test_every_cut_of_the_factored_prefix_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linear prefix as per-input factors (tokens_factors) gives the kernels of the native loop from the data."""
    model = _encoder(3, 8, 2, b_std=0.2)
    arch = describe_model(model, (6, 3))
    x = torch.randn(5, 6, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    ref = reference_kernel(arch, x)
    assert [op.position for op in match_tokens(arch).prefix] == ["0 (Linear)", "1 (Residual)"]  # type: ignore[union-attr]
    for cut in range(3):
        monkeypatch.setattr("ntkit.infinite.tokens_fast._cut", lambda *args, c=cut: c)
        got = ntkit.infinite_kernel(model, x)
        assert rel_err(got.nngp, ref[0]) < 1e-13 and rel_err(got.ntk, ref[1]) < 1e-13
    # Linear: K [x, b] (4), T the same (4); the attention with a bias: K [G x, G b, b] (5), T [G T, G K, b] (9);
    # the residual sum: (4 + 5, 4 + 9)
    assert tokens_factors.ranks(arch.ops[:2], (3, 0)) == (9, 13)
    assert _cut(list(arch.ops[:-1]), [0] * len(arch.ops), [], 3, 6) == 0  # nothing left to save: no factors


def test_nngp_only_tiles_and_threads_do_not_change_the_result() -> None:
    model = _encoder(3, 8, 2)
    x = torch.randn(23, 6, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    x[20] = x[3]
    whole = ntkit.compute_kernel(model, x, tile=64)
    tiled = ntkit.compute_kernel(model, x, tile=5, threads=2)
    assert torch.equal(whole.ntk, tiled.ntk) and torch.equal(whole.nngp, tiled.nngp)  # bitwise
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = ntkit.compute_kernel(model, x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.ntk, whole.ntk)
    assert whole.ntk[3, 20] == whole.ntk[3, 3] and torch.equal(whole.ntk, whole.ntk.T)
    nngp = ntkit.compute_kernel(model, x, which="nngp")
    assert torch.equal(nngp.nngp, whole.nngp)
    assert torch.get_num_threads() == before  # the native loop's torch_serial restored torch's setting
    with torch_serial() as threads, torch_serial() as inner:
        assert threads == inner == before and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_native_switch_gives_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _encoder(3, 8, 1)
    x = torch.randn(6, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    fast = ntkit.infinite_kernel(model, x)
    monkeypatch.setenv("NTKIT_NATIVE", "0")
    assert KernelTiles(describe_model(model, (5, 3))).path == "reference"
    slow = ntkit.infinite_kernel(model, x)
    assert rel_err(fast.ntk, slow.ntk) < 1e-13 and rel_err(fast.nngp, slow.nngp) < 1e-13


def test_a_tile_of_pairs_costs_only_its_outputs() -> None:
    model = _encoder(3, 8, 1)
    arch = describe_model(model, (64, 3))
    x = torch.randn(4, 64, 3)
    assert arch.pair_entries == 64**2 and KernelTiles(arch).pair_entries(x) == 1
    assert KernelTiles(arch).workspace_bytes(x) > 0


def test_unsupported_layers_run_on_the_reference_evaluator() -> None:
    sqrt = nn.Sequential(Linear(3, 4, **META), SelfAttention(4, 4, mechanism="relu", linear_scaling=False, **META),
                         TokenMean(), Linear(4, 1, **META))
    standard = nn.Sequential(Linear(3, 4, parameterization="standard", **META), SelfAttention(4, 4, **META),
                             TokenMean(), Linear(4, 1, **META))
    smooth = nn.Sequential(Linear(3, 4, **META), SelfAttention(4, 4, **META), nn.Tanh(), TokenMean(),
                           Linear(4, 1, **META))
    no_attention = nn.Sequential(Linear(3, 4, **META), nn.ReLU(), TokenMean(), Linear(4, 1, **META))
    mean_after_relu = nn.Sequential(Linear(3, 4, **META), SelfAttention(4, 4, **META), nn.ReLU(), LayerNorm(4),
                                    TokenMean(), Linear(4, 1, **META))
    for model in (sqrt, standard, smooth, no_attention, mean_after_relu):
        arch = describe_model(model, (5, 3))
        assert match_tokens(arch) is None
    x = torch.randn(4, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    got = ntkit.infinite_kernel(mean_after_relu, x)
    ref = reference_kernel(describe_model(mean_after_relu, (5, 3)), x)
    assert torch.equal(got.ntk, ref[1])


def test_cuda_inputs_and_other_dtypes_take_the_reference_path() -> None:
    model = _encoder(3, 8, 1)
    tiles = KernelTiles(describe_model(model, (5, 3)))
    assert tiles.path_for(torch.zeros(1, dtype=torch.float16)) == "reference"
    prog = tiles.token_program
    assert prog is not None and dataclasses.replace(prog).tokens == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [5, 8, 16, 19])
def test_cross_pairs_run_the_self_pairs_arithmetic_bitwise(dtype: torch.dtype, length: int) -> None:
    """A pair (x, x) computed as a cross pair -- by rows with the state in registers where a row is one vector
    (L <= 16 in float32, <= 8 in float64), op by op otherwise -- equals the self pass bitwise."""
    from ntkit.infinite.tokens_fast import _self_pass, token_pairs

    model = _encoder(3, 8, 2)
    arch = describe_model(model, (length, 3))
    prog = match_tokens(arch)
    assert prog is not None
    x = arch.prepare(torch.randn(6, length, 3, dtype=dtype, generator=torch.Generator().manual_seed(length)))
    self_n, self_t, store, begin = _self_pass(prog, x, True, 1)
    idx = torch.arange(6)
    for threads in (1, 2):
        cross_n, cross_t = token_pairs(prog, begin, idx, idx, torch.zeros(6, dtype=torch.uint8), store, True, threads)
        assert torch.equal(cross_n, self_n) and cross_t is not None and self_t is not None
        assert torch.equal(cross_t, self_t)


def test_tiles_count_each_inputs_stored_quantities() -> None:
    """The token path keeps per input its attention matrices, layer-norm factors and start factors: the tile
    sizing counts them (``input_bytes``), so long sequences get smaller tiles within the budget."""
    from ntkit.compute.sizing import fit_tile_shape, pair_bytes, size_tiles
    from ntkit.infinite.tokens_fast import _self_pass

    arch = describe_model(_encoder(3, 8, 2), (64, 3))
    tiles = KernelTiles(arch)
    x = arch.prepare(torch.randn(5, 64, 3))
    prog = tiles.token_program
    assert prog is not None and tiles.path_for(x) == "tokens"
    _, _, store, begin = _self_pass(prog, x, True, 1)
    held = store[0].numel() + sum(t[0].numel() for t in begin[:4])
    assert tiles.input_bytes(x) >= held * x.element_size()  # what one input really holds
    per_input, per_pair = tiles.input_bytes(x), pair_bytes(tiles, x)
    budget = 32 << 20

    def cost(h: int, w: int) -> int:
        return h * w * per_pair + (h + w) * per_input

    edge, threads = size_tiles(tiles, x, 10_000, 10_000, budget=budget, threads=1)
    left = budget - tiles.workspace_bytes(x)  # a thread's loop workspace comes off first
    assert threads == 1 and cost(edge, edge) <= left < cost(edge + 1, edge + 1)  # the largest tile that fits
    assert 2 * edge * per_input > left // 2  # the inputs, not the pairs, take most of it
    rows, cols = fit_tile_shape(tiles, x, 4096, 4096, budget=budget)
    assert rows < 4096 and cost(rows, cols) <= budget
