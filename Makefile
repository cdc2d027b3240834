# Two commands on a fresh machine (Python 3.11, pip, make):
#   make demo   — set up .venv, install dsbuild, run the offline end-to-end demo
#   make test   — set up .venv with test dependencies, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench clean venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dsbuild demo

test: $(STAMP)
	sh tools/ensure-chromium.sh
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@echo "benchmarks: see bench/README.md"

clean:
	rm -rf $(VENV) catalog/*.duckdb catalog/*.duckdb.wal catalog/store catalog/models demo_data
