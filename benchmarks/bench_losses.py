"""Value + gradient of the WS bound for heads of C = 10 logits (softmax cross-entropy): torch_ws
against the same closed form in plain PyTorch with autograd (reference.py, on whole N×N·C²
arrays) and double-backprop through the explicit Hessian (torch.func.hessian) where it fits.

    python benchmarks/bench_losses.py            # every configuration (about 10 minutes)
    python benchmarks/bench_losses.py --quick    # the N = 500 configuration only
    python benchmarks/bench_losses.py --only 3   # re-measure one row of the last full run

Times are medians of methods timed in turn in one process (common.time_alternating). Peak memory
is the resident-set high-water mark one call adds, each method in a fresh interpreter; a method
that does not fit under MEMORY_CAP is reported as such, not run to an out-of-memory kill.
Results: benchmarks/results/bench_losses.json and .md.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The slow references the tests check against (never part of the package): the baselines.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import (  # noqa: E402
    RESULTS, fmt_bytes, fmt_time, machine, peak_memory, peak_memory_in_subprocess,
    time_alternating, write_json,
)

import torch_ws  # noqa: E402
import reference  # noqa: E402

ACT = "tanh"
LOSS = "cross_entropy"
#: Address-space cap of a memory measurement's interpreter: a baseline above it fails cleanly.
MEMORY_CAP = 16 << 30

# (name, N, D, H, C, dtype, methods timed)
CONFIGS = [
    ("N=500, D=20, H=32 (n=1002), float64", 500, 20, 32, 10, torch.float64,
     ("torch_ws", "plain_pytorch", "double_backprop")),
    ("digits: N=1797, D=64, H=32, float32", 1797, 64, 32, 10, torch.float32,
     ("torch_ws", "plain_pytorch")),
    ("N=4096, D=128, H=256, float32", 4096, 128, 256, 10, torch.float32, ("torch_ws",)),
    ("N=20000, D=32, H=64, float32", 20000, 32, 64, 10, torch.float32, ()),
]


def problem(n, d, h, c, dtype, seed=0):
    """x, class labels and (w1, b1, w2, b2) at nn.Linear's initialization scale."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    params = [
        (torch.rand(h, d, generator=gen, dtype=dtype) * 2 - 1) / d**0.5,
        (torch.rand(h, generator=gen, dtype=dtype) * 2 - 1) / d**0.5,
        (torch.rand(c, h, generator=gen, dtype=dtype) * 2 - 1) / h**0.5,
        (torch.rand(c, generator=gen, dtype=dtype) * 2 - 1) / h**0.5,
    ]
    return x, labels, [p.requires_grad_() for p in params]


def methods_for(x, labels, params):
    def run(fn):
        def call():
            for p in params:
                p.grad = None
            fn(x, labels, *params, ACT, "mean", LOSS).backward()
        return call

    return {
        "torch_ws": run(torch_ws.ws_bound),
        "plain_pytorch": run(reference.ws_bound_closed_form),
        "double_backprop": run(reference.ws_bound_explicit),
    }


def peak(index: int, method: str) -> int | None:
    return peak_memory_in_subprocess(__file__, [str(index), method])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", type=int, metavar="INDEX",
                    help="re-measure configuration INDEX (0-3) and replace its row in the results")
    ap.add_argument("--peak", nargs=2, metavar=("CONFIG", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak:  # one call in this fresh interpreter, capped: print the bytes it added
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
        _, n, d, h, c, dtype, _ = CONFIGS[int(args.peak[0])]
        x, labels, params = problem(n, d, h, c, dtype)
        print(peak_memory(methods_for(x, labels, params)[args.peak[1]]))
        return

    rows = []
    indices = range(1) if args.quick else range(len(CONFIGS))
    if args.only is not None:  # keep the other rows of the last full run
        rows = json.loads((RESULTS / "bench_losses.json").read_text())["rows"]
        indices = [args.only]
    for index in indices:
        name, n, d, h, c, dtype, timed = CONFIGS[index]
        x, labels, params = problem(n, d, h, c, dtype)
        methods = {k: v for k, v in methods_for(x, labels, params).items() if k in timed}
        big = n >= 4096
        times = time_alternating(methods, reps=3 if big else 7, warmup=1, budget_s=120) if methods else {}
        row = {"config": name, "N": n, "D": d, "H": h, "C": c, "dtype": str(dtype),
               "num_params": torch_ws.num_params(*params), "median_s": times, "peak_bytes": {}}
        for method in ("torch_ws", "plain_pytorch"):
            row["peak_bytes"][method] = peak(index, method)
        if "torch_ws" not in times:  # the largest: one timed call in the measuring process
            import time
            start = time.perf_counter()
            methods_for(x, labels, params)["torch_ws"]()
            times["torch_ws"] = time.perf_counter() - start
        if args.only is not None:
            rows = [row if r["config"] == name else r for r in rows]
        else:
            rows.append(row)
        print(name, {k: fmt_time(v) for k, v in times.items()},
              {k: fmt_bytes(v) for k, v in row["peak_bytes"].items()}, flush=True)
        write_results(rows, args.quick)  # after every row: a long run stopped early keeps them


def write_results(rows, quick: bool) -> None:
    stem = "bench_losses_quick" if quick else "bench_losses"
    write_json(f"{stem}.json", {"machine": machine(), "rows": rows})
    lines = [
        "# WS bound value + gradient, softmax cross-entropy with C = 10 (benchmarks/bench_losses.py)",
        "",
        f"Machine: {machine()['cpu']}, {machine()['torch_threads']} threads, torch {torch.__version__}.",
        "Medians of methods timed in turn; peak = resident memory one call adds (fresh process, "
        f"capped at {fmt_bytes(MEMORY_CAP)}: '—' means it did not fit or was not run).",
        "",
        "| configuration | n | torch_ws | plain PyTorch | double-backprop | vs plain | vs double-backprop "
        "| peak torch_ws | peak plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["median_s"]
        ratio = lambda k: f"{t[k] / t['torch_ws']:.1f}×" if k in t else "—"  # noqa: E731
        lines.append(
            f"| {r['config']} | {r['num_params']} | {fmt_time(t.get('torch_ws'))} | "
            f"{fmt_time(t.get('plain_pytorch'))} | {fmt_time(t.get('double_backprop'))} | "
            f"{ratio('plain_pytorch')} | {ratio('double_backprop')} | "
            f"{fmt_bytes(r['peak_bytes']['torch_ws'])} | {fmt_bytes(r['peak_bytes']['plain_pytorch'])} |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
