"""Monte-Carlo NNGP / NTK of any model: finite-width empirical kernels averaged over random initialisations.

For a model whose infinite-width limit has no closed form (max pooling, batch norm, softmax
attention, custom layers) -- or whose finite-width kernel is the point -- the kernels are
estimated by drawing ``n`` networks ``f_s`` (``s = 1..n``) of the architecture and averaging
their empirical kernels (as neural-tangents' ``monte_carlo_kernel_fn``)::

    K_hat = (1/n) sum_s K_s,        SE(K_hat) = sqrt( sum_s (K_s - K_hat)^2 / (n (n - 1)) )

entry by entry, with ``K_s`` of draw ``s``:

* NNGP, ``mode="trace"``: ``f_s(x1) . f_s(x2) / k`` over the ``k`` outputs -- the per-output
  covariance ``Sigma(x1, x2)`` that :func:`ntkit.infinite_kernel` returns as ``nngp`` (outputs of
  mean zero, as at any initialisation with centred weights);
* NTK, ``mode="trace"``: ``(1/k) sum_a Theta_aa(x1, x2)`` of :func:`ntkit.empirical_ntk` -- the
  scalar ``Theta`` of ``infinite_kernel(...).ntk`` (the kernel of the outputs being ``Theta (x) I_k``).

``mode="diagonal"`` / ``"full"`` keep the per-output entries ``(N1, N2, k)`` / blocks
``(N1, N2, k, k)`` instead. ``K_hat`` converges to the expected kernel of the finite width
(``E K_s``), which differs from the infinite-width limit by ``O(1/width)``; the standard error
shrinks as ``1/sqrt(n)``. The draws are streamed: one network and one per-draw kernel at a time,
accumulated in float64 by Welford's update (mean and sum of squared deviations), so memory is
``O(N1 N2)`` whatever ``n``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import check_choice, check_int, check_pair, describe, parse_memory_budget
from ntkit.empirical import empirical_ntk
from ntkit.empirical._common import IMPLEMENTATIONS
from ntkit.empirical.api import _check_eval_mode
from ntkit.kernel import Kernel

Tensor = torch.Tensor

WHICH = ("both", "nngp", "ntk")
MODES = ("trace", "diagonal", "full")

#: Rows per forward pass of the NNGP's outputs.
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class MonteCarloKernel:
    """Monte-Carlo estimate of a model's NNGP and NTK, with the standard error of every entry.

    Attributes
    ----------
    nngp, ntk : Tensor or None
        The average of the ``n_samples`` per-draw empirical kernels (float64): shape (N1, N2) for
        ``mode="trace"`` (per output, comparable with :func:`ntkit.infinite_kernel`), (N1, N2, k) for
        ``"diagonal"``, (N1, N2, k, k) for ``"full"``. None where not requested (``which``).
    nngp_stderr, ntk_stderr : Tensor or None
        Standard error of each entry, ``sqrt(s^2 / n)`` with ``s^2`` the unbiased variance over the
        draws; same shapes. NaN for ``n_samples = 1`` (one draw has no spread).
    n_samples : int
        Networks averaged.

    Examples
    --------
    >>> import torch, ntkit
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> fn = lambda g: ntkit.nn.fc(2, 64, 1, depth=1, generator=g, dtype=torch.float64)
    >>> mc = ntkit.monte_carlo_kernel(fn, x, n_samples=8, which="ntk")
    >>> mc.ntk.shape, mc.nngp, mc.n_samples, bool((mc.stderr("ntk") > 0).all())
    (torch.Size([3, 3]), None, 8, True)
    """

    nngp: Tensor | None
    ntk: Tensor | None
    nngp_stderr: Tensor | None
    ntk_stderr: Tensor | None
    n_samples: int

    def get(self, which: str) -> Tensor:
        """The estimate ``"nngp"`` or ``"ntk"``, with a clear error (ValueError) where it was not requested."""
        check_choice(which, "which", ("nngp", "ntk"))
        value = self.nngp if which == "nngp" else self.ntk
        if value is None:
            raise ValueError(f"which: expected a kernel this estimate holds, got {which!r} (not requested)")
        return value

    def stderr(self, which: str) -> Tensor:
        """The standard error of ``"nngp"`` or ``"ntk"``, entry by entry (ValueError where not requested)."""
        self.get(which)
        value = self.nngp_stderr if which == "nngp" else self.ntk_stderr
        assert value is not None
        return value

    def zscore(self, reference: Any, which: str = "ntk") -> Tensor:
        """``(estimate - reference) / stderr`` entry by entry: how many standard errors off a reference is.

        Parameters
        ----------
        reference : Tensor or ntkit.Kernel
            A kernel of the estimate's shape (e.g. ``ntkit.infinite_kernel(model, x1, x2)``; a
            :class:`~ntkit.Kernel` gives its ``which`` field).
        which : {"nngp", "ntk"}

        Returns
        -------
        Tensor
            float64, the estimate's shape (inf / NaN where the standard error is 0 or undefined).

        Raises
        ------
        ValueError
            An unknown or unrequested ``which``; a reference of another shape.

        Examples
        --------
        >>> import torch, ntkit
        >>> x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> fn = lambda g: ntkit.nn.fc(3, 256, 1, depth=1, generator=g, dtype=torch.float64)
        >>> mc = ntkit.monte_carlo_kernel(fn, x, n_samples=32, which="ntk", seed=1)
        >>> limit = ntkit.infinite_kernel(fn(None), x)
        >>> bool(mc.zscore(limit, "ntk").abs().max() < 5)
        True
        """
        est = self.get(which)
        ref = reference.get(which) if isinstance(reference, Kernel) else reference
        ref = torch.as_tensor(ref, dtype=torch.float64, device=est.device)
        if ref.shape != est.shape:
            raise ValueError(f"reference: expected a kernel of shape {tuple(est.shape)}, got {describe(ref)}")
        return (est - ref) / self.stderr(which)


class _Running:
    """Welford's streaming mean and sum of squared deviations of tensors, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, value: Tensor) -> None:
        """Add one sample (consumed: a float64 ``value`` is overwritten)."""
        sample = value.to(torch.float64)
        self.n += 1
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = sample, torch.zeros_like(sample)
            return
        delta = sample - self.mean
        self.mean.add_(delta, alpha=1.0 / self.n)
        self.m2.addcmul_(delta, sample.sub_(self.mean))  # (x - mean_old) (x - mean_new)

    def result(self) -> tuple[Tensor, Tensor]:
        assert self.mean is not None and self.m2 is not None
        if self.n < 2:
            return self.mean.clone(), torch.full_like(self.mean, math.nan)
        return self.mean.clone(), (self.m2 / (self.n * (self.n - 1))).sqrt_()


