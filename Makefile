# Quick start: `make demo` and `make test` on a fresh machine with Python, a C++17 compiler and
# cmake. Everything compiles once, in build/cmake (the library that both Python and C++ use).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Python packages the tests, demo and benchmarks use (torch is handled separately: never let pip
# resolve torch on its own, it would pull the CUDA build).
PY_DEPS := pytest hypothesis numpy scipy matplotlib scikit-learn tqdm ninja setuptools wheel
TORCH_CMAKE_PREFIX = $(shell $(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')
CMAKE_GENERATOR := $(if $(shell command -v ninja),-G Ninja,)
BUILD := $(CURDIR)/build
CPP_INSTALL := $(BUILD)/install
VENV := $(BUILD)/venv
WHEEL_DIR := $(BUILD)/dist
# Files compiled at once (this machine has 2 cores); `make test JOBS=1` on a shared one.
JOBS ?= 2
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)

.PHONY: deps lib develop wheel venv test test-python test-cpp test-dev demo bench bench-quick \
	device-check clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PYTHON) -c "import pytest, hypothesis, numpy, scipy, matplotlib, sklearn, tqdm, ninja, wheel" 2>/dev/null || $(PIP) install -q $(PY_DEPS)

# The library, its C++ tests and its CMake package (compiler progress is printed).
lib: deps
	@[ -f $(BUILD)/cmake/CMakeCache.txt ] || cmake -S . -B $(BUILD)/cmake $(CMAKE_GENERATOR) \
		-DCMAKE_PREFIX_PATH="$(TORCH_CMAKE_PREFIX)" -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD)/cmake --parallel $(JOBS)
	cmake --install $(BUILD)/cmake --prefix $(CPP_INSTALL)

# In-place install for development (reuses the library built above: no recompilation).
develop: lib
	$(PIP) install -q --no-build-isolation --no-deps -e .

# The wheel a user installs, built from the same library. setuptools' staging folders are emptied
# first: it never deletes from them, so a module removed from torch_ws/ would ship again.
SETUPTOOLS_STAGING := $(BUILD)/lib $(BUILD)/lib.* $(BUILD)/bdist.*
wheel: lib
	rm -rf $(WHEEL_DIR) $(SETUPTOOLS_STAGING)
	$(PIP) wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .

# A fresh venv that already has torch (and the test packages) from this interpreter's
# site-packages, where the wheel is built by the venv's own pip and setuptools (the one
# `python -m venv` ships, 65.5 on Python 3.11: what a user's `pip install --no-build-isolation .`
# runs) and installed non-editable. The library is the one `lib` built: nothing recompiles.
venv: lib
	rm -rf $(VENV) $(WHEEL_DIR) $(SETUPTOOLS_STAGING)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@$(VENV)/bin/python -c "import setuptools; print('building the wheel with setuptools', \
		setuptools.__version__, 'from', setuptools.__file__)"
	$(VENV)/bin/python -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .
	$(VENV)/bin/python -m pip install -q --no-deps --no-index $(WHEEL_DIR)/torch_ws-*.whl

# The Python suite against the installed wheel, run from outside the source tree so that
# `import torch_ws` finds the installed package; the first line checks that it does.
test-python: venv
	mkdir -p $(BUILD)/wheel-test
	cd $(BUILD)/wheel-test && $(VENV)/bin/python -c "import sys, torch_ws; \
		assert torch_ws.__file__.startswith(sys.prefix), torch_ws.__file__; \
		print('testing the installed wheel:', torch_ws.__file__)"
	cd $(BUILD)/wheel-test && PATH=$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest \
		$(CURDIR)/tests -q -m "not slow" -p no:cacheprovider --rootdir $(CURDIR)

# ctest (one test per case), then a separate consumer project that knows only find_package(TorchWS).
test-cpp: lib
	cd $(BUILD)/cmake && ctest --output-on-failure
	cmake -S examples/cpp -B $(BUILD)/example $(CMAKE_GENERATOR) \
		-DCMAKE_PREFIX_PATH="$(CPP_INSTALL);$(TORCH_CMAKE_PREFIX)"
	cmake --build $(BUILD)/example
	$(BUILD)/example/train_hsr 20 0.1

test: test-python test-cpp

# The suite against the in-place install (faster while developing).
test-dev: develop
	$(PYTHON) -m pytest tests -q -m "not slow"

# The papers' experiments, quick size, into reports/ (report.md, figures, results.json).
demo: develop
	$(PYTHON) -m torch_ws reproduce --quick --out reports/reproduce

# Benchmarks (results, tables and plots under benchmarks/results/).
bench: develop
	$(PYTHON) benchmarks/bench_ws.py
	$(PYTHON) benchmarks/bench_scale.py
	$(PYTHON) benchmarks/bench_sweep.py
	$(PYTHON) benchmarks/bench_spectral.py
	$(PYTHON) benchmarks/bench_batched.py

bench-quick: develop
	$(PYTHON) benchmarks/bench_ws.py --quick

# On a GPU machine with torch and no registry: build, check the ops on CUDA, run the CUDA-axis tests
# and time ws_bound on CUDA and CPU (benchmarks/device_check.sh). Installs nothing: no `deps`.
device-check:
	PYTHON=$(PYTHON) bash benchmarks/device_check.sh

clean:
	rm -rf build dist torch_ws/lib/*.so *.egg-info
