"""Deep MLPs: torch-ws's exact tr(H²) = ‖H‖²_F against curvlinops' Hutchinson estimate of it
(issue 29's target: faster than the estimate needs to reach 1% error, on the same network).

    pip install --no-deps curvlinops-for-pytorch backpack-for-pytorch einops einconv \\
        linear_operator opt-einsum unfoldNd          # never a bare `pip install`: it pulls a torch
    python benchmarks/bench_deep_curvlinops.py       # results/bench_deep_curvlinops.{json,md}

The estimate: curvlinops' `HessianLinearOperator` of the real `nn.Sequential` and
`BCEWithLogitsLoss`, Rademacher probes g, each giving ‖Hg‖² (an unbiased estimate of ‖H‖²_F: what
`curvlinops.hutchinson_squared_fro` averages). From `PROBES` probes we take the spread of the
single-probe estimates, cv = std/mean, so that m probes have a relative standard error of
cv/√m; 1% needs m = (cv/0.01)² probes, timed at the measured cost per probe (curvlinops
multiplies them in blocks of `BLOCK`). That is the estimate's time to a 1% standard error, a
lower end of its time to a guaranteed 1% (which Hutchinson cannot give). Ours: one call of
`deep_hessian_traces` (value only: with the gradient, autograd through the Gram forms keeps
O(N²·H) numbers, ~28 GB at N = 1000 widths [200, 200], beyond this machine).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_time, machine, machine_line, publish  # noqa: E402

PROBES = 256
BLOCK = 32
# name: (N, D, hidden widths, dtype)
CONFIGS = {
    "32x32-N500": (500, 20, [32, 32], torch.float64),
    "200x200-N1000": (1000, 64, [200, 200], torch.float32),
}


def network(n, d, widths, dtype):
    """A tanh MLP with PyTorch's default initialization and random binary labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = (torch.rand(n, generator=g) > 0.5).to(dtype)
    torch.manual_seed(0)
    layers = []
    for i, o in zip([d] + widths, widths):
        layers += [torch.nn.Linear(i, o), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], 1)).to(dtype)
    return model, x, y


def exact(model, x, y):
    import torch_ws

    linears = list(model[::2])
    start = time.perf_counter()
    with torch.no_grad():
        _, trace_sq = torch_ws.deep_hessian_traces(
            x, y, [m.weight for m in linears], [m.bias for m in linears], "tanh", "mean", "bce")
    return float(trace_sq), time.perf_counter() - start


def hutchinson(model, x, y, exact_value):
    from curvlinops import HessianLinearOperator

    params = [p for p in model.parameters()]
    H = HessianLinearOperator(model, torch.nn.BCEWithLogitsLoss(), params, [(x, y[:, None])],
                              check_deterministic=False)
    n = H.shape[0]
    g = torch.Generator().manual_seed(1)
    estimates = []
    start = time.perf_counter()
    for _ in range(PROBES // BLOCK):
        G = (torch.randint(0, 2, (n, BLOCK), generator=g) * 2 - 1).to(x.dtype)
        estimates.append(((H @ G) ** 2).sum(0).double())
    per_probe = (time.perf_counter() - start) / PROBES
    q = torch.cat(estimates)
    cv = float(q.std() / q.mean())
    needed = math.ceil((cv / 0.01) ** 2)
    return {"per_probe_s": per_probe, "cv": cv, "probes_for_1pct": needed,
            "time_for_1pct_s": needed * per_probe, "mean_of_probes": float(q.mean()),
            "mean_error": float(q.mean()) / exact_value - 1, "n": n}


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name, (n, d, widths, dtype) in CONFIGS.items():
        model, x, y = network(n, d, widths, dtype)
        value, ours_s = exact(model, x, y)
        est = hutchinson(model, x, y, value)
        rows.append({"problem": name, "N": n, "D": d, "widths": widths, "dtype": str(dtype),
                     "trace_sq": value, "ours_s": ours_s, **est})
        print(f"[{name}] exact {value:.6g} in {fmt_time(ours_s)}; Hutchinson cv {est['cv']:.3f}, "
              f"{est['probes_for_1pct']} probes for 1% at {fmt_time(est['per_probe_s'])} each "
              f"= {fmt_time(est['time_for_1pct_s'])}", flush=True)
    m = machine()
    command = "python benchmarks/bench_deep_curvlinops.py"
    lines = [machine_line(m, command), "",
             "Exact ‖H‖²_F = tr(H²) of a deep tanh MLP (BCE, default init, random labels) by "
             "`deep_hessian_traces` (value), against curvlinops' Hutchinson estimate "
             f"(HessianLinearOperator, Rademacher probes in blocks of {BLOCK}): the probes a 1% "
             f"relative standard error needs, from the spread of {PROBES} single-probe "
             "estimates, times the measured cost per probe.", "",
             "| problem | n | exact tr(H²) | ours (exact) | per probe | single-probe cv | "
             f"probes for 1% | Hutchinson to 1% | ours / Hutchinson-1% | mean of the {PROBES} "
             "probes / exact − 1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['n']:,} | {r['trace_sq']:.6g} | "
                     f"{fmt_time(r['ours_s'])} | {fmt_time(r['per_probe_s'])} | {r['cv']:.3f} | "
                     f"{r['probes_for_1pct']:,} | {fmt_time(r['time_for_1pct_s'])} | "
                     f"{r['ours_s'] / r['time_for_1pct_s']:.2f} | {r['mean_error']:+.4f} |")
    publish("bench_deep_curvlinops", {"machine": m, "command": command, "rows": rows},
            "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
