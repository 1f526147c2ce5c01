# ketapredict — every target documents itself: `make help`.
SHELL := /bin/bash
UV_VERSION := 0.13.9
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := .tools/bin/uv
STAMP := $(VENV)/.synced
NODE_STAMP := node_modules/.installed
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lint format bench bench-throughput soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	@touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP) ## install exactly what uv.lock and package-lock.json pin

demo: setup ## simulate a cohort, train, register the champion, serve on http://127.0.0.1:3000
	$(VENV)/bin/ketapredict demo --port 3000

test: setup ## the whole test suite (unit, model behaviour, end to end over HTTP)
	$(PY) -m pytest

test-fast: setup ## unit tests only
	$(PY) -m pytest tests/unit

lint: setup ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup ## serving latency and batch throughput, as ratios against in-process baselines
	$(PY) benchmarks/serve_latency.py

bench-throughput: setup ## ours against `mlflow models serve`: latency, throughput at 1/8/64 clients (wrk), memory, batch
	$(PY) benchmarks/throughput.py

soak: setup ## 64 clients for 60 s on a fresh server: errors, latency, memory growth, audit rows
	$(PY) -m tests.faults.soak_run

clean: ## remove the environment, caches and local stores (keeps the source)
	rm -rf $(VENV) .tools node_modules .pytest_cache .ruff_cache data test-artifacts mlruns/mlflow.db mlruns/artifacts
