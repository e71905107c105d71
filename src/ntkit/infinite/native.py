"""Native layer loops: small C kernels compiled on first use, loaded with ctypes.

Four libraries (:data:`SOURCES`): ``"fc"``, the ABReLU layer loop of the fully connected fast path
(this module also holds its calls), ``"spatial"``, the convolutional kernels of
:mod:`ntkit.infinite.conv_fast`, ``"diag"``, the tile loop of :mod:`ntkit.infinite.diag_fast`
(convolutional programs without pooling, several pairs per vector), and ``"tokens"``, the token-pair
program of :mod:`ntkit.infinite.tokens_fast` (self-attention models).

The fused torch code of :mod:`ntkit.infinite.fused` makes about ten elementwise passes per layer
over each cache-sized strip of a tile, and on a CPU its per-call overhead is a large part of the
time. ``_fc_native.c`` runs all layers of the recursion for a block of 64 entries in registers
(one read of the Gram matrix, one write of each kernel), with the vector ``atan2`` / ``sqrt`` of
the C library (glibc's libmvec). On the 2-core machine this project is measured on it evaluates a
2,048 x 2,048 depth-3 ReLU NNGP + NTK tile 2.2x (float32) and 2.6x (float64) faster than the torch
path, Gram matrix included.

The kernel is compiled once per source, compiler and CPU with the system C compiler (``$CC``, else
``cc``/``gcc``) into a cache directory (``$NTKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ntkit``, else
``~/.cache/ntkit``), then checked against the torch path on a small tile. Without a compiler, on a
failed build or check, on other devices than the CPU, or with ``NTKIT_NATIVE=0`` in the
environment, :func:`library` returns None and the torch path is used: results agree to rounding
(about 1e-15 relative in float64), each path being bitwise tiling-invariant on its own.
:func:`status` says which path is active and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ntkit.activations.arccos import abrelu_constants

Tensor = torch.Tensor

#: Flags of the build; ``-ffp-contract=off`` keeps ``v1 v2 - c^2`` of a duplicated input exactly 0.
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared"]
#: Tried in order: the host's vector ISA first, then the compiler's default target.
TARGETS = [["-march=native"], []]
LIBS = ["-lmvec", "-lm"]

#: The native libraries: name -> C source file of this package.
SOURCES = {"fc": "_fc_native.c", "spatial": "_cntk_native.c", "diag": "_diag_native.c", "tokens": "_tokens_native.c"}

#: Re-entrant: a self-check may load another library (the "diag" check runs the "spatial" pair loop).
_lock = threading.RLock()
_states: dict[str, dict[str, Any]] = {
    name: {"loaded": False, "lib": None, "reason": "not loaded yet"} for name in SOURCES
}
_checks: dict[str, Callable[[], str]] = {}


def _enabled_by_env() -> bool:
    return os.environ.get("NTKIT_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _cache_dir() -> Path:
    env = os.environ.get("NTKIT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ntkit"


def _cpu_signature() -> str:
    """Machine and CPU feature flags (``-march=native`` code is specific to them)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()} {flags}"


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def _build(source: bytes, cc: str, stem: str = "fc_native") -> tuple[Path | None, str]:
    """Compile ``source`` into the cache (atomically); (path, "") or (None, why not)."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"{cc} --version failed: {err}"
    errors = []
    cpu = _cpu_signature().encode()
    user = os.getuid() if hasattr(os, "getuid") else 0
    caches = (_cache_dir(), Path(tempfile.gettempdir()) / f"ntkit-{user}")
    for target in TARGETS:
        key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS + target + LIBS).encode(), version.encode(), cpu]))
        for cache in caches:
            path = cache / f"{stem}_{key.hexdigest()[:24]}.so"
            if path.exists():
                return path, ""
            try:
                cache.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
                os.close(fd)
            except OSError:
                continue  # not writable: the next cache directory
            src = Path(tmp).with_suffix(".c")
            try:
                src.write_bytes(source)
                proc = subprocess.run(
                    [cc, *FLAGS, *target, "-o", tmp, str(src), *LIBS], capture_output=True, text=True, timeout=180
                )
                if proc.returncode == 0:
                    os.replace(tmp, path)  # another process may have won the race: same bytes
                    return path, ""
                errors.append(f"{' '.join(target) or 'default target'}: {proc.stderr.strip()[-300:]}")
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(str(err))
            finally:
                for p in (src, Path(tmp)):
                    if p.exists():
                        p.unlink()
            break
    return None, "; ".join(errors) or "no writable cache directory"


def _declare_fc(lib: ctypes.CDLL) -> None:
    P, I64, I, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for sfx in ("f32", "f64"):
        getattr(lib, f"ntk_abrelu_vars_{sfx}").argtypes = [P, I64, I, P]
        getattr(lib, f"ntk_abrelu_diag_{sfx}").argtypes = [P, I64, I, P, P, P]
        getattr(lib, f"ntk_abrelu_tile_{sfx}").argtypes = [
            P, I64, P, I64, I64, I64, I64, I, P, I64, P, I64, P, P, P, I, D, P,
        ]
        for name in ("vars", "diag", "tile"):
            getattr(lib, f"ntk_abrelu_{name}_{sfx}").restype = None


def _declare_spatial(lib: ctypes.CDLL) -> None:
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in ("f32", "f64"):
        fn = getattr(lib, f"ntk_spatial_pairs_{sfx}")
        fn.argtypes = [P, I, I, I, I, I64, P, P, P, P, P, I, I64, P, I64, P, P]
        fn.restype = I


def _declare_diag(lib: ctypes.CDLL) -> None:
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in ("f32", "f64"):
        fn = getattr(lib, f"ntk_diag_tile_{sfx}")
        fn.argtypes = [P, P, P, P, P, I64, I, I, I, I64, I64, I64, I, P, P, I, P, P, I64]
        fn.restype = I


def _declare_tokens(lib: ctypes.CDLL) -> None:
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for sfx in ("f32", "f64"):
        fn = getattr(lib, f"ntk_tokens_pairs_{sfx}")
        fn.argtypes = [P, P, I, P, P, I, ctypes.c_double, I, I64, P, P, P, P, P, I, P, I64, P, P]
        fn.restype = I


_DECLARE: dict[str, Callable[[ctypes.CDLL], None]] = {
    "fc": _declare_fc, "spatial": _declare_spatial, "diag": _declare_diag, "tokens": _declare_tokens,
}


def set_self_check(check: Callable[[], str], name: str = "fc") -> None:
    """Register the check run once after loading library ``name`` ("" means it passed).

    The module that holds the torch path a library replaces (:mod:`ntkit.infinite.fused`,
    :mod:`ntkit.infinite.conv_fast`) registers it when imported; this module does not import it.
    """
    _checks[name] = check


_LOCAL_INCLUDE = re.compile(rb'^#include "(_[A-Za-z0-9_]+\.h)"[ \t]*$', re.MULTILINE)


def read_source(filename: str) -> bytes:
    """The C source ``filename`` of this package with its local headers (``#include "_name.h"``) inlined.

    The build compiles one file and its cache key hashes these bytes, so a change to a shared header
    rebuilds every library that includes it.
    """
    root = resources.files("ntkit.infinite")
    source = root.joinpath(filename).read_bytes()
    return _LOCAL_INCLUDE.sub(lambda m: root.joinpath(m.group(1).decode()).read_bytes(), source)


def library(name: str = "fc") -> ctypes.CDLL | None:
    """The loaded native library ``name`` (see :data:`SOURCES`), or None when the torch path must be used."""
    if not _enabled_by_env():
        return None
    state = _states[name]
    if state["loaded"] or state.get("checker") == threading.get_ident():
        return state["lib"]  # (the thread running the self-check sees the library under test)
    with _lock:
        if state["loaded"]:
            return state["lib"]
        lib, reason = None, ""
        cc = _compiler()
        if cc is None:
            reason = "no C compiler found ($CC, cc, gcc, clang)"
        else:
            source = read_source(SOURCES[name])
            path, reason = _build(source, cc, stem=SOURCES[name].strip("_").removesuffix(".c"))
            if path is not None:
                try:
                    lib = ctypes.CDLL(str(path))
                    _DECLARE[name](lib)
                except (OSError, AttributeError) as err:
                    lib, reason = None, f"loading {path} failed: {err}"
        if lib is not None:
            state.update(lib=lib, checker=threading.get_ident())
            try:
                check = _checks.get(name)
                reason = check() if check is not None else ""
            finally:
                state["checker"] = None
            if reason:
                lib = None
        state.update(loaded=True, lib=lib, reason=reason)
        return lib


def status(name: str = "fc") -> str:
    """One line: whether library ``name`` runs natively, and why not.

    Loads (and on first use compiles) the library, as the first evaluation that needs it would.

    Parameters
    ----------
    name : {"fc", "spatial", "diag", "tokens"}
        ``"fc"``: the ABReLU layer loop of the fully connected fast path; ``"spatial"``: the
        convolutional kernels; ``"diag"``: their lane-parallel tile loop for programs without pooling;
        ``"tokens"``: the token-pair program of self-attention models (see :data:`SOURCES`).

    Returns
    -------
    str
        ``"native C kernel"``, or ``"torch path (<why>)"`` (no compiler, a failed build or self-check,
        ``NTKIT_NATIVE=0``).

    Examples
    --------
    >>> from ntkit.infinite import native
    >>> native.status("fc").startswith(("native C kernel", "torch path ("))
    True
    """
    if not _enabled_by_env():
        return "torch path (NTKIT_NATIVE=0)"
    lib = library(name)
    return "native C kernel" if lib is not None else f"torch path ({_states[name]['reason']})"


# --- calls ----------------------------------------------------------------------------------------

LANES = 64  # entries per block of the C code (vars2 is padded to a multiple of it)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _consts(spec: Any) -> Any:
    """The seven constants (k1, k2, b2, ka, kb, kc, ks) of ``_fc_native.c`` for an ABReLU spec.

    All but the bias variance ``b2`` come from :func:`ntkit.activations.arccos.abrelu_constants`
    (factored, scaled by ``w_std^2``): the C loop derives none itself.
    """
    k = abrelu_constants(spec.activation.a, spec.activation.b, spec.w_std**2, factored=True)
    return (ctypes.c_double * 7)(k.k1, k.k2, spec.beta**2, k.ka, k.kb, k.kc, k.ks)


def usable(*tensors: Tensor | None) -> bool:
    """Whether the native kernel can serve these tensors (CPU, float32/float64, unit column stride)."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
            return False
        if t.dim() == 2 and t.stride(1) != 1:
            return False
        if t.dim() == 1 and t.stride(0) != 1:
            return False
    return library() is not None


def _sfx(t: Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def layer_variances(v0: Tensor, spec: Any, *, pad: int = 1) -> Tensor:
    """Per-row variances feeding each layer: (max(depth, 1), n padded to ``pad``), row 0 = ``v0``.

    Padding columns hold 1 (a harmless value; never read back).
    """
    lib = library()
    assert lib is not None
    n = v0.shape[0]
    npad = -(-n // pad) * pad
    out = torch.ones(max(spec.depth, 1), npad, dtype=v0.dtype)
    out[0, :n] = v0
    getattr(lib, f"ntk_abrelu_vars_{_sfx(v0)}")(out.data_ptr(), npad, spec.depth, _consts(spec))
    return out


def abrelu_diag(v0: Tensor, spec: Any, *, ntk: bool) -> tuple[Tensor, Tensor | None]:
    """NNGP and NTK of the output on the diagonal from the layer-1 variances ``v0`` (n,)."""
    lib = library()
    assert lib is not None
    v0 = v0.contiguous()
    nngp = torch.empty_like(v0)
    th = torch.empty_like(v0) if ntk else None
    getattr(lib, f"ntk_abrelu_diag_{_sfx(v0)}")(v0.data_ptr(), v0.shape[0], spec.depth, _consts(spec),
                                                 nngp.data_ptr(), _ptr(th))
    return nngp, th


def abrelu_tile(
    nngp: Tensor, ntk: Tensor | None, rows: tuple[int, int], n2: int, *, upper: bool, vars1: Tensor, vars2: Tensor,
    dup: Tensor, id1: Tensor, id2: Tensor, spec: Any, scale_in: float,
) -> None:
    """Rows ``rows`` of a tile in place: ``nngp`` holds ``x1 . x2`` (unscaled) on entry, the NNGP on exit.

    Shapes: ``nngp``, ``ntk`` (t1, n2) with unit column stride; ``vars1`` (depth, t1) contiguous;
    ``vars2`` (depth, n2 padded to :data:`LANES`); ``dup`` uint8 (t1,); ``id1`` int64 (t1,),
    ``id2`` int64 (n2,). Releases the GIL (ctypes), so row ranges may run on several threads.
    """
    lib = library()
    assert lib is not None
    getattr(lib, f"ntk_abrelu_tile_{_sfx(nngp)}")(
        nngp.data_ptr(), nngp.stride(0), _ptr(ntk), 0 if ntk is None else ntk.stride(0), rows[0], rows[1], n2,
        int(upper), vars1.data_ptr(), vars1.stride(0), vars2.data_ptr(), vars2.stride(0), dup.data_ptr(),
        id1.data_ptr(), id2.data_ptr(), spec.depth, float(scale_in), _consts(spec),
    )


__all__ = ["LANES", "abrelu_diag", "abrelu_tile", "layer_variances", "library", "status", "usable"]
