"""Training a model in place by (stochastic) gradient descent on the MSE: :func:`train_gd` and its record.

Loss and learning-rate scaling (the conventions of :mod:`ntkit.predict`): on a batch ``B`` of the
training set with ``k`` outputs,

    L_B(theta) = 1 / (2 |B| k) * sum_{i in B} || f(x_i; theta) - y_i ||^2,     theta <- theta - eta grad L_B.

Full batch (``batch_size=None``) is gradient descent; then ``t`` steps with learning rate ``eta``
correspond to ``gradient_descent_mse(..., learning_rate=eta, discrete=True)`` at time ``t``, and
for small ``eta`` to the gradient flow at the same ``t``. With ``|B| < N`` it is SGD whose expected
step is the full-batch one.

Two implementations give the same updates: plain autograd on any model, and for :class:`ntkit.FCNetwork`
an exact low-rank accumulation of the weight updates (``W_0 + U V^T``) that makes very wide networks cheap.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import as_tensor, check_choice, check_float, check_int, describe
from ntkit.empirical import empirical_ntk
from ntkit.networks import FCNetwork
from ntkit.predict.learning_rate import warn_unstable_learning_rate
from ntkit.solve.eigen import psd_eigh

Tensor = torch.Tensor

IMPLEMENTATIONS = ("auto", "autograd", "lowrank")


def mse_loss(fx: Tensor, y: Tensor) -> Tensor:
    """``1 / (2 * y.numel()) * sum (fx - y)^2`` (the loss of the module docstring).

    Parameters
    ----------
    fx : Tensor of shape (N, k)
        Outputs.
    y : Tensor of shape (N, k)
        Targets.

    Returns
    -------
    Tensor
        A scalar.

    Examples
    --------
    >>> import torch
    >>> from ntkit.train import mse_loss
    >>> float(mse_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])))  # (1 + 4) / (2 * 2)
    1.25
    """
    return 0.5 * ((fx - y) ** 2).sum() / y.numel()


@dataclass
class TrainHistory:
    """Record of :func:`train_gd`: ``loss[s]`` is the full training loss before step ``s``
    (``loss[-1]`` after the last step, so ``len(loss) == steps + 1`` for full-batch GD; for SGD the
    batch losses, then the final full-batch loss).

    Attributes
    ----------
    loss : list of float
    steps : int
        Updates made.
    learning_rate : float
    batch_size : int
    implementation : str
        ``"autograd"`` or ``"lowrank"``.
    seconds : float

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [32], 1, seed=0)
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> hist = ntkit.train.train_gd(net, x, x[:, :1], learning_rate=0.5, steps=10)
    >>> hist.steps, len(hist.loss), hist.loss[-1] < hist.loss[0]
    (10, 11, True)
    """

    loss: list[float] = field(default_factory=list)
    steps: int = 0
    learning_rate: float = 0.0
    batch_size: int = 0
    implementation: str = ""
    seconds: float = 0.0


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator | None) -> list[Tensor | None]:
    """Index sets of each step: ``None`` (full batch), or consecutive chunks of fresh permutations."""
    if batch_size >= n:
        return [None] * steps
    out: list[Tensor | None] = []
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        out.append(perm[pos : pos + batch_size])
        pos += batch_size
    return out


def _lowrank_layers(model: Any, rank: int) -> list[bool]:
    return [min(lin.in_features, lin.out_features) >= 4 * rank for lin in model.linears]


def train_gd(
    model: nn.Module,
    x_train: Any,
    y_train: Any,
    *,
    learning_rate: float,
    steps: int,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    implementation: str = "auto",
    check_learning_rate: bool = True,
    progress: bool = False,
) -> TrainHistory:
    """Train ``model`` in place by (stochastic) gradient descent on the MSE (module docstring).

    Parameters
    ----------
    model : nn.Module
        Maps (N, ...) to (N, k); every parameter with ``requires_grad`` is trained.
    x_train : Tensor of shape (N, ...)
    y_train : Tensor of shape (N, k)
    learning_rate : float
        ``eta > 0``, the same ``eta`` as in :func:`ntkit.predict.gradient_descent_mse`.
    steps : int
        Number of updates ``t``.
    batch_size : int, optional
        ``None`` or ``>= N``: full-batch gradient descent; smaller: SGD over fresh permutations
        (drawn from ``generator`` or ``seed``).
    implementation : {"auto", "autograd", "lowrank"}
        ``"lowrank"`` (FCNetwork only) keeps each wide weight matrix as ``W_0 + U V^T``: a gradient
        step adds ``-eta s_W G^T A`` of rank ``|B|``, so wide layers are updated exactly without
        touching the dense matrix, which is written back once at the end. ``"auto"`` uses it for
        an FCNetwork whose hidden width is at least 4 ``steps |B|``.
    check_learning_rate : bool
        For full-batch GD, compute the empirical NTK on ``x_train`` at the start and warn
        (:class:`ntkit.predict.LearningRateWarning`) if ``eta >= 2 N k / lambda_max``.

    Returns
    -------
    TrainHistory

    Raises
    ------
    ValueError
        ``learning_rate <= 0``, ``steps < 0``, a model without trainable parameters, targets whose
        shape is not the model's output shape, a model that fails on the inputs, ``"lowrank"`` for a
        model that is not an :class:`ntkit.FCNetwork`.

    Warns
    -----
    LearningRateWarning
        Full-batch GD with ``learning_rate >= 2 N k / lambda_max`` (diverges).
    RuntimeWarning
        The final loss is not finite.

    Examples
    --------
    >>> import torch, ntkit
    >>> net = ntkit.FCNetwork(2, [64, 64], 1, b_std=0.1, seed=0)
    >>> x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> hist = ntkit.train.train_gd(net, x, x[:, :1] * x[:, 1:], learning_rate=1.0, steps=50)
    >>> hist.loss[-1] < 0.1 * hist.loss[0]
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: expected at least one trainable parameter, got none")
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    steps = check_int(steps, "steps", minimum=0)
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    ref = params[0]
    x = as_tensor(x_train, "x_train", dtype=ref.dtype, device=ref.device, ndim=None)
    y = as_tensor(y_train, "y_train", dtype=ref.dtype, device=ref.device, ndim=2)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"y_train: expected {n} rows like x_train, got {describe(y)}")
    with torch.no_grad():
        try:
            f0 = model(x)
        except Exception as err:
            raise ValueError(f"x_train: the model failed on an input of shape {tuple(x.shape)}: {err}") from err
    if f0.shape != y.shape:
        raise ValueError(f"y_train: expected the model's output shape {tuple(f0.shape)}, got {tuple(y.shape)}")
    bs = n if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    bs = min(bs, n)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(check_int(seed, "seed"))
    if check_learning_rate and bs == n:
        theta = empirical_ntk(model, x, mode="full")
        k = theta.shape[2]
        mat = theta.permute(0, 2, 1, 3).reshape(n * k, n * k).to(torch.float64)
        lambda_max = psd_eigh(mat, name="empirical NTK").lambda_max
        warn_unstable_learning_rate(learning_rate, lambda_max, n * k, stacklevel=3)
    if implementation == "lowrank" and not isinstance(model, FCNetwork):
        raise ValueError(f"implementation: 'lowrank' needs an ntkit.FCNetwork, got {type(model).__name__}")
    use_lowrank = isinstance(model, FCNetwork) and (
        implementation == "lowrank" or (implementation == "auto" and any(_lowrank_layers(model, steps * bs)))
    )
    batches = _batches(n, bs, steps, generator)
    hist = TrainHistory(
        learning_rate=learning_rate, batch_size=bs, implementation="lowrank" if use_lowrank else "autograd"
    )
    bar = Progress(steps, "train", enabled=progress)
    start = time.perf_counter()
    if use_lowrank:
        _train_fc_lowrank(model, x, y, learning_rate, batches, hist, bar, force=implementation == "lowrank")
    else:
        for idx in batches:
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            for p in params:
                p.grad = None
            loss = mse_loss(model(xb), yb)
            loss.backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-learning_rate)
            hist.loss.append(float(loss.detach()))
            hist.steps += 1
            bar.update(1, note=f"loss {hist.loss[-1]:.3g}")
        for p in params:
            p.grad = None
    with torch.no_grad():
        final = float(mse_loss(model(x), y))
    if not math.isfinite(final):
        warnings.warn(
            f"training diverged (final loss {final}); lower learning_rate {learning_rate:.4g}",
            RuntimeWarning,
            stacklevel=2,
        )
    hist.loss.append(final)
    bar.close()
    hist.seconds = time.perf_counter() - start
    return hist


