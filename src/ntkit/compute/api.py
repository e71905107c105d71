"""``compute_kernel``: tiled, fused, resumable and optionally distributed analytic kernels.

The deprecated data-first call form is read by :mod:`ntkit.compute.legacy`; tiles run here on threads
and are written into the output by :mod:`ntkit.compute.local` (whose names this module re-exports), or on
Dask by :mod:`ntkit.compute.distributed`.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ntkit._progress import Progress
from ntkit._validation import check_choice, check_dtype, parse_memory_budget, renamed_keyword
from ntkit.activations import get_activation
from ntkit.compute.distributed import get_client, run_on_dask
from ntkit.compute.legacy import _model_first
from ntkit.compute.local import _check_threads, run_threaded, write_tile
from ntkit.compute.sizing import size_tiles
from ntkit.compute.storage import Ledger, data_digest, open_output
from ntkit.compute.tile_task import TileTask, run_tile
from ntkit.compute.tiling import DEFAULT_BUDGET, TilePlan
from ntkit.graphs import split_graphs
from ntkit.infinite.tiles import KernelTiles, PreparedPair
from ntkit.infinite.walk import Architecture, describe_model, fc_model

Tensor = torch.Tensor

_WHICH = {"both": ("nngp", "ntk"), "nngp": ("nngp",), "ntk": ("ntk",)}


@dataclass
class KernelResult:
    """What :func:`compute_kernel` produced.

    Attributes
    ----------
    nngp, ntk : Tensor, numpy memmap, zarr array or None
        The requested kernels, shape (N1, N2) (or (N,) for ``diag=True``): torch tensors in memory
        mode, read-only views of the file otherwise; None when not requested.
    path : str or None
        The output file (``.npy`` or ``.zarr``); its ledger is ``path + ".ledger"``.
    tile : int
        Tile edge used.
    tiles_total, tiles_computed : int
        Tiles of the plan, and those evaluated by this call (the rest were already done).
    seconds : float
        Wall-clock time of the call.
    params : dict
        What keys the output (model description, ``which``, ``diag``, dtype, shape, and for an output
        on disk the SHA-256 digests of the inputs): an existing output with other parameters is
        refused, not resumed.

    Examples
    --------
    >>> import torch
    >>> from ntkit.compute import compute_kernel
    >>> res = compute_kernel(None, torch.eye(3, dtype=torch.float64), depth=1, which="nngp")
    >>> res.nngp.shape, res.ntk, res.path, res.tiles_computed == res.tiles_total
    (torch.Size([3, 3]), None, None, True)
    """

    nngp: Any
    ntk: Any
    path: str | None
    tile: int
    tiles_total: int
    tiles_computed: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


def compute_kernel(
    model: Any = None,
    x1: Any = None,
    x2: Any | None = None,
    /,
    *,
    depth: int | None = None,
    activation: Any = "relu",
    b_std: float = 0.0,
    w_std: float = 1.0,
    which: str = "both",
    pairs: str = "all",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    out: str | os.PathLike[str] | None = None,
    memory_budget: int | str = DEFAULT_BUDGET,
    tile: int | None = None,
    scheduler: Any = None,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    beta: float | None = None,
    budget: int | str | None = None,
    diag: bool | None = None,
    **legacy: Any,
) -> KernelResult:
    """Infinite-width NNGP / NTK of a model, tiled, on disk or on Dask (:func:`ntkit.infinite_kernel` at scale).

    The kernel matrix is cut into tiles (:mod:`ntkit.compute.tiling`) whose working memory fits
    ``budget``; each tile is evaluated by the architecture's :class:`~ntkit.infinite.tiles.KernelTiles`
    (the fused fully connected recursion and its native loop where the model is that pattern --
    Jacot et al. 2018; Lee et al. 2018; closed forms of Cho & Saul 2009 and Williams 1997 --, the
    reference evaluator otherwise), and is written to memory, a ``.npy`` file or a zarr array. On disk
    the run is resumable: called again with the same arguments it evaluates only the tiles missing
    from the ledger. On the fused path results do not depend on the tiling nor on where tiles ran
    (bitwise); on the reference path they agree to rounding.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (see :func:`ntkit.infinite_kernel`); may live on the ``meta`` device.
        (Deprecated: the data-first form ``compute_kernel(x1, x2, model=...)`` or
        ``compute_kernel(x1, depth=...)`` still works, with a ``DeprecationWarning``.)
    x1 : array-like of shape (N1, *input_shape), or ntkit.Graphs
        Vectors ``(N1, d)`` or images ``(N1, C, H, W)`` / ``(N1, C, L)``; graphs :class:`ntkit.Graphs`
        ``(x, adjacency)`` for a model with :class:`ntkit.nn.Aggregate` (tiles cut both together).
    x2 : array-like of shape (N2, *input_shape), or ntkit.Graphs, optional
        Defaults to ``x1`` (then only the upper half of the tiles is evaluated and mirrored).
    depth, activation, b_std, w_std
        Instead of ``model`` (pass ``None`` first): the fully connected network of :func:`ntkit.nn.fc`.
    which : {"both", "nngp", "ntk"}
    pairs : {"all", "diagonal"}
        ``"diagonal"``: only ``K(x_i, x_i)`` (shape (N1,)); needs ``x2`` None (as ``pairs`` of
        :func:`ntkit.empirical_ntk`).
    dtype : torch.dtype
        float64 (reference) or float32.
    out : path ending in .npy or .zarr, optional
        None keeps the result in memory (peak memory: the result plus ``memory_budget``).
    memory_budget : int or str
        Working memory per tile in bytes (``"512M"``, ``"2GiB"`` accepted); at least one tile row. A pair of
        images costs ``8 x pixels^2`` entries on a pooled convolutional network (``8 x pixels`` with a
        flattening read-out): tiles shrink so that it fits, and a budget below one pair is an error.
    tile : int, optional
        Tile edge (a multiple of 128 for vector inputs); by default the largest that fits ``budget``
        (at most 1024).
    scheduler : dask.distributed.Client or str, optional
        A client or a scheduler address: tiles run on its workers, results are gathered here.
    overwrite : bool
        Replace an existing output instead of resuming it.
    progress : bool
        Progress with ETA on stderr.
    threads : int, optional
        Tiles evaluated at once on CPU (default ``torch.get_num_threads()``), each by
        single-threaded operations: unlike multi-threaded elementwise operations this keeps its
        speed on a loaded machine. Results do not depend on it.
    beta, budget, diag
        Deprecated spellings of ``b_std``, ``memory_budget`` and ``pairs="diagonal"``.

    Returns
    -------
    KernelResult

    Raises
    ------
    ValueError
        Bad arguments, a model without an infinite-width kernel (the message names the module), a
        budget below one tile row, an existing output with other parameters.
    OSError
        Writing failed (e.g. a full disk): the finished tiles stay recorded, rerun to resume.
    ConnectionError
        The scheduler cannot be reached.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.compute import compute_kernel
    >>> x = torch.randn(300, 10, dtype=torch.float64)
    >>> res = compute_kernel(ntkit.nn.fc(10, depth=3, device="meta"), x, tile=128)
    >>> res.ntk.shape, res.tiles_total
    (torch.Size([300, 300]), 6)
    """
    start = time.perf_counter()
    model, x1, x2 = _model_first(model, x1, x2, legacy, shortcut=depth is not None)
    b_std = renamed_keyword(b_std, beta, new="b_std", old="beta", default=0.0)
    memory_budget = renamed_keyword(memory_budget, budget, new="memory_budget", old="budget", default=DEFAULT_BUDGET)
    if diag is not None:
        if not isinstance(diag, bool):
            raise TypeError(f"diag: expected a bool, got {type(diag).__name__}")
        pairs = renamed_keyword(pairs, "diagonal" if diag else "all", new="pairs", old="diag", default="all")
    check_choice(pairs, "pairs", ("all", "diagonal"))
    diagonal = pairs == "diagonal"
    check_choice(which, "which", tuple(_WHICH))
    wanted = _WHICH[which]
    check_dtype(dtype)
    t1, t2, adj1, adj2 = split_graphs(x1, x2, dtype=dtype, device=device)
    if diagonal and t2 is not None:
        raise ValueError("pairs: expected x2 = None with 'diagonal' (the diagonal of K(x1, x1)), got an x2")
    t2 = distinct_x2(t1, t2, (adj1, adj2))
    arch = architecture(model, tuple(t1.shape[1:]), depth=depth, activation=activation, b_std=b_std, w_std=w_std)
    check_ntk(arch, wanted)
    tiles = KernelTiles.of(arch)
    described = arch.describe() if model is not None else {
        "depth": depth, "activation": repr(get_activation(activation)), "beta": b_std, "w_std": w_std,
    }  # the shortcut keeps the parameters of the fully connected network (and its older ledgers)
    pair = tiles.prepare_pair(t1, t2, (adj1, adj2))
    return evaluate_tiles(tiles, pair, wanted, diag=diagonal, out=out, budget=memory_budget, tile=tile,
                          scheduler=scheduler, overwrite=overwrite, progress=progress, threads=threads,
                          described=described, start=start)


def distinct_x2(
    t1: Tensor, t2: Tensor | None, adjacency: tuple[Tensor | None, Tensor | None] = (None, None)
) -> Tensor | None:
    """``t2``, or None when it equals ``t1`` (``K(x, x)`` is then evaluated as the exactly symmetric kernel); for
    graphs (:class:`ntkit.Graphs`) their ``adjacency`` must be equal too."""
    a1, a2 = adjacency
    if a1 is not None and a2 is not None and not (a1.shape == a2.shape and torch.equal(a1, a2)):
        return t2
    if t2 is not None and t2.shape == t1.shape and torch.equal(t1, t2):
        return None
    return t2


def check_ntk(arch: Architecture, wanted: tuple[str, ...]) -> None:
    """Refuse an NTK that the architecture does not define (an activation without a derivative map)."""
    if "ntk" in wanted and not arch.has_ntk:
        raise ValueError("which: the NTK of this model is undefined (an activation has no derivative map, e.g. "
                         "step or sign); use 'nngp'")


def evaluate_tiles(
    tiles: KernelTiles, rows: PreparedPair, wanted: tuple[str, ...], *, diag: bool = False,
    out: str | os.PathLike[str] | None = None, budget: int | str = DEFAULT_BUDGET, tile: int | None = None,
    scheduler: Any = None, overwrite: bool = False, progress: bool = False, threads: int | None = None,
    described: dict[str, Any] | None = None, start: float | None = None,
) -> KernelResult:
    """The tiled evaluation behind :func:`compute_kernel`, for inputs already validated and prepared.

    Sizes the tiles (:func:`ntkit.compute.sizing.size_tiles`), opens the output, evaluates the tiles
    missing from its ledger (locally or on the Dask ``scheduler``) and returns the result. The inputs
    are hashed (SHA-256, the key of a resumable output) only when ``out`` is a path.
    """
    start = time.perf_counter() if start is None else start
    t1 = rows.x1
    n1, n2 = t1.shape[0], (t1 if rows.x2 is None else rows.x2).shape[0]
    budget_bytes = parse_memory_budget(budget)
    threads = _check_threads(threads, t1.device)
    edge, threads = size_tiles(tiles, t1, n1, n2, budget=budget_bytes, threads=threads, tile=tile, diag=diag)
    client, owned = None, False
    if scheduler is not None:  # connect first: an unreachable scheduler must not leave a new output behind
        client, owned = get_client(scheduler)
    try:
        return _run(tiles, rows, wanted, diag, out, edge, overwrite, client, progress, threads, described, start)
    finally:
        if owned and client is not None:
            client.close()


def _run(
    tiles: KernelTiles, rows: PreparedPair, wanted: tuple[str, ...], diag: bool, out: str | os.PathLike[str] | None,
    edge: int, overwrite: bool, client: Any, progress: bool, threads: int, described: dict[str, Any] | None,
    start: float,
) -> KernelResult:
    t1 = rows.x1
    n1, n2 = t1.shape[0], (t1 if rows.x2 is None else rows.x2).shape[0]
    k = len(wanted)
    base_shape: tuple[int, ...] = (n1,) if diag else (n1, n2)
    shape = base_shape if k == 1 else (k, *base_shape)
    params: dict[str, Any] = {
        **(described or {}), "which": list(wanted), "diag": diag, "dtype": str(t1.dtype), "shape": list(shape),
    }
    if out is not None:  # the digests key the resumable output: an in-memory result needs none
        params["x1"] = data_digest(t1)
        params["x2"] = None if rows.x2 is None else data_digest(rows.x2)
        if rows.rows1.adjacency is not None:  # graphs: their adjacencies too
            params["adjacency"] = [data_digest(r.adjacency) for r in (rows.rows1, rows.rows2)
                                   if r.adjacency is not None]
    chunks_2d = (edge,) if diag else (edge, edge)
    chunks = chunks_2d if k == 1 else (1, *chunks_2d)
    output, ledger, edge = open_output(
        out, shape=shape, dtype=t1.dtype, device=t1.device, chunks=chunks, params=params, tile=edge,
        overwrite=overwrite,
    )
    plan = TilePlan(n1=n1, n2=n2, tile=edge, symmetric=rows.x2 is None and not diag, diag=diag)
    done = set() if ledger is None else ledger.done
    todo = [t for t in plan.tiles() if t not in done]
    task = TileTask(tiles, rows.rows1, rows.rows2, rows.ids1, rows.ids2, wanted, plan)
    bar = Progress(len(todo), desc=f"kernel {n1}x{n2} tiles", enabled=progress)
    if len(done):
        bar.note = f"(resumed: {len(done)} of {len(plan)} tiles already done)"

    def store(i: int, j: int, block: Any) -> None:
        try:
            write_tile(output, plan, wanted, i, j, block)
        except OSError as err:
            n_done = len(ledger.done) if ledger is not None else 0
            reason = "the disk is full" if err.errno == errno.ENOSPC else "writing failed"
            raise OSError(
                err.errno,
                f"out: {reason} while writing tile ({i}, {j}) to {out} ({err.strerror or err}); "
                f"{n_done} finished tiles are kept in {out}.ledger -- free space and run again to resume",
            ) from err

    def record(i: int, j: int) -> None:
        output.flush()
        if ledger is not None:
            ledger.mark((i, j))  # only once the tile is wholly written
        bar.update(1)

    def finish(i: int, j: int, block: Any) -> None:
        if block is not None:
            store(i, j, block)
        record(i, j)

    try:
        if client is not None and todo:
            run_on_dask(client, task, todo, finish)
        else:
            run_threaded(task, todo, finish, threads, store=store if output.concurrent_writes else None)
    except OSError:
        output.close()
        raise
    finally:
        if progress:
            bar.close()
    result = output.result()
    views = {w: (result if k == 1 else result[n]) for n, w in enumerate(wanted)}
    output.close()
    return KernelResult(
        nngp=views.get("nngp"), ntk=views.get("ntk"), path=None if out is None else str(out), tile=edge,
        tiles_total=len(plan), tiles_computed=len(todo), seconds=time.perf_counter() - start, params=params,
    )


__all__ = [
    "KernelResult", "Ledger", "TileTask", "architecture", "check_ntk", "compute_kernel", "distinct_x2",
    "evaluate_tiles", "run_threaded", "run_tile", "write_tile",
]


def architecture(
    model: nn.Module | None, input_shape: tuple[int, ...], *, depth: int | None = None, activation: Any = "relu",
    b_std: float = 0.0, w_std: float = 1.0,
) -> Architecture:
    """The :class:`Architecture` of ``model``, or of the fully connected shortcut ``depth, activation, b_std, w_std``.

    Parameters
    ----------
    model : torch.nn.Module or None
        The architecture (see :func:`ntkit.infinite_kernel`); may live on the ``meta`` device. None
        for the shortcut.
    input_shape : tuple of int
        Shape of one input example: ``(d,)`` for vectors (the only shape of the shortcut), ``(C, *S)``
        for images.
    depth, activation, b_std, w_std
        Instead of ``model``: the fully connected network of :func:`ntkit.nn.fc` with ``depth`` hidden
        layers.

    Returns
    -------
    Architecture

    Raises
    ------
    ValueError
        Both or neither of ``model`` and ``depth`` given; the shortcut with inputs that are not
        vectors; ``depth < 0``, ``b_std < 0``, ``w_std <= 0`` or an unknown activation name; a model
        without a kernel transform or that does not fit ``input_shape`` (an
        :class:`~ntkit.infinite.ArchitectureError`).
    TypeError
        ``model`` is not a ``torch.nn.Module``; a ``depth``, ``b_std``, ``w_std`` or
        ``activation`` of the wrong type.

    Examples
    --------
    >>> import ntkit
    >>> from ntkit.compute import architecture
    >>> arch = architecture(None, (3,), depth=2)  # Linear, ReLU, Linear, ReLU, Linear
    >>> len(arch.ops), arch.input_mode, arch.degree
    (5, 'none', 1)
    >>> architecture(ntkit.nn.cntk(1, depth=2, device="meta"), (1, 4, 4)).pair_entries  # 16 pixels, squared
    256
    """
    if model is not None and depth is not None:
        raise ValueError("model and depth: expected one of them (depth, activation, b_std and w_std describe the "
                         "fully connected model of ntkit.nn.fc), got both")
    if model is None:
        if depth is None:
            raise ValueError("model: expected a model (e.g. built from ntkit.nn) or the fully connected shortcut "
                             "depth=..., got neither")
        if len(input_shape) != 1:
            raise ValueError(f"x1: expected vectors (N, d) for the fully connected shortcut (depth=...), got inputs "
                             f"of shape (N, {', '.join(map(str, input_shape))}); pass model= for images")
        model = fc_model(input_shape[0], depth=depth, activation=activation, b_std=b_std, w_std=w_std)
    return describe_model(model, input_shape)
