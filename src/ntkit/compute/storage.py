"""Where kernel tiles go: memory, a ``.npy`` file, or a chunked zarr array, with a resume ledger.

An on-disk output ``PATH`` (``.npy`` or ``.zarr``) has a sidecar ``PATH.ledger``: a first line of
JSON holding the parameters (and their SHA-256 key), then one line ``I J`` per finished tile,
appended only *after* that tile's bytes were handed to the operating system. A run that is
killed leaves at worst a tile written without its line -- it is recomputed on restart -- or a
truncated last line, which is ignored. A restart with other parameters is refused.

Layout: one kernel gives an array of shape (N1, N2) (``(N,)`` for a diagonal); NNGP and NTK
together a stacked array of shape (2, N1, N2) in the order ``("nngp", "ntk")``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkit._io import write_text_atomic

Tensor = torch.Tensor

LEDGER_SUFFIX = ".ledger"


def params_key(params: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``params``."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def data_digest(x: Tensor) -> str:
    """SHA-256 of the bytes of ``x`` (after conversion to the computation dtype)."""
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def output_format(path: str | os.PathLike[str]) -> str:
    """``"npy"`` or ``"zarr"`` from the suffix of ``path`` (clear error for anything else)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix == ".zarr":
        return "zarr"
    raise ValueError(f"out: expected a path ending in .npy or .zarr, got {str(path)!r}")


class Ledger:
    """The completion ledger of an on-disk output (see the module docstring)."""

    def __init__(self, path: Path, header: dict[str, Any], done: set[tuple[int, int]]) -> None:
        self.path = path
        self.header = header
        self.done = done

    @staticmethod
    def read(path: Path) -> Ledger | None:
        """The ledger at ``path``, or None when there is none (or its header is unreadable)."""
        if not path.exists():
            return None
        lines = path.read_text().split("\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            return None
        done: set[tuple[int, int]] = set()
        for line in lines[1:]:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "ok" and parts[0].isdigit() and parts[1].isdigit():
                done.add((int(parts[0]), int(parts[1])))  # a half-written last line has no "ok"
        return Ledger(path, header, done)

    @staticmethod
    def create(path: Path, header: dict[str, Any]) -> Ledger:
        write_text_atomic(path, json.dumps(header, sort_keys=True) + "\n")
        return Ledger(path, header, set())

    def mark(self, tile: tuple[int, int]) -> None:
        """Record ``tile`` as finished (after its data were written)."""
        with self.path.open("a") as fh:
            fh.write(f"{tile[0]} {tile[1]} ok\n")
            fh.flush()
        self.done.add(tile)


def describe_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in keys[:6])


