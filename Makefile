# One place for the commands the README and .ci/run use.
# Everything runs from a local virtualenv (.venv) that the first target creates.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install browser demo dev test test-fast lint format router histories bench bench-smoke clean

# Installs go through uv when it can be had (pip-installed into the venv; it needs PyPI): about
# 5-15 s for the dev and bench extras where pip takes 3-4 minutes. Where uv cannot be installed,
# or its install fails (an index only pip.conf names, which uv does not read), pip does the same
# install. The resolved versions are the same either way (compared with pip freeze).
DEV_EXTRAS := -e '.[dev]'
BENCH_EXTRAS := -e '.[dev,bench]'

# Bytecode is compiled at install (UV_COMPILE_BYTECODE; pip compiles by default): machines
# like this one set PYTHONDONTWRITEBYTECODE=1, so without it every process (the CLI, the API,
# each worker a test starts) compiles the modules it imports from source again.
define venv_install
if test -x $(BIN)/uv && UV_COMPILE_BYTECODE=1 $(BIN)/uv pip install --quiet --python $(BIN)/python $(1); then :; \
else $(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet $(1); fi
endef

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv 2>/dev/null || \
		echo "uv could not be installed: installing with pip (a few minutes)"
	$(call venv_install,$(DEV_EXTRAS))
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install agentflow with its dev tools

# The benchmark extras (pydantic-ai for the peer benchmark, matplotlib, psutil); mypy checks
# benchmarks/ too, so lint needs them.
$(BENCH_STAMP): $(STAMP)
	$(call venv_install,$(BENCH_EXTRAS))
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

# The suite mostly waits on its servers (about a third of one core busy when run serially), so it
# runs in TEST_WORKERS pytest-xdist processes, a whole test file at a time on one of them
# (--dist loadfile: a file's module fixtures, such as its API stack, live in one process). Each
# worker starts its own session servers (Redis, Temporal) on free ports. TEST_WORKERS=0 runs the
# suite in one process. Two on 2 cores: the suite is CPU-bound there (1,144 tests: 2 workers
# 204 s, 3 191-206 s, 4 170-222 s), and three made timing-sensitive tests (Redis pool waits,
# 100 coalescing waiters) fail under CI's load without saving time.
TEST_WORKERS ?= 2

test: $(STAMP) ## The whole test suite (time-skipping server, dev server, Redis, SQLite, PostgreSQL)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

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

histories: $(STAMP) ## Re-record the v2_* replay histories (today's shape) under tests/histories
	AGENTFLOW_SAVE_HISTORIES=1 $(BIN)/pytest -q tests/test_workflow.py tests/test_approval_policy.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
