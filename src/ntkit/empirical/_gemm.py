"""Matrix products ``x @ w.T`` routed to the fastest exact backend available.

On CPUs, PyTorch's float32 ``mm`` goes to MKL, which on non-Intel processors (e.g. AMD EPYC) runs
a generic code path at about half the speed of oneDNN's JIT-compiled GEMM that ships in the same
PyTorch build. For float32 CPU products of any useful size we therefore call oneDNN (exact IEEE
float32, no reduced precision) through ``torch.ops.mkldnn._linear_pointwise``, which takes and
returns ordinary dense tensors (no conversion copies); builds without that operator use
``mkldnn_linear`` on converted tensors for large products. Everything else — float64, CUDA, small
sizes, builds without oneDNN — uses ``torch.mm``. Set ``ntkit.empirical._gemm.USE_ONEDNN = False``
to disable.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

#: Route float32 CPU products through oneDNN when it works in this build.
USE_ONEDNN = True
_MIN_WORK = 1 << 15  # m * n * k below which a plain ``mm`` is as fast (dense oneDNN path)
_MIN_WORK_CONVERT = 1 << 21  # the same with conversions to and from oneDNN's layout
_backend: str | None = None  # "dense", "convert" or "none", decided on first use


def _onednn_backend() -> str:
    global _backend
    if _backend is None:
        _backend = "none"
        a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        b = torch.ones(4, 3, dtype=torch.float32)
        try:
            if torch.backends.mkldnn.is_available():
                y = torch._C._nn.mkldnn_linear(a.to_mkldnn(), b.to_mkldnn(), None).to_dense()
                if torch.equal(y, a @ b.T):
                    _backend = "convert"
                y = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
                if torch.equal(y, a @ b.T):
                    _backend = "dense"
        except Exception:  # any failure means: do not use this backend
            pass
    return _backend


def _onednn_works() -> bool:
    return _onednn_backend() != "none"


def fast(x: Tensor) -> bool:
    """Whether products of tensors like ``x`` may use oneDNN."""
    return USE_ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu" and _onednn_works()


def _onednn_t(x2: Tensor, w: Tensor) -> Tensor | None:
    """``x2 @ w.T`` by oneDNN for a 2-d ``x2`` when worth it, else None."""
    work = x2.shape[0] * x2.shape[1] * w.shape[0]
    backend = _onednn_backend()
    if backend == "dense" and work >= _MIN_WORK:
        return torch.ops.mkldnn._linear_pointwise(x2, w, None, "none", [], "")
    if backend == "convert" and work >= _MIN_WORK_CONVERT:
        return torch._C._nn.mkldnn_linear(x2.contiguous().to_mkldnn(), w.contiguous().to_mkldnn(), None).to_dense()
    return None


def matmul_t(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` for ``x`` (..., d) and ``w`` (m, d); returns (..., m)."""
    d = x.shape[-1]
    if fast(x) and not x.requires_grad and not w.requires_grad:
        y = _onednn_t(x.reshape(-1, d), w)
        if y is not None:
            return y.reshape(*x.shape[:-1], w.shape[0])
    return x @ w.T
