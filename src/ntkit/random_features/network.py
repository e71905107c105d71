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
* residual block: ``[phi_x, s phi_f]`` projected back to ``m`` (independent branches).

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
import torch.nn.functional as F

from ntkit.infinite.ops import Dense, Diagonal, Flatten, GlobalPool, KernelOp, LayerNormOp, Pointwise, Residual
from ntkit.infinite.spatial import AvgPool, Conv
from ntkit.infinite.walk import Architecture, ArchitectureError
from ntkit.nn.linear import conv_output_size
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


def _pad(x: Tensor, op: Conv) -> Tensor:
    """Zero (same / valid) or circular padding of the spatial axes for a 'valid' convolution."""
    pads: list[int] = []
    for axis in reversed(range(len(op.spatial_in))):
        _, before, after = conv_output_size(x.shape[2 + axis], op.filter[axis], op.stride[axis], op.padding)
        pads += [before, after]
    if not any(pads):
        return x
    if op.padding != "circular":
        return F.pad(x, pads)
    for axis in range(len(op.spatial_in)):
        before, after = pads[2 * (len(op.spatial_in) - 1 - axis)], pads[2 * (len(op.spatial_in) - 1 - axis) + 1]
        n = x.shape[2 + axis]
        x = x.index_select(2 + axis, torch.arange(-before, n + after, device=x.device) % n)
    return x


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
        self.steps = self._build(arch.ops, dims)
        out = dims.psi if self.ntk else dims.phi
        self.final = None if out == n_features else self._proj(out, n_features)

    # --- drawing ------------------------------------------------------------------------------------

    def _reserve(self, count: int) -> None:
        """Count ``count`` float64 draws against the budget; a clear error before an oversized draw."""
        self.weight_bytes += 8 * count
        if self.weight_bytes > self.budget:
            raise ValueError(
                f"features: the random weights of this map need more than {self.weight_bytes / 2**30:.2f} GiB "
                f"(memory_budget {self.budget / 2**30:.2f} GiB; a convolution of m channels draws m^2 x taps "
                f"weights, here m = {self.m}); lower n_features or raise memory_budget")

    def _proj(self, d: int, m: int) -> GaussianProjection:
        self._reserve(d * m)
        return GaussianProjection(d, m, generator=self.gen, dtype=self.dtype, device=self.device)

    def _gauss(self, *shape: int) -> Tensor:
        self._reserve(math.prod(shape))
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64).to(self.dtype).to(self.device)

    def _orthogonal_gauss(self, m: int, d: int) -> Tensor:
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

    def _build(self, ops: tuple[KernelOp, ...] | list[KernelOp], dims: _Dims) -> list[Step]:
        steps = []
        for op in ops:
            before = (dims.phi + dims.psi) * math.prod(dims.spatial)
            steps.append(self._step(op, dims))
            self.peak_values = max(self.peak_values, before + (dims.phi + dims.psi) * math.prod(dims.spatial))
        return steps

    def batch_size(self) -> int:
        """Inputs per batch that keep a batch's intermediate features (x4 for temporaries) and the weights
        within the memory budget (at least 1, at most 4096)."""
        per_input = 4 * self.peak_values * torch.empty((), dtype=self.dtype).element_size()
        return max(1, min(4096, (self.budget - self.weight_bytes) // max(per_input, 1)))

    def _step(self, op: KernelOp, dims: _Dims) -> Step:
        if isinstance(op, Conv):
            return self._conv(op, dims)
        if isinstance(op, Dense):
            return self._dense(op, dims)
        if isinstance(op, Pointwise):
            return self._activation(op, dims)
        if isinstance(op, AvgPool):
            dims.spatial = tuple(op.out_shape[1:])
            return self._pool(op)
        if isinstance(op, GlobalPool):
            dims.spatial = ()
            return lambda phi, psi: (phi.mean(dim=tuple(range(2, phi.ndim))),
                                     None if psi is None else psi.mean(dim=tuple(range(2, psi.ndim))))
        if isinstance(op, Flatten):
            return self._flatten(dims)
        if isinstance(op, Diagonal):
            return lambda phi, psi: (phi, psi)
        if isinstance(op, Residual):
            return self._residual(op, dims)
        if isinstance(op, LayerNormOp):
            raise ArchitectureError(f"features: {op.position} (layer norm) has no random-feature map here; "
                                    "use ntkit.infinite_kernel for models with layer norm")
        raise ArchitectureError(f"features: {op.position} has no random-feature map")

    def _dense(self, op: Dense, dims: _Dims) -> Step:
        w, b = op.w_std, math.sqrt(op.b2)
        standard = op.parameterization == "standard"
        d_phi = dims.phi + (1 if op.b2 > 0 else 0)
        d_psi = (dims.phi + dims.psi + (1 if op.bias else 0)) if standard else dims.psi + d_phi
        dims.phi, dims.psi = d_phi, (d_psi if self.ntk else 0)

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            ones = torch.ones(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)
            new_phi = torch.cat([phi * w, ones * b], dim=1) if op.b2 > 0 else phi * w
            new_psi = None
            if self.ntk:
                assert psi is not None
                parts = [phi * math.sqrt(op.fan_in), psi * w] if standard else [psi * w, new_phi]
                if standard and op.bias:
                    parts.append(ones)
                new_psi = torch.cat(parts, dim=1)
            return new_phi, new_psi

        return step

    def _conv(self, op: Conv, dims: _Dims) -> Step:
        taps = math.prod(op.filter)
        w, b = op.w_std / math.sqrt(taps), math.sqrt(op.b2)
        standard = op.parameterization == "standard"
        conv = F.conv1d if len(op.filter) == 1 else F.conv2d
        mp, ms = self.m_phi, self.m_psi
        r_phi = self._gauss(mp, dims.phi, *op.filter) / math.sqrt(mp)
        r_bias = self._gauss(mp) / math.sqrt(mp)
        r_psi = self._gauss(ms, dims.psi, *op.filter) / math.sqrt(ms) if self.ntk else None
        r_mix = self._gauss(ms, mp) / math.sqrt(ms) if self.ntk else None  # psi's share of phi'
        r_std = self._gauss(ms, dims.phi, *op.filter) / math.sqrt(ms) if self.ntk and standard else None
        ones = self._gauss(ms) / math.sqrt(ms) if self.ntk and standard and op.bias else None
        dims.phi, dims.psi, dims.spatial = mp, (ms if self.ntk else 0), tuple(op.out_shape[1:])
        view = (1, -1) + (1,) * len(op.filter)

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            new_phi = conv(_pad(phi, op), r_phi, stride=op.stride) * w
            if op.b2 > 0:
                new_phi = new_phi + (r_bias * b).view(view)
            new_psi = None
            if self.ntk:
                assert psi is not None and r_psi is not None and r_mix is not None
                if psi.shape[1] > 0:
                    patches = conv(_pad(psi, op), r_psi, stride=op.stride) * w
                else:
                    patches = new_phi.new_zeros(new_phi.shape[0], r_mix.shape[0], *new_phi.shape[2:])
                if standard:
                    assert r_std is not None
                    new_psi = patches + conv(_pad(phi, op), r_std, stride=op.stride) * math.sqrt(op.fan_in / taps)
                    if ones is not None:
                        new_psi = new_psi + ones.view(view)
                else:
                    new_psi = patches + torch.einsum("md,nd...->nm...", r_mix, new_phi)
            return new_phi, new_psi

        return step

    def _activation(self, op: Pointwise, dims: _Dims) -> Step:
        mp, ms = self.m_phi, self.m_psi
        g = self._orthogonal_gauss(mp, dims.phi) if self.method == "orthogonal" else self._gauss(mp, dims.phi)
        ts = TensorSketch(dims.psi, mp, ms, generator=self.gen, device=self.device) if self.ntk else None
        fn = op.fn
        if self.ntk and not fn.has_derivative_map:
            raise ArchitectureError(f"features: the NTK of {op.position} is undefined (no derivative map)")
        dims.phi, dims.psi = mp, (ms if self.ntk else 0)
        scale = 1.0 / math.sqrt(mp)

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            u = torch.einsum("md,nd...->nm...", g, phi)
            if not self.ntk:
                return fn(u) * scale, None
            value, slope = fn.value_and_derivative(u)
            assert psi is not None and ts is not None
            return value * scale, ts(psi, slope * scale)

        return step

    def _pool(self, op: AvgPool) -> Step:
        pool = F.avg_pool1d if len(op.window) == 1 else F.avg_pool2d

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            return (pool(phi, op.window, op.stride),
                    None if psi is None else pool(psi, op.window, op.stride))

        return step

    def _flatten(self, dims: _Dims) -> Step:
        pixels = math.prod(dims.spatial)
        if pixels == 1 and not dims.spatial:
            return lambda phi, psi: (phi, psi)
        sketches = {}
        for name, d, m in (("phi", dims.phi, self.m_phi), ("psi", dims.psi, self.m_psi)):
            if d == 0:
                continue
            sketches[name] = TensorSketch(d * pixels, 1, m, generator=self.gen, device=self.device)  # count sketch
        dims.phi, dims.psi, dims.spatial = self.m_phi, (self.m_psi if self.ntk else 0), ()

        def sketch(t: Tensor, name: str) -> Tensor:
            flat = t.reshape(t.shape[0], -1) / math.sqrt(pixels)
            return sketches[name](flat, torch.ones(flat.shape[0], 1, dtype=flat.dtype, device=flat.device))

        return lambda phi, psi: (sketch(phi, "phi"), None if psi is None or "psi" not in sketches
                                 else sketch(psi, "psi"))

    def _residual(self, op: Residual, dims: _Dims) -> Step:
        inner = _Dims(dims.phi, dims.psi, dims.spatial)
        block = self._build(op.block, inner)
        proj_phi = self._proj(dims.phi + inner.phi, self.m_phi)
        proj_psi = self._proj(dims.psi + inner.psi, self.m_psi) if self.ntk else None
        dims.phi, dims.psi = self.m_phi, (self.m_psi if self.ntk else 0)
        s = op.scale

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            f_phi, f_psi = phi, psi
            for inner_step in block:
                f_phi, f_psi = inner_step(f_phi, f_psi)
            new_phi = proj_phi(torch.cat([phi, f_phi * s], dim=1))
            new_psi = None
            if self.ntk:
                assert psi is not None and f_psi is not None and proj_psi is not None
                new_psi = proj_psi(torch.cat([psi, f_psi * s], dim=1))
            return new_phi, new_psi

        return step

    # --- applying -----------------------------------------------------------------------------------

    def __call__(self, x: Tensor) -> Tensor:
        """Features of the inputs ``x`` (N, *input_shape): shape (N, n_features) in the map's dtype."""
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

    def batches(self, x: Tensor, batch_size: int | None = None) -> Iterator[tuple[slice, Tensor]]:
        """The features of ``x`` (N, *input_shape) batch by batch, without gradients: pairs
        ``(rows, phi)`` with ``phi = self(x[rows])`` of shape (len(rows), n_features).

        ``batch_size`` defaults to :meth:`batch_size` (what the memory budget allows); only one batch
        of features exists at a time, so the features of all N inputs are never stored.
        """
        step = self.batch_size() if batch_size is None else batch_size
        for r0 in range(0, x.shape[0], step):
            rows = slice(r0, min(r0 + step, x.shape[0]))
            with torch.no_grad():  # (not held across the yield: the caller's grad mode stays its own)
                phi = self(x[rows])
            yield rows, phi


__all__ = ["DEFAULT_WEIGHT_BUDGET", "FeatureMap"]
