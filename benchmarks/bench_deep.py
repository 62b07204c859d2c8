"""Deep MLPs (issue 29's targets): deep_ws_bounds' λ_max bound, value and gradient, against
third-order autograd through torch.func.hessian of the same network, and its time and peak
memory at the edge-of-stability width and on the digits set.

    python benchmarks/bench_deep.py            # results/bench_deep.{json,md}

Each configuration runs in a fresh interpreter (`--one NAME`) so that its peak resident memory
(the first call's) is its own; the time is the median of the calls after the first (run_one).
The baseline runs where it fits (it forms the n × n Hessian and differentiates through it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import (  # noqa: E402
    fmt_bytes, fmt_time, json_in_subprocess, machine, machine_line, peak_rss, publish,
)

# name: (N, D, hidden widths, C, loss, dtype, gradient?, baseline?)
CONFIGS = {
    "32x32-N100": (100, 20, [32, 32], 1, "bce", torch.float64, True, True),
    "32x32-N500": (500, 20, [32, 32], 1, "bce", torch.float64, True, True),
    "32x32-N500-sample": (500, 20, [32, 32], 1, "bce", torch.float64, True, False),
    "200x200-N250": (250, 64, [200, 200], 1, "bce", torch.float32, True, False),
    "200x200-N500": (500, 64, [200, 200], 1, "bce", torch.float32, True, False),
    "200x200-N1000-value": (1000, 64, [200, 200], 1, "bce", torch.float32, False, False),
    "200x200-N1000": (1000, 64, [200, 200], 1, "bce", torch.float32, True, False),
    "digits-64x64-value": (1797, 64, [64, 64], 10, "cross_entropy", torch.float32, False, False),
}

# Rows run with an engine forced (TORCH_WS_ENGINE); the others take the automatic choice.
FORCED = {"32x32-N500-sample": "sample"}


def problem(n, d, widths, c, loss, dtype):
    g = torch.Generator().manual_seed(0)
    if n == 1797:  # the digits set, standardised
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=dtype)
        x = (x - x.mean(0)) / (x.std(0) + 1)
        target = torch.tensor(data.target)
    else:
        x = torch.randn(n, d, generator=g, dtype=dtype)
        target = (torch.rand(n, generator=g) > 0.5).to(dtype)
    dims = [d] + widths + [c]
    weights = [(torch.randn(o, i, generator=g, dtype=dtype) / i ** 0.5).requires_grad_()
               for i, o in zip(dims, dims[1:])]
    biases = [torch.zeros(o, dtype=dtype).requires_grad_() for o in dims[1:]]
    return x, target, weights, biases


def ours(x, target, weights, biases, loss, gradient):
    import torch_ws

    with torch.set_grad_enabled(gradient):
        bound = torch_ws.deep_ws_bounds(x, target, weights, biases, "tanh", "mean", loss)
    if gradient:
        bound.lambda_max_upper.backward()
    engine = torch.ops.torch_ws._deep_engine(x, target, [w.detach() for w in weights],
                                             [b.detach() for b in biases], "tanh", "mean", loss)
    return float(bound.lambda_max_upper.detach()), bound.num_params, engine


def baseline(x, target, weights, biases, loss):
    from deep_testing import explicit_hessian

    H = explicit_hessian(x, target, weights, biases, "tanh", "mean", loss)
    n = H.shape[0]
    m = H.trace() / n
    upper = m + ((H * H).sum() / n - m * m).sqrt() * (n - 1) ** 0.5
    upper.backward()
    return float(upper.detach())


def run_one(name: str, method: str) -> dict:
    """One configuration in this process: the first call's time and the resident memory it adds,
    then, while the calls so far took under 20 s, up to three more calls: their median is the
    time reported (a call in a loop, as users make them: the first of a fresh process also pays
    for loading, starting threads and first-touching its memory, ~0.07 s at [32, 32], N = 500,
    which weighs on a 0.1 s call and not on the baseline's seconds; both are repeated alike)."""
    n, d, widths, c, loss, dtype, gradient, _ = CONFIGS[name]
    x, target, weights, biases = problem(n, d, widths, c, loss, dtype)

    def call():
        for t in weights + biases:
            t.grad = None
        if method == "ours":
            return ours(x, target, weights, biases, loss, gradient)
        return baseline(x, target, weights, biases, loss), None, None

    before = peak_rss()
    start = time.perf_counter()
    value, params, engine = call()
    first = time.perf_counter() - start
    peak = peak_rss() - before
    times, spent = [], first
    while spent < 20 and len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    seconds = sorted(times)[len(times) // 2] if times else first
    return {"seconds": seconds, "first_seconds": first, "repeats": len(times), "value": value,
            "num_params": params, "engine": engine, "peak_bytes": peak}


def in_subprocess(name: str, method: str, timeout: float) -> dict | None:
    env = dict(os.environ)
    env.pop("TORCH_WS_ENGINE", None)
    if name in FORCED:
        env["TORCH_WS_ENGINE"] = FORCED[name]
    return json_in_subprocess(__file__, ["--one", name, method], timeout, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("NAME", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    m = machine()
    rows, payload = [], {"machine": m, "results": {}}
    for name, config in CONFIGS.items():
        result = {"ours": in_subprocess(name, "ours", args.timeout)}
        if config[-1]:
            result["baseline"] = in_subprocess(name, "baseline", args.timeout)
        payload["results"][name] = result
        o, b = result["ours"], result.get("baseline")
        speedup = (f"{b['seconds'] / o['seconds']:.0f}×" if b and "seconds" in b and "seconds" in o
                   else "—")
        rows.append(f"| {name} | {o.get('num_params', '—')} | {o.get('engine') or '—'} | "
                    f"{fmt_time(o.get('seconds'))} | {fmt_time(o.get('first_seconds'))} | "
                    f"{fmt_bytes(o.get('peak_bytes'))} | "
                    f"{fmt_time(b.get('seconds')) if b else '—'} | "
                    f"{fmt_bytes(b.get('peak_bytes')) if b else '—'} | {speedup} |")
    text = "\n".join([
        machine_line(m, "python benchmarks/bench_deep.py"),
        "",
        "deep_ws_bounds' λ_max bound, value and gradient (a fresh process per configuration; the "
        "median of up to three calls after the first, while they take under 20 s in all, else "
        "the first; `-value`: "
        "the value alone), against third-order autograd through torch.func.hessian of the same "
        "network (tanh). Engine: the deep family's (csrc/ops/deep/engines.cpp), chosen "
        "automatically except where the name says (`-sample`: TORCH_WS_ENGINE=sample). Peak: "
        "resident memory added by the call.",
        "",
        "| problem | n | engine | ours | ours, first call | ours peak | baseline | baseline peak "
        "| speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    publish("bench_deep", payload, text)


if __name__ == "__main__":
    main()
