"""Random feature maps of an architecture: ``phi(x).phi(x') ~ K(x, x')`` layer by layer, linear in N.

Each layer maps the features of its input to features of its output (Lee et al. 2018 / Daniely et
al. 2016 random features; Zandieh et al. 2021 for the NTK). Writing ``phi(x, p)`` for the NNGP
features at pixel ``p`` (``phi(x, p).phi(x', p') ~ K(x, x')[p, p']``) and ``psi`` for the NTK's:

* input: ``phi(x, p) = x[:, p] / sqrt(C)`` (exact);
* weight layer (NTK parameterization): ``phi' = [w A(phi), b]`` and ``psi' = [w A(psi), phi']``,
  ``A`` the filter's taps side by side (a convolution) — followed by a Gaussian projection back to
  ``m`` features, which is a random convolution of width ``m`` (standard parameterization:
  ``psi' = [sqrt(fan_in) A(phi), w A(psi), 1]``);
* activation ``sigma``: ``u = G phi`` with ``G`` ``N(0, 1)`` rows of shape (m, d) (orthogonal within
  blocks of ``d`` rows by default, Yu et al. 2016) — jointly Gaussian
  with covariance ``phi.phi'``, exactly the law of the pre-activations —, ``phi' = sigma(u) / sqrt(m)``
  (for ReLU: the arc-cosine random features of Cho & Saul 2009) and ``psi' = TS(psi (x) sigma'(u) /
  sqrt(m))``, a tensor sketch of the product ``Theta E[sigma' sigma']`` (Pham & Pagh 2013);
* average / global pooling: the same averages of the features (exact); flatten: a count sketch of
  all (feature, pixel) entries scaled by ``1 / sqrt(pixels)``;
* residual block: ``[phi_x, s phi_f]`` projected back to ``m`` (independent branches); branches of
  :class:`ntkit.nn.Parallel` (each built by :meth:`FeatureMap.build` from the same features): a sum
  ``[phi_1, phi_2, ...]`` projected, a concatenation ``[sqrt(f_1) phi_1, ...]`` (``f_i`` the channel
  fractions) projected, a product the tensor sketch ``TS(phi_1 (x) phi_2)``.

Every random draw is made once, when the map is built from a ``torch.Generator``; the map then
applies to any batch of inputs, so features of different batches (streaming over N) and of
training and test points are consistent. The estimate is unbiased layer by layer given the
previous layer's features; its relative error falls like ``1 / sqrt(m)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ntkit.infinite.ops import Dense, KernelOp
from ntkit.infinite.walk import Architecture
from ntkit.random_features.sketch import GaussianProjection, TensorSketch

Tensor = torch.Tensor
Step = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]

#: Default bytes the drawn weights of one map may take.
DEFAULT_WEIGHT_BUDGET = 4 * 2**30


@dataclass
class _Dims:
    """Feature counts of phi and psi, and the spatial shape, while the map is built."""

    phi: int
    psi: int
    spatial: tuple[int, ...]


class FeatureMap:
    """A drawn random feature map of an architecture (see the module notes).

    Parameters
    ----------
    arch : Architecture
    n_features : int
        ``m``: features of the output. The NNGP's hidden layers carry ``m`` (``m - 1`` beside a read-out
        bias) features; the NTK's carry ``m / 2`` for the NNGP part and ``m / 2`` for the sketch, so that
        the read-out's ``[w psi, phi, b]`` has exactly ``m`` entries (no final projection).
    which : {"nngp", "ntk"}
    generator : torch.Generator
    dtype : torch.dtype
        Dtype of the features (float32 by default; draws are made in float64 and cast).
    device : torch.device or str, optional
    method : {"orthogonal", "gaussian"}
        Projections before each activation: orthogonal random features (default; lower variance) or
        i.i.d. Gaussian rows (the plain Monte Carlo estimate; no QR factorisations to draw).
    memory_budget : int
        Bytes the drawn weights may take (counted as float64 draws). A convolution of ``m`` channels
        draws ``m^2 x taps`` weights, so conv maps grow like ``m^2``.

    Raises
    ------
    ArchitectureError
        A layer without a random-feature map (layer norm).
    ValueError
        The weights would exceed ``memory_budget`` (raised before the draw that would exceed it).

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.infinite import describe_model
    >>> arch = describe_model(ntkit.nn.fc(3, depth=1, device="meta"), (3,))
    >>> fmap = FeatureMap(arch, 64, "nngp", generator=torch.Generator().manual_seed(0))
    >>> fmap(torch.randn(5, 3)).shape  # phi with phi @ phi.T ~ the NNGP
    torch.Size([5, 64])
    """

    def __init__(self, arch: Architecture, n_features: int, which: str, *, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 memory_budget: int = DEFAULT_WEIGHT_BUDGET, method: str = "orthogonal") -> None:
        self.arch, self.m, self.ntk, self.method = arch, n_features, which == "ntk", method
        self.gen, self.dtype, self.device = generator, dtype, device
        self.budget, self.weight_bytes, self.peak_values = memory_budget, 0, 0
        self.adjacency: Tensor | None = None  # the graphs of the batch being mapped (see __call__)
        # widths so that a read-out [w psi, phi, b] (NTK) or [w phi, b] (NNGP) has n_features entries
        # without a final projection (whose error would add to the features')
        bias = 1 if isinstance(arch.ops[-1], Dense) and arch.ops[-1].b2 > 0 else 0
        if self.ntk:
            self.m_phi = max(1, (n_features - bias) // 2)
            self.m_psi = max(1, n_features - bias - self.m_phi)
        else:
            self.m_phi, self.m_psi = max(1, n_features - bias), 0
        shape = arch.data_shape
        dims = _Dims(shape[0], 0, tuple(shape[1:]))
        self.steps = self.build(arch.ops, dims)
        out = dims.psi if self.ntk else dims.phi
        self.final = None if out == n_features else self.proj(out, n_features)

    # --- drawing ------------------------------------------------------------------------------------

    def _reserve(self, count: int) -> None:
        """Count ``count`` float64 draws against the budget; a clear error before an oversized draw."""
        self.weight_bytes += 8 * count
        if self.weight_bytes > self.budget:
            raise ValueError(
                f"features: the random weights of this map need more than {self.weight_bytes / 2**30:.2f} GiB "
                f"(memory_budget {self.budget / 2**30:.2f} GiB; a convolution of m channels draws m^2 x taps "
                f"weights, here m = {self.m}); lower n_features or raise memory_budget")

    def proj(self, d: int, m: int) -> GaussianProjection:
        """A drawn Gaussian projection from ``d`` to ``m`` features (counted against the budget)."""
        self._reserve(d * m)
        return GaussianProjection(d, m, generator=self.gen, dtype=self.dtype, device=self.device)

    def gauss(self, *shape: int) -> Tensor:
        """Drawn ``N(0, 1)`` weights of ``shape`` (float64 draws, counted against the budget)."""
        self._reserve(math.prod(shape))
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64).to(self.dtype).to(self.device)

    def orthogonal_gauss(self, m: int, d: int) -> Tensor:
        """An (m, d) matrix whose rows are Gaussian in law but orthogonal within blocks of ``d`` rows.

        Orthogonal random features (Yu et al. 2016): each row is uniform on the sphere with a chi(d)
        length, as a Gaussian row is, so every expectation over one row is unchanged; rows of one
        block are orthogonal instead of independent, which lowers the variance of the estimate.
        """
        self._reserve(m * d + d * d)
        blocks, left = [], m
        while left > 0:
            g = torch.randn(d, d, generator=self.gen, dtype=torch.float64)
            q, r = torch.linalg.qr(g)
            q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
            lengths = torch.randn(d, d, generator=self.gen, dtype=torch.float64).norm(dim=1)
            blocks.append((q * lengths[:, None])[: min(d, left)])
            left -= d
        return torch.cat(blocks).to(self.dtype).to(self.device)

    def build(self, ops: tuple[KernelOp, ...] | list[KernelOp], dims: _Dims) -> list[Step]:
        """The steps of ``ops`` (each op's :meth:`~ntkit.infinite.ops.base.KernelOp.feature_step`),
        drawing their weights in order; ``dims`` follows the feature counts."""
        steps = []
        for op in ops:
            before = (dims.phi + dims.psi) * math.prod(dims.spatial)
            steps.append(op.feature_step(self, dims))
            self.peak_values = max(self.peak_values, before + (dims.phi + dims.psi) * math.prod(dims.spatial))
        return steps

    def batch_size(self) -> int:
        """Inputs per batch that keep a batch's intermediate features (x4 for temporaries) and the weights
        within the memory budget (at least 1, at most 4096)."""
        per_input = 4 * self.peak_values * torch.empty((), dtype=self.dtype).element_size()
        return max(1, min(4096, (self.budget - self.weight_bytes) // max(per_input, 1)))

    def tensor_sketch(self, d1: int, d2: int, m: int) -> TensorSketch:
        """A drawn tensor sketch of ``d1 x d2`` products to ``m`` features (a count sketch for ``d2 = 1``)."""
        return TensorSketch(d1, d2, m, generator=self.gen, device=self.device)

    # --- applying -----------------------------------------------------------------------------------

    def __call__(self, x: Tensor, adjacency: Tensor | None = None) -> Tensor:
        """Features of the inputs ``x`` (N, *input_shape): shape (N, n_features) in the map's dtype; ``adjacency``
        (N, V, V): the graphs of the inputs (:class:`ntkit.Graphs`), read by the aggregation steps as
        :attr:`adjacency` while the batch runs."""
        self.adjacency = None if adjacency is None else adjacency.to(dtype=self.dtype, device=self.device)
        data = self.arch.prepare(x).to(dtype=self.dtype, device=self.device)
        phi = data / math.sqrt(data.shape[1])
        psi = torch.zeros(data.shape[0], 0, *data.shape[2:], dtype=self.dtype, device=data.device) if self.ntk \
            else None
        for step in self.steps:
            phi, psi = step(phi, psi)
        out = psi if self.ntk else phi
        assert out is not None
        out = out.reshape(out.shape[0], -1)
        return out if self.final is None else self.final(out)

    def batches(self, x: Tensor, batch_size: int | None = None,
                adjacency: Tensor | None = None) -> Iterator[tuple[slice, Tensor]]:
        """The features of ``x`` (N, *input_shape) batch by batch, without gradients: pairs
        ``(rows, phi)`` with ``phi = self(x[rows])`` of shape (len(rows), n_features) (graphs: their
        ``adjacency`` (N, V, V) sliced with them).

        ``batch_size`` defaults to :meth:`batch_size` (what the memory budget allows); only one batch
        of features exists at a time, so the features of all N inputs are never stored.
        """
        step = self.batch_size() if batch_size is None else batch_size
        for r0 in range(0, x.shape[0], step):
            rows = slice(r0, min(r0 + step, x.shape[0]))
            with torch.no_grad():  # (not held across the yield: the caller's grad mode stays its own)
                phi = self(x[rows], None if adjacency is None else adjacency[rows])
            yield rows, phi


__all__ = ["DEFAULT_WEIGHT_BUDGET", "FeatureMap"]
