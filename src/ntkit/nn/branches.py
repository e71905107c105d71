"""Branches run from the same input and merged: :class:`Parallel` (a series-parallel architecture).

``Parallel(a, b, merge="sum")`` computes ``a(x) + b(x)``; ``merge="concat"`` concatenates the branches'
outputs along the channels (axis 1), ``merge="prod"`` multiplies them entry by entry. With
``nn.Identity()`` as a branch, ``Parallel(nn.Identity(), block)`` is the residual connection
``x + block(x)``. These are neural-tangents' ``stax.serial(stax.FanOut(n), stax.parallel(*branches),
stax.FanInSum() | stax.FanInConcat(axis=channel) | stax.FanInProd())``.
"""

from __future__ import annotations

import torch
from torch import nn

from ntkit._validation import describe

Tensor = torch.Tensor

#: The merges of :class:`Parallel`.
MERGES = ("sum", "concat", "prod")


class Parallel(nn.Module):
    """Runs every branch on the same input and merges their outputs (sum, concatenation or product).

    In the infinite-width limit (:func:`ntkit.infinite_kernel`), with ``K_i`` / ``T_i`` the NNGP / NTK
    of branch ``i`` (one channel) and ``C_i`` its channels:

    * ``"sum"``: ``K = sum_i K_i`` (NTK alike) when the branches are independent and centred: all but
      at most one branch end with a weight layer (pooling or flatten after it allowed), whose fresh
      weights make its output independent of the other branches. Dependent branches made of
      activations only (``x + relu(x)``) are one activation of the input, with its dual maps (the
      arc-cosine closed form for the ReLU family); other dependent branches are refused.
    * ``"concat"``: ``K = sum_i C_i K_i / sum_i C_i`` -- what the next weight layer averages over its
      input channels (exact for any branches, dependent ones included). A weight layer must follow
      (pooling or flatten between them at most): an activation or a layer norm there would act on a
      mixture of laws.
    * ``"prod"``: ``K = prod_i K_i`` and ``T = sum_i T_i prod_{j != i} K_j`` for independent branches:
      all but at most one branch hold a weight layer on every path (``tanh(W1 h) * sigmoid(W2 h)``).
      The product is not Gaussian: a weight layer must follow before an activation.

    No weight module may appear in two branches (shared weights make the branches dependent).

    Parameters
    ----------
    *branches : nn.Module
        At least two branches (``nn.Identity()`` allowed; several modules in sequence: an
        ``nn.Sequential``), each taking the same input.
    merge : {"sum", "concat", "prod"}
        How the outputs are merged.
    dim : int
        The concatenation axis (``merge="concat"`` only): the channels, ``1``; a negative axis is
        accepted where it is the channel axis of the inputs (``-1`` for vectors).

    Raises
    ------
    ValueError
        Fewer than two branches; an unknown ``merge``; at the call, branch outputs whose shapes do not fit
        the merge (both shapes named).
    TypeError
        A branch that is not a ``torch.nn.Module``; a ``dim`` that is not an integer.

    Examples
    --------
    >>> import torch, ntkit
    >>> block = Parallel(ntkit.nn.Linear(3, 8, device="meta"), ntkit.nn.Linear(3, 8, device="meta"))
    >>> model = torch.nn.Sequential(block, torch.nn.ReLU(), ntkit.nn.Linear(8, 1, device="meta"))
    >>> x = torch.eye(3, dtype=torch.float64)
    >>> ntkit.infinite_kernel(model, x, which="nngp").diag().tolist()  # E[relu(u)^2], u ~ N(0, 2 |x|^2 / 3)
    [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
    """

    #: Where a captured forward merges the branches (``file.py:42 in forward: ...``), for error messages;
    #: "" for a module built directly.
    traced_at: str = ""

    def __init__(self, *branches: nn.Module, merge: str = "sum", dim: int = 1) -> None:
        super().__init__()
        if len(branches) < 2:
            raise ValueError(f"Parallel: expected at least two branches, got {len(branches)}")
        for i, m in enumerate(branches):
            if not isinstance(m, nn.Module):
                raise TypeError(f"Parallel: expected torch.nn.Module branches, got {describe(m)} at position {i}")
        if merge not in MERGES:
            raise ValueError(f"Parallel: expected merge in {MERGES}, got {merge!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"Parallel: expected an integer dim, got {describe(dim)}")
        self.branches = nn.ModuleList(branches)
        self.merge = merge
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.merge == "concat":
            self._check([o.shape for o in outs], concat=True)
            return torch.cat(outs, dim=self.dim)
        self._check([o.shape for o in outs], concat=False)
        out = outs[0]
        for other in outs[1:]:
            out = out + other if self.merge == "sum" else out * other
        return out

    def _check(self, shapes: list[torch.Size], concat: bool) -> None:
        """Equal shapes (``concat``: but along ``dim``); the error names the first pair that differs."""
        first = tuple(shapes[0])
        for i, shape in enumerate(shapes[1:], 1):
            a, b = list(first), list(shape)
            if concat and len(a) == len(b) and -len(a) <= self.dim < len(a):
                a[self.dim] = b[self.dim] = 0
            if a != b:
                what = f"equal shapes but along dim={self.dim}" if concat else "equal shapes"
                raise ValueError(f"Parallel: expected branch outputs of {what} for merge={self.merge!r}, got "
                                 f"{first} (branch 0) and {tuple(shape)} (branch {i})")

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}" + (f", dim={self.dim}" if self.merge == "concat" and self.dim != 1 else "")


__all__ = ["MERGES", "Parallel"]
