# ackwal developer entry points. Every target creates the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/ackwal.toml

.PHONY: test lint typecheck pytest run bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check wal service tests benchmarks examples
	$(BIN)/ruff format --check wal service tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict wal service

pytest: $(STAMP)
	$(BIN)/pytest -q

run: $(STAMP)
	$(BIN)/ackwal serve --config $(CONFIG)

bench: $(STAMP)
	$(BIN)/python -c 'import asyncpg, matplotlib, nats' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/wal_append.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/compare.py $(COMPARE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
