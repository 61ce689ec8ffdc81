# streamlens: `make run` and `make test` do all set-up on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test bench deps system-deps clean

system-deps:
	./scripts/install_system_deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

deps: system-deps $(STAMP)

run: deps
	$(VENV)/bin/streamlens serve --host $(HOST) --port $(PORT)

test: deps
	./scripts/install_triton.sh  # .venv-triton: the real tritonserver the Triton tests start
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

bench: deps
	HF_HUB_OFFLINE=1 $(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