def _check_counts(n_samples: Any) -> tuple[list[int], bool]:
    """The checkpoints (increasing) and whether one result (an int) was asked for."""
    if isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool):
        return [check_int(n_samples, "n_samples", minimum=1)], True
    if not isinstance(n_samples, Sequence) or isinstance(n_samples, str):
        raise TypeError(f"n_samples: expected an integer >= 1 or an increasing list of them, got {describe(n_samples)}")
    counts = [check_int(n, "n_samples", minimum=1) for n in n_samples]
    if not counts:
        raise ValueError("n_samples: expected an integer >= 1 or an increasing list of them, got an empty list")
    if any(b <= a for a, b in itertools.pairwise(counts)):
        raise ValueError(f"n_samples: expected a strictly increasing list, got {counts}")
    return counts, False


def _master_generator(generator: Any, seed: Any) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {describe(generator)}")
        if seed is not None:
            raise ValueError(f"seed and generator: expected one of them, got both (seed={seed!r})")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else check_int(seed, "seed"))


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """torch's global generators seeded with ``seed`` inside, restored on exit (layers drawing from them)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed_all(seed)
        yield


def _accepts_generator(fn: Callable[..., Any]) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _default_reinit(model: nn.Module, generator: torch.Generator) -> None:
    """Redraw every module's parameters: ``reset_parameters(generator=...)`` where it takes one
    (the :mod:`ntkit.nn` layers), else ``reset_parameters()`` / ``_reset_parameters()`` drawing
    from torch's global generator (seeded per draw by the caller)."""
    for name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset):
            reset = getattr(module, "_reset_parameters", None)
        if not callable(reset):
            if next(module.parameters(recurse=False), None) is not None:
                label = f"{name or 'model'} ({type(module).__name__})"
                raise ValueError(
                    f"model_fn: expected every module with parameters to have a reset_parameters method to "
                    f"redraw them, got {label} without one; pass reinit=fn(model, generator) or a function "
                    "model_fn(generator) that builds a fresh model"
                )
            continue
        if _accepts_generator(reset):
            reset(generator=generator)
        else:
            reset()


