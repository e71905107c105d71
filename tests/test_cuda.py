"""The same kernels on a CUDA device as on the CPU (runs only where a GPU is present).

The CPU fast paths (native loops) do not apply on a GPU: there the fused torch recursion of the
fully connected pattern and the reference evaluator's batched tensor code run, and must give the
CPU's values to rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit
from tests.conftest import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

F64 = torch.float64


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (ntkit.nn.fc(5, depth=3, b_std=0.1, device="meta"), (5,)),
        (nn.Sequential(ntkit.nn.Linear(5, 8), nn.Tanh(), ntkit.nn.Linear(8, 1)), (5,)),
        (ntkit.nn.cntk(2, 3, device="meta"), (2, 8, 8)),
        (ntkit.nn.myrtle(5, 1, device="meta"), (1, 8, 8)),
        (nn.Sequential(ntkit.nn.Conv2d(1, 4, 3), ntkit.nn.LayerNorm(), nn.ReLU(), ntkit.nn.GlobalAvgPool(),
                       ntkit.nn.Linear(4, 1)), (1, 6, 6)),
    ],
)
def test_infinite_kernel_on_cuda_equals_cpu(model: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(12, *shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    x[11] = x[0]
    cpu = ntkit.infinite_kernel(model, x)
    gpu = ntkit.infinite_kernel(model, x, device="cuda")
    assert gpu.ntk.device.type == "cuda"
    assert rel_err(gpu.ntk.cpu(), cpu.ntk) < 1e-12 and rel_err(gpu.nngp.cpu(), cpu.nngp) < 1e-12
    assert gpu.ntk[0, 11] == gpu.ntk[0, 0]


def test_compute_kernel_and_empirical_ntk_on_cuda() -> None:
    x = torch.randn(300, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    cpu = ntkit.compute_kernel(None, x, depth=2, tile=128)
    gpu = ntkit.compute_kernel(None, x.cuda(), depth=2, tile=128)
    assert rel_err(gpu.ntk.cpu(), cpu.ntk) < 1e-12
    net = ntkit.FCNetwork(4, [64, 64], 2, seed=0, device="cuda")
    theta = ntkit.empirical_ntk(net, x[:10].cuda())
    ref = ntkit.empirical_ntk(net.cpu(), x[:10])
    assert rel_err(theta.cpu(), ref) < 1e-12
