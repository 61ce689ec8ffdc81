#!/usr/bin/env bash
# Refresh requirements/lock.txt: every Python package `make run`/`make test` install, pinned with
# hashes, for CPython 3.11 on x86_64 Linux. Run on purpose (`make lock`) and commit the lock alone.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${LOCK_TOOLS_VENV:-.venv-lock}"
[ -x "$TOOLS/bin/uv" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet uv; }
"$TOOLS/bin/uv" pip compile pyproject.toml requirements/build.in --extra test --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --upgrade \
    -o requirements/lock.txt
