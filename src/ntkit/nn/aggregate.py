"""Graph aggregation ``out_i = sum_j A_ij x_j`` over the nodes of each example (neural-tangents' ``stax.Aggregate``).

A graph neural network's message passing: each node's features become the (weighted) sum of the
features of the nodes it receives from, through a per-example adjacency ``A`` (shape (N, V, V),
``A[n, i, j]`` the weight of the edge ``j -> i`` in example ``n``; self-loops, zero rows and real
weights allowed). The layer has no parameters; it is linear in the features, channel by channel:

    out[n, c, i] = sum_j A[n, i, j] x[n, c, j],        i.e. ``out = x @ A^T`` per example.

Features are channel-first, ``(N, C, V)``, as after :class:`ntkit.nn.Conv1d` with ``kernel_size=1``
(the per-node dense layer), or with ``channel_axis=-1`` node tokens ``(N, V, C)``, channels last, as after
a per-node :class:`ntkit.nn.Linear` (then ``out = A @ x``). neural-tangents' ``pattern[n, j, i]`` is this
``A[n, i, j]`` (its apply function is ``x @ pattern``).

At infinite width (:mod:`ntkit.infinite.ops.aggregate`) the covariances of every pair of examples
transform as ``K'(x, x') = A K(x, x') A'^T`` (all node pairs), and the NTK likewise. The kernel
functions take graphs as :class:`ntkit.Graphs` ``(x, adjacency)``, and the model is called as
``model(x, adjacency)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ntkit._validation import describe

Tensor = torch.Tensor


class Aggregate(nn.Module):
    """Sum of each node's in-neighbours' features: ``agg(x, adjacency) = x @ adjacency^T`` per example.

    Call as ``agg(x, adjacency)``: ``x`` of shape (N, C, V) (channels first, nodes last), ``adjacency``
    of shape (N, V, V) with ``adjacency[n, i, j]`` the weight of the edge from node ``j`` to node ``i``;
    returns (N, C, V) with ``out[n, :, i] = sum_j adjacency[n, i, j] x[n, :, j]``. No parameters.

    Parameters
    ----------
    channel_axis : {1, -1}
        1: features (N, C, V); -1: node tokens (N, V, C), channels last (``out = adjacency @ x``).

    Raises
    ------
    ValueError
        A ``channel_axis`` other than 1 or -1; in the forward, features that are not 3-D or an adjacency
        that is not (N, V, V) for them.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.tensor([[[1.0, 2.0, 3.0]]])  # one graph, one channel, three nodes
    >>> a = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]])  # 1, 2 -> 0; 0, 2 -> 2
    >>> ntkit.nn.Aggregate()(x, a)
    tensor([[[5., 0., 4.]]])
    """

    def __init__(self, channel_axis: int = 1) -> None:
        super().__init__()
        if isinstance(channel_axis, bool) or channel_axis not in (1, -1, 2):
            raise ValueError(f"Aggregate: expected channel_axis 1 (features (N, C, V)) or -1 (tokens (N, V, C)), "
                             f"got {channel_axis!r}")
        self.channel_axis = 1 if channel_axis == 1 else -1

    @property
    def tokens(self) -> bool:
        """Whether the features are node tokens (N, V, C), channels last."""
        return self.channel_axis == -1

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        layout = "(N, V, C)" if self.tokens else "(N, C, V)"
        if not isinstance(x, Tensor) or x.ndim != 3:
            raise ValueError(f"Aggregate: expected node features of shape {layout}, got {describe(x)}")
        n, v = x.shape[0], x.shape[1 if self.tokens else 2]
        if not isinstance(adjacency, Tensor) or tuple(adjacency.shape) != (n, v, v):
            raise ValueError(f"Aggregate: expected an adjacency of shape (N, V, V) = ({n}, {v}, {v}) for node "
                             f"features {layout} of shape {tuple(x.shape)}, got {describe(adjacency)}")
        a = adjacency.to(x.dtype)
        return torch.matmul(a, x) if self.tokens else torch.matmul(x, a.transpose(1, 2))

    def extra_repr(self) -> str:
        return "channel_axis=-1" if self.tokens else ""


__all__ = ["Aggregate"]
