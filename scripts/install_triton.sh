#!/usr/bin/env bash
# A separate Python 3.13 virtualenv with nvidia-pytriton, whose wheel ships `tritonserver`.
# The Triton tests and benchmark start a real tritonserver from it (CPU, a small Python model).
# Why 3.13 and not the project's venv: pytriton's Python backend bundles libpython 3.13; under
# another interpreter the model stub fails at start-up. pytriton needs numpy<2 (the backend stub
# reads numpy 1.x arrays; numpy 2 corrupts BYTES tensors), and numpy 1.26 has no 3.13 wheel, so
# pip builds it once from source (~10 min on 2 cores; pip's wheel cache makes later runs quick).
# Idempotent: does nothing when the venv already has pytriton. Needs only PyPI and a C compiler.
# Versions come from requirements/triton-lock.txt (hash-checked; `make lock` refreshes it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRITON_VENV:-.venv-triton}"
LOCK=requirements/triton-lock.txt

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pytriton" 2>/dev/null; then
    exit 0
fi

find_python313() {
    for candidate in "${PYTHON313:-}" python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 \
                     "$HOME"/.pyenv/versions/3.13*/bin/python3.13 /usr/bin/python3.13 /usr/local/bin/python3.13; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! PY313="$(find_python313)"; then
    # Debian trixie packages 3.13 (with venv); elsewhere install pyenv's 3.13 first.
    if command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -qq python3.13 python3.13-venv >/dev/null 2>&1 || true
    fi
    PY313="$(find_python313)" || { echo "install_triton.sh: no Python 3.13 found" >&2; exit 1; }
fi

rm -rf "$VENV"
"$PY313" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --require-hashes -r "$LOCK"
"$VENV/bin/python" -c "import pytriton; print('pytriton installed in $VENV')"
