"""Branches and transposed convolutions in the compiled convolution program (:mod:`ntkit.infinite.conv_fast`).

A ``Parallel`` sum or concatenation lowers to ``FORK`` / branch ops / ``JOIN`` (a weighted sum of the branches'
kernels), a residual block ``x + s f(x)`` to ``FORK``, ``JOIN(1)``, ``f``, ``JOIN(s^2)``, a transposed convolution
to ``UPS`` (zero-upsampling) and a stride-1 ``valid`` convolution. Every model here runs on the native path
(checked) and agrees with the reference evaluator to rounding (1e-12 of the largest entry in float64), symmetric
and cross, duplicated rows included; products, the standard parameterization and branches nested deeper than the
loop holds fall back to the reference evaluator, with the same kernels.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from ntkit.infinite import conv_fast, describe_model
from ntkit.infinite.reference import reference_kernel
from ntkit.infinite.tiles import KernelTiles
from tests.models_forward import INPUT_SHAPE, MODELS

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not conv_fast.usable(torch.zeros(1, dtype=torch.float64)),
                                 reason="the native spatial loop is not built here")]

F64 = torch.float64
P, C1, C2, CT1, CT2, L = (ntkit.nn.Parallel, ntkit.nn.Conv1d, ntkit.nn.Conv2d, ntkit.nn.ConvTranspose1d,
                          ntkit.nn.ConvTranspose2d, ntkit.nn.Linear)
META = {"device": "meta"}
GAP = ntkit.nn.GlobalAvgPool


def _images(shape: tuple[int, ...], n: int = 5, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, *shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    x[-1] = x[0]  # a duplicated row
    return x


def _small_models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    relu, seq = nn.ReLU, nn.Sequential

    def head(c: int) -> list[nn.Module]:
        return [relu(), GAP(), L(c, 1, **META)]

    three = P(C2(3, 3, 1, **META), C2(3, 3, 3, b_std=0.2, **META), seq(relu(), C2(3, 3, 3, **META)))
    unequal = P(C2(4, 2, 1, **META), seq(C2(4, 5, 3, **META), relu()), merge="concat")
    pooled = P(seq(nn.AvgPool2d(2), C2(3, 3, 3, **META)), C2(3, 3, 2, stride=2, **META))
    inner = P(C2(3, 3, 1, **META), seq(C2(3, 3, 3, **META), relu(), C2(3, 3, 3, **META)))
    grow = P(nn.Identity(), seq(C2(3, 2, 3, **META), relu()), merge="concat")
    up_1d = P(nn.Identity(), seq(nn.AvgPool1d(2), C1(3, 3, 3, **META), relu(), CT1(3, 3, 2, 2, "valid", **META)),
              merge="concat")
    return {
        "sum-of-three": (seq(C2(2, 3, 3, **META), three, *head(3)), (2, 5, 6)),
        "identity-beside-a-block": (seq(C2(2, 3, 3, **META), P(nn.Identity(), seq(relu(), C2(3, 3, 3, **META))),
                                        *head(3)), (2, 5, 5)),
        "unequal-concat-then-flatten": (seq(C2(2, 4, 3, stride=2, **META), relu(), unequal, C2(7, 3, 3, **META), relu(),
                                            nn.Flatten(), L(3 * 3 * 3, 1, **META)), (2, 6, 5)),
        "pool-inside-a-branch": (seq(C2(2, 3, 3, **META), relu(), pooled, *head(3)), (2, 6, 6)),
        "nested": (seq(C2(2, 3, 3, **META), P(nn.Identity(), seq(relu(), inner)), relu(), grow, C2(5, 3, 1, **META),
                       *head(3)), (2, 5, 5)),
        "transposed-valid-flatten": (seq(CT2(2, 3, (2, 3), (2, 1), "valid", b_std=0.2, **META), relu(),
                                         C2(3, 3, 3, **META), relu(), nn.Flatten(), L(3 * 8 * 7, 1, **META)),
                                     (2, 4, 5)),
        "residual-blocks": (seq(C2(2, 3, 3, b_std=0.1, **META), ntkit.nn.Residual(relu(), C2(3, 3, 3, **META), relu(),
                                                                                  C2(3, 3, 3, **META), scale=0.7),
                                ntkit.nn.Residual(relu(), C2(3, 3, 3, b_std=0.2, **META)), *head(3)), (2, 5, 5)),
        "transposed-1d": (seq(C1(2, 3, 3, **META), relu(), CT1(3, 3, 4, 2, b_std=0.1, **META), *head(3)), (2, 7)),
        "transposed-1d-valid-in-a-branch": (seq(C1(2, 3, 3, **META), relu(), up_1d, C1(6, 3, 3, **META), *head(3)),
                                            (2, 8)),
    }


def _check_native(model: nn.Module, shape: tuple[int, ...]) -> None:
    arch = describe_model(model, shape)
    assert KernelTiles(arch).path == "spatial"
    x = _images(shape)
    for a, b in ((x, None), (x[:3], x[2:])):
        got = ntkit.infinite_kernel(model, a, b)
        ref = reference_kernel(arch, a, b)
        for g, r in zip((got.nngp, got.ntk), ref, strict=True):
            assert r is not None
            assert float((g - r).abs().max() / r.abs().max()) < 1e-12


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_forward_cnns_run_natively(name: str) -> None:
    """ResNet (projection sums), DenseNet (concatenations with the identity), U-Net (a transposed convolution in a
    concatenated branch): native, equal to the reference evaluator; float32 within 1e-5 of float64."""
    model = MODELS[name][0](device="meta")
    _check_native(model, INPUT_SHAPE)
    x = _images(INPUT_SHAPE)
    k64, k32 = ntkit.infinite_kernel(model, x), ntkit.infinite_kernel(model, x.float(), dtype=torch.float32)
    for a, b in ((k32.nngp, k64.nngp), (k32.ntk, k64.ntk)):
        assert a.dtype == torch.float32
        assert float((a.double() - b).abs().max() / b.abs().max()) < 1e-5


@pytest.mark.parametrize("name", sorted(_small_models()))
def test_branch_and_upsampling_steps(name: str) -> None:
    _check_native(*_small_models()[name])


def test_what_does_not_lower_runs_on_the_reference_evaluator() -> None:
    """A product of branches, the standard parameterization of a transposed convolution and branches nested deeper
    than ``MAX_SLOTS``: the reference evaluator, the same kernels as :func:`reference_kernel`."""
    relu = nn.ReLU
    prod = nn.Sequential(C2(2, 3, 3, **META), relu(), P(C2(3, 3, 1, **META), C2(3, 3, 3, **META), merge="prod"),
                         C2(3, 3, 1, **META), relu(), GAP(), L(3, 1, **META))
    standard = nn.Sequential(CT2(2, 3, 2, 2, parameterization="standard", **META), relu(), GAP(), L(3, 1, **META))

    def nested(levels: int) -> nn.Module:
        block: nn.Module = C2(3, 3, 1, **META)
        for _ in range(levels):
            block = P(nn.Identity(), nn.Sequential(block, relu(), C2(3, 3, 1, **META)))
        return nn.Sequential(C2(2, 3, 3, **META), block, relu(), GAP(), L(3, 1, **META))

    _check_native(nested(conv_fast.MAX_SLOTS), (2, 4, 4))
    for model in (prod, standard, nested(conv_fast.MAX_SLOTS + 1)):
        arch = describe_model(model, (2, 4, 4))
        assert KernelTiles(arch).path == "reference"
        x = _images((2, 4, 4))
        got, ref = ntkit.infinite_kernel(model, x), reference_kernel(arch, x)
        assert torch.equal(got.nngp, ref[0]) and ref[1] is not None and torch.equal(got.ntk, ref[1])


def test_workspace_counts_the_fork_buffers() -> None:
    """Four covariance buffers (fork input, merge; NNGP, NTK) per nesting depth of branches; scratch rows of the
    widest image along the program."""
    model, shape = _small_models()["nested"]
    prog = conv_fast.match_spatial(describe_model(model, shape))
    assert prog is not None
    base = 2 * prog.height * prog.width + 2 * prog.width * prog.width
    assert conv_fast.workspace_entries(prog) == (6 + 4 * 2) * prog.max_size + base + 3  # + the widest filter
    # an upsampling widens the images: the scratch rows follow the widest (7 samples, upsampled with the
    # transposed convolution's pads to 17 = max_size ** 0.5, then its stride-1 valid convolution: 14)
    model, shape = _small_models()["transposed-1d"]
    prog = conv_fast.match_spatial(describe_model(model, shape))
    assert prog is not None and prog.width == 7 and prog.max_size == 17 * 17
    assert conv_fast.workspace_entries(prog) == 6 * prog.max_size + 2 * 17 + 2 * 17 * 17 + 4
