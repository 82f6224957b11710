# ackwal developer entry points. Every target creates the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/ackwal.toml

.PHONY: test lint typecheck pytest torture soak run bench clean

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

# The torture suite at full size (500 crash cycles, every power-cut model, long fuzzing);
# `make test` runs its short version.
torture: $(STAMP)
	ACKWAL_TORTURE=long $(BIN)/pytest -q -m torture tests/torture

# Sustained load with snapshots, retention and a subscriber: RSS, descriptors and latency over
# time as PNG + JSON in benchmarks/results/soak-*. SOAK_ARGS="--minutes 2" for a short run.
soak: $(STAMP)
	$(BIN)/python tests/torture/soak.py $(SOAK_ARGS)

run: $(STAMP)
	$(BIN)/ackwal serve --config $(CONFIG)

bench: $(STAMP)
	$(BIN)/python -c 'import asyncpg, matplotlib, nats' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/wal_append.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/compare.py $(COMPARE_ARGS)
	$(BIN)/python benchmarks/replication.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
