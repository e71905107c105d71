#!/usr/bin/env bash
# The test command: installs what it needs, then lint (ruff), type check (mypy) and the test suite.
# Extra arguments go to pytest (./test.sh -k infinite).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
bash scripts/bootstrap.sh
venv="${NTKIT_VENV:-$root/.venv}"
echo "== ruff" && "$venv/bin/ruff" check src tests benchmarks docs
echo "== mypy" && "$venv/bin/mypy"
echo "== pytest"
"$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "$@"
