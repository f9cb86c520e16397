# Two commands set up and run everything on a fresh machine:
#   make run    the main job: bench compare on the built-in default (CPU pair, built-in corpus)
#   make test   the test suite
# Both create .venv and install growbench into it first (torch==2.13.0 is pinned so that machines that
# carry that wheel locally install it in seconds; elsewhere pip downloads the same release).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

$(BIN)/bench: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(BIN)/bench

.PHONY: setup run test lint benchmark
setup: $(BIN)/bench

run: $(BIN)/bench
	$(BIN)/bench compare $(ARGS)

test: $(BIN)/bench
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(BIN)/bench
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check bench tests

benchmark: $(BIN)/bench
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only $(ARGS)
