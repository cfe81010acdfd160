# shardwire developer entry points.  `make test` is the test command (CI runs it via .ci/run).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := $(wildcard proxy tests bench)

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

# (Re)install whenever pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	bash scripts/ensure-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)

test: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/pytest -q

demo: venv
	$(BIN)/shardwire demo

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find $(LINT_PATHS) -depth -type d -name __pycache__ -exec rm -rf {} +
