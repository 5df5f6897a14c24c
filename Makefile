# tomolock developer entry points. Every target creates/refreshes .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint bench demo clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m benchmarks.run --out bench-results.json

demo: venv
	$(BIN)/tomolock demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache bench-results.json
