# streamlens: `make run` and `make test` do all set-up on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint bench deps system-deps web-deps lock clean

system-deps:
	./scripts/install_system_deps.sh

# Exactly the locked versions (hash-checked), then the project itself without resolving anything.
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

deps: system-deps $(STAMP) web-deps

# hls.js for the viewer's HLS view (exact version and hashes: web/package-lock.json); skipped without npm
web-deps:
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix web --no-audit --no-fund --silent; \
	else echo "npm not found: the viewer's HLS view needs it (web/package.json); skipping"; fi

run: deps
	$(VENV)/bin/streamlens serve --host $(HOST) --port $(PORT)

# The suite runs twice: open mode, then with every role's token set (tests/conftest.py), so no
# feature works only without tokens.
test: deps lint
	./scripts/install_triton.sh  # .venv-triton: the real tritonserver the Triton tests start
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)
	STREAMLENS_TEST_TOKENS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

bench: deps
	HF_HUB_OFFLINE=1 $(PY) -m bench

# Refresh the lock on purpose, and commit it on its own.
lock:
	./scripts/lock.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy  # files and strictness: [tool.mypy] in pyproject.toml
