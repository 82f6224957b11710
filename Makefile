# ackwal developer entry points. Every target creates the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/ackwal.toml
# The mypyc-compiled build (setup.py, ACKWAL_MYPYC=1) lives in a copy of the tree, never next to
# the sources, where its extension modules would shadow every later edit.
COMPILED := build/compiled

.PHONY: test lint typecheck pytest compiled pytest-compiled torture soak run bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest pytest-compiled

lint: $(STAMP)
	$(BIN)/ruff check wal service tests benchmarks examples setup.py
	$(BIN)/ruff format --check wal service tests benchmarks examples setup.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict wal service

pytest: $(STAMP)
	$(BIN)/pytest -q

# The tracked (and new, unignored) files copied to $(COMPILED), the append path's modules
# compiled there with mypyc: what the container image runs and what `make bench` measures.
compiled: $(STAMP)
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 \
		|| { echo "make compiled copies the files git tracks: run it in a git checkout" >&2; exit 1; }
	rm -rf $(COMPILED)
	mkdir -p $(COMPILED)
	git ls-files -z --cached --others --exclude-standard \
		| tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $(COMPILED)
	cd $(COMPILED) && ACKWAL_MYPYC=1 $(CURDIR)/$(BIN)/python setup.py --quiet build_ext --inplace
	cd $(COMPILED) && $(CURDIR)/$(BIN)/python -c 'import service.build; service.build.require_compiled()'

# The whole suite again, against the compiled build; PYTHONPATH makes every server and child
# process the tests start load it too, and tests/test_build.py checks that they do.
pytest-compiled: compiled
	cd $(COMPILED) && PYTHONPATH=$(CURDIR)/$(COMPILED) ACKWAL_EXPECT_COMPILED=1 \
		$(CURDIR)/$(BIN)/pytest -q -p no:cacheprovider

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

# Benchmarks run the compiled build, as the image ships it (PYTHONPATH= ... for the interpreted
# one); their results are written to this tree's benchmarks/results.
bench: compiled
	$(BIN)/python -c 'import asyncpg, matplotlib, nats' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	PYTHONPATH=$(CURDIR)/$(COMPILED) $(BIN)/python benchmarks/wal_append.py
	PYTHONPATH=$(CURDIR)/$(COMPILED) $(BIN)/python benchmarks/service_load.py
	PYTHONPATH=$(CURDIR)/$(COMPILED) $(BIN)/python benchmarks/compare.py $(COMPARE_ARGS)
	PYTHONPATH=$(CURDIR)/$(COMPILED) $(BIN)/python benchmarks/replication.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
