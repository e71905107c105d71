"""Inputs of the per-op moment harness (:mod:`tests.moments`) with their exact covariances.

* :class:`Data`: deterministic inputs (the weight layers' draws are their output channels), exact
  covariance ``K = sum_c x_c x'_c / C`` per pixel pair, and one tangent direction ``u``;
* :class:`Field`: Gaussian inputs whose channels are i.i.d. ``N(mean, cov)`` over (input, pixel),
  with an independent Gaussian tangent (the parameter-free modules' draws are the channels).

Both give a :class:`Covariance`: the exact second moments over the distinct inputs, which
:meth:`Covariance.pairs` turns into the ``Pairs`` the kernel ops take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ntkit.infinite.state import Layout, Pairs

Tensor = torch.Tensor
F64 = torch.float64



@dataclass(frozen=True)
class Covariance:
    """Exact second moments of one input channel over (distinct input, pixel), pixel fastest.

    ``k``, ``t``: (U P, U P) NNGP second moment (the mean's outer product included) and tangent
    covariance; ``mean``: (U P,) or None (centred); ``index``: (N,) each input's distinct row;
    ``spatial``: the pixel shape ``S`` (``()`` for vectors, ``P = |S|``).
    """

    k: Tensor
    t: Tensor
    mean: Tensor | None
    index: Tensor
    spatial: tuple[int, ...]

    @property
    def pixels(self) -> int:
        return math.prod(self.spatial)

    def pairs(self, mode: str, ntk: bool) -> tuple[Pairs, Pairs]:
        """``(rows, cross)``: the self batch over distinct inputs and every pair of the N inputs."""
        p, s = self.pixels, self.spatial
        u = self.k.shape[0] // p
        lay = Layout(s, mode)

        def side(m: Tensor) -> tuple[Tensor, Tensor]:
            m4 = m.reshape(u, p, u, p)
            rows = m4.diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (U, P, P)
            cross = m4[self.index][:, :, self.index].permute(0, 2, 1, 3)  # (N, N, P, P)
            if mode == "none":
                return rows.reshape(u), cross.reshape(cross.shape[:2])
            if mode == "diag":
                return (rows.diagonal(dim1=-2, dim2=-1).reshape(u, *s),
                        cross.diagonal(dim1=-2, dim2=-1).reshape(*cross.shape[:2], *s))
            return rows.reshape(u, *s, *s), cross.reshape(*cross.shape[:2], *s, *s)

        k_rows, k_cross = side(self.k)
        t_rows, t_cross = side(self.t) if ntk else (None, None)
        mean = None if self.mean is None else self.mean.reshape(u, *s)
        return Pairs(k_rows, t_rows, lay, 1, mean), Pairs(k_cross, t_cross, lay, 2)


@dataclass(frozen=True)
class Data:
    """Deterministic inputs ``x`` (N, d) or (N, C, *S) and one tangent direction ``u`` of the same shape.

    Exact covariances: ``K = sum_c x_c x'_c / C`` (per pixel pair), ``T`` the same of ``u``.
    """

    x: Tensor
    u: Tensor

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def covariance(self) -> Covariance:
        n = self.x.shape[0]
        both = torch.cat([self.x.reshape(n, -1), self.u.reshape(n, -1)], 1)
        _, index = torch.unique(both, dim=0, return_inverse=True)
        first = torch.stack([torch.nonzero(index == k)[0, 0] for k in range(int(index.max()) + 1)])
        spatial = tuple(self.x.shape[2:])

        def gram(a: Tensor) -> Tensor:
            a = a[first].reshape(len(first), a.shape[1], -1)  # (U, C, P)
            return torch.einsum("ucp,vcq->upvq", a, a).reshape(a.shape[0] * a.shape[2], -1) / a.shape[1]

        return Covariance(gram(self.x), gram(self.u), None, index, spatial)

    def batch(self, chunk: int, width: int, tangent: bool = True) -> tuple[Tensor, Tensor | None]:
        """The inputs and their tangents (the same for every chunk)."""
        return self.x, self.u


@dataclass(frozen=True)
class Field:
    """Gaussian inputs with i.i.d. channels: one channel over (distinct input, pixel) is ``N(mean, cov)``.

    ``cov``, ``tangent_cov``: (U P, U P), positive definite on the rows with a non-zero variance (a
    zero row is an exactly-zero input); ``index``: each of the N inputs' distinct row (duplicates are
    bitwise identical); ``mean``: (U P,) shared by all channels, or None. The tangent field is drawn
    independently of the input.
    """

    cov: Tensor
    tangent_cov: Tensor
    index: Tensor
    spatial: tuple[int, ...] = ()
    mean: Tensor | None = None
    seed: int = 0

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (2, *self.spatial)  # channels never enter a parameter-free op

    def covariance(self) -> Covariance:
        k = self.cov if self.mean is None else self.cov + torch.outer(self.mean, self.mean)
        return Covariance(k, self.tangent_cov, self.mean, self.index, self.spatial)

    def _draw(self, cov: Tensor, width: int, gen: torch.Generator) -> Tensor:
        """``width`` channels of N(0, cov), spread to the N inputs: (N, width, *S)."""
        live = torch.nonzero(cov.diagonal() > 0)[:, 0]
        root = torch.linalg.cholesky(cov[live][:, live])
        out = torch.zeros(width, cov.shape[0], dtype=F64)
        out[:, live] = torch.randn(width, len(live), generator=gen, dtype=F64) @ root.T
        p = math.prod(self.spatial)
        out = out.reshape(width, -1, p)[:, self.index]  # (C, N, P)
        return out.permute(1, 0, 2).reshape(len(self.index), width, *self.spatial)

    def batch(self, chunk: int, width: int, tangent: bool = True) -> tuple[Tensor, Tensor | None]:
        """Chunk ``chunk`` of ``width`` channels: the input (N, width, *S) and an independent tangent (or None).

        Seeded by ``seed``, ``chunk`` and ``tangent`` alone, so every case on this field sees the same
        draws; the first chunks of the last field asked for are kept (one field's draws, not one per case).
        """
        key = (id(self), chunk, width, tangent)
        if key not in _FIELD_CACHE:
            if _FIELD_CACHE and next(iter(_FIELD_CACHE))[0] != id(self):
                _FIELD_CACHE.clear()
            gen = torch.Generator().manual_seed(self.seed * 100_003 + 2 * chunk + tangent)
            g = self._draw(self.cov, width, gen)
            if self.mean is not None:
                p = math.prod(self.spatial)
                g = g + self.mean.reshape(-1, p)[self.index].reshape(len(self.index), 1, *self.spatial)
            drawn = (g, self._draw(self.tangent_cov, width, gen) if tangent else None)
            if chunk >= _CACHED_CHUNKS:  # the rare long runs (1e7 draws) are not kept
                return drawn
            _FIELD_CACHE[key] = drawn
        return _FIELD_CACHE[key]


#: Chunks kept per field (3M draws of the vector field: ~150 MB).
_CACHED_CHUNKS = 6
_FIELD_CACHE: dict[tuple[int, int, int, bool], tuple[Tensor, Tensor | None]] = {}

Inputs = Data | Field
