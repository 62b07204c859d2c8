"""Each engine's representative call with 0, 1 and 2 busy processes beside it, at 1 and 2 torch
threads: medians and 95th percentiles (issue 30: parallel stages that collapse when the machine is
busy).

A busy process is a CPU-bound Python loop (what a DataLoader worker or another job is to the
scheduler). For each (busy processes, threads) the calls run back to back after warm-up calls,
up to `--reps` times (64 by default) within `--budget` seconds per cell (at least 8); the busy
processes start before and stop after. Targets: with 1 and with 2 busy processes, every call's
median at the default thread count ≤ 1.3× its one-thread median, and the 95th percentile of the
calls at batch 64 ≤ 2× their median.

Usage: python benchmarks/bench_contention.py [--reps 64] [--budget 6] [--quick]
Writes results/bench_contention.{json,md} (or _quick). OpenMP's waiting policy is read from the
environment when torch loads, so it is set on the command line, and a run with OMP_WAIT_POLICY or
GOMP_SPINCOUNT set writes results/bench_contention_<variable>_<value>.{json,md} instead:

    GOMP_SPINCOUNT=1000 python benchmarks/bench_contention.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

import torch_ws

from common import fmt_time, machine, publish

BUSY = "while True: pass"


def problems(quick: bool) -> dict:
    """name -> a zero-argument call: one per engine and entry point."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    def mlp(n, d, h, c, dtype):
        x = randn(n, d, dtype=dtype)
        params = (randn(h, d, dtype=dtype) / d ** 0.5, randn(h, dtype=dtype) * 0.1,
                  randn(c, h, dtype=dtype) / h ** 0.5, randn(c, dtype=dtype) * 0.1)
        if c == 1:
            target = (torch.rand(n, generator=gen) > 0.5).to(dtype)
        else:
            target = torch.randint(0, c, (n,), generator=gen)
        return x, target, params

    calls = {}
    x0, t0, p0 = mlp(64, 64, 64, 1, torch.float32)
    calls["batch 64: ws_bound N=64 D=64 H=64 f32 (sample space)"] = \
        lambda: torch_ws.ws_bound(x0, t0, *p0)
    x, t, p = mlp(200, 2, 10, 1, torch.float64)
    calls["parameter space: ws_bound N=200 D=2 H=10 f64"] = lambda: torch_ws.ws_bound(x, t, *p)
    x2, t2, p2 = mlp(1500 if quick else 3000, 64, 64, 1, torch.float32)
    calls[f"sample space (tiles): ws_bound N={x2.shape[0]} D=64 H=64 f32"] = \
        lambda: torch_ws.ws_bound(x2, t2, *p2)
    x3, t3, p3 = mlp(600 if quick else 1797, 64, 64, 10, torch.float32)
    calls[f"multi-output: ws_bound N={x3.shape[0]} D=64 H=64 C=10 f32"] = \
        lambda: torch_ws.ws_bound(x3, t3, *p3, loss="cross_entropy")
    x4, t4, p4 = mlp(400, 16, 32, 1, torch.float64)
    calls["spectral_bound N=400 D=16 H=32 f64"] = lambda: torch_ws.spectral_bound(x4, t4, *p4)
    x5, t5, p5 = mlp(1000, 32, 64, 1, torch.float64)
    calls["lambda_max_interval N=1000 D=32 H=64 f64"] = \
        lambda: torch_ws.lambda_max_interval(x5, t5, *p5)
    xb = randn(200, 2, dtype=torch.float64)
    tb = (torch.rand(200, generator=gen) > 0.5).double()
    pb = (randn(16, 10, 2, dtype=torch.float64), randn(16, 10, dtype=torch.float64),
          randn(16, 1, 10, dtype=torch.float64), randn(16, 1, dtype=torch.float64))
    calls["batched: ws_bound_batched B=16 N=200 D=2 H=10 f64"] = \
        lambda: torch_ws.ws_bound_batched(xb, tb, *pb)
    return calls


