#!/usr/bin/env bash
# Build the documentation site into docs/_build/html: installs what it needs first (the `docs`
# extra into .venv), runs the gallery's examples, and treats every warning as an error (a broken
# cross-reference, a public name without a documented example, an example that raises).
# Extra arguments go to sphinx-build (./docs.sh -E: rebuild everything).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
NTKIT_EXTRAS="${NTKIT_DOCS_EXTRAS:-docs}" bash scripts/bootstrap.sh
venv="${NTKIT_VENV:-$root/.venv}"
# MathJax served by the site itself (readable offline); without npm the pages load it from its CDN
mathjax="docs/_build/mathjax"
if [ ! -f "$mathjax/node_modules/mathjax/es5/tex-svg.js" ] && command -v npm >/dev/null 2>&1; then
    npm install --silent --no-audit --no-fund --prefix "$mathjax" mathjax@3.2.2 >/dev/null 2>&1 \
        || echo "docs: could not install MathJax from npm; the pages will load it from its CDN" >&2
fi
start=$(date +%s)
"$venv/bin/python" -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
echo "docs: built docs/_build/html/index.html in $(( $(date +%s) - start )) s"
