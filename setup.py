"""Builds the C++ extension torch_ws._C (the ops register themselves when it is imported).

Install with `pip install --no-build-isolation -e .` so that the extension is compiled against the
torch already installed; `DEBUG=1` builds with -O0 -g.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

debug = os.environ.get("DEBUG", "0") == "1"
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
# -fopenmp-simd: honour `#pragma omp simd` (vectorized reductions) without an OpenMP runtime.
cxx_flags += ["-std=c++17", "-fopenmp-simd", "-fdiagnostics-color=always"]
link_flags = ["-g"] if debug else []
# at::parallel_for is a header template: with torch's OpenMP backend it is a `#pragma omp
# parallel` compiled into this extension, so without -fopenmp it silently runs on one thread.
if "parallel backend: OpenMP" in torch.__config__.parallel_info():
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")

# The same sources as the LibTorch library built by CMakeLists.txt, plus the Python module stub.
sources = sorted(glob.glob("csrc/*.cpp"))

setup(
    ext_modules=[
        CppExtension(
            "torch_ws._C",
            sources,
            include_dirs=[os.path.abspath("include")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
