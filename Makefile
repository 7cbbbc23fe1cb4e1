# slimmer: `make demo` runs the main job on a real torch environment, `make test` passes the tests.
# Slow things (environments, built wheels, base images) are cached outside the repository, under
# $(CACHE), keyed by version, so a second run reuses them.

SHELL := /bin/bash
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/slimmer-dev
TORCH_VERSION ?= 2.13.0
TORCH_ENV := $(CACHE)/envs/torch-$(TORCH_VERSION)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= /tmp/slimmer-demo

export SLIMMER_CACHE := $(CACHE)
export SLIMMER_TORCH_ENV := $(TORCH_ENV)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv envs demo test unit lint clean

help:
	@echo "make demo   - build a torch $(TORCH_VERSION) environment, slim a copy with --rules default, print the report"
	@echo "make test   - install what the tests need and run them"
	@echo "make lint   - ruff"

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]' 2>&1 | grep -v "^WARNING: Location 'file:" || true
	$(PY) -c "import slimmer, lief, pathspec, humanize, click, docker, pytest"
	touch $@

venv: $(VENV)/.done

$(TORCH_ENV)/.complete:
	PYTHON=$(PYTHON) fixtures/make_env.sh $(TORCH_ENV) torch==$(TORCH_VERSION)

envs: $(TORCH_ENV)/.complete

demo: venv envs
	rm -rf $(DEMO_DIR) && cp -a $(TORCH_ENV) $(DEMO_DIR)
	$(VENV)/bin/slimmer apply --rules default $(DEMO_DIR)
	$(DEMO_DIR)/bin/python fixtures/smoke.py

lint: venv
	$(VENV)/bin/ruff check slimmer tests
	$(VENV)/bin/ruff format --check slimmer tests

unit: venv
	$(PY) -m pytest -m "not torch and not docker and not slow"

test: venv envs
	$(VENV)/bin/ruff check slimmer tests
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
