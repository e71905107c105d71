"""Matrix products ``x @ w.T`` routed to the fastest exact backend available.

On CPUs, PyTorch's float32 ``mm`` goes to MKL, which on non-Intel processors (e.g. AMD EPYC) runs
a generic code path at about half the speed of oneDNN's JIT-compiled GEMM that ships in the same
PyTorch build. For large float32 CPU products we therefore call oneDNN's ``linear`` (exact IEEE
float32, no reduced precision); everything else — float64, CUDA, small sizes, builds without
oneDNN — uses ``torch.mm``. Set ``ntkit.empirical._gemm.USE_ONEDNN = False`` to disable.
"""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor

#: Route large float32 CPU products through oneDNN when it works in this build.
USE_ONEDNN = True
_MIN_WORK = 1 << 21  # m * n * k below which the conversions are not worth it
_works: bool | None = None


def _onednn_works() -> bool:
    global _works
    if _works is None:
        try:
            a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
            b = torch.ones(4, 3, dtype=torch.float32)
            y = torch._C._nn.mkldnn_linear(a.to_mkldnn(), b.to_mkldnn(), None).to_dense()
            _works = bool(torch.backends.mkldnn.is_available()) and bool(torch.equal(y, a @ b.T))
        except Exception:
            _works = False
    return _works


def fast(x: Tensor) -> bool:
    """Whether products of tensors like ``x`` may use oneDNN."""
    return USE_ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu" and _onednn_works()


def matmul_t(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` for ``x`` (..., d) and ``w`` (m, d); returns (..., m)."""
    d = x.shape[-1]
    rows = x.numel() // max(d, 1)
    if fast(x) and rows * d * w.shape[0] >= _MIN_WORK and x.requires_grad is False and w.requires_grad is False:
        x2 = x.reshape(rows, d).contiguous()
        y = torch._C._nn.mkldnn_linear(x2.to_mkldnn(), w.contiguous().to_mkldnn(), None).to_dense()
        return y.reshape(*x.shape[:-1], w.shape[0])
    return x @ w.T


class CotangentRecorder:
    """Collects, pass by pass, the output cotangents of one call of a linear layer.

    ``buf`` has shape (rows, k, d_out) where rows = N * positions; backward pass ``c`` (the
    cotangent of output ``c``) fills ``buf[:, c]``. ``w_t`` is ``(s_w W)^T`` (d_in, d_out), prepacked
    for oneDNN when possible, used to pass the cotangent on to the layer's input.
    """

    def __init__(self, w_eff: Tensor, k: int, counter: list[int]) -> None:
        self.k = k
        self.counter = counter
        self.d_in = w_eff.shape[1]
        self.w_eff = w_eff
        self.w_packed = w_eff.T.contiguous().to_mkldnn() if fast(w_eff) else None
        self.buf: Tensor | None = None
        self.written: set[int] = set()

    def store(self, grad: Tensor) -> None:
        d = grad.shape[-1]
        g2 = grad.reshape(-1, d)
        if self.buf is None:
            self.buf = torch.empty((g2.shape[0], self.k, d), dtype=grad.dtype, device=grad.device)
        self.buf[:, self.counter[0]] = g2
        self.written.add(self.counter[0])

    def result(self) -> Tensor | None:
        """The (rows, k, d_out) cotangents; slots of outputs that never reached the layer are zero."""
        if self.buf is not None and len(self.written) < self.k:
            for c in set(range(self.k)) - self.written:
                self.buf[:, c] = 0
        return self.buf

    def input_grad(self, grad: Tensor) -> Tensor:
        d = grad.shape[-1]
        rows = grad.numel() // d
        if self.w_packed is not None and rows * d * self.d_in >= _MIN_WORK:
            y = torch._C._nn.mkldnn_linear(grad.reshape(rows, d).contiguous().to_mkldnn(), self.w_packed, None)
            return y.to_dense().reshape(*grad.shape[:-1], self.d_in)
        return grad @ self.w_eff


class LinearCotangent(torch.autograd.Function):
    """Identity on a linear layer's output; its backward records the cotangent and returns
    ``grad @ (s_w W)`` to the layer's input (the graph to the layer's parameters is cut: the
    structured engine never needs it). ``anchor`` is a scalar leaf that makes every such node part
    of the backward pass even when the layer's input needs no gradient.
    """

    @staticmethod
    def forward(inp: Tensor, out: Tensor, anchor: Tensor, rec: CotangentRecorder) -> Tensor:
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.rec = inputs[3]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        rec: CotangentRecorder = ctx.rec
        rec.store(grad)
        gin = rec.input_grad(grad) if ctx.needs_input_grad[0] else None
        return gin, None, None, None
