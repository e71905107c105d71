"""Randomised linear maps that preserve inner products in expectation: Gaussian projections, tensor sketches.

* :class:`GaussianProjection` ``R`` of shape (m, d), entries ``N(0, 1/m)``: ``E[(R a).(R b)] = a.b``
  (Johnson-Lindenstrauss; variance ``(|a|^2 |b|^2 + (a.b)^2) / m``).
* :class:`TensorSketch` (Pham & Pagh 2013): the count sketches ``C1 a``, ``C2 b`` (random hashes and
  signs) convolved circularly, ``TS(a (x) b) = C1 a * C2 b``, with ``E[TS(a (x) b).TS(a' (x) b')] =
  (a.a') (b.b')`` -- the features of a product of two kernels in ``m`` dimensions instead of ``d1 d2``.

Both act on the feature axis (axis 1) of tensors of shape (N, d, *spatial) and are drawn once from a
``torch.Generator`` (the same draw serves every batch: features of different batches are comparable).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


class GaussianProjection:
    """``x -> R x`` on axis 1 with ``R`` of shape (m, d), i.i.d. ``N(0, 1/m)``.

    Parameters
    ----------
    d : int
        Input features (axis 1 of the inputs).
    m : int
        Output features.
    generator : torch.Generator
        The draw (made in float64, then cast).
    dtype : torch.dtype
        Dtype of ``R`` (float32 by default).
    device : torch.device or str, optional

    Attributes
    ----------
    matrix : Tensor of shape (m, d)
        ``R``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> proj = GaussianProjection(5, 3, generator=g, dtype=torch.float64)
    >>> proj(torch.ones(2, 5, dtype=torch.float64)).shape
    torch.Size([2, 3])
    """

    def __init__(self, d: int, m: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        r = torch.randn(m, d, generator=generator, dtype=torch.float64) / math.sqrt(m)
        self.matrix = r.to(dtype=dtype, device=device)

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return x @ self.matrix.T
        return torch.einsum("md,nd...->nm...", self.matrix, x)


class TensorSketch:
    """Features of the product kernel ``(a.a') (b.b')`` in ``m`` dimensions (Pham & Pagh 2013).

    ``ts(a, b)`` for ``a`` of shape ``(N, d1, *spatial)`` and ``b`` of shape ``(N, d2, *spatial)`` is
    the circular convolution (by FFT) of the count sketches ``C1 a`` and ``C2 b``: shape
    ``(N, m, *spatial)``.

    Parameters
    ----------
    d1, d2 : int
        Features (axis 1) of ``a`` and ``b``.
    m : int
        Sketch dimension: features of the output.
    generator : torch.Generator
        Draws the hashes ``h1``, ``h2`` (uniform in ``[0, m)``) and the signs ``s1``, ``s2`` (``+-1``)
        of the count sketches.
    device : torch.device or str, optional

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> ts = TensorSketch(4, 3, 64, generator=g)
    >>> ts(torch.ones(2, 4), torch.ones(2, 3)).shape
    torch.Size([2, 64])
    """

    def __init__(self, d1: int, d2: int, m: int, *, generator: torch.Generator,
                 device: torch.device | str | None = None) -> None:
        self.m = m
        self.h1 = torch.randint(0, m, (d1,), generator=generator).to(device)
        self.h2 = torch.randint(0, m, (d2,), generator=generator).to(device)
        self.s1 = (torch.randint(0, 2, (d1,), generator=generator) * 2 - 1).to(device)
        self.s2 = (torch.randint(0, 2, (d2,), generator=generator) * 2 - 1).to(device)

    def _count(self, x: Tensor, h: Tensor, s: Tensor) -> Tensor:
        shape = (x.shape[0], self.m, *x.shape[2:])
        signed = x * s.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
        index = h.view(1, -1, *([1] * (x.ndim - 2))).expand_as(x)
        return torch.zeros(shape, dtype=x.dtype, device=x.device).scatter_add_(1, index, signed)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        ca, cb = self._count(a, self.h1, self.s1), self._count(b, self.h2, self.s2)
        work = torch.float64 if a.dtype == torch.float64 else torch.float32
        fa = torch.fft.rfft(ca.to(work), n=self.m, dim=1)
        fb = torch.fft.rfft(cb.to(work), n=self.m, dim=1)
        return torch.fft.irfft(fa * fb, n=self.m, dim=1).to(a.dtype)


__all__ = ["GaussianProjection", "TensorSketch"]
