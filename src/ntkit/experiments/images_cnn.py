"""The finite-network baseline of ``ntkit bench images``: a trained CNN of the CNTK-GAP architecture.

The network is :func:`ntkit.nn.cntk` with ``readout="gap"`` (``depth`` 3x3 convolutions with ReLU,
global average pooling, a linear read-out) at a finite ``width``, in *standard* parameterization
(He initialisation, ``w_std = sqrt(2)``; biases start at 0 and are trained) and float32, as a
network would ordinarily be trained (Arora et al. 2019 and 2020 compare their kernels with such
trained networks). Training: mini-batch SGD with momentum 0.9 on the cross-entropy loss, learning
rate decayed to 0 by a cosine schedule, ``epochs`` passes over the data but at least ``min_steps``
updates (few-shot training sets are tiny), batches of ``min(batch_size, N)``. The accuracy is that
of the final network on the test set. Small networks train on one CPU thread: their operations are
too short to gain from two, and on a loaded machine several threads per operation slow them down
by orders of magnitude (100x measured for width 16 while another job used the cores).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ntkit._validation import check_float, check_int
from ntkit.compute.tile_task import single_threaded
from ntkit.nn.builders import cntk

Tensor = torch.Tensor

#: Below this many multiply-adds per training step (batch x pixels x width^2 x 9 x depth) on a CPU,
#: the CNN trains on one thread.
SINGLE_THREAD_FLOPS = 50_000_000


@dataclass(frozen=True)
class CNNConfig:
    """Hyperparameters of the CNN baseline (module notes)."""

    depth: int = 3
    width: int = 128
    epochs: int = 20
    min_steps: int = 100
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_int(self.depth, "cnn depth", minimum=1)
        check_int(self.width, "cnn width", minimum=1)
        check_int(self.epochs, "cnn epochs", minimum=1)
        check_int(self.min_steps, "cnn min_steps", minimum=0)
        check_int(self.batch_size, "cnn batch_size", minimum=1)
        check_float(self.learning_rate, "cnn learning_rate", minimum=0.0, strict=True)
        check_float(self.momentum, "cnn momentum", minimum=0.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def train_cnn(
    x_train: Tensor,
    y_train: np.ndarray,
    x_test: Tensor,
    y_test: np.ndarray,
    config: CNNConfig,
    *,
    n_classes: int,
    seed: int,
) -> dict[str, Any]:
    """Train the CNN on ``(x_train, y_train)`` and score it on the test set.

    Parameters
    ----------
    x_train : Tensor of shape (N, C, H, W)
    y_train : ndarray of shape (N,), int
    x_test : Tensor of shape (N_test, C, H, W)
    y_test : ndarray of shape (N_test,), int
    config : CNNConfig
    n_classes : int
    seed : int
        Fixes the initialisation and the batches.

    Returns
    -------
    dict
        ``accuracy`` (test), ``train_accuracy``, ``final_loss``, ``steps``, ``seconds``.
    """
    start = time.perf_counter()
    device = torch.device(config.device)
    gen = torch.Generator().manual_seed(seed)
    model = cntk(x_train.shape[1], config.depth, readout="gap", width=config.width, out_features=n_classes,
                 parameterization="standard", generator=gen, dtype=torch.float32).to(device)
    xt = torch.as_tensor(x_train, dtype=torch.float32).to(device)
    yt = torch.as_tensor(y_train, dtype=torch.long).to(device)
    batch = min(config.batch_size, xt.shape[0])
    step_flops = batch * xt.shape[2] * xt.shape[3] * config.width ** 2 * 9 * config.depth
    small = device.type == "cpu" and step_flops < SINGLE_THREAD_FLOPS
    with single_threaded() if small else contextlib.nullcontext():
        return _train(model, xt, yt, x_test, y_train, y_test, config, batch, gen, device, start)


def _train(model: torch.nn.Module, xt: Tensor, yt: Tensor, x_test: Tensor, y_train: np.ndarray, y_test: np.ndarray,
           config: CNNConfig, batch: int, gen: torch.Generator, device: torch.device, start: float) -> dict[str, Any]:
    n = xt.shape[0]
    per_epoch = math.ceil(n / batch)
    steps = max(config.epochs * per_epoch, config.min_steps)
    opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss = torch.zeros(())
    perm = torch.randperm(n, generator=gen)
    pos = 0
    model.train()
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch].to(device)
        pos += batch
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        train_acc = _accuracy(model, xt, y_train, device)
        acc = _accuracy(model, torch.as_tensor(x_test, dtype=torch.float32).to(device), y_test, device)
    return {"accuracy": acc, "train_accuracy": train_acc, "final_loss": float(loss.detach()), "steps": steps,
            "seconds": time.perf_counter() - start}


def _accuracy(model: torch.nn.Module, x: Tensor, y: np.ndarray, device: torch.device, chunk: int = 512) -> float:
    preds = [model(x[i:i + chunk]).argmax(dim=1).cpu() for i in range(0, x.shape[0], chunk)]
    return float(np.mean(torch.cat(preds).numpy() == np.asarray(y)))


__all__ = ["CNNConfig", "train_cnn"]
