"""The pseudo-NTK (pNTK): the NTK of the sum of a model's logits, scaled by ``1 / sqrt(k)``.

Mohamadi, Bae, Sutherland (2023), "A fast, well-founded approximation to the empirical neural
tangent kernel" (ICML): for a model with ``k`` outputs,

    pNTK(x, x') = < d f_sum(x) / d theta, d f_sum(x') / d theta >,    f_sum = (1 / sqrt(k)) sum_c f_c,

that is ``(1/k) sum_{c,d} Theta(x, x')_{cd}`` — the mean over *all* (c, d) entries of the full NTK
blocks, where the trace kernel averages the diagonal only. It costs one backward pass per example
instead of ``k``, and at initialisation the full NTK is close to ``pNTK (x) I_k`` (the off-diagonal
blocks vanish in the infinite-width limit; the paper bounds the difference).
:func:`ntkit.empirical_ntk` computes it as the NTK of :class:`SumOfLogits`, a one-output model, with
any implementation (``mode="pntk"``).
"""

from __future__ import annotations

from torch import nn

from ntkit.empirical._common import Tensor

#: Name of the wrapped model inside :class:`SumOfLogits` (its parameters are ``net.<name>``).
PREFIX = "net."


class SumOfLogits(nn.Module):
    """``f_sum(x) = (1 / sqrt(k)) sum_c f_c(x)`` of a model with ``k`` outputs, as an (N, 1) output.

    The wrapper shares the model's parameters (named ``net.<name>``) and copies its training flag
    without changing the model's.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.net = model
        self.scale = float(k) ** -0.5
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.sum(1, keepdim=True) * self.scale


def pntk_parameters(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The selected parameters under their names in :class:`SumOfLogits`."""
    return {PREFIX + n: t for n, t in params.items()}
