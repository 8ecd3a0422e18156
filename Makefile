# Apipod Smart Proxy. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
# Python 3.12+: pyenv honours .python-version; otherwise the first python3.12/python3.
PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint screenshots bench bench-replicas soak replicas clean help

help:
	@echo "make run             start the proxy (creates .venv and .env on first use)"
	@echo "make test            lint and run the whole test suite"
	@echo "make screenshots     retake the dashboard screenshots (docs/*.png)"
	@echo "make bench           benchmark apipod against bare mitmdump (ARGS=--quick: short)"
	@echo "make bench-replicas  throughput of 1 vs 2 replicas behind HAProxy"
	@echo "make soak            200 streams + 2,000 requests while keys churn"
	@echo "make replicas N=2    run N replicas behind HAProxy on this host"

# $(call need,TOOL): install Debian's package TOOL when the command is missing.
need = command -v $(1) >/dev/null || { \
	  echo "make: $(1) not found, installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq $(1); \
	} || { \
	  echo "make: needs $(1) and could not install it (Debian/Ubuntu: sudo apt-get install $(1))" >&2; \
	  exit 1; \
	}

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

# curl runs the examples of README.md and docs/; wrk the bench smoke test, chromium the browser tests
# of the dashboard, HAProxy the many-replicas tests, npm (Debian's npm brings nodejs)
# the real-upstream tier; tests/support/real_upstream.py installs antigravity-claude-proxy
# and Codex CLI (pinned) and Claude Code from the npm registry into ~/.cache (each
# skipped without it, except chromium, HAProxy and npm under CI=true).
test: lint
	@$(call need,curl)
	-@$(call need,wrk)
	-@$(call need,chromium)
	-@$(call need,haproxy)
	-@$(call need,npm)
	$(BIN)/python -m tests.support.real_upstream
	$(BIN)/pytest

# Retake the screenshots of docs/operations.md (docs/*.png) with the dashboard's browser tests.
screenshots: $(VENV)/.installed-test
	@$(call need,chromium)
	SCREENSHOTS=docs $(BIN)/pytest -q tests/e2e/test_e2e_dashboard.py

# Needs wrk (and HAProxy for bench-replicas); as root they are installed when missing.
bench: $(VENV)/.installed-test
	@$(call need,wrk)
	$(BIN)/python -m bench.run $(ARGS)

bench-replicas: $(VENV)/.installed-test
	@$(call need,wrk)
	@$(call need,haproxy)
	$(BIN)/python -m bench.replicas $(ARGS)

# 200 SSE streams + 2,000 plain requests while keys churn; checks nothing is lost.
soak: $(VENV)/.installed-test
	$(BIN)/python -m bench.soak $(ARGS)

N ?= 2
replicas: $(VENV)/.installed .env
	scripts/replicas.sh $(N)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
