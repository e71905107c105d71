"""`import ntkit` pulls no optional extra, and the public API is what the README shows."""

from __future__ import annotations

import subprocess
import sys

import ntkit


def test_import_does_not_pull_optional_extras() -> None:
    code = (
        "import sys, ntkit, ntkit.cli; "
        "bad = [m for m in ('matplotlib', 'dask', 'distributed', 'sklearn', 'zarr', 'pandas') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_public_api() -> None:
    for name in ("fc_kernel", "empirical_ntk", "empirical_nngp", "FCNetwork", "Kernel", "get_activation"):
        assert name in ntkit.__all__ and hasattr(ntkit, name)
