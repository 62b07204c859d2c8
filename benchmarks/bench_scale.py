"""Scale of the tiled sample-space engine (issue: tiled, memory-bounded evaluation).

    python benchmarks/bench_scale.py --quick   # N up to 20,000
    python benchmarks/bench_scale.py           # N up to 50,000 (make bench)

1. Value + gradient of λ_sup for N up to 50,000 at D=32, H=64 float32: median time and the peak
   resident memory of a fresh process (ru_maxrss), which includes torch itself.
2. Efficiency at N=4096, D=128, H=256 float32: the least matrix-product work the closed form
   needs (value N²D/2 + 4N²H multiply-adds, gradient 8N²H more, symmetric products counted
   once, 2 flops each) divided by the time, divided by the best torch.mm rate measured on the
   same shapes in the same run.
3. No regression at the papers' scale: the default (there, the parameter-space engine) and the
   tiled engine against the whole-matrix ATen path, alternating.

Parts 1 and 2 force the tiled engine (TORCH_WS_ENGINE=sample): for a network as small as D=32,
H=64 and N ≥ ~50,000 the automatic choice would be the parameter-space engine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, fmt_time, machine, mlp_problem, time_alternating, write_json  # noqa: E402

import torch_ws  # noqa: E402

PEAK_TARGET_BYTES = 2.5e9


def set_engine(engine: str | None, tile: str | None) -> None:
    """Sets (or, for None, unsets) TORCH_WS_ENGINE and TORCH_WS_TILE_SIZE for the next calls."""
    for name, value in (("TORCH_WS_ENGINE", engine), ("TORCH_WS_TILE_SIZE", tile)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def value_and_grad(x, t, params):
    for p in params:
        p.grad = None
    torch_ws.ws_bound(x, t, *params, "tanh").backward()


def run_one(n, d, h, reps):
    """In this (fresh) process: median time of value+gradient and the process's peak RSS."""
    set_engine("sample", None)
    x, t, params = mlp_problem(n, d, h, torch.float32)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        value_and_grad(x, t, params)
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"N": n, "D": d, "H": h, "time_s": times[len(times) // 2], "peak_rss_bytes": peak}))


def scale_row(n, d, h, reps):
    out = subprocess.run([sys.executable, __file__, "--one", str(n), str(d), str(h), str(reps)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_mm_rate(shapes, dtype=torch.float32) -> tuple[float, str]:
    """The best torch.mm rate (flop/s) over the given (m, k, n) shapes, median of a few calls."""
    best, best_shape = 0.0, ""
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        reps = max(3, min(50, int(4e9 / (2 * m * k * n))))
        secs = time_alternating({"mm": lambda: torch.mm(a, b)}, reps)["mm"]
        rate = 2 * m * k * n / secs
        if rate > best:
            best, best_shape = rate, f"{m}×{k}·{k}×{n}"
    return best, best_shape


def efficiency(n=4096, d=128, h=256, reps=5):
    set_engine("sample", None)
    x, t, params = mlp_problem(n, d, h, torch.float32)
    secs = time_alternating({"op": lambda: value_and_grad(x, t, params)}, reps)["op"]
    macs = n * n * d / 2 + 4 * n * n * h + 8 * n * n * h
    achieved = 2 * macs / secs
    tile = torch.ops.torch_ws._tile_size(n)
    shapes = [(tile, h, tile), (tile, tile, h), (tile, d, tile), (n, h, n), (n, n, h), (n, h, tile)]
    rate, shape = best_mm_rate(shapes)
    return {"N": n, "D": d, "H": h, "time_s": secs, "least_work_flop": 2 * macs,
            "achieved_flops": achieved, "best_mm_flops": rate, "best_mm_shape": shape,
            "efficiency": achieved / rate, "tile": tile}


def papers_scale_regression(reps=50):
    x, t, params = mlp_problem(200, 2, 10, torch.float64)

    def with_engine(engine, tile):
        def run():
            set_engine(engine, tile)
            value_and_grad(x, t, params)
        return run

    try:
        times = time_alternating({"default": with_engine(None, None),
                                  "tiled": with_engine("sample", None),
                                  "whole matrices": with_engine("sample", "whole")}, reps)
    finally:
        set_engine(None, None)
    engine = torch.ops.torch_ws._engine(x, params[0], True, True)
    return {"N": 200, "D": 2, "H": 10, "dtype": "float64", "time_s": times, "default_engine": engine}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(*args.one)
        return
    from tqdm import tqdm

    sizes = [1000, 2000, 5000, 10000, 20000] + ([] if args.quick else [50000])
    rows = [scale_row(n, 32, 64, reps=3 if n <= 10000 else 1) for n in tqdm(sizes, desc="N")]
    eff = efficiency()
    reg = papers_scale_regression()
    set_engine(None, None)
    payload = {"machine": machine(), "command": "python benchmarks/bench_scale.py" + (" --quick" if args.quick else ""),
               "scale": rows, "efficiency": eff, "papers_scale": reg}
    row20k = next(r for r in rows if r["N"] == 20000)
    payload["targets"] = [
        {"target": "N=20,000 D=32 H=64 float32 value+gradient peak RSS < 2.5 GB",
         "value": f"{row20k['peak_rss_bytes'] / 1e9:.2f} GB", "met": row20k["peak_rss_bytes"] < PEAK_TARGET_BYTES},
        {"target": "efficiency at N=4096 D=128 H=256 float32 ≥ 0.7", "value": f"{eff['efficiency']:.2f}",
         "met": eff["efficiency"] >= 0.7},
        {"target": "no regression at the papers' scale (default ≤ 1.1 × whole-matrix time)",
         "value": f"{reg['time_s']['default'] / reg['time_s']['whole matrices']:.2f}×",
         "met": reg["time_s"]["default"] <= 1.1 * reg["time_s"]["whole matrices"]},
    ]
    suffix = "_quick" if args.quick else ""
    write_json(f"bench_scale{suffix}.json", payload)
    m = payload["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Command: `{payload['command']}`.", "",
             "| N | D | H | value + gradient | peak RSS (whole process) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']} | {r['D']} | {r['H']} | {fmt_time(r['time_s'])} | {r['peak_rss_bytes'] / 1e9:.2f} GB |")
    lines += ["", f"Efficiency at N=4096, D=128, H=256 float32: {eff['least_work_flop'] / 1e9:.0f} GFLOP of least "
                  f"work in {fmt_time(eff['time_s'])} = {eff['achieved_flops'] / 1e9:.0f} GFLOP/s; best torch.mm "
                  f"{eff['best_mm_flops'] / 1e9:.0f} GFLOP/s ({eff['best_mm_shape']}); efficiency "
                  f"**{eff['efficiency']:.2f}** (tile {eff['tile']}).", "",
              f"Papers' scale (N=200, D=2, H=10, float64), value + gradient: default ({reg['default_engine']} "
              f"engine) {fmt_time(reg['time_s']['default'])}, tiled {fmt_time(reg['time_s']['tiled'])}, "
              f"whole matrices {fmt_time(reg['time_s']['whole matrices'])}.", "",
              "| target | value | met |", "|---|---|---|"]
    for tg in payload["targets"]:
        lines.append(f"| {tg['target']} | {tg['value']} | {'yes' if tg['met'] else '**no**'} |")
    md = "\n".join(lines) + "\n"
    (RESULTS / f"bench_scale{suffix}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
