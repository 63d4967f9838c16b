# Two commands do all set-up on a fresh machine:
#   make demo   renders the embedded default film (offline, CPU)
#   make test   runs the test suite (offline, CPU)
# Each creates the virtual environment .venv on first use.

PYTHON ?= python3
# The CPU build of torch for the default set-up; an unpinned torch pulls several GB of CUDA wheels.
# On a GPU machine: make TORCH="torch>=2.4" demo
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/svi demo --keywords "red ball" --clips 6 --run-dir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
