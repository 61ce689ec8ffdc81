#!/usr/bin/env bash
# Refresh requirements.lock: every Python package `make run`/`make test` install, pinned with
# hashes, for CPython 3.11 on x86_64 Linux, and the Triton test server's venv (CPython 3.13).
# Run on purpose (`make lock`) and commit the lock alone.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${LOCK_TOOLS_VENV:-.venv-lock}"
[ -x "$TOOLS/bin/uv" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet uv; }
"$TOOLS/bin/uv" pip compile pyproject.toml requirements/build.in --extra test --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --upgrade \
    -o requirements.lock
# the Triton test server's own Python 3.13 virtualenv (scripts/install_triton.sh)
"$TOOLS/bin/uv" pip compile requirements/triton.in --generate-hashes \
    --python-version 3.13 --python-platform x86_64-manylinux_2_35 --no-header --upgrade \
    -o requirements/triton-lock.txt
