#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything the README's
# commands need. Idempotent and quick when nothing changed.
#
# torch: an existing torch is kept (also one you installed into .venv yourself). Otherwise a
# machine with an NVIDIA driver gets PyPI's default (CUDA) build, and any other machine the CPU
# build, which avoids a multi-GB CUDA download where it cannot be used.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${NTKIT_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="${NTKIT_EXTRAS:-test,plot}"
torch_version="${NTKIT_TORCH_VERSION:-2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import sys; assert sys.version_info >= (3, 10), "ntkit needs Python >= 3.10, got " + sys.version' \
        || exit 1
    echo "bootstrap: creating $venv" >&2
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)

if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        echo "bootstrap: NVIDIA GPU found, installing torch==$torch_version (CUDA build)" >&2
        "${pip[@]}" "torch==$torch_version"
    else
        echo "bootstrap: no GPU, installing the CPU build torch==$torch_version+cpu" >&2
        "${pip[@]}" "torch==$torch_version+cpu" numpy --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 \
            | grep -v -e "is ignored: it is neither" -e "Retrying (Retry" >&2 || true
        "$py" -c 'import torch' || { echo "bootstrap: torch installation failed" >&2; exit 1; }
    fi
fi

# one stamp per set of extras, so that ./test.sh (test,plot) and ./docs.sh (docs) do not reinstall
# each other's; a changed pyproject.toml reinstalls
stamp="$venv/.ntkit-installed-${extras//,/-}"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing ntkit[$extras] into $venv" >&2
    "${pip[@]}" -e ".[$extras]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
    "$py" -c 'import ntkit' || { echo "bootstrap: ntkit installation failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi

# Fashion-MNIST for `ntkit bench fashion` (and a test that uses it when present): Debian's
# dataset-fashion-mnist package, installed where it is missing and apt can (root, or password-less
# sudo); otherwise a note says how. NTKIT_NO_APT=1 skips this. Nothing is downloaded at run time.
fashion="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
if [ ! -f "$fashion" ] && [ "${NTKIT_NO_APT:-0}" != "1" ]; then
    hint="bootstrap: Fashion-MNIST is not installed; \`apt-get install dataset-fashion-mnist\` (Debian / Ubuntu), or give \`ntkit bench fashion --data-dir DIR\` a folder with the four idx .gz files"
    apt=()
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" = "0" ]; then apt=(apt-get); elif sudo -n true >/dev/null 2>&1; then apt=(sudo -n apt-get); fi
    fi
    if [ "${#apt[@]}" -gt 0 ]; then
        echo "bootstrap: installing dataset-fashion-mnist (apt)" >&2
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || echo "$hint (apt-get install failed here)" >&2
    else
        echo "$hint" >&2
    fi
fi
