"""Tiny models and a brute-force NTK shared by the tests/test_empirical_*.py files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import ntkit


class Custom(nn.Module):
    """A module the structured path does not know: ``tanh(x * w) + c``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(n)
        self.w = nn.Parameter(torch.randn(n, generator=g))
        self.c = nn.Parameter(torch.randn(n, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * self.w) + self.c


class Shared(nn.Module):
    """One Linear applied twice (weight sharing across calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.relu(self.mid(h))
        h = torch.tanh(self.mid(h))
        return self.out(h)


def make(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, int]:
    """A seeded tiny model and its flat input size."""
    torch.manual_seed(0)
    if name == "fcnet":
        return ntkit.FCNetwork(5, [12, 12], 3, b_std=0.3, seed=0, dtype=dtype), 5
    if name == "mlp":
        m: nn.Module = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3))
        return m.to(dtype), 5
    if name == "cnn":  # two conv layers + global average pooling + readout
        m = nn.Sequential(
            nn.Unflatten(1, (2, 5, 5)),
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, groups=2, padding="same", padding_mode="circular"),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 3),
        )
        return m.to(dtype), 50
    if name == "conv1d":
        m = nn.Sequential(
            nn.Unflatten(1, (3, 8)), nn.Conv1d(3, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16, 2)
        )
        return m.to(dtype), 24
    if name == "unknown":  # LayerNorm and a custom module between linear layers
        m = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), Custom(8), nn.Linear(8, 3))
        return m.to(dtype), 5
    if name == "batchnorm":
        m = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        m.train()
        with torch.no_grad():
            m(torch.randn(32, 5, generator=torch.Generator().manual_seed(5)))  # non-trivial running statistics
        return m.to(dtype).eval(), 5
    if name == "shared":
        return Shared().to(dtype), 5
    raise KeyError(name)


def brute_force_ntk(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, names: list[str] | None = None
) -> torch.Tensor:
    """(N1, N2, k, k) by summing d f_a / d theta_p * d f_b / d theta_p over parameters, one example at a time."""
    named = dict(model.named_parameters())
    params = [named[n] for n in (names if names is not None else list(named))]

    def jac(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(x.shape[0]):
            f = model(x[i : i + 1])[0]
            per_out = []
            for a in range(f.shape[0]):
                grads = torch.autograd.grad(f[a], params, retain_graph=True, allow_unused=True)
                pairs = zip(grads, params, strict=True)
                flat = [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in pairs]
                per_out.append(torch.cat(flat))
            rows.append(torch.stack(per_out))
        return torch.stack(rows)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("iap,jbp->ijab", j1, j2)


def reduce(full: torch.Tensor, mode: str) -> torch.Tensor:
    """Full blocks (N1, N2, k, k) -> mode."""
    if mode == "full":
        return full
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return diag if mode == "diagonal" else diag.mean(-1)


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
