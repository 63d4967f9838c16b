# Two commands do all set-up on a fresh machine:
#   make demo   renders the embedded default film (offline, CPU)
#   make test   runs the test suite (offline, CPU)
# Each creates the virtual environment .venv on first use.

PYTHON ?= python3
# One environment for the CPU and the GPU: this torch/torchvision pair is a CUDA build that also runs on the CPU, and pip
# takes both from the machine's local wheel store (an unpinned torch would download several GB of CUDA wheels).
# torchvision is there for qwen-vl-utils and the Qwen2.5-VL processor; PyPI's torchvision does not import beside the
# smaller CPU-only torch 2.13.0 file.
TORCH ?= torch==2.14.1
TORCHVISION ?= torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" "$(TORCHVISION)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/svi demo --keywords "red ball" --clips 6 --run-dir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