def _signature(model: nn.Module) -> dict[str, str]:
    """What must not change between draws: module types, parameter and buffer shapes, dtypes and devices."""
    sig = {f"module {n or 'model'!r}": type(m).__name__ for n, m in model.named_modules()}
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for n, t in items:
            sig[f"{kind} {n!r}"] = f"shape {tuple(t.shape)}, {t.dtype} on {t.device.type}"
    return sig


def _compare(first: dict[str, str], other: dict[str, str], draw: int) -> None:
    if first == other:
        return
    lacks = [k for k in other if k not in first]
    missing = [k for k in first if k not in other]
    changed = [f"{k}: {other[k]} instead of {first[k]}" for k in first if k in other and other[k] != first[k]]
    what = changed[:3] + [f"{k} that draw 1 lacks" for k in lacks[:3]] + [f"no {k}" for k in missing[:3]]
    raise ValueError(
        f"model_fn: expected every draw to have the architecture of the first (the same modules, parameter "
        f"and buffer shapes), got draw {draw} with {'; '.join(what)}"
    )


def _fingerprint(model: nn.Module) -> tuple[float, ...]:
    with torch.no_grad():
        return tuple(float(p.detach().sum(dtype=torch.float64)) for p in model.parameters())


def _outputs(model: nn.Module, x: Tensor, batch: int, name: str) -> Tensor:
    """The model's outputs (N, k) in float64, ``batch`` rows per forward pass."""
    parts = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            try:
                parts.append(model(x[i:i + batch]))
            except Exception as err:
                raise ValueError(f"{name}: the model failed on an input of shape {tuple(x[:1].shape)}: {err}") from err
    if not all(isinstance(p, Tensor) and p.ndim == 2 for p in parts):
        raise ValueError(f"model: expected an output of shape (N, k), got {describe(parts[0])}")
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"model: expected an output of shape (N, k) with N = {x.shape[0]}, got {describe(out)}")
    return out.to(torch.float64)


def _nngp_sample(f1: Tensor, f2: Tensor, mode: str) -> Tensor:
    if mode == "full":
        return f1[:, None, :, None] * f2[None, :, None, :]
    if mode == "diagonal":
        return f1[:, None, :] * f2[None, :, :]
    return f1 @ f2.T / f1.shape[1]


def _builder(model_fn: Any, reinit: Any, master: torch.Generator) -> Callable[[int], Any]:
    """``build(draw_seed)``: one network, drawn with torch's global generator seeded by ``draw_seed``."""
    if isinstance(model_fn, nn.Module):
        if reinit is not None and not callable(reinit):
            raise TypeError(f"reinit: expected a callable reinit(model, generator), got {describe(reinit)}")
        template = copy.deepcopy(model_fn)  # the caller's model is left as it is
        redraw = reinit if reinit is not None else _default_reinit
        ref = next(template.parameters(), None)
        device = torch.device("cpu") if ref is None else ref.device

        def from_template(draw_seed: int) -> Any:
            with _seeded_global_rng(draw_seed):
                redraw(template, torch.Generator(device=device).manual_seed(draw_seed))
            return template

        return from_template
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a function model_fn(generator) -> nn.Module or a model, "
                        f"got {describe(model_fn)}")
    if reinit is not None:
        raise ValueError("reinit: expected None with a function model_fn (it builds a fresh model from its "
                         f"generator), got {describe(reinit)}; pass a model to have it re-initialised")

    def from_function(draw_seed: int) -> Any:
        with _seeded_global_rng(draw_seed):
            return model_fn(torch.Generator(device=master.device).manual_seed(draw_seed))

    return from_function