def _train_fc_lowrank(
    model: Any,
    x: Tensor,
    y: Tensor,
    lr: float,
    batches: list[Tensor | None],
    hist: TrainHistory,
    bar: Progress,
    *,
    force: bool,
) -> None:
    """Exact (S)GD for an FCNetwork with wide weights kept as ``W_0 + U V^T`` (see :func:`train_gd`)."""
    linears = model.linears
    first = batches[0] if batches else None
    bs = x.shape[0] if first is None else len(first)
    rank = max(len(batches) * bs, 1)
    lowrank = [True] * len(linears) if force else _lowrank_layers(model, rank)
    flags = [lin.weight.requires_grad for lin in linears]
    for lin, low in zip(linears, lowrank, strict=True):
        lin.weight.requires_grad_(not low)
    us = [
        torch.empty(lin.out_features, rank, dtype=x.dtype, device=x.device) if low else None
        for lin, low in zip(linears, lowrank, strict=True)
    ]
    vs = [
        torch.empty(lin.in_features, rank, dtype=x.dtype, device=x.device) if low else None
        for lin, low in zip(linears, lowrank, strict=True)
    ]
    r = 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for idx in batches:
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            b = xb.shape[0]
            a = xb
            inputs: list[Tensor] = []
            zs: list[Tensor] = []
            for i, lin in enumerate(linears):
                inputs.append(a.detach())
                u, v = us[i], vs[i]
                if u is not None and v is not None:
                    lin_out = a @ lin.weight.detach().T
                    if r:
                        lin_out = lin_out + (a @ v[:, :r]) @ u[:, :r].T
                else:
                    lin_out = a @ lin.weight.T
                z = lin.weight_scale * lin_out + lin.bias_scale * lin.bias
                if u is not None:
                    z.retain_grad()
                zs.append(z)
                a = model.activation(z) if i < len(linears) - 1 else z
            for p in trainable:
                p.grad = None
            loss = mse_loss(a, yb)
            loss.backward()
            with torch.no_grad():
                for i, lin in enumerate(linears):
                    u, v = us[i], vs[i]
                    if u is not None and v is not None:
                        g = zs[i].grad
                        assert g is not None
                        u[:, r : r + b] = (-lr * lin.weight_scale) * g.T
                        v[:, r : r + b] = inputs[i].T
                for p in trainable:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
            r += b
            hist.loss.append(float(loss.detach()))
            hist.steps += 1
            bar.update(1, note=f"loss {hist.loss[-1]:.3g}")
    finally:
        with torch.no_grad():
            for lin, u, v, flag in zip(linears, us, vs, flags, strict=True):
                if u is not None and v is not None and r:
                    lin.weight.addmm_(u[:, :r], v[:, :r].T)
                lin.weight.requires_grad_(flag)
        for p in model.parameters():
            p.grad = None


__all__ = ["IMPLEMENTATIONS", "TrainHistory", "mse_loss", "train_gd"]
