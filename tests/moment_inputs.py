"""Inputs of the per-op moment harness (:mod:`tests.moments`) with their exact covariances.

* :class:`Data`: deterministic inputs (the weight layers' draws are their output channels), exact
  covariance ``K = sum_c x_c x'_c / C`` per pixel pair, and one tangent direction ``u``;
* :class:`Field`: Gaussian inputs whose channels are i.i.d. ``N(mean, cov)`` over (input, pixel),
  with an independent Gaussian tangent (the parameter-free modules' draws are the channels);
* :class:`Graphs`: either of them as node features ``(C, V)`` with a graph per input (the module is
  called as ``module(x, adjacency)``, the covariances carry the adjacency of each distinct input).

All give a :class:`Covariance`: the exact second moments over the distinct inputs, which
:meth:`Covariance.pairs` turns into the ``Pairs`` the kernel ops take. The harness holds every input
channel-first, ``(N, C, *S)``; ``tokens=True`` hands it to the module channels last, ``(N, *S, C)``
(:meth:`Data.bind`: the axis moved at the module's boundary), as transformer layers take tokens.
:func:`deterministic` and :func:`gaussian_field` build the seeded inputs of the cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ntkit.infinite.state import Layout, Pairs

Tensor = torch.Tensor
F64 = torch.float64


@dataclass(frozen=True)
class Covariance:
    """Exact second moments of one input channel over (distinct input, pixel), pixel fastest.

    ``k``, ``t``: (U P, U P) NNGP second moment (the mean's outer product included) and tangent
    covariance; ``mean``: (U P,) or None (centred); ``index``: (N,) each input's distinct row;
    ``spatial``: the pixel shape ``S`` (``()`` for vectors, ``P = |S|``); ``adjacency``: (U, V, V) the
    graph of each distinct input (``S = (V,)``), or None.
    """

    k: Tensor
    t: Tensor
    mean: Tensor | None
    index: Tensor
    spatial: tuple[int, ...]
    adjacency: Tensor | None = None

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
        return Pairs(k_rows, t_rows, lay, 1, mean, self.adjacency), Pairs(k_cross, t_cross, lay, 2)


@dataclass(frozen=True)
class Data:
    """Deterministic inputs ``x`` (N, d) or (N, C, *S) and one tangent direction ``u`` of the same shape.

    Exact covariances: ``K = sum_c x_c x'_c / C`` (per pixel pair), ``T`` the same of ``u``.
    ``tokens``: the module takes them channels last, ``(N, *S, C)`` (:meth:`bind`).
    """

    x: Tensor
    u: Tensor
    tokens: bool = False

    @property
    def in_shape(self) -> tuple[int, ...]:
        """One input's shape as the module takes it: ``(C, *S)``, tokens ``(*S, C)``."""
        return _module_shape(tuple(self.x.shape[1:]), self.tokens)

    def bind(self, module: nn.Module) -> nn.Module:
        """``module`` taking the harness's channel-first inputs (tokens: through :class:`ChannelsLast`)."""
        return ChannelsLast(module) if self.tokens else module

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
    tokens: bool = False

    @property
    def in_shape(self) -> tuple[int, ...]:
        return _module_shape((2, *self.spatial), self.tokens)  # channels never enter a parameter-free op

    def bind(self, module: nn.Module) -> nn.Module:
        """As :meth:`Data.bind`."""
        return ChannelsLast(module) if self.tokens else module

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



@dataclass(frozen=True)
class Graphs:
    """Node features ``(C, V)`` (a :class:`Data` or :class:`Field` with ``S = (V,)``) with each input's graph.

    ``adjacency``: (N, V, V), ``adjacency[n, i, j]`` the weight of the edge ``j -> i`` of input ``n``. The
    distinct inputs are those with equal features *and* equal graphs (the same features on another
    graph are another input of the kernel); the module is called as ``module(x, adjacency)``.
    """

    nodes: Data | Field
    adjacency: Tensor

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.nodes.in_shape

    @property
    def tokens(self) -> bool:
        return self.nodes.tokens

    def covariance(self) -> Covariance:
        cov = self.nodes.covariance()
        n, p = len(cov.index), cov.pixels
        key = torch.cat([cov.index[:, None].to(self.adjacency.dtype), self.adjacency.reshape(n, -1)], 1)
        _, index = torch.unique(key, dim=0, return_inverse=True)
        first = torch.stack([torch.nonzero(index == k)[0, 0] for k in range(int(index.max()) + 1)])
        rows, units = cov.index[first], cov.k.shape[0] // p  # each distinct input's row of the node covariance

        def take(m: Tensor) -> Tensor:
            return m.reshape(units, p, units, p)[rows][:, :, rows].reshape(len(rows) * p, -1)

        mean = None if cov.mean is None else cov.mean.reshape(units, p)[rows].reshape(-1)
        return Covariance(take(cov.k), take(cov.t), mean, index, cov.spatial, self.adjacency[first])

    def batch(self, chunk: int, width: int, tangent: bool = True) -> tuple[Tensor, Tensor | None]:
        """The node features' batch (:meth:`Data.batch` / :meth:`Field.batch`); the graphs are bound (:meth:`bind`)."""
        return self.nodes.batch(chunk, width, tangent)

    def bind(self, module: nn.Module) -> nn.Module:
        """``module(x, adjacency)`` as a module of ``x`` alone (channels moved as the features ask)."""
        return self.nodes.bind(OnGraphs(module, self.adjacency))


Inputs = Data | Field | Graphs


def _module_shape(shape: tuple[int, ...], tokens: bool) -> tuple[int, ...]:
    """``(C, *S)`` as the module takes it: unchanged, or tokens ``(*S, C)``."""
    return (*shape[1:], shape[0]) if tokens and len(shape) > 1 else shape


class ChannelsLast(nn.Module):
    """A module of tokens ``(N, *S, C)`` as a module of channel-first inputs ``(N, C, *S)`` (and outputs)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.movedim(1, -1)).movedim(-1, 1)


class OnGraphs(nn.Module):
    """``module(x, adjacency)`` with the inputs' graphs fixed: a module of ``x`` alone.

    Row ``i`` of ``x`` is on graph ``i mod N``: the N inputs, or stacked copies of them (the harness's
    affine pass stacks the inputs, their tangents and a zero row).
    """

    def __init__(self, module: nn.Module, adjacency: Tensor) -> None:
        super().__init__()
        self.module, self.adjacency = module, adjacency

    def forward(self, x: Tensor) -> Tensor:
        n = self.adjacency.shape[0]
        return self.module(x, self.adjacency[torch.arange(x.shape[0]) % n])


# ---------------------------------------------------------------- seeded inputs of the cases


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def deterministic(shape: tuple[int, ...], seed: int) -> Data:
    """Rows: random, 0.6 x random, near-collinear with row 0, zero (vectors: then a copy of row 1, -0.8 x row 0)."""
    g = generator(seed)

    def rows() -> torch.Tensor:
        a = torch.randn(*shape, generator=g, dtype=F64)
        b = 0.6 * torch.randn(*shape, generator=g, dtype=F64)
        c = 1.4 * (0.95 * a + 0.3 * torch.randn(*shape, generator=g, dtype=F64))
        out = [a, b, c, torch.zeros(*shape, dtype=F64)]
        if len(shape) == 1:  # images: no duplicate (it costs a fifth of the pixels' products)
            out += [b, -0.8 * a]
        return torch.stack(out)

    x = rows()
    u = rows()
    u[3] = 0.5 * torch.randn(*shape, generator=g, dtype=F64)  # a zero input may still carry a tangent
    return Data(x, u)


def random_covariance(units: int, pixels: int, seed: int, variances: tuple[float, ...]) -> torch.Tensor:
    """A random covariance over (unit, pixel) with a near-collinear unit 2 ~ unit 0 and a zero last unit."""
    g = generator(seed)
    r = units * pixels + 4
    b = torch.randn(units, pixels, r, generator=g, dtype=F64)
    b[2] = 0.95 * b[0] + 0.3 * b[2]
    if units > 3:
        b[3] = -0.7 * b[1] + 0.7 * b[3]
    b = b * torch.tensor(variances, dtype=F64).sqrt()[:, None, None]
    b = b / math.sqrt(r)
    b = torch.cat([b, torch.zeros(1, pixels, r, dtype=F64)])  # the zero input
    b = b.reshape((units + 1) * pixels, r)
    return b @ b.T


def gaussian_field(spatial: tuple[int, ...], seed: int, *, mean: bool = False, scale: float = 1.0) -> Field:
    """A :class:`Field` (vectors: 4 units, a duplicated input; spatial: 3 units, input 3 a copy of input 0)."""
    pixels = math.prod(spatial)
    units = 4 if not spatial else 3
    var = tuple(scale * v for v in (1.0, 0.5, 2.0, 1.2)[:units])
    index = (0, 1, 2, 3, 1, 4) if units == 4 else (0, 1, 2, 0, 3)
    m = None
    if mean:
        m = 0.6 * torch.randn((units + 1) * pixels, generator=generator(seed + 2), dtype=F64)
        m[units * pixels :] = 0.0
    return Field(random_covariance(units, pixels, seed, var), random_covariance(units, pixels, seed + 1, var[::-1]),
                 torch.tensor(index), spatial, m, seed)
