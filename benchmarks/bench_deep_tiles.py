"""The deep Gram forms in tiles (docs/math.md §12.4): tr H and tr(H²) with their gradient in every
layer, in the default tiles (checkpointed in reverse mode) against one tile of all N rows (what
autograd records without tiles: every (N, N) matrix of every pair term), time and peak memory.

    python benchmarks/bench_deep_tiles.py      # results/bench_deep_tiles.{json,md}

Each call runs in a fresh interpreter (`--one NAME MODE`) so that its peak resident memory is its
own; the two modes alternate, `--reps` times each. The values must agree (the tiles re-associate
the same float64 sums).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    fmt_bytes, fmt_time, json_in_subprocess, machine, machine_line, peak_rss, publish,
)

# name: (N, D, hidden widths, C, whether one tile fits in this machine's 24 GiB)
CONFIGS = {
    "16x16-N4000": (4000, 20, [16, 16], 1, True),
    "16x16-N8000": (8000, 20, [16, 16], 1, False),
    "64x64-C10-N800": (800, 64, [64, 64], 10, True),
    "200x200-N250": (250, 64, [200, 200], 1, True),
    "200x200-N500": (500, 64, [200, 200], 1, True),
}


def run_one(name: str, mode: str) -> dict:
    import torch_ws  # noqa: F401  (registers the ops)

    n, d, widths, c, _ = CONFIGS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    target = ((torch.rand(n, generator=g) > 0.5).double() if c == 1
              else torch.randint(0, c, (n,), generator=g))
    loss = "bce" if c == 1 else "cross_entropy"
    dims = [d] + widths + [c]
    weights = [(torch.randn(o, i, generator=g, dtype=torch.float64) / i ** 0.5).requires_grad_()
               for i, o in zip(dims, dims[1:])]
    biases = [torch.zeros(o, dtype=torch.float64).requires_grad_() for o in dims[1:]]
    before = peak_rss()
    start = time.perf_counter()
    trace, trace_sq, _, _ = torch.ops.torch_ws._deep_gram_form_traces(
        x, target, weights, biases, "tanh", "mean", loss, 0, None, n if mode == "one tile" else 0)
    grads = torch.autograd.grad(0.3 * trace + 0.7 * trace_sq, weights + biases)
    return {"seconds": time.perf_counter() - start, "peak_bytes": peak_rss() - before,
            "trace_sq": float(trace_sq.detach()), "grad_norm": float(sum(g.pow(2).sum() for g in grads))}


def in_subprocess(name: str, mode: str, timeout: float) -> dict:
    return json_in_subprocess(__file__, ["--one", name, mode], timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("NAME", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    m = machine()
    rows, payload = [], {"machine": m, "results": {}}
    for name, (n, d, widths, c, fits) in CONFIGS.items():
        modes = ["one tile", "tiles"] if fits else ["tiles"]
        runs = {mode: [] for mode in modes}
        for _ in range(args.reps):
            for mode in modes:
                runs[mode].append(in_subprocess(name, mode, args.timeout))
        payload["results"][name] = runs

        def cell(mode):
            if mode not in runs:
                return "—", "not run: its (N, N) matrices exceed 24 GiB"
            ok = [r for r in runs[mode] if "seconds" in r]
            if not ok:
                return "—", str(runs[mode][0])
            times = " / ".join(fmt_time(r["seconds"]) for r in ok)
            return times, fmt_bytes(max(r["peak_bytes"] for r in ok))

        whole, tiled = cell("one tile"), cell("tiles")
        values = {mode: runs[mode][0].get("trace_sq") for mode in runs}
        agree = ("yes" if len(values) == 2 and values["one tile"] is not None
                 and abs(values["one tile"] - values["tiles"]) <= 1e-12 * abs(values["tiles"])
                 else "—")
        rows.append(f"| {name} | {n} | {widths} | {c} | {whole[0]} | {whole[1]} | {tiled[0]} | "
                    f"{tiled[1]} | {agree} |")
    text = "\n".join([
        machine_line(m, "python benchmarks/bench_deep_tiles.py"),
        "",
        "tr H and tr(H²) by the deep Gram forms (`_deep_gram_form_traces`, float64, tanh, D as "
        "in the name's problem: 20 or 64) and their gradient in every weight and bias: one tile "
        "of all N rows (autograd records every pair term's (N, N) matrices) against the default "
        "tiles (checkpointed: the backward records one tile at a time). A fresh process per "
        "call, the modes alternated; each time listed, the largest peak (resident memory added "
        "by the call). `agree`: tr(H²) equal to 1e-12.",
        "",
        "| problem | N | hidden | C | one tile | its peak | tiles | their peak | agree |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    publish("bench_deep_tiles", payload, text)


if __name__ == "__main__":
    main()
