# Quick start: `make demo` and `make test` on a fresh machine with Python only.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Python packages the tests, demo and benchmarks use (torch is handled separately: never let pip
# resolve torch on its own, it would pull the CUDA build).
PY_DEPS := pytest numpy scipy matplotlib scikit-learn tqdm ninja setuptools wheel
EXTENSION_STAMP := build/.extension-built
SOURCES := $(wildcard csrc/*.cpp csrc/*.h include/torch_ws/*.h) setup.py pyproject.toml

.PHONY: deps build test test-python test-cpp cpp demo bench bench-quick clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PYTHON) -c "import pytest, numpy, scipy, matplotlib, sklearn, tqdm, ninja" 2>/dev/null || $(PIP) install -q $(PY_DEPS)

$(EXTENSION_STAMP): $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@mkdir -p build && touch $@

build: deps $(EXTENSION_STAMP)

test-python: build
	$(PYTHON) -m pytest tests -q -m "not slow"

# LibTorch side (issue: C++ API). Evaluated when used, i.e. after `deps` installed torch.
TORCH_CMAKE_PREFIX = $(shell $(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')
CMAKE_GENERATOR := $(if $(shell command -v ninja),-G Ninja,)
CPP_INSTALL := $(CURDIR)/build/install

# Configure, build and install the C++ library and its CMake package under build/install.
cpp: deps
	cmake -S . -B build/cmake $(CMAKE_GENERATOR) -DCMAKE_PREFIX_PATH="$(TORCH_CMAKE_PREFIX)"
	cmake --build build/cmake -j2
	cmake --install build/cmake --prefix $(CPP_INSTALL)

# ctest, then a separate consumer project that knows only find_package(TorchWS).
test-cpp: cpp
	cd build/cmake && ctest --output-on-failure
	cmake -S examples/cpp -B build/example $(CMAKE_GENERATOR) \
		-DCMAKE_PREFIX_PATH="$(CPP_INSTALL);$(TORCH_CMAKE_PREFIX)"
	cmake --build build/example
	./build/example/train_hsr 20 0.1

test: test-python test-cpp

# The papers' experiments, quick size, into reports/ (report.md, figures, results.json).
demo: build
	$(PYTHON) -m torch_ws reproduce --quick --out reports/reproduce

# Benchmarks (results, tables and plots under benchmarks/results/).
bench: build
	$(PYTHON) benchmarks/bench_ws.py
	$(PYTHON) benchmarks/bench_scale.py

bench-quick: build
	$(PYTHON) benchmarks/bench_ws.py --quick

clean:
	rm -rf build torch_ws/*.so *.egg-info
