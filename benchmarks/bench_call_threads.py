"""The per-call thread count (csrc/core/threads.h) on an idle machine: each entry point's call at
the sizes the other benchmarks use, timed in turn with the policy (TORCH_WS_THREADS unset) and
without it (TORCH_WS_THREADS=fixed: every call on torch's count), value and value + gradient.
What issue 30 asks of the change besides the contention targets (bench_contention.py): that no
other call gets slower. The variable is read at each call, so both run in one process, alternated.

Usage: python benchmarks/bench_call_threads.py [--reps 15]
Writes results/bench_call_threads.{json,md}.
"""
from __future__ import annotations

import argparse
import os

import torch

import torch_ws

from common import fmt_time, machine, machine_line, mlp_problem, publish, time_alternating


def problems() -> dict:
    """name -> a zero-argument call."""
    calls = {}

    def one_layer(n, d, h, dtype):
        x, t, p = mlp_problem(n, d, h, dtype)
        return x, t, p

    for n, d, h, dtype in ((64, 64, 64, torch.float32), (200, 2, 10, torch.float64),
                           (1000, 32, 64, torch.float64), (3000, 64, 64, torch.float32)):
        x, t, p = one_layer(n, d, h, dtype)
        name = f"N={n} D={d} H={h} {str(dtype)[6:]}"
        calls[f"ws_bound {name}"] = (lambda x=x, t=t, p=p: torch_ws.ws_bound(
            x, t, *[q.detach() for q in p]))
        calls[f"ws_bound + gradient {name}"] = (lambda x=x, t=t, p=p: torch.autograd.grad(
            torch_ws.ws_bound(x, t, *p), p))
    for n, d, h in ((200, 2, 10), (400, 16, 32)):
        x, t, p = one_layer(n, d, h, torch.float64)
        calls[f"spectral_bound N={n} D={d} H={h} f64"] = (lambda x=x, t=t, p=p:
            torch_ws.spectral_bound(x, t, *[q.detach() for q in p]))
    for n, d, h in ((200, 2, 10), (1000, 32, 64)):
        x, t, p = one_layer(n, d, h, torch.float64)
        calls[f"lambda_max_interval N={n} D={d} H={h} f64"] = (lambda x=x, t=t, p=p:
            torch_ws.lambda_max_interval(x, t, *[q.detach() for q in p]))
        calls[f"lambda_max_interval + gradient N={n} D={d} H={h} f64"] = (lambda x=x, t=t, p=p:
            torch.autograd.grad(torch_ws.lambda_max_interval(x, t, *p).upper, p))
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    tb = (torch.rand(200, generator=gen) > 0.5).double()
    pb = [torch.randn(16, 10, 2, generator=gen, dtype=torch.float64),
          torch.randn(16, 10, generator=gen, dtype=torch.float64),
          torch.randn(16, 1, 10, generator=gen, dtype=torch.float64),
          torch.randn(16, 1, generator=gen, dtype=torch.float64)]
    calls["ws_bound_batched B=16 N=200 D=2 H=10 f64"] = (
        lambda: torch_ws.ws_bound_batched(xb, tb, *pb))
    xd = torch.randn(100, 20, generator=gen, dtype=torch.float64)
    td = (torch.rand(100, generator=gen) > 0.5).double()
    weights = [torch.randn(32, 20, generator=gen, dtype=torch.float64) / 20 ** 0.5,
               torch.randn(32, 32, generator=gen, dtype=torch.float64) / 32 ** 0.5,
               torch.randn(1, 32, generator=gen, dtype=torch.float64) / 32 ** 0.5]
    calls["deep_ws_bounds [32, 32] N=100 D=20 f64"] = (
        lambda: torch_ws.deep_ws_bounds(xd, td, weights))
    return calls


def set_policy(on: bool) -> None:
    if on:
        os.environ.pop("TORCH_WS_THREADS", None)
    else:
        os.environ["TORCH_WS_THREADS"] = "fixed"


def run(reps: int) -> dict:
    rows = []
    for name, call in problems().items():
        def with_policy(call=call):
            set_policy(True)
            call()

        def fixed(call=call):
            set_policy(False)
            call()

        times = time_alternating({"policy": with_policy, "fixed": fixed}, reps=reps, warmup=2,
                                 budget_s=20)
        set_policy(True)
        rows.append({"call": name, "policy": times["policy"], "fixed": times["fixed"]})
        print(f"{name}: per call {fmt_time(times['policy'])}, fixed {fmt_time(times['fixed'])}",
              flush=True)
    return {"machine": machine(), "default_threads": torch.get_num_threads(), "rows": rows}


def table(payload: dict, command: str) -> str:
    lines = [machine_line(payload["machine"], command) +
             f" Idle machine, torch threads {payload['default_threads']}; medians, alternated.",
             "",
             "| call | per call | fixed (torch's count) | per call / fixed |",
             "|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['call']} | {fmt_time(r['policy'])} | "
                     f"{fmt_time(r['fixed'])} | {r['policy'] / r['fixed']:.2f} |")
    worst = max(r["policy"] / r["fixed"] for r in payload["rows"])
    lines += ["", f"Worst per call / fixed: {worst:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    payload = run(args.reps)
    command = "python benchmarks/bench_call_threads.py" + (
        f" --reps {args.reps}" if args.reps != 15 else "")
    publish("bench_call_threads", payload, table(payload, command))


if __name__ == "__main__":
    main()
