"""Checks at the public edges of ntkit.

Every public function validates its inputs once, here, and raises a ``ValueError`` or ``TypeError``
whose message says what was expected and what was given. Internal code trusts its inputs.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages (type, shape, dtype)."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"ndarray of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def as_tensor(
    x: Any,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    ndim: int | None = 2,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Convert array-like ``x`` to a floating tensor and check its rank and finiteness.

    Parameters
    ----------
    x : tensor, ndarray or nested sequence of numbers
    name : str
        Used in error messages (``"x1"``).
    dtype : torch.dtype, optional
        Target floating dtype; defaults to ``x``'s own floating dtype, or float64 for
        integer / non-tensor input.
    ndim : int or None
        Required number of dimensions (``None`` accepts any rank >= 1).
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, (np.ndarray, Sequence)) and not isinstance(x, (str, bytes)):
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{name}: expected a numeric array, got {describe(x)} ({err})") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric array, got {describe(arr)}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {describe(x)}")
    if t.is_complex():
        raise TypeError(f"{name}: expected a real floating tensor, got {describe(t)}")
    if t.dtype == torch.bool:
        raise TypeError(f"{name}: expected a real floating tensor, got {describe(t)}")
    if dtype is not None:
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
        t = t.to(dtype)
    elif t.dtype not in _FLOAT_DTYPES:
        t = t.to(torch.float64)
    if device is not None:
        t = t.to(device)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got {describe(t)}")
    if ndim is None and t.ndim < 1:
        raise ValueError(f"{name}: expected an array with a batch dimension, got {describe(t)}")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array, got {describe(t)}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries in {describe(t)}")
    return t


def check_pair(
    x1: Any,
    x2: Any | None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    ndim: int | None = 2,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``x1`` and optional ``x2``: same trailing (feature) shape, same dtype/device."""
    t1 = as_tensor(x1, "x1", dtype=dtype, device=device, ndim=ndim)
    if x2 is None:
        return t1, None
    t2 = as_tensor(x2, "x2", dtype=t1.dtype, device=t1.device, ndim=ndim)
    if t1.shape[1:] != t2.shape[1:]:
        raise ValueError(
            "x1 and x2: expected the same feature shape, got "
            f"{tuple(t1.shape[1:])} for x1 and {tuple(t2.shape[1:])} for x2"
        )
    return t1, t2


def check_int(value: Any, name: str, *, minimum: int = 0) -> int:
    """Check that ``value`` is an integer >= ``minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_float(
    value: Any, name: str, *, minimum: float | None = None, strict: bool = False
) -> float:
    """Check that ``value`` is a finite real number, optionally ``>= minimum`` (``>`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {describe(value)}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if minimum is not None:
        if strict and v <= minimum:
            raise ValueError(f"{name}: expected a number > {minimum}, got {v}")
        if not strict and v < minimum:
            raise ValueError(f"{name}: expected a number >= {minimum}, got {v}")
    return v


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


#: Units of a memory budget given as a string, all binary: "512M" = "512MB" = "512MiB" = 512 * 2**20 bytes.
_MEMORY_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}


def parse_memory_budget(value: Any, name: str = "memory_budget") -> int:
    """A memory budget in bytes, from a positive number of bytes or a string such as ``"512M"``.

    The one parser of every memory keyword in ntkit. Strings are a number and an optional binary
    unit, case-insensitive, with or without a space: ``"512M"``, ``"512 MB"``, ``"2GiB"``, ``"1.5G"``,
    ``"4096"`` (``K``/``M``/``G``/``T`` are powers of 1024 with or without ``B`` / ``iB``).

    Raises
    ------
    TypeError
        If ``value`` is neither a number nor a string (a bool is refused).
    ValueError
        If the string cannot be read, or the budget is not a positive finite number of bytes.

    Examples
    --------
    >>> parse_memory_budget("512M"), parse_memory_budget("2 GiB"), parse_memory_budget("1.5g")
    (536870912, 2147483648, 1610612736)
    >>> parse_memory_budget(4096)
    4096
    """
    expected = "a positive number of bytes or a string such as '512M', '2GiB' or '1.5G'"
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.integer, np.floating)):
        raise TypeError(f"{name}: expected {expected}, got {describe(value)}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if m is None or m.group(2).lower() not in _MEMORY_UNITS:
            raise ValueError(f"{name}: expected {expected}, got {value!r}")
        number = float(m.group(1)) * _MEMORY_UNITS[m.group(2).lower()]
    else:
        number = float(value)
    if not math.isfinite(number) or number < 1:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(number)


def renamed_keyword(new_value: Any, old_value: Any, *, new: str, old: str, default: Any, stacklevel: int = 3) -> Any:
    """The value of a renamed keyword argument, the old spelling kept as a deprecated alias.

    The one rule of every rename in ntkit: a function keeps ``old=None`` beside ``new=default``;
    when the caller passes the old spelling it is used, with a ``DeprecationWarning``
    ``"{old} is deprecated; use {new}"`` that points at the caller. Python's default filters show it
    once per calling location; no state is kept here.

    Parameters
    ----------
    new_value : Any
        The value passed under the new name (``default`` when not passed).
    old_value : Any
        The value passed under the old name, ``None`` when not passed.
    new, old : str
        The two names, for the messages.
    default : Any
        The new keyword's default: with ``old_value`` given, ``new_value`` must still be it.
    stacklevel : int
        As in :func:`warnings.warn`, counted from this helper (1): the default 3 points at the caller of
        the function that calls the helper; one more for each function in between.

    Returns
    -------
    Any
        ``new_value``, or ``old_value`` when it was given.

    Raises
    ------
    TypeError
        Both spellings were given (the new one not at its default).

    Examples
    --------
    >>> renamed_keyword(0.1, None, new="b_std", old="beta", default=0.0)
    0.1
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     renamed_keyword(0.0, 0.3, new="b_std", old="beta", default=0.0)
    0.3
    >>> str(caught[0].message)
    'beta is deprecated; use b_std'
    """
    if old_value is None:
        return new_value
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=stacklevel)
    if new_value is not default:
        try:
            differs = bool(new_value != default)
        except Exception:  # an array-like new value: given
            differs = True
        if differs:
            raise TypeError(f"{new}, {old}: expected one of them, got both ({old} is a deprecated alias of {new})")
    return old_value


def check_dtype(dtype: Any) -> torch.dtype:
    """Check that ``dtype`` is a floating torch dtype."""
    if not isinstance(dtype, torch.dtype) or dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype: expected a floating torch dtype such as torch.float64, got {dtype!r}")
    return dtype
