import os
import sys
import tempfile

# Make `import testing` work from any working directory.
sys.path.insert(0, os.path.dirname(__file__))

# A fresh compile cache per run: AOTAutograd's cache keys a graph on the Dynamo graph, where a
# torch_ws op is one opaque call, so a cache written by an earlier build would replay that
# build's traced formulas (the bound's arithmetic is traced through the C++ autograd kernel).
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="torch_ws_inductor_")

# Torch's thread count for every call (core/threads.h), whatever else the machine runs: the
# parallel paths (lanes, sample blocks) stay tested on a busy CI machine too.
# tests/test_threads.py tests the per-call count itself.
os.environ.setdefault("TORCH_WS_THREADS", "fixed")