def monte_carlo_kernel(
    model_fn: Callable[[torch.Generator], nn.Module] | nn.Module,
    x1: Any,
    x2: Any | None = None,
    *,
    n_samples: int | Sequence[int],
    which: str = "both",
    mode: str = "trace",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    reinit: Callable[[nn.Module, torch.Generator], None] | None = None,
    implementation: str = "auto",
    memory_budget: int | str | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
) -> MonteCarloKernel | list[MonteCarloKernel]:
    """Monte-Carlo NNGP / NTK of any model: empirical kernels averaged over ``n_samples`` random initialisations.

    Draw ``s`` gives a network ``f_s``; its NNGP sample is ``f_s(x1) f_s(x2)^T / k`` (per output, over
    the ``k`` outputs) and its NTK sample ``(1/k) sum_a Theta_aa`` (:func:`ntkit.empirical_ntk`,
    ``mode="trace"``), both of shape (N1, N2) -- the quantities :func:`ntkit.infinite_kernel`
    returns in the limit. The estimate is their mean and its standard error
    ``sqrt(sum_s (K_s - K_hat)^2 / (n (n - 1)))``, entry by entry; it converges to the expected
    kernel at the model's width (``O(1/width)`` from the infinite-width limit where that exists).
    Any torch model works -- max pooling, BatchNorm in eval mode, attention, custom layers -- as
    long as it maps (N, ...) to (N, k) row by row. Draws are streamed (one network at a time,
    float64 running sums): memory does not grow with ``n_samples``.

    Parameters
    ----------
    model_fn : callable or torch.nn.Module
        ``model_fn(generator) -> nn.Module``: builds a freshly initialised network from the
        ``torch.Generator`` it is given (e.g. ``lambda g: ntkit.nn.cntk(3, 4, generator=g).eval()``).
        Or a model: a copy of it is re-initialised for every draw by ``reinit`` (the model itself
        is left as it is). Each draw runs with torch's global generator seeded from the draw's seed
        (and restored afterwards), so layers that draw from it (``torch.nn.Linear``) are
        reproducible too. Every draw must have the architecture of the first (module types,
        parameter and buffer shapes), and BatchNorm / Dropout must be in eval mode.
    x1 : array-like of shape (N1, ...)
    x2 : array-like of shape (N2, ...), optional
        Same trailing shape as ``x1``; defaults to ``x1``.
    n_samples : int or increasing sequence of int
        Networks to average. A sequence ``[n_1 < n_2 < ...]`` returns the running estimates after
        ``n_1``, ``n_2``, ... draws from one pass of ``n_last`` draws (equal to separate calls with
        the same seed).
    which : {"both", "nngp", "ntk"}
        ``"nngp"`` needs forward passes only.
    mode : {"trace", "diagonal", "full"}
        ``"trace"``: (N1, N2) per-output kernels; ``"diagonal"``: each output's (N1, N2, k);
        ``"full"``: the blocks (N1, N2, k, k) (the NNGP's ``f_a(x1) f_b(x2)``).
    seed : int, optional
        Seed of a fresh CPU generator for the draws (default 0).
    generator : torch.Generator, optional
        Instead of ``seed``: the generator the draws' seeds come from (it advances).
    reinit : callable, optional
        ``reinit(model, generator)`` redraws a model's parameters in place (only with a model as
        ``model_fn``). Default: every module's ``reset_parameters(generator=...)`` where it takes a
        generator (the :mod:`ntkit.nn` layers), else its ``reset_parameters()`` or
        ``_reset_parameters()`` (torch's layers; BatchNorm's running statistics are reset too).
    implementation : {"auto", "jacobian", "ntvp", "structured", "fc"}
        The engine of :func:`ntkit.empirical_ntk`.
    memory_budget : int or str, optional
        Working memory of :func:`ntkit.empirical_ntk`'s tiles (default 1 GiB).
    batch_size : int
        Rows per forward pass of the NNGP's outputs.
    progress : bool
        A bar over the draws on stderr.

    Returns
    -------
    MonteCarloKernel or list of MonteCarloKernel
        One per entry of ``n_samples`` when it is a sequence; float64 estimates and standard errors.

    Raises
    ------
    TypeError
        ``model_fn`` neither a callable nor a module, or a draw that is not a ``torch.nn.Module``;
        ``n_samples``, ``seed``, ``generator``, ``reinit``, ``batch_size`` or ``progress`` of the
        wrong type; inputs that are not numeric arrays.
    ValueError
        ``n_samples`` below 1 or not increasing; ``seed`` and ``generator`` both given; ``reinit``
        with a function ``model_fn``; a draw with another architecture than the first, or the same
        parameters as the previous draw (a ``model_fn`` that ignores its randomness); BatchNorm or
        Dropout in training mode; a module with parameters and no ``reset_parameters`` (default
        ``reinit``); an unknown ``which``, ``mode`` or ``implementation``; inputs of different
        trailing shapes or that the model cannot take.

    Examples
    --------
    >>> import torch, ntkit
    >>> from torch import nn
    >>> def cnn(g):  # max pooling: no closed-form limit
    ...     return nn.Sequential(ntkit.nn.Conv2d(1, 16, 3, generator=g), nn.ReLU(), nn.MaxPool2d(2),
    ...                          ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(16, 1, generator=g))
    >>> x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    >>> mc = ntkit.monte_carlo_kernel(cnn, x, n_samples=[4, 32], seed=0)  # running estimates of one pass
    >>> [m.n_samples for m in mc], mc[-1].ntk.shape, mc[-1].ntk.dtype
    ([4, 32], torch.Size([4, 4]), torch.float64)
    >>> bool((mc[-1].ntk_stderr < mc[0].ntk_stderr).all())  # SE ~ 1 / sqrt(n)
    True
    """
    counts, single = _check_counts(n_samples)
    check_choice(which, "which", WHICH)
    check_choice(mode, "mode", MODES)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {describe(progress)}")
    master = _master_generator(generator, seed)
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    if memory_budget is not None:
        parse_memory_budget(memory_budget)
    build = _builder(model_fn, reinit, master)
    t1, t2 = check_pair(x1, x2, ndim=None)
    sums = {w: _Running() for w in (("nngp", "ntk") if which == "both" else (which,))}
    first: dict[str, str] | None = None
    previous: tuple[float, ...] | None = None
    results: list[MonteCarloKernel] = []
    bar = Progress(counts[-1], desc="Monte Carlo draws", enabled=progress)
    try:
        for draw in range(1, counts[-1] + 1):
            model = build(int(torch.randint(0, 2**62, (1,), generator=master, device=master.device)))
            if not isinstance(model, nn.Module):
                raise TypeError(f"model_fn: expected a function returning a torch.nn.Module, got {describe(model)} "
                                f"from draw {draw}")
            sig = _signature(model)
            if first is None:
                first = sig
            _compare(first, sig, draw)
            _check_eval_mode(model)
            stamp = _fingerprint(model)
            if stamp and stamp == previous:
                raise ValueError(f"model_fn: expected a fresh random initialisation at every draw, got draw {draw} "
                                 "with the parameters of the previous one (does model_fn use its generator, or "
                                 "reinit redraw them?)")
            previous = stamp
            _accumulate(model, t1, t2, sums, mode, implementation, memory_budget, batch_size)
            del model
            if draw in counts:
                results.append(_record(sums, draw))
            bar.update(1)
    finally:
        bar.close()
    return results[0] if single else results


