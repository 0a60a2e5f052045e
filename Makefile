# Two commands set everything up on a fresh machine with Python 3.11:
#   make serve   -> venv + install + serve the shipped model on :8000
#   make test    -> venv + install + lint + the whole test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: serve test lint install smoke bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch==2.13.0 is pinned in the training extra: pip takes the local CPU wheel, not a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# MALLOC_ARENA_MAX=2: glibc otherwise gives new worker threads new malloc arenas, and the RSS
# kept climbing through a 10-minute soak (benchmarks/results/soak_no_arena_cap.json).
serve: $(STAMP)
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} $(BIN)/agelens serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

smoke: $(STAMP)
	$(BIN)/agelens train --config training/configs/smoke.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs/smoke
