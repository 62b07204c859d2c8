"""Deep MLPs beyond the assembled Hessian: the certified interval on λ_max with 32 Lanczos steps
(the default until session 15) against the automatic count (docs/math.md §12.6), on the
edge-of-stability width.

    python benchmarks/bench_deep_interval.py     # about 2 minutes → results/bench_deep_interval.{json,md}

The network: two tanh hidden layers [200, 200], D = 64, one logit (BCE), N = 1000, float32
(n = 53,401: the exact traces come from the Gram forms, which dominate the call), at its
initialization and after 400 full-batch Adam steps (lr 10⁻³) on random labels (loss ~2·10⁻⁴).
`torch_ws.sharpness` is timed once per row, in this process, alternating the two counts.

    python benchmarks/bench_deep_interval.py --gradient STEPS   # one value and gradient call

runs `deep_lambda_max_interval` with its gradient once at the initialization with STEPS steps
(0: automatic), in a fresh process, and prints its time and the process's peak resident memory.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch_ws  # noqa: E402
from common import fmt_bytes, fmt_time, machine, machine_line, peak_rss, publish  # noqa: E402

N, D, WIDTHS, TRAIN_STEPS = 1000, 64, [200, 200], 400


def network(trained: bool):
    torch.manual_seed(0)
    x = torch.randn(N, D)
    y = torch.randint(0, 2, (N,)).float()
    layers, width = [], D
    for h in WIDTHS:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 1))
    if trained:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(TRAIN_STEPS):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
            opt.step()
    with torch.no_grad():
        loss = float(nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y))
    return model, x, y, loss


def main():
    rows = []
    for trained in (False, True):
        model, x, y, loss = network(trained)
        for steps in (32, None):
            start = time.perf_counter()
            s = torch_ws.sharpness(model, x, y, loss="bce", steps=steps)
            seconds = time.perf_counter() - start
            interval = s.lambda_max
            rows.append({"net": "trained" if trained else "initialization", "loss": loss,
                         "steps": len(interval.ritz_values), "automatic": steps is None,
                         "lower": float(interval.lower), "upper": float(interval.upper),
                         "source": interval.source, "seconds": seconds})
            print(rows[-1], flush=True)
    m = machine()
    lines = [machine_line(m, "python benchmarks/bench_deep_interval.py"), "",
             "| net | loss | steps | lower | upper | upper / lower | source | time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = f"{r['steps']} (automatic)" if r["automatic"] else str(r["steps"])
        lines.append(f"| {r['net']} | {r['loss']:.3g} | {steps} | {r['lower']:.6g} | "
                     f"{r['upper']:.6g} | {r['upper'] / r['lower']:.4f} | {r['source']} | "
                     f"{fmt_time(r['seconds'])} |")
    publish("bench_deep_interval", {"machine": m, "rows": rows}, "\n".join(lines) + "\n")


def gradient(steps: int):
    model, x, y, _ = network(trained=False)
    weights, biases = [m.weight for m in model[::2]], [m.bias for m in model[::2]]
    start = time.perf_counter()
    interval = torch_ws.deep_lambda_max_interval(x, y, weights, biases, steps=steps or None)
    interval.upper.backward()
    print(f"steps {len(interval.ritz_values)}: value and gradient {time.perf_counter() - start:.1f} s, "
          f"peak resident {fmt_bytes(peak_rss())}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--gradient"]:
        gradient(int(sys.argv[2]))
    else:
        main()
