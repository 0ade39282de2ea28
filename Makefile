# Two commands on a fresh machine: `make demo` (set up + run FedCoLLM on the embedded default)
# and `make test` (set up + pass the test suite). Everything else is a helper of those two.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a bare `torch` requirement may pull a multi-GB CUDA build on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
# The versions CI passed with (constraints.txt says why); `make setup CONSTRAINTS=` floats within pyproject's ranges.
CONSTRAINTS ?= constraints.txt
# The datasets: ../shared/data when it exists (this project's machines), else the HF hub.
export FEDCOLLM_DATA_DIR ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)

.PHONY: setup test test-slow lint demo clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $@

setup: $(BIN)/.installed

lint: setup
	$(BIN)/ruff check src tests bench

# -n auto: one worker per core; the end-to-end Flower tests share one worker (tests/conftest.py says why).
test: setup lint
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

# Real-model tests (minutes; build the offline models on first use).
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

demo: setup
	$(BIN)/fedcollm run --config configs/demo.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
