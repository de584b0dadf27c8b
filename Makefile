# One place for the commands the README and .ci/run use.
# Everything runs from a local virtualenv (.venv) that the first target creates.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install browser demo dev test test-fast lint format router histories bench bench-smoke clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install agentflow with its dev tools

# The benchmark extras (pydantic-ai for the peer benchmark, matplotlib, psutil); mypy checks
# benchmarks/ too, so lint needs them.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# The approvals page's browser test drives Debian's chromium through Playwright (Playwright's own
# browser download cannot work offline); installing it takes apt, so root. A no-op when present.
browser: ## Install Debian's chromium for tests/test_ui_approvals.py (apt-get, as root)
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

demo: $(STAMP) ## Start the dev stack, run examples/requests.jsonl, leave the stack up
	$(BIN)/agentflow dev --run examples/requests.jsonl

dev: $(STAMP) ## Start the dev stack only (Temporal, Redis, worker, API)
	$(BIN)/agentflow dev

test: $(STAMP) ## The whole test suite (time-skipping server, dev server, Redis, SQLite, PostgreSQL)
	$(BIN)/pytest -q

test-fast: $(STAMP) ## Everything except the tests that start a Temporal dev server
	$(BIN)/pytest -q -m "not devserver"

lint: $(BENCH_STAMP) ## ruff (lint + format check) and strict mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BENCH_STAMP) ## The benchmark suite (about 14 min on 2 cores); writes benchmarks/results/
	$(BIN)/python -m benchmarks

bench-smoke: $(BENCH_STAMP) ## Every benchmark with tiny counts, results in a temp folder (CI)
	$(BIN)/python -m benchmarks --smoke

router: $(STAMP) ## Retrain the learned router from data/routing and rewrite core/data/router.json
	$(BIN)/agentflow router train
	$(BIN)/agentflow router calibrate

histories: $(STAMP) ## Re-record the v2 replay histories under tests/histories (v1_* stay as recorded)
	AGENTFLOW_SAVE_HISTORIES=1 $(BIN)/pytest -q tests/test_workflow.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
