"""Sum pooling (:class:`ntkit.nn.SumPool1d` / :class:`ntkit.nn.SumPool2d`; neural-tangents' ``SumPool``).

The output ``y(q) = sum_{delta in W} x(s q + delta - p)`` (window ``W``, stride ``s``, symmetric
zero padding ``p``) is linear in the input, and its two sides pick their offsets *independently*,
so the covariance of one channel is the double sum over the two windows::

    P(K)(q, q') = sum_{delta, delta' in W} K(s q + delta - p, s q' + delta' - p),

the entries outside the input being 0 (zero padding), and the same for the NTK ``Theta`` (the
pooling has no parameters). Unpadded, this is ``|W|^2`` times the average pooling of
:mod:`ntkit.infinite.ops.avg_pool`. It reads every pixel pair (``full`` layout in, ``full`` out);
it is linear, so it keeps a Gaussian input Gaussian, the homogeneity degree unchanged, and sums
the channel means of an activation's output over the window as well (for a layer norm that
follows). Random features: the same window sums of the features (exact). The compiled
convolution program has no sum-pooling step: a model with one runs on the reference evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ntkit.infinite.errors import shape_error
from ntkit.infinite.ops.base import FeatureStep, KernelOp, Shape
from ntkit.infinite.ops.registry import BlockBuilder, register
from ntkit.infinite.ops.stencil import axis_groups, window_sum
from ntkit.infinite.state import Context, Layout, Pairs
from ntkit.nn.pooling import _SumPoolNd, sum_pool

Tensor = torch.Tensor


@dataclass(frozen=True)
class SumPool(KernelOp):
    """Sum pooling: the double window sum of the covariances (see the module notes).

    Attributes
    ----------
    window, stride, padding : tuple of int
        Per spatial axis (``padding`` zeros on both sides).
    """

    window: Shape = (1,)
    stride: Shape = (1,)
    padding: Shape = (0,)

    reshapes: ClassVar[bool] = True  # linear: a Gaussian input stays Gaussian

    def input_mode(self, out_mode: str) -> str:
        return "full"  # the two sides sum over different pixels: every pixel pair is read

    def apply(self, p: Pairs, ctx: Context, ntk: bool) -> Pairs:
        out = self.out_shape[1:]
        pads = [(q, q) for q in self.padding]

        def pool(t: Tensor, groups: list[list[int]]) -> Tensor:
            for group in groups:  # one window sum per side: independent offsets
                t = window_sum(t, [group], self.window, self.stride, pads, out, circular=False)
            return t

        groups = axis_groups(p.layout, p.batch_ndim)
        mean = None if p.mean is None else pool(p.mean, [list(range(1, 1 + len(out)))])
        return p.replace(nngp=pool(p.nngp, groups), ntk=pool(p.ntk, groups) if ntk and p.ntk is not None else None,
                         layout=Layout(out, p.layout.mode), mean=mean)

    def feature_step(self, fmap: Any, dims: Any) -> FeatureStep:
        dims.spatial = tuple(self.out_shape[1:])
        window, stride, padding = self.window, self.stride, self.padding

        def step(phi: Tensor, psi: Tensor | None) -> tuple[Tensor, Tensor | None]:
            return (sum_pool(phi, window, stride, padding),
                    None if psi is None else sum_pool(psi, window, stride, padding))

        return step


def _build(name: str, module: nn.Module, shape: Shape, block: BlockBuilder) -> KernelOp:
    assert isinstance(module, _SumPoolNd)
    label = f"{name} ({type(module).__name__})"
    nd = module.ndim
    if len(shape) != nd + 1:
        raise shape_error(label, f"an input of shape (C, {nd} spatial axes)", shape)
    window, stride, padding = module.kernel_size, module.stride, module.padding
    if any(n + 2 * p < w for n, w, p in zip(shape[1:], window, padding, strict=True)):
        raise shape_error(label, f"spatial sizes + 2 x padding {padding} >= the window {window}", shape)
    out = tuple((n + 2 * p - w) // s + 1 for n, w, s, p in zip(shape[1:], window, stride, padding, strict=True))
    return SumPool(label, shape, (shape[0], *out), window, stride, padding)


register(_SumPoolNd, build=_build, names="ntkit.nn.SumPool1d/2d")

__all__ = ["SumPool"]
