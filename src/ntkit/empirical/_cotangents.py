"""Layer inputs and output cotangents of recognised layers, for the structured engine.

For every call of a recognised layer we need its input ``a`` (N, ...) and the cotangents
``g_c = d f_c / d z`` (k, N, ...) of all ``k`` outputs at its output ``z``. A :class:`Recorder` per
call collects both; custom autograd functions put it on the graph:

* :class:`LinearCotangent` replaces a linear layer's forward (an instance attribute ``forward``
  shadows the class's for the duration of the call; a module that already has one keeps it and
  gets :class:`LinearCotangentOf` through a forward hook): it computes ``z = s_w a W^T + s_b b``
  itself (by :func:`~ntkit.empirical._gemm.matmul_t`, oneDNN for float32 on CPU) and in the
  backward records the cotangent and passes ``g (s_w W)`` to the input. The graph to the layer's
  parameters is cut: nothing here differentiates parameters.
* :class:`ProbeCotangent` is the identity on a convolution's output; its backward records the
  cotangent and passes it on unchanged.

Both take a scalar ``anchor`` as an input so that every such node is on the backward path. The
``k`` cotangents then come from one backward pass vectorised over the output basis
(``torch.func.vjp`` under ``torch.func.vmap``): the recording happens in the ``vmap`` rule of
:class:`_Record`, which sees the whole (k, ...) batch, so a linear layer passes all ``k``
cotangents on in one GEMM of (k N, d_out) x (d_out, d_in). Where vectorising fails (an operation
without a batching rule that refuses the fallback) ``k`` plain backward passes are used instead;
each records its column.

A linear layer's cotangents are kept with the output index inside the rows, (N, [P,] k, d_out) in
memory, which is the layout of the Gram products; the vectorised pass is arranged so that this
needs no copy (the GEMM that passes cotangents on writes that layout and the elementwise
backward operations keep it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ntkit.empirical._gemm import matmul_t

Tensor = torch.Tensor


class Recorder:
    """One call of a recognised layer: its input and the cotangents reaching its output.

    ``w_eff`` (d_out, d_in) and ``b_eff`` (d_out,) are the scaled weight ``s_w W`` and bias
    ``s_b b`` of a linear layer (``None`` for a convolution probe). ``counter[0]`` is the output
    index of the current plain backward pass. ``identity`` marks the model's output layer, whose
    cotangents are the basis vectors ``e_c`` themselves: nothing is stored and ``e_c (s_w W)`` is
    the row ``c`` of ``w_eff``.
    """

    def __init__(self, k: int, counter: list[int], w_eff: Tensor | None = None, b_eff: Tensor | None = None) -> None:
        self.k = k
        self.counter = counter
        self.w_eff = w_eff
        self.b_eff = b_eff
        self.identity = False
        #: consumes (kc, ...) cotangents of the outputs c0 .. c0 + kc - 1 instead of storing them: sink(g, c0)
        self.sink: Callable[[Tensor, int], None] | None = None
        self.inp: Tensor | None = None
        self.out: Any = None  # the returned tensor, to recognise the model's output (then cleared)
        self.out_shape: tuple[int, ...] = ()
        self.buf: Tensor | None = None  # (k, *out_shape), filled pass by pass or chunk by chunk
        self.batched: Tensor | None = None  # (k, *out_shape) from a vectorised pass in one chunk
        self.written: set[int] = set()
        self.offset = 0  # first output of the next vectorised chunk

    # ----------------------------------------------------------------- forward
    def linear(self, inp: Tensor) -> Tensor:
        assert self.w_eff is not None
        y = matmul_t(inp.detach(), self.w_eff)
        return y if self.b_eff is None else y.add_(self.b_eff)

    # ---------------------------------------------------------------- backward
    def _buffer(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """(k, *shape) storage: a view of (..., k, d) memory for a linear layer, (N, k, ...) for a probe."""
        if self.buf is None:
            k = self.k
            if self.w_eff is not None:
                mem = torch.empty((*shape[:-1], k, shape[-1]), dtype=like.dtype, device=like.device)
                self.buf = mem.movedim(-2, 0)
            else:  # (N, k, ...) in memory: per-example Jacobians then need no copy
                mem = torch.empty((shape[0], k, *shape[1:]), dtype=like.dtype, device=like.device)
                self.buf = mem.movedim(1, 0)
        return self.buf

    def store(self, grad: Tensor) -> None:
        """Cotangent of output ``counter[0]`` from a plain backward pass."""
        if self.sink is not None:
            self.sink(grad.unsqueeze(0), self.counter[0])
        elif not self.identity:
            c = self.counter[0]
            self._buffer(tuple(grad.shape), grad)[c] = grad
            self.written.add(c)

    def store_batched(self, grad: Tensor, c0: int) -> None:
        """Cotangents (kc, ...) of the outputs ``c0 .. c0 + kc - 1`` from a vectorised pass."""
        if self.sink is not None:
            self.sink(grad, c0)
            return
        if self.identity:
            return
        kc = grad.shape[0]
        if kc == self.k:
            self.batched = grad
            return
        self._buffer(tuple(grad.shape[1:]), grad)[c0 : c0 + kc] = grad
        self.written.update(range(c0, c0 + kc))

    def project(self, grad: Tensor) -> Tensor:
        """``grad (s_w W)`` of a plain pass (the identity for a probe)."""
        if self.w_eff is None:
            return grad.view_as(grad)
        if self.identity:  # grad = e_c in every row
            return self.w_eff[self.counter[0]].expand(*grad.shape[:-1], self.w_eff.shape[1])
        return _times_w(grad, self.w_eff)

    def project_batched(self, grad: Tensor, c0: int) -> tuple[Tensor, int]:
        """``grad (s_w W)`` for cotangents (kc, N, ..., d_out) of the outputs from ``c0`` on, and the
        batch dimension of the result.

        For a linear layer the result is laid out (N, ..., k, d_in) in memory (batch dimension 1
        for a 2-d input): the next layer then stores its cotangents without a copy.
        """
        if self.w_eff is None:
            return grad.view_as(grad), 0
        k, d_in = grad.shape[0], self.w_eff.shape[1]
        rest = grad.shape[1:-1]
        if self.identity:  # grad[c] = e_{c0 + c} in every row; materialised so that the layout carries on
            w = self.w_eff[c0 : c0 + k].view(*([1] * len(rest)), k, d_in).expand(*rest, k, d_in)
            return w.contiguous(), len(rest)
        rows = grad.movedim(0, -2)  # (..., k, d_out), contiguous when the layout was kept
        y = _times_w(rows.contiguous(), self.w_eff)
        return y, len(rest)

    def cotangents(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The (k, *out_shape) cotangents; zero where an output never reached this call."""
        if self.batched is not None:
            return self.batched
        if self.buf is None:
            return torch.zeros((self.k, *self.out_shape), dtype=dtype, device=device)
        for c in set(range(self.k)) - self.written:
            self.buf[c] = 0
        return self.buf