def timings(call, reps: int, budget: float) -> list[float]:
    for _ in range(2):
        call()
    out = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
        if len(out) >= 8 and time.perf_counter() - start > budget:
            break
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(reps: int, budget: float, quick: bool) -> dict:
    calls = problems(quick)
    default_threads = torch.get_num_threads()
    rows = []
    for busy in (0, 1, 2):
        workers = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            for name, call in calls.items():
                for threads in sorted({1, default_threads}):
                    torch.set_num_threads(threads)
                    samples = timings(call, reps, budget)
                    rows.append({"call": name, "busy": busy, "threads": threads,
                                 "calls": len(samples), "median": statistics.median(samples),
                                 "p95": percentile(samples, 0.95), "max": max(samples)})
                    print(f"busy {busy} threads {threads} {name}: median "
                          f"{fmt_time(rows[-1]['median'])} p95 {fmt_time(rows[-1]['p95'])}",
                          file=sys.stderr, flush=True)
        finally:
            for w in workers:
                w.kill()
            torch.set_num_threads(default_threads)
    return {"machine": machine(), "reps": reps, "budget": budget,
            "default_threads": default_threads, "rows": rows}


def table(payload: dict, command: str) -> str:
    m, default = payload["machine"], payload["default_threads"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; default threads "
             f"{default}. Command: `{command}`; up to {payload['reps']} calls per cell within "
             f"{payload['budget']:g} s (at least 8).", "",
             "| call | busy processes | 1 thread: median / p95 | "
             f"{default} threads: median / p95 | {default} threads / 1 thread (median) | "
             "p95 / median (default) |", "|---|---|---|---|---|---|"]
    by_key = {(r["call"], r["busy"], r["threads"]): r for r in payload["rows"]}
    worst_ratio, worst_tail = 0.0, 0.0
    for (call, busy, threads), r in by_key.items():
        if threads != 1:
            continue
        d = by_key.get((call, busy, default), r)
        ratio, tail = d["median"] / r["median"], d["p95"] / d["median"]
        if busy > 0:
            worst_ratio = max(worst_ratio, ratio)
            if call.startswith("batch 64"):
                worst_tail = max(worst_tail, tail)
        lines.append(f"| {call} | {busy} | {fmt_time(r['median'])} / {fmt_time(r['p95'])} | "
                     f"{fmt_time(d['median'])} / {fmt_time(d['p95'])} | {ratio:.2f} | {tail:.2f} |")
    lines += ["", "| target (1 and 2 busy processes) | worst | met |", "|---|---|---|",
              f"| default threads / 1 thread ≤ 1.3 | {worst_ratio:.2f} | "
              f"{'yes' if worst_ratio <= 1.3 else 'no'} |",
              f"| p95 / median ≤ 2 at batch 64 | {worst_tail:.2f} | "
              f"{'yes' if worst_tail <= 2 else 'no'} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=64)
    parser.add_argument("--budget", type=float, default=6.0, help="seconds per cell")
    parser.add_argument("--quick", action="store_true", help="smaller problems, for a look")
    args = parser.parse_args()
    payload = run(args.reps, args.budget, args.quick)
    # OpenMP's waiting policy (read from the environment when torch loaded libgomp), and
    # TORCH_WS_THREADS=fixed (torch's thread count for every call: the policy of core/threads.h off).
    policy = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TORCH_WS_THREADS")
              if k in os.environ}
    payload["openmp_environment"] = policy
    name = "bench_contention_quick" if args.quick else "bench_contention"
    name += "".join(f"_{k.lower()}_{v.lower()}" for k, v in policy.items())
    command = "".join(f"{k}={v} " for k, v in policy.items())
    command += "python benchmarks/bench_contention.py" + (" --quick" if args.quick else "")
    command += f" --reps {args.reps}" if args.reps != 64 else ""
    publish(name, payload, table(payload, command))


if __name__ == "__main__":
    main()
