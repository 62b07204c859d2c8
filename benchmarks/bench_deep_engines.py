"""The deep family's engine choice (csrc/ops/deep/engines.cpp, docs/engines.md): both engines
timed on the shapes the choice was fitted on, and the weight of the assembly's work that makes
the work ratio follow the time ratio.

    python benchmarks/bench_deep_engines.py     # results/bench_deep_engines.{json,md}, ~2 minutes

Each shape: `deep_ws_bounds`' value and the gradient of its λ_max bound, float64, tanh, BCE
(C = 1) or cross-entropy (C = 10), both engines (TORCH_WS_ENGINE) alternated in one process,
medians of up to 3 calls after a warm-up. The work is each engine's row of the table without its
weight: N·n² for the assembly, 4·N²·(Σ_l H_l)²·(1 + (C − 1)/4) for the Gram forms; the weight
that would make the choice exact on a shape is (parameter time / sample time) / (parameter work /
sample work), and the table's weight should sit near their median.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_time, machine, machine_line, publish, time_alternating  # noqa: E402

# (widths, D, N, C)
SHAPES = [
    ([32, 32], 20, 100, 1),
    ([32, 32], 20, 500, 1),
    ([32, 32], 20, 2000, 1),
    ([16, 16], 20, 2000, 1),
    ([48, 48], 10, 300, 1),
    ([48, 48], 10, 1000, 1),
    ([32, 32], 20, 500, 10),
    ([20, 20, 20], 10, 1000, 1),
]


def problem(widths, d, n, c):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    target = (torch.randint(0, c, (n,), generator=g) if c > 1
              else (torch.rand(n, generator=g) > 0.5).double())
    dims = [d] + widths + [c]
    weights = [(torch.randn(o, i, generator=g, dtype=torch.float64) / i ** 0.5).requires_grad_()
               for i, o in zip(dims, dims[1:])]
    biases = [torch.zeros(o, dtype=torch.float64).requires_grad_() for o in dims[1:]]
    return x, target, weights, biases


def main() -> None:
    import torch_ws

    payload, rows, weights_fitted = {"machine": machine(), "results": []}, [], []
    for widths, d, n, c in SHAPES:
        x, target, weights, biases = problem(widths, d, n, c)
        loss = "cross_entropy" if c > 1 else "bce"

        def call(engine):
            os.environ["TORCH_WS_ENGINE"] = engine
            bound = torch_ws.deep_ws_bounds(x, target, weights, biases, "tanh", "mean", loss)
            torch.autograd.grad(bound.lambda_max_upper, weights + biases)

        times = time_alternating({e: (lambda e=e: call(e)) for e in ("sample", "parameter")},
                                 reps=3, warmup=1, budget_s=30)
        os.environ.pop("TORCH_WS_ENGINE", None)
        params = sum(w.numel() for w in weights) + sum(b.numel() for b in biases)
        parameter_work = n * params ** 2
        sample_work = 4 * n ** 2 * sum(widths) ** 2 * (1 + (c - 1) / 4)
        weight = (times["parameter"] / times["sample"]) / (parameter_work / sample_work)
        weights_fitted.append(weight)
        payload["results"].append({"widths": widths, "D": d, "N": n, "C": c, "n": params,
                                   "seconds": times, "weight": weight})
        rows.append(f"| {widths} | {d} | {n:,} | {c} | {params:,} | {fmt_time(times['sample'])} | "
                    f"{fmt_time(times['parameter'])} | {weight:.2f} |")
        print(rows[-1], flush=True)
    median = statistics.median(weights_fitted)
    payload["median_weight"] = median
    text = "\n".join([
        machine_line(payload["machine"], "python benchmarks/bench_deep_engines.py"),
        "",
        "deep_ws_bounds' value and λ_max bound's gradient, float64, tanh, both engines alternated "
        "(medians of up to 3). Weight: the assembly's work weight that would make the choice "
        "exact on the shape ((parameter / sample time) / (N·n² / 4·N²·(ΣH)²·(1 + (C − 1)/4))).",
        "",
        "| widths | D | N | C | n | sample | parameter | weight |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Median weight: {median:.2f}.",
        "",
    ])
    publish("bench_deep_engines", payload, text)


if __name__ == "__main__":
    main()
