#!/usr/bin/env bash
# The test command: installs what it needs, then lint (ruff), type check (mypy) and the test suite.
# Extra arguments go to pytest (./test.sh -k infinite). The heavy statistical tests (width sweeps,
# error-rate slopes; marked `slow`) are left out unless asked for: `./test.sh --all` runs every test,
# `./test.sh -m slow` only those. CI (.ci/run) runs `./test.sh`, then `./test.sh -m slow`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
bash scripts/bootstrap.sh
venv="${NTKIT_VENV:-$root/.venv}"
marker=(-m "not slow")
args=()
for arg in "$@"; do
    case "$arg" in
        --all) marker=() ;;
        -m | -m*) marker=(); args+=("$arg") ;;
        *) args+=("$arg") ;;
    esac
done
echo "== ruff" && "$venv/bin/ruff" check src tests benchmarks docs scripts
echo "== mypy" && "$venv/bin/mypy"
echo "== pytest"
"$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "${marker[@]}" "${args[@]}"
