# Quick start: `make demo` and `make test` on a fresh machine with Python only.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Python packages the tests, demo and benchmarks use (torch is handled separately: never let pip
# resolve torch on its own, it would pull the CUDA build).
PY_DEPS := pytest numpy scipy matplotlib scikit-learn tqdm ninja setuptools wheel
EXTENSION_STAMP := build/.extension-built
SOURCES := $(wildcard csrc/*.cpp csrc/*.h include/torch_ws/*.h) setup.py pyproject.toml

.PHONY: deps build test test-python demo bench bench-quick clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PYTHON) -c "import pytest, numpy, scipy, matplotlib, sklearn, tqdm, ninja" 2>/dev/null || $(PIP) install -q $(PY_DEPS)

$(EXTENSION_STAMP): $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@mkdir -p build && touch $@

build: deps $(EXTENSION_STAMP)

test-python: build
	$(PYTHON) -m pytest tests -q -m "not slow"

test: test-python

demo: build
	$(PYTHON) examples/demo.py

clean:
	rm -rf build torch_ws/*.so *.egg-info
