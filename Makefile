# The CPU build of torch is installed first so that `pip install -e .` never pulls a multi-GB CUDA wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0

.PHONY: venv demo test test-fast bench clean

$(BIN)/vertseg: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_CPU)" || $(BIN)/python -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/vertseg

venv: $(BIN)/vertseg

demo: venv
	$(BIN)/vertseg demo --out demo-run

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup tests

test-fast: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

clean:
	rm -rf demo-run .pytest_cache
