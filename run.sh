#!/usr/bin/env bash
# Run the ntkit command line, installing what it needs first: ./run.sh converge  (./run.sh --help)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "${NTKIT_VENV:-$root/.venv}/bin/ntkit" "${@:-converge}"
