"""The kernel record carried between layers: covariances of pairs of inputs, with their spatial layout.

In the infinite-width limit the channels of every layer are i.i.d. centred Gaussian processes
(Lee et al. 2018; Novak et al. 2019), so a layer's state is fully described by the covariance
``K(x, x')[p, p']`` of one channel at pixel ``p`` of input ``x`` and pixel ``p'`` of input ``x'``
(and, for the NTK, by ``Theta(x, x')[p, p']``). Only as much of it is carried as later layers need
(:class:`Layout`):

* ``"none"``: vector features (no spatial axes): one number per pair;
* ``"diag"``: the same-pixel covariances ``K[p, p]`` only (shape ``S``): enough for convolutions,
  activations and a flattening read-out (Arora et al. 2019, CNTK-V: O(pixels) per pair);
* ``"full"``: every pixel pair (shape ``S + S``, the pixels of ``x`` first): needed by pooling
  (CNTK-GAP: O(pixels^2) per pair).

A :class:`Pairs` holds a batch of such covariances: ``batch_ndim = 2`` for the pairs ``(x1_i,
x2_j)`` (shape ``(N1, N2, *pair)``), ``batch_ndim = 1`` for every input with itself (shape
``(N, *pair)``), from which the variances ``K(x, x)[p, p]`` feeding the dual maps are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

Tensor = torch.Tensor

MODES = ("none", "diag", "full")
_RANK = {"none": 0, "diag": 1, "full": 2}


def max_mode(a: str, b: str) -> str:
    """The more demanding of two modes (``full > diag > none``)."""
    return a if _RANK[a] >= _RANK[b] else b


@dataclass(frozen=True)
class Layout:
    """Spatial shape ``spatial`` (``()`` for vectors) and how much of the covariance is carried (``mode``)."""

    spatial: tuple[int, ...]
    mode: str

    @property
    def pixels(self) -> int:
        """Number of pixels (1 for vectors)."""
        return math.prod(self.spatial)

    @property
    def pair_shape(self) -> tuple[int, ...]:
        """Trailing shape of one pair's covariance: ``()``, ``S`` or ``S + S``."""
        if self.mode == "none":
            return ()
        return self.spatial if self.mode == "diag" else self.spatial + self.spatial

    def pixel_diagonal(self, t: Tensor, batch_ndim: int) -> Tensor:
        """The same-pixel entries ``t[..., p, p]``: shape ``(*batch, *S)`` (``t`` itself unless ``full``)."""
        if self.mode != "full":
            return t
        batch = t.shape[:batch_ndim]
        p = self.pixels
        return t.reshape(*batch, p, p).diagonal(dim1=-2, dim2=-1).reshape(*batch, *self.spatial)

    def left(self, v: Tensor, batch_ndim: int) -> Tensor:
        """Per-row, per-pixel ``v`` (rows of ``x1``: ``(n, *S)``) shaped to broadcast against a batch of pairs."""
        ones = (1,) * len(self.spatial)
        if batch_ndim == 2:
            v = v.unsqueeze(1)
        if self.mode == "full":
            v = v.reshape(*v.shape, *ones)
        return v

    def right(self, v: Tensor, batch_ndim: int) -> Tensor:
        """As :meth:`left` for the rows of ``x2`` (the second input of each pair)."""
        ones = (1,) * len(self.spatial)
        if batch_ndim == 2:
            v = v.unsqueeze(0)
        if self.mode == "full":
            lead = v.shape[: v.ndim - len(self.spatial)]
            v = v.reshape(*lead, *ones, *self.spatial)
        return v

    def replace(self, **changes: Any) -> Layout:
        """A copy with fields replaced."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Pairs:
    """Covariances of a batch of pairs of inputs after some layer (never mutated; see :meth:`replace`).

    Attributes
    ----------
    nngp : Tensor of shape (*batch, *layout.pair_shape)
        ``K(x, x')``: covariance of one channel of the layer's output.
    ntk : Tensor of the same shape, or None
        ``Theta(x, x')`` (None when not computed).
    layout : Layout
    batch_ndim : int
        2 for the pairs ``(x1_i, x2_j)``, 1 for each input with itself.
    mean : Tensor of shape (N, *S) or None
        Only for ``batch_ndim = 1``: the mean of one channel at each pixel (None: zero, as after
        every weight layer); non-zero after an activation, needed by a layer norm that follows it.
    adjacency : Tensor of shape (N, V, V) or None
        Only for ``batch_ndim = 1``: each input's graph (:class:`ntkit.Graphs`), carried unchanged from
        the inputs for the aggregation layers (:mod:`ntkit.infinite.ops.aggregate`); None without graphs.
    """

    nngp: Tensor
    ntk: Tensor | None
    layout: Layout
    batch_ndim: int
    mean: Tensor | None = None
    adjacency: Tensor | None = None

    def replace(self, **changes: Any) -> Pairs:
        """A copy with fields replaced."""
        return replace(self, **changes)

    def variances(self) -> Tensor:
        """``K(x, x)[p, p]`` of the inputs of a self batch (``batch_ndim = 1``): shape ``(N, *S)``."""
        assert self.batch_ndim == 1
        return self.layout.pixel_diagonal(self.nngp, 1)


@dataclass
class Context:
    """What a layer needs besides the covariances it transforms: the variances and means of both sides.

    ``rows`` is the self batch (each input with itself) *before* the layer; for a batch of pairs
    ``left`` / ``right`` index its rows (the inputs of each pair), for the self batch they are None.
    """

    rows: Pairs
    left_ids: Tensor | None = None
    right_ids: Tensor | None = None

    def _side(self, v: Tensor, ids: Tensor | None, right: bool, batch_ndim: int) -> Tensor:
        if ids is not None:
            v = v[ids]
        lay = self.rows.layout
        return lay.right(v, batch_ndim) if right else lay.left(v, batch_ndim)

    def variances(self, batch_ndim: int) -> tuple[Tensor, Tensor]:
        """``(var_left, var_right)`` broadcastable against a batch of pairs with ``batch_ndim`` batch axes."""
        v = self.rows.variances()
        return (self._side(v, self.left_ids, False, batch_ndim), self._side(v, self.right_ids, True, batch_ndim))

    def adjacency(self) -> tuple[Tensor, Tensor] | None:
        """``(A_left, A_right)``: the graphs of the inputs of each pair ((N1, V, V), (N2, V, V); the self batch's
        own twice), or None without graph inputs."""
        a = self.rows.adjacency
        if a is None:
            return None
        return (a if self.left_ids is None else a[self.left_ids], a if self.right_ids is None else a[self.right_ids])

    def means(self, batch_ndim: int) -> tuple[Tensor, Tensor] | None:
        """``(mean_left, mean_right)`` like :meth:`variances`, or None where the features are centred."""
        m = self.rows.mean
        if m is None:
            return None
        return (self._side(m, self.left_ids, False, batch_ndim), self._side(m, self.right_ids, True, batch_ndim))


__all__ = ["MODES", "Context", "Layout", "Pairs", "max_mode"]
