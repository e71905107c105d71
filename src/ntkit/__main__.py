"""``python -m ntkit``: the ``ntkit`` command line (same as the ``ntkit`` console script)."""

import sys

from ntkit.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in tests/test_cli.py
    sys.exit(main())