def _accumulate(
    model: nn.Module, t1: Tensor, t2: Tensor | None, sums: dict[str, _Running], mode: str, implementation: str,
    memory_budget: int | str | None, batch_size: int,
) -> None:
    """Add one draw's kernels to the running sums."""
    ref = next(model.parameters(), None)
    if "nngp" in sums:
        dtype, device = (None, None) if ref is None else (ref.dtype, ref.device)
        f1 = _outputs(model, t1.to(dtype=dtype, device=device), batch_size, "x1")
        f2 = f1 if t2 is None else _outputs(model, t2.to(dtype=dtype, device=device), batch_size, "x2")
        sums["nngp"].add(_nngp_sample(f1, f2, mode))
        del f1, f2
    if "ntk" in sums:
        theta = empirical_ntk(model, t1, t2, mode=mode, implementation=implementation,
                              memory_budget=memory_budget, progress=False)
        sums["ntk"].add(theta)


def _record(sums: dict[str, _Running], n: int) -> MonteCarloKernel:
    got = {w: s.result() for w, s in sums.items()}
    nngp, ntk = got.get("nngp"), got.get("ntk")
    return MonteCarloKernel(
        nngp=None if nngp is None else nngp[0], ntk=None if ntk is None else ntk[0],
        nngp_stderr=None if nngp is None else nngp[1], ntk_stderr=None if ntk is None else ntk[1], n_samples=n,
    )


__all__ = ["MonteCarloKernel", "monte_carlo_kernel"]
