# Two commands on a fresh machine (Python 3.11, pip, make):
#   make demo   — set up .venv, install dsbuild, run the offline end-to-end demo
#   make test   — set up .venv with test dependencies, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench clean venv

# pip's and setuptools' output goes to $(VENV)/install.log (shown only when the install fails):
# the first screen a user sees is dsbuild's own.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV): dsbuild and its dependencies (the first time takes a few minutes; log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@$(BIN)/python -m pip install --quiet -e '.[test]' >> $(VENV)/install.log 2>&1 || { tail -n 60 $(VENV)/install.log; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	@$(BIN)/dsbuild demo

test: $(STAMP)
	sh tools/ensure-chromium.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	@$(BIN)/python -m pip install --quiet -e '.[test,bench]' >> $(VENV)/install.log 2>&1 || { tail -n 60 $(VENV)/install.log; exit 1; }
	@echo "benchmarks: see bench/README.md"

clean:
	rm -rf $(VENV) catalog/*.duckdb catalog/*.duckdb.wal catalog/*.lock catalog/*.want catalog/store catalog/models catalog/reports catalog/features catalog/thumbs demo_data
