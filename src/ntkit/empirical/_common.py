"""Shared pieces of the empirical-kernel implementations: parameter selection, checks, contractions.

Kernel layouts used throughout (``k`` outputs):

* ``"full"``: (N1, N2, k, k), entry ``[i, j, a, b] = <d f_a(x1_i)/d theta, d f_b(x2_j)/d theta>``;
* ``"trace"``: (N1, N2), ``(1/k) sum_a`` of the above with ``a == b``;
* ``"diagonal"``: (N1, N2, k), the ``a == b`` entries.

With ``pairs="diagonal"`` only ``i == j`` is computed: (N, k, k), (N,) and (N, k).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ntkit._validation import describe, parse_memory_budget
from ntkit.empirical._gemm import matmul_t

Tensor = torch.Tensor

MODES = ("full", "trace", "diagonal")
#: Modes of :func:`ntkit.empirical_ntk`: :data:`MODES` and the pseudo-NTK (:mod:`ntkit.empirical.pntk`).
NTK_MODES = (*MODES, "pntk")
PAIRS = ("all", "diagonal")
IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured", "fc")

#: Working memory allowed per tile when the caller sets none (bytes).
DEFAULT_MEMORY_BUDGET = 1 << 30


def parse_memory(value: Any) -> int:
    """A memory budget in bytes (:func:`ntkit._validation.parse_memory_budget`: ``4096``, ``"512M"``, ``"2 GB"``)."""
    return parse_memory_budget(value, "memory_budget")


def select_parameters(model: nn.Module, parameters: Sequence[str] | str | None) -> dict[str, Tensor]:
    """The trainable parameters to differentiate, by name (all by default), detached."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if parameters is None:
        if not named:
            raise ValueError("model: expected at least one trainable parameter, got none")
        return {n: p.detach() for n, p in named.items()}
    if isinstance(parameters, str):
        parameters = [parameters]
    if not isinstance(parameters, Sequence) or not all(isinstance(n, str) for n in parameters):
        raise TypeError(f"parameters: expected a sequence of parameter names, got {describe(parameters)}")
    missing = [n for n in parameters if n not in named]
    if missing:
        modules = [m for m in missing if any(n.startswith(f"{m}.") for n in named)]
        hint = ""
        if modules:
            inside = [n for n in named if n.startswith(f"{modules[0]}.")]
            hint = f" ({modules[0]!r} is a module: name its parameters, e.g. {inside[:4]})"
        raise ValueError(
            f"parameters: expected names of trainable parameters of the model such as "
            f"{list(named)[:6]}, got unknown {missing}{hint}"
        )
    if not parameters:
        raise ValueError("parameters: expected at least one parameter name, got an empty sequence")
    return {n: named[n].detach() for n in dict.fromkeys(parameters)}


def model_output(model: nn.Module, x: Tensor, name: str) -> Tensor:
    """Run ``model`` on the first row of ``x`` and check that it returns (1, k)."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as err:
        raise ValueError(f"{name}: the model failed on an input of shape {tuple(x[:1].shape)}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"model: expected an output of shape (N, k), got {describe(out)} for N = 1")
    return out


def check_output(out: Any, n: int) -> Tensor:
    """Check a batched model output has shape (n, k)."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        raise ValueError(f"model: expected an output of shape (N, k) with N = {n}, got {describe(out)}")
    return out


def contract_jacobians(j1: Tensor, j2: Tensor, mode: str) -> Tensor:
    """Contract Jacobians (N1, k, P) and (N2, k, P) into a kernel block of the given mode."""
    n1, k, p = j1.shape
    n2 = j2.shape[0]
    if mode == "full":
        c = matmul_t(j1.reshape(n1 * k, p), j2.reshape(n2 * k, p))
        return c.view(n1, k, n2, k).permute(0, 2, 1, 3)
    if mode == "diagonal":
        return torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)).permute(1, 2, 0)
    return matmul_t(j1.reshape(n1, k * p), j2.reshape(n2, k * p)).div_(k)


def contract_jacobian_pairs(j1: Tensor, j2: Tensor, mode: str) -> Tensor:
    """Row-wise contraction of Jacobians (N, k, P) and (N, k, P): the ``i == j`` kernel entries."""
    if mode == "full":
        return torch.bmm(j1, j2.transpose(1, 2))
    if mode == "diagonal":
        return (j1 * j2).sum(-1)
    return (j1 * j2).sum((1, 2)) / j1.shape[1]


def block_shape(n1: int, n2: int, k: int, mode: str) -> tuple[int, ...]:
    """Shape of a kernel block of the given mode."""
    return {"full": (n1, n2, k, k), "trace": (n1, n2), "diagonal": (n1, n2, k)}[mode]


def pairs_shape(n: int, k: int, mode: str) -> tuple[int, ...]:
    """Shape of the ``pairs="diagonal"`` result of the given mode."""
    return {"full": (n, k, k), "trace": (n,), "diagonal": (n, k)}[mode]


def mode_width(k: int, mode: str) -> int:
    """Entries per (i, j) pair of a kernel of the given mode."""
    return {"full": k * k, "trace": 1, "diagonal": k}[mode]


class Engine:
    """One way of computing empirical-NTK blocks; the tiler drives it tile by tile.

    Subclasses compute per-row *features* of an input block (Jacobians, layer inputs and cotangents,
    or just the inputs) and contract two feature sets into a kernel block. Memory estimates are in
    bytes and count the main tensors only (they guide tile sizes; they are not exact).
    """

    k: int
    itemsize: int

    def features(self, x: Tensor) -> Any:
        """Per-row features of the block ``x`` (N, ...)."""
        raise NotImplementedError

    def block(self, f1: Any, f2: Any, mode: str) -> Tensor:
        """Kernel block between two feature sets, in the layout of ``mode``."""
        raise NotImplementedError

    #: Whether :meth:`split` is implemented (then one pass can compute the features of x1 and x2).
    splits = False

    def split(self, f: Any, n1: int) -> tuple[Any, Any]:
        """Features of rows ``[:n1]`` and ``[n1:]`` from the features of a stacked input."""
        raise NotImplementedError

    def pair_features(self, x1: Tensor, x2: Tensor, mode: str) -> tuple[Any, Any]:
        """Features of x1 and x2 for one ``mode`` block, from one pass (needs :meth:`split`)."""
        return self.split(self.features(torch.cat([x1, x2])), x1.shape[0])

    def block_into(self, f1: Any, f2: Any, mode: str, out: Tensor) -> None:
        """Write the kernel block between two feature sets into ``out`` (possibly a strided view)."""
        out.copy_(self.block(f1, f2, mode))

    def pairs(self, f1: Any, f2: Any, mode: str) -> Tensor:
        """The ``i == j`` entries between two feature sets of equal length."""
        raise NotImplementedError

    def row_bytes(self) -> float:
        """Bytes of features (and transient graph) per input row."""
        raise NotImplementedError

    def tile_bytes(self, b1: int, b2: int, mode: str) -> float:
        """Bytes of temporaries for one (b1, b2) block, besides the features."""
        raise NotImplementedError

    def sym_tile_bytes(self, b: int, mode: str) -> float:
        """Bytes of temporaries for the symmetric (b, b) block of ``x1`` with itself (``x2=None``)."""
        return self.tile_bytes(b, b, mode)

    def flops(self, n1: int, n2: int, mode: str) -> float:
        """Estimated floating-point operations for an (n1, n2) kernel."""
        raise NotImplementedError
