"""``ntkit kernel DATA [--arch TEXT | --model FILE.py | --depth N --activation NAME] --out FILE``: a kernel to disk.

The command takes what :func:`ntkit.compute.compute_kernel` takes: inputs of any shape
``(N, *input_shape)`` -- vectors ``(N, d)`` in ``.npy`` / ``.csv``, images ``(N, C, H, W)`` or signals
``(N, C, L)`` in ``.npy`` / ``.zarr`` (:func:`load_inputs`) -- and a model, given as architecture text
(``--arch``), as a Python file defining it (``--model``; :func:`kernel_model`) or, with neither, as the
fully connected network of ``--depth`` / ``--activation`` / ``--b-std`` / ``--w-std`` (vectors only).
Resumable (run the same command again after an interruption), with progress and an ETA; with
``--scheduler ADDRESS`` the tiles run on a Dask cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntkit.compute.api import compute_kernel
from ntkit.compute.tiling import DEFAULT_BUDGET
from ntkit.data import load_array
from ntkit.infinite import ArchitectureError
from ntkit.nn.arch_spec import load_arch

#: File suffixes :func:`load_inputs` reads.
INPUT_SUFFIXES = (".npy", ".zarr", ".csv")


def load_inputs(path: str | Path) -> np.ndarray:
    """Inputs ``(N, *input_shape)`` from a ``.npy`` file, a zarr array or a ``.csv`` file, as float64.

    Parameters
    ----------
    path : str or Path
        A ``.npy`` file or a ``.zarr`` array (needs ``zarr``: ``pip install 'ntkit[dask]'``) holding a
        numeric array whose first axis runs over the inputs -- ``(N, d)`` vectors, ``(N, C, H, W)``
        images, ``(N, C, L)`` signals; a 1-D array is read as ``N`` inputs of one feature -- or a
        ``.csv`` file of numbers, one input per row (read by :func:`ntkit.data.load_array`).

    Returns
    -------
    ndarray of shape (N, *input_shape), float64

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Another suffix, a non-numeric array, a non-finite entry (the message names the input and its
        index), an array without inputs, a ``.zarr`` path that is not a zarr array; for CSV as in
        :func:`ntkit.data.load_array`.
    ImportError
        A ``.zarr`` path without ``zarr`` installed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "images.npy"
    >>> np.save(path, np.zeros((5, 1, 8, 8), dtype=np.float32))
    >>> x = load_inputs(path)
    >>> x.shape, x.dtype
    ((5, 1, 8, 8), dtype('float64'))
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"data: expected a .npy, .zarr or .csv file, got {str(p)!r}")
    if not p.exists():
        raise FileNotFoundError(f"data: expected an existing .npy, .zarr or .csv file, got {str(p)!r} (not found)")
    if suffix == ".csv":
        return load_array(p)
    arr = np.load(p, allow_pickle=False) if suffix == ".npy" else _read_zarr(p)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{p}: expected a numeric array, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{p}: expected an array of inputs (N, *input_shape) with N >= 1, got shape {arr.shape}")
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ValueError(f"{p}: expected finite values, got {arr[index]} at input {index[0]} (index {index})")
    return arr


def _read_zarr(path: Path) -> np.ndarray:
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"data: reading {path} needs zarr: pip install 'ntkit[dask]'") from err
    try:
        array = zarr.open_array(str(path), mode="r")
    except (ValueError, OSError) as err:  # a group, an empty folder
        raise ValueError(f"{path}: expected a zarr array of inputs, got {type(err).__name__}: {err}") from None
    return np.asarray(array[...])


