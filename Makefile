# Apipod Smart Proxy. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
# Python 3.12+: pyenv honours .python-version; otherwise the first python3.12/python3.
PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint unit e2e clean help

help:
	@echo "make run    start the proxy (creates .venv and .env on first use)"
	@echo "make test   lint and run the whole test suite"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.12+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 12) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The same install step as the Dockerfile's.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

.env: | $(VENV)/.installed
	$(BIN)/python -m apipod_proxy.serve init-env

run: $(VENV)/.installed .env
	$(BIN)/python -m apipod_proxy.serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
