"""Loads the compiled library, libtorch_ws.so, whose load registers ``torch.ops.torch_ws``.

It is the library LibTorch programs link (one build, CMakeLists.txt), shipped in ``torch_ws/lib``.
If the process has loaded a copy already (a program embedding Python, or
``torch.ops.load_library`` of an installed LibTorch build), the ops are registered and that copy
serves: loading a second one would register the namespace twice, which aborts the process.
"""
from __future__ import annotations

from pathlib import Path

import torch

LIBRARY = Path(__file__).resolve().parent / "lib" / "libtorch_ws.so"


def _registered() -> bool:
    return hasattr(torch.ops.torch_ws, "ws_bound")


def load() -> None:
    """Registers the torch_ws ops unless they are registered already; ImportError if the library
    is missing or does not load (built against another torch: its C++ ABI is that torch's)."""
    if _registered():
        return
    if not LIBRARY.exists():
        raise ImportError(
            f"torch_ws: the compiled library {LIBRARY} is missing; build it with "
            "`pip install --no-build-isolation -e .` (or `make develop`) in the source tree"
        )
    try:
        torch.ops.load_library(str(LIBRARY))
    except OSError as error:
        raise ImportError(
            f"torch_ws: could not load {LIBRARY} ({error}). Undefined symbols mean it was built "
            f"against another torch than this one ({torch.__version__}): rebuild torch_ws "
            "against the installed torch (`pip install --no-build-isolation .`)"
        ) from error