def _times_w(grad: Tensor, w: Tensor) -> Tensor:
    """``grad @ w`` for grad (..., d_out) and w (d_out, d_in), as ``matmul_t(grad, w.T)``."""
    return matmul_t(grad, w.T)


class _Record(torch.autograd.Function):
    """Used inside backward passes: records a cotangent and returns ``grad (s_w W)``.

    Called with a plain tensor in a plain pass; under ``torch.func.vmap`` its :meth:`vmap` rule
    receives the whole (k, ...) batch.
    """

    @staticmethod
    def forward(grad: Tensor, rec: Recorder, need: bool) -> Tensor:
        rec.store(grad)
        return rec.project(grad) if need else grad.view_as(grad)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], grad: Tensor, rec: Recorder, need: bool) -> tuple[Tensor, int]:
        if in_dims[0] is None:
            grad = grad.expand(info.batch_size, *grad.shape)
        else:
            grad = grad.movedim(in_dims[0], 0)
        c0 = rec.offset
        rec.offset += grad.shape[0]
        rec.store_batched(grad, c0)
        if not need:
            return grad.view_as(grad), 0
        return rec.project_batched(grad, c0)


class LinearCotangent(torch.autograd.Function):
    """A linear layer's forward that records its input, and its cotangents in the backward."""

    @staticmethod
    def forward(inp: Tensor, anchor: Tensor, rec: Recorder) -> Tensor:
        rec.inp = inp.detach()
        out = rec.linear(inp)
        rec.out_shape = tuple(out.shape)
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.rec = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        need = bool(ctx.needs_input_grad[0])
        gin = _Record.apply(grad, ctx.rec, need)
        return (gin if need else None), None, None


class _RecordOutput(torch.autograd.Function):
    """Shared forward of :class:`LinearCotangentOf` and :class:`ProbeCotangent`: the identity on a
    layer's output ``out`` (a view), recording the layer's input and the output's shape."""

    @staticmethod
    def forward(inp: Tensor, out: Tensor, anchor: Tensor, rec: Recorder) -> Tensor:
        rec.inp = inp.detach()
        rec.out_shape = tuple(out.shape)
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.rec = inputs[3]


class LinearCotangentOf(_RecordOutput):
    """As :class:`LinearCotangent` for an output the module computed itself (``out`` detached)."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        need = bool(ctx.needs_input_grad[0])
        gin = _Record.apply(grad, ctx.rec, need)
        return (gin if need else None), None, None, None


class ProbeCotangent(_RecordOutput):
    """The identity on a layer's output that records the layer's input and its cotangents."""

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, None, None]:
        need = bool(ctx.needs_input_grad[1])
        g = _Record.apply(grad, ctx.rec, need)
        return None, (g if need else None), None, None