class Output:
    """Destination of the kernel values; ``write(index, rows, cols, block)``."""

    shape: tuple[int, ...]
    #: Whether ``write`` may be called from several threads at once for disjoint tiles.
    concurrent_writes: bool = False

    def write(self, k: int | None, rows: slice, cols: slice | None, block: np.ndarray | Tensor) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Hand everything written so far to the operating system."""

    def close(self) -> None:
        """Release file handles."""

    def result(self) -> Any:
        raise NotImplementedError


class MemoryOutput(Output):
    """A torch tensor in memory (the dtype / device of the computation)."""

    concurrent_writes = True

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.shape = shape
        self.array = torch.empty(shape, dtype=dtype, device=device)

    def write(self, k: int | None, rows: slice, cols: slice | None, block: np.ndarray | Tensor) -> None:
        target = self.array if k is None else self.array[k]
        t = torch.as_tensor(block, device=self.array.device)
        if cols is None:
            target[rows] = t
        else:
            target[rows, cols] = t

    def result(self) -> Tensor:
        return self.array


class NpyOutput(Output):
    """A ``.npy`` file written with ``os.pwrite`` (full disk: ``OSError``, never a SIGBUS).

    The file is created sparse with its final size; :func:`numpy.load` with ``mmap_mode="r"``
    reads it. Writing by ``pwrite`` keeps the written pages out of this process's RSS.
    """

    concurrent_writes = True  # positional writes of disjoint tiles

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], *, create: bool) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        if create:
            with path.open("wb") as fh:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
                )
                self.offset = fh.tell()
                fh.truncate(self.offset + int(np.prod(shape)) * self.dtype.itemsize)
        else:
            with path.open("rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                file_shape, fortran, file_dtype = read_header(fh)
                self.offset = fh.tell()
            if tuple(file_shape) != tuple(shape) or np.dtype(file_dtype) != self.dtype or fortran:
                raise ValueError(
                    f"out: expected {path} to hold a C-ordered {self.dtype} array of shape {shape}, "
                    f"got shape {tuple(file_shape)} and dtype {file_dtype}"
                )
        self.fd = os.open(path, os.O_RDWR)
        self.strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]

    def write(self, k: int | None, rows: slice, cols: slice | None, block: np.ndarray | Tensor) -> None:
        b = np.ascontiguousarray(block.cpu().numpy() if isinstance(block, torch.Tensor) else block, dtype=self.dtype)
        base = 0 if k is None else k * self.strides[0]
        item = self.dtype.itemsize
        if cols is None:  # a diagonal chunk: one contiguous run
            os.pwrite(self.fd, b.tobytes(), self.offset + (base + rows.start) * item)
            return
        n2 = self.shape[-1]
        if cols.start == 0 and cols.stop == n2:
            os.pwrite(self.fd, b.tobytes(), self.offset + (base + rows.start * n2) * item)
            return
        for r in range(b.shape[0]):
            os.pwrite(self.fd, b[r].tobytes(), self.offset + (base + (rows.start + r) * n2 + cols.start) * item)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def result(self) -> np.ndarray:
        self.close()
        return np.load(self.path, mmap_mode="r")


class ZarrOutput(Output):
    """A chunked zarr array (chunks = tiles); needs the ``dask`` extra (``pip install ntkit[dask]``)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], chunks: tuple[int, ...], *,
                 create: bool) -> None:
        try:
            import zarr
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("zarr output needs zarr: pip install 'ntkit[dask]'") from err
        self.shape = shape
        self.path = path
        if create:
            if hasattr(zarr, "create_array"):  # zarr 3
                self.array = zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=dtype,
                                               fill_value=0, overwrite=True)
            else:  # pragma: no cover - zarr 2
                self.array = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype,
                                             fill_value=0)
        else:
            self.array = zarr.open_array(str(path), mode="r+")
            if tuple(self.array.shape) != tuple(shape) or np.dtype(self.array.dtype) != np.dtype(dtype):
                raise ValueError(
                    f"out: expected {path} to hold a {np.dtype(dtype)} array of shape {shape}, "
                    f"got shape {tuple(self.array.shape)} and dtype {self.array.dtype}"
                )

    def write(self, k: int | None, rows: slice, cols: slice | None, block: np.ndarray | Tensor) -> None:
        b = block.cpu().numpy() if isinstance(block, torch.Tensor) else block
        index: tuple[Any, ...] = (rows,) if cols is None else (rows, cols)
        if k is not None:
            index = (k, *index)
        self.array[index] = b

    def result(self) -> Any:
        return self.array


def open_output(
    out: str | os.PathLike[str] | None,
    *,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    chunks: tuple[int, ...],
    params: dict[str, Any],
    tile: int,
    overwrite: bool,
) -> tuple[Output, Ledger | None, int]:
    """Open (create or resume) the output; returns ``(output, ledger, tile)``.

    On resume the tile edge of the existing output is reused (the ledger names tiles of it).
    """
    if out is None:
        return MemoryOutput(shape, dtype, device), None, tile
    path = Path(out)
    fmt = output_format(path)
    np_dtype = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    ledger_path = path.with_name(path.name + LEDGER_SUFFIX)
    key = params_key(params)
    ledger = None if overwrite else Ledger.read(ledger_path)
    if path.exists() and not overwrite:
        if ledger is None:
            raise ValueError(
                f"out: expected a new path or an ntkit output with its {LEDGER_SUFFIX} file, got existing "
                f"{str(path)!r} without one (pass overwrite=True / --overwrite to replace it)"
            )
        if ledger.header.get("key") != key:
            mismatch = describe_mismatch(ledger.header.get("params", {}), params)
            raise ValueError(
                f"out: {str(path)!r} exists with different parameters ({mismatch}); "
                "refusing to mix them -- choose another path or pass overwrite=True / --overwrite"
            )
        tile = int(ledger.header["tile"])
        output: Output = (
            NpyOutput(path, shape, np_dtype, create=False) if fmt == "npy"
            else ZarrOutput(path, shape, np_dtype, chunks, create=False)
        )
        return output, ledger, tile
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"out: expected an existing folder for {str(path)!r}, got none at {str(path.parent)!r}")
    if overwrite and path.exists():
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()
    # the ledger first: a run killed before the output exists leaves nothing that blocks a restart
    ledger = Ledger.create(ledger_path, {"key": key, "params": params, "tile": tile, "version": 1})
    output = (
        NpyOutput(path, shape, np_dtype, create=True) if fmt == "npy"
        else ZarrOutput(path, shape, np_dtype, chunks, create=True)
    )
    return output, ledger, tile
