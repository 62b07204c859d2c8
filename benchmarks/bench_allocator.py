"""The CPU allocator's share of the deep engines' time: `deep_hessian_traces` on the
edge-of-stability width with glibc's default malloc against one that keeps freed memory in the
process (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_), alternated, a fresh process each.

    python benchmarks/bench_allocator.py       # results/bench_allocator.{json,md}

glibc returns every freed array above 32 MiB to the system and trims the heap, so each new
(N, H, H) per-sample array or tile matrix is faulted in again page by page; the system time is
that. The library does not change the allocator itself: it is the process's to choose.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    fmt_bytes, fmt_time, json_in_subprocess, machine, machine_line, publish,
)

# [200, 200] tanh, D = 64, N = 1000, one logit (BCE), float32 inputs: issue 29's target size.
N, D, WIDTHS = 1000, 64, [200, 200]
CALLS = 3
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def run_one() -> dict:
    import torch_ws

    torch.manual_seed(0)
    layers, width = [], D
    for h in WIDTHS:
        layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
        width = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    x = torch.randn(N, D)
    target = torch.randint(0, 2, (N,)).float()
    spec = torch_ws.DeepMlpSpec.from_module(model, loss="bce")
    args = spec.op_args(x, spec.prepare_target(x, target))
    seconds = []
    with torch.no_grad():
        for _ in range(CALLS):
            start = time.perf_counter()
            torch_ws.deep_hessian_traces(*args)
            seconds.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"median": statistics.median(seconds), "seconds": seconds,
            "system_seconds": usage.ru_stime, "peak_bytes": usage.ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one()))
        return
    m = machine()
    results = {"default": [], "keep_freed": []}
    for _ in range(args.rounds):
        for name in results:
            env = {k: v for k, v in os.environ.items() if k not in KEEP_FREED}
            if name == "keep_freed":
                env.update(KEEP_FREED)
            results[name].append(json_in_subprocess(__file__, ["--one"], 900, env))
    rows = [f"| {name} | " + ", ".join(fmt_time(r["median"]) for r in runs) + " | "
            + ", ".join(f"{r['system_seconds']:.1f} s" for r in runs) + " | "
            + ", ".join(fmt_bytes(r["peak_bytes"]) for r in runs) + " |"
            for name, runs in results.items()]
    text = "\n".join([
        machine_line(m, "python benchmarks/bench_allocator.py"),
        "",
        f"`deep_hessian_traces` (value), tanh {WIDTHS}, D = {D}, N = {N}, BCE, float32 inputs: "
        f"the median of {CALLS} calls per process, each round's processes alternated. "
        f"keep_freed: {' '.join(f'{k}={v}' for k, v in KEEP_FREED.items())}.",
        "",
        "| malloc | median per round | system time per process | peak resident |",
        "|---|---|---|---|",
        *rows,
        "",
    ])
    publish("bench_allocator", {"machine": m, "results": results}, text)


if __name__ == "__main__":
    main()
