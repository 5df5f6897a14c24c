# tomolock developer entry points. Every target creates/refreshes .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint bench demo clean chromium

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

# Headless browser for the dashboard tests (Debian package; playwright drives it, never
# `playwright install`, which downloads browsers).
chromium:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

test: venv lint chromium
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m benchmarks.run --out bench-results.json

demo: venv
	$(BIN)/tomolock demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache bench-results.json
