"""Test prerequisites that may be missing on a developer's machine but never in CI.

``needs_c_compiler()`` / ``needs_shared_data(path)`` return quietly when the prerequisite is there.
When it is missing they skip the calling test with a reason, except when the environment variable
``CI`` is ``true`` or ``1`` (GitHub Actions and most CI services set ``CI=true``): there they fail it,
naming what is missing and how to get it, so a CI job without a compiler or data cannot pass with
the tests that need them silently skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ntkit.infinite import native


def in_ci() -> bool:
    """Whether the environment variable ``CI`` is ``true`` or ``1`` (case-insensitive)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def missing(what: str, how: str) -> None:
    """Skip (locally) or fail (under ``CI=true``) because ``what`` is missing; ``how`` says how to get it."""
    if in_ci():
        pytest.fail(f"{what} (CI={os.environ.get('CI')}: this test must run here, not skip); {how}", pytrace=False)
    pytest.skip(f"{what}; {how}")


def needs_c_compiler() -> None:
    """The native C kernels need a compiler (``$CC``, ``cc``, ``gcc`` or ``clang`` on the PATH)."""
    if native._compiler() is None:
        missing(
            "no C compiler on this machine ($CC, cc, gcc or clang on the PATH): only the torch path exists here",
            "install one (e.g. apt-get install gcc, or xcode-select --install) or point $CC at it",
        )


def needs_shared_data(path: Path, *, what: str = "shared data") -> None:
    """``path`` (a file or folder of the shared data beside the checkout) must exist."""
    if not path.exists():
        missing(
            f"{what} not found at {path}",
            "put the shared data folder beside the checkout (../shared/data, see its README.md)",
        )
