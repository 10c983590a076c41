# Two front doors for a fresh machine: `make demo` and `make test` each build .venv if it is
# missing, install what is missing, then run. torch==2.13.0 goes in first so that pip never
# resolves a multi-GB CUDA build on a CPU box; a machine that already has torch keeps it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Probe this machine (or reuse a matching profile), then train on the embedded synthetic data.
# Its last line names OUT/pictures/: what the trained model reads in four validation samples.
demo: $(STAMP)
	$(BIN)/python -m smt.train --profile auto

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