def kernel_model(
    input_shape: tuple[int, ...], *, arch: str | None = None, model: str | None = None, w_std: float = 1.0,
    b_std: float = 0.0,
) -> nn.Module | None:
    """The model that ``--arch`` or ``--model`` describes, for inputs of shape ``(N, *input_shape)``.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one input: ``(d,)``, ``(C, H, W)`` or ``(C, L)``.
    arch : str, optional
        Architecture text (:mod:`ntkit.nn.arch_spec`, e.g. ``"conv relu conv relu gap dense"``) or a
        ``.py`` file as for ``model``. Text is built at width 8 on the ``meta`` device (the
        NTK-parameterized limit does not depend on the width), with ``w_std`` and ``b_std`` as the
        weight layers' default scales.
    model : str, optional
        A ``.py`` file that defines ``model`` (a ``torch.nn.Module``, used as it is) or
        ``build(width, in_shape, out_features)`` (as ``ntkit converge --arch FILE.py`` takes it;
        called with width 8 and one output). ``w_std`` and ``b_std`` do not apply.
    w_std, b_std : float
        Default weight and bias scales of architecture text.

    Returns
    -------
    torch.nn.Module or None
        None when neither ``arch`` nor ``model`` is given: the caller's fully connected shortcut,
        which takes vectors only.

    Raises
    ------
    ValueError
        Both ``arch`` and ``model``; neither with inputs that are not vectors; a ``model`` path not
        ending in ``.py``; architecture text that cannot be read or does not fit ``input_shape``
        (from :mod:`ntkit.nn.arch_spec`); a file defining neither ``model`` nor ``build``.
    FileNotFoundError
        A ``.py`` file that does not exist.

    Examples
    --------
    >>> model = kernel_model((1, 8, 8), arch="conv relu conv relu gap dense")
    >>> [type(m).__name__ for m in model]
    ['Conv2d', 'Activation', 'Conv2d', 'Activation', 'GlobalAvgPool', 'Linear']
    >>> kernel_model((10,)) is None  # the fully connected --depth network
    True
    """
    if arch is not None and model is not None:
        raise ValueError(f"--arch and --model: expected one of them, got both ({arch!r} and {model!r})")
    if arch is None and model is None:
        if len(input_shape) != 1:
            raise ValueError(
                f"inputs of shape (N, {', '.join(map(str, input_shape))}) need a model: expected --arch TEXT "
                "(e.g. 'conv relu conv relu gap dense') or --model FILE.py; --depth / --activation describe a fully "
                "connected network on vectors (N, d)"
            )
        return None
    if model is not None and not model.strip().endswith(".py"):
        raise ValueError(f"--model: expected a .py file defining model or build(width, in_shape, out_features), "
                         f"got {model!r}")
    source = arch if arch is not None else model
    assert source is not None
    spec = load_arch(source, allow_model=True)
    # the widths do not matter in NTK parameterization: describe the text at width 8
    return spec.build(8, tuple(input_shape), 1, w_std=w_std, b_std=b_std, device="meta")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntkit kernel``."""
    parser.add_argument("data", metavar="DATA", help="inputs (N, *input_shape): .npy or .zarr array of vectors "
                        "(N, d), images (N, C, H, W) or signals (N, C, L); or a .csv file, one vector per row")
    parser.add_argument("--data2", help="second input file: the rectangular block K(DATA, DATA2)")
    parser.add_argument("--arch", help="architecture text (e.g. 'conv relu conv relu gap dense') or a .py file as "
                        "for --model; default: the fully connected --depth network (vectors only)")
    parser.add_argument("--model", metavar="FILE.py", help="a .py file defining model (a torch.nn.Module) or "
                        "build(width, in_shape, out_features); instead of --arch")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    parser.add_argument("--activation", default="relu", help="activation name (default relu)")
    parser.add_argument("--b-std", "--beta", dest="b_std", type=float, default=0.0,
                        help="bias scale (default 0; --beta is its former name)")
    parser.add_argument("--w-std", type=float, default=1.0, help="weight scale (default 1)")
    parser.add_argument("--which", default="both", choices=["both", "nngp", "ntk"],
                        help="kernels to write; both: a (2, N1, N2) array ordered nngp, ntk")
    parser.add_argument("--pairs", default="all", choices=["all", "diagonal"],
                        help="all pairs (default) or only the diagonal K(x_i, x_i)")
    parser.add_argument("--diag", action="store_true", help="the same as --pairs diagonal")
    parser.add_argument("--float32", action="store_true", help="float32 (default float64)")
    parser.add_argument("--out", required=True, help="output FILE ending in .npy or .zarr")
    parser.add_argument("--memory-budget", "--budget", dest="memory_budget", default=str(DEFAULT_BUDGET),
                        help="working memory, e.g. 512M or 2GiB (default 256M; --budget is its former name)")
    parser.add_argument("--tile", type=int, help="tile edge (a multiple of 128)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run ``ntkit kernel``; exit status 0 when the output is complete."""
    x1 = load_inputs(args.data)
    x2 = None if args.data2 is None else load_inputs(args.data2)
    shown = f"inputs of shape {x1.shape} from {args.data}"
    try:
        model = kernel_model(tuple(x1.shape[1:]), arch=args.arch, model=args.model, w_std=args.w_std,
                             b_std=args.b_std)
    except ValueError as err:  # both or neither option, text that cannot be read or does not fit the inputs
        if args.arch is not None and args.model is not None:
            raise
        raise ValueError(f"{shown if args.arch or args.model else args.data}: {err}") from None
    budget: int | str = int(args.memory_budget) if str(args.memory_budget).isdigit() else args.memory_budget
    network: dict[str, Any] = {} if model is not None else {
        "depth": args.depth, "activation": args.activation, "b_std": args.b_std, "w_std": args.w_std,
    }
    try:
        res = compute_kernel(
            model, x1, x2, **network,
            which=args.which, pairs="diagonal" if args.diag else args.pairs,
            dtype=torch.float32 if args.float32 else torch.float64,
            out=args.out, memory_budget=budget, tile=args.tile, scheduler=args.scheduler, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except ArchitectureError as err:  # the model does not fit the inputs, or has no infinite-width kernel
        described = args.arch or args.model or f"--depth {args.depth} --activation {args.activation}"
        raise ArchitectureError(f"{shown} and the model of {described}: {err}") from None
    except OSError as err:  # full disk, unreachable scheduler: a clear message, no trace
        print(f"ntkit kernel: error: {err}", file=sys.stderr)
        return 1
    resumed = res.tiles_total - res.tiles_computed
    print(
        f"wrote {res.path} ({args.which}, {res.tiles_computed} tiles computed"
        + (f", {resumed} already done" if resumed else "")
        + f", tile {res.tile}, {res.seconds:.1f} s)"
    )
    return 0
