"""Builds the torch_ws Python package around the one C++ library.

The ops live in libtorch_ws.so, built by CMakeLists.txt (the same library LibTorch users link).
This script runs that CMake build in build/cmake (incremental: a library built by `make` is reused)
and ships the library inside the package as torch_ws/lib/libtorch_ws.so, where
torch_ws/_library.py loads it with torch.ops.load_library. No source is compiled twice.

Build against the torch that is installed (build isolation would pull another one):
    pip install --no-build-isolation .                 # into any venv that has torch
    pip install --no-build-isolation -e .            # development, in place
    pip wheel --no-build-isolation --no-deps -w dist .  # a wheel
Needs cmake >= 3.18, a C++17 compiler and setuptools >= 64 (the one a venv ships will do; before
setuptools 70.1 also the `wheel` package); ninja is used when present. DEBUG=1 builds with -O0 -g;
CMAKE_BUILD_PARALLEL_LEVEL=N compiles N files at once (default: every core).
TORCH_WS_CMAKE_BUILD_DIR=DIR builds (or reuses a build) in DIR instead of build/cmake.
`pip install -v` shows the compiler's progress.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    import torch
except ImportError:
    sys.exit("torch_ws builds against the installed torch, and this Python has none: install torch "
             "first, then `pip install --no-build-isolation .`")

SETUPTOOLS_VERSION = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
if (importlib.util.find_spec("setuptools.command.bdist_wheel") is None
        and importlib.util.find_spec("wheel") is None):
    sys.exit(f"setuptools {setuptools.__version__} builds wheels with the `wheel` package, which "
             "this Python lacks: `pip install wheel` (or setuptools>=70.1), then build again")

ROOT = Path(__file__).parent.resolve()
CMAKE_BUILD_DIR = Path(os.environ.get("TORCH_WS_CMAKE_BUILD_DIR", ROOT / "build" / "cmake"))


class CMakeLibrary(Extension):
    """The shared library that CMake builds; not a Python extension module."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


class BuildWithCMake(build_ext):
    def get_ext_filename(self, ext_name):
        # A plain shared library, loaded by path: no Python ABI suffix.
        return os.path.join(*ext_name.split(".")) + ".so"

    def build_extension(self, ext):
        build_type = "Debug" if os.environ.get("DEBUG", "0") == "1" else "Release"
        configure = ["cmake", "-S", str(ROOT), "-B", str(CMAKE_BUILD_DIR),
                     f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                     f"-DCMAKE_BUILD_TYPE={build_type}"]
        if shutil.which("ninja") and not (CMAKE_BUILD_DIR / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(CMAKE_BUILD_DIR), "--target", "torch_ws",
                        "--parallel", jobs], check=True)
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CMAKE_BUILD_DIR / "libtorch_ws.so", target)  # follows the soname links


# pyproject.toml lists the license as dynamic: setuptools >= 77 takes an SPDX expression, older
# ones (65.5 is what `python -m venv` installs on Python 3.10/3.11) only the free-text field.
# LICENSE itself ships in the wheel under every version (setuptools' default license_files).
LICENSE = ({"license_expression": "BSD-3-Clause"} if SETUPTOOLS_VERSION >= (77, 0)
           else {"license": "BSD-3-Clause"})

setup(
    ext_modules=[CMakeLibrary("torch_ws.lib.libtorch_ws")],
    cmdclass={"build_ext": BuildWithCMake},
    **LICENSE,
)
