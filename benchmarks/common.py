"""Shared benchmark machinery: machine facts, problems, alternating median timing, peak memory."""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model, cores, threads and versions, recorded beside every figure."""
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
    }


def mlp_problem(n, d, h, dtype=torch.float32, seed=0, requires_grad=True):
    """x, target and (w1, b1, w2, b2) of a Linear(d,h) → tanh → Linear(h,1) at a typical scale."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    target = (torch.rand(n, generator=gen) > 0.5).to(dtype)
    params = [
        torch.randn(h, d, generator=gen, dtype=dtype) / d**0.5,
        torch.randn(h, generator=gen, dtype=dtype) * 0.1,
        torch.randn(1, h, generator=gen, dtype=dtype) / h**0.5,
        torch.randn(1, generator=gen, dtype=dtype) * 0.1,
    ]
    return x, target, [p.requires_grad_(requires_grad) for p in params]


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux; 0 elsewhere)."""
    return _status("VmHWM")


def peak_memory(fn: Callable[[], object]) -> int | None:
    """Peak resident memory fn() adds above the current resident set, in bytes (Linux: the
    high-water mark is reset through /proc/self/clear_refs). None where unsupported. Meaningful
    in a fresh process only: the C allocator keeps freed memory resident, so a second run may
    reuse it without growing the resident set (see :func:`peak_memory_in_subprocess`)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status("VmRSS")
    fn()
    return max(0, _status("VmHWM") - before)


def time_alternating(methods: dict[str, Callable[[], object]], reps: int, warmup: int = 3,
                     budget_s: float | None = None) -> dict[str, float]:
    """Median seconds per call of each method, the methods timed in turn (A, B, C, A, B, C, …) so
    that drift in machine speed hits all alike. Stops early once `budget_s` is spent (≥3 reps)."""
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in methods}
    start = time.perf_counter()
    for rep in range(reps):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if budget_s is not None and rep >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def machine_line(m: dict, command: str) -> str:
    """The first line of a results table: the machine (``machine()``) and the command."""
    return f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Command: `{command}`."


def publish(name: str, payload: dict, text: str) -> None:
    """Writes results/<name>.json (the payload) and results/<name>.md (the table), and prints
    the table."""
    write_json(f"{name}.json", payload)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "—"
    return f"{b / 2**20:.0f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"


def json_in_subprocess(script: str, args: list[str], timeout: float,
                       env: dict | None = None) -> dict:
    """Runs `python script ARGS` in a fresh interpreter and returns the JSON object its last line
    of output holds; {"timeout": timeout} if it ran longer, {"error": its last line of stderr} if
    it failed (out of memory, an exception)."""
    import json
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory_in_subprocess(script: str, args: list[str]) -> int | None:
    """Runs `python script --peak ARGS` in a fresh interpreter; that mode prints the bytes its
    method added to the resident set (one call, after the problem is set up)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, script, "--peak", *args], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
