"""Many small models at once: ws_bound_batched against B calls of ws_bound, value and gradient.

At the papers' scale (N = 200 two-dimensional points, H = 3 or 10, tanh, BCE, float64) for B
models, it times, in turn in one process (medians):

- ``loop``: B calls of ``torch_ws.ws_bound`` and one backward through their sum (what a user
  training B models without the batched op writes);
- ``batched``: one call of ``torch_ws.ws_bound_batched`` and one backward;

with torch's default thread count (2 on this machine), and the same with 1 thread (the setting of
`torch-ws reproduce`'s worker processes). It reports microseconds per model and the speed-up.

Usage: python benchmarks/bench_batched.py [--quick]. Writes results/bench_batched.{json,md}
(and _quick).
"""
from __future__ import annotations

import argparse
import sys

import torch

import torch_ws

from common import RESULTS, machine, time_alternating, write_json

N, D = 200, 2


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def problem(models: int, hidden: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    target = (torch.rand(N, generator=gen) > 0.5).double()
    params = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
              for shape in ((models, hidden, D), (models, hidden), (models, 1, hidden),
                            (models, 1))]
    return x, target, params


def methods(models: int, hidden: int):
    x, target, params = problem(models, hidden)

    def loop():
        bounds = [torch_ws.ws_bound(x, target, *(p[b] for p in params), "tanh", "mean")
                  for b in range(models)]
        torch.autograd.grad(torch.stack(bounds).sum(), params)

    def batched():
        bounds = torch_ws.ws_bound_batched(x, target, *params, "tanh", "mean")
        torch.autograd.grad(bounds.sum(), params)

    return {"loop": loop, "batched": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    args = parser.parse_args()
    batches = (16, 128) if args.quick else (1, 16, 128, 512)
    reps = 5 if args.quick else 15
    default_threads = torch.get_num_threads()
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for hidden in (3, 10):
            for models in batches:
                t = time_alternating(methods(models, hidden), reps=reps)
                row = {"threads": threads, "H": hidden, "B": models,
                       "loop_us_per_model": 1e6 * t["loop"] / models,
                       "batched_us_per_model": 1e6 * t["batched"] / models,
                       "speedup": t["loop"] / t["batched"]}
                rows.append(row)
                log(row)
    torch.set_num_threads(default_threads)
    suffix = "_quick" if args.quick else ""
    write_json(f"bench_batched{suffix}.json", {"machine": machine(), "rows": rows})
    lines = [
        "# ws_bound_batched against B calls of ws_bound (value + gradient)", "",
        f"N = {N}, D = {D}, tanh, BCE, float64; medians of alternating repetitions. "
        f"Machine: {machine()['cpu']}, {machine()['cores']} cores, torch {torch.__version__}.",
        "", "| threads | H | B | loop µs/model | batched µs/model | speed-up |",
        "|---|---|---|---|---|---|"]
    lines += [f"| {r['threads']} | {r['H']} | {r['B']} | {r['loop_us_per_model']:.0f} | "
              f"{r['batched_us_per_model']:.0f} | {r['speedup']:.2f}× |" for r in rows]
    (RESULTS / f"bench_batched{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
