"""The immutable :class:`Kernel` record returned by every analytic kernel function."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ntkit._validation import check_choice, check_int

Tensor = torch.Tensor


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of a network between inputs ``x1`` (N1 rows) and ``x2`` (N2 rows).

    Attributes
    ----------
    nngp : Tensor of shape (N1, N2)
        ``Sigma(L)(x1, x2)``: covariance of each output of the Gaussian-process limit (Lee et al. 2018).
    ntk : Tensor of shape (N1, N2) or None
        ``Theta(L)(x1, x2)``: the scalar NTK (Jacot et al. 2018); the kernel of the ``n_L`` outputs is
        ``Theta (x) I_{n_L}`` (see :meth:`blocks`). ``None`` where it is undefined.
    var1 : Tensor of shape (N1,)
        ``Sigma(L)(x, x)`` for the rows of ``x1`` (the diagonal of ``nngp`` when ``x2`` is ``x1``).
    var2 : Tensor of shape (N2,)
        Same for the rows of ``x2``.

    Kernels are never mutated; use :meth:`replace` to derive a new one.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    >>> k = ntkit.fc_kernel(x, depth=2, b_std=0.1)
    >>> k.shape, k.nngp.shape, k.var1.shape
    ((3, 3), torch.Size([3, 3]), torch.Size([3]))
    >>> k.blocks(2).shape  # Theta (x) I_2, as empirical_ntk(mode="full") returns
    torch.Size([3, 3, 2, 2])
    >>> bool(torch.equal(k.get("nngp").diagonal(), k.var1))
    True
    """

    nngp: Tensor
    ntk: Tensor | None
    var1: Tensor
    var2: Tensor

    def replace(self, **changes: Any) -> Kernel:
        """A copy with the given fields replaced (``kernel.replace(ntk=None)``)."""
        return dataclasses.replace(self, **changes)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N1, N2)``."""
        return (int(self.nngp.shape[0]), int(self.nngp.shape[1]))

    def get(self, which: str) -> Tensor:
        """``self.nngp`` or ``self.ntk`` by name, with a clear error where it is undefined."""
        check_choice(which, "which", ("nngp", "ntk"))
        value = self.nngp if which == "nngp" else self.ntk
        if value is None:
            raise ValueError(f"which: the {which} of this kernel is undefined (its activation has no derivative map)")
        return value

    def blocks(self, n_outputs: int, which: str = "ntk") -> Tensor:
        """The full output kernel ``K (x) I_{n_outputs}`` as a tensor of shape (N1, N2, k, k).

        This is the shape :func:`ntkit.empirical_ntk` returns in ``mode="full"``.
        """
        k = check_int(n_outputs, "n_outputs", minimum=1)
        value = self.get(which)
        eye = torch.eye(k, dtype=value.dtype, device=value.device)
        return value[:, :, None, None] * eye

    def to(self, *args: Any, **kwargs: Any) -> Kernel:
        """Move / cast every tensor (same arguments as :meth:`torch.Tensor.to`)."""
        return Kernel(
            nngp=self.nngp.to(*args, **kwargs),
            ntk=None if self.ntk is None else self.ntk.to(*args, **kwargs),
            var1=self.var1.to(*args, **kwargs),
            var2=self.var2.to(*args, **kwargs),
        )
