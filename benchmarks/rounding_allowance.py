"""How far the float32 traces stray from float64, in units of the rounding allowance's scale.

The bound is widened by κ·u·q on m = tr H/n and κ·u·q² on s² = tr(H²)/n − m² (u = 2⁻²⁴,
q² = tr(H²)/n; csrc/core/ws_bound.h, docs/math.md §5.1). This measures, over random problems
(every activation, loss, engine, bias setting; weights scaled to saturate the network), the
float32 errors |Δm|/(u·q) and |Δs²|/(u·q²) against float64 runs on the same float32 values, and
prints the largest per weight scale: κ must exceed them. Cases whose tr(H²) is below 1e-30
(Hessian entries near float32's underflow) are counted apart: float32 cannot hold them.

    python benchmarks/rounding_allowance.py [--trials 400] [--deep]

--deep measures the same for torch_ws.deep_hessian_traces on networks of 2 and 3 hidden layers
(docs/math.md §12.5).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import random

import torch

import torch_ws

U32 = 2.0 ** -24


def errors_in_units(trace32, trace_sq32, trace, trace_sq, num, case):
    """(|Δm|/(u·q), |Δs²|/(u·q²), case), or None where tr(H²) < 1e-30 (float32 cannot hold it)."""
    mean_square = trace_sq / num
    if mean_square * num < 1e-30:
        return None
    m32, m = trace32 / num, trace / num
    spread32, spread = trace_sq32 / num - m32 ** 2, mean_square - m ** 2
    q = math.sqrt(mean_square)
    return abs(m32 - m) / (U32 * q), abs(spread32 - spread) / (U32 * mean_square), case


def random_target(loss: str, n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    """Labels for `loss`: 0/1 for bce, class indices for cross_entropy, normal values for mse."""
    if loss == "bce":
        return torch.randint(0, 2, (n,), generator=gen).float()
    if loss == "cross_entropy":
        return torch.randint(0, c, (n,), generator=gen)
    return torch.randn(n, c, generator=gen)


def one_trial(rng: random.Random, scale: float, seed: int):
    n, d, h = rng.randint(1, 40), rng.randint(1, 6), rng.randint(1, 8)
    loss, c = rng.choice([("bce", 1), ("cross_entropy", 3), ("mse", 2), ("mse", 1)])
    act, red = rng.choice(torch_ws.ACTIVATIONS), rng.choice(torch_ws.REDUCTIONS)
    engine = rng.choice(["sample", "parameter"])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) * scale
    w1 = torch.randn(h, d, generator=gen) * scale / math.sqrt(d)
    b1 = torch.randn(h, generator=gen) if rng.random() < 0.5 else None
    w2 = torch.randn(c, h, generator=gen) * scale
    b2 = torch.randn(c, generator=gen) if rng.random() < 0.5 else None
    target = random_target(loss, n, c, gen)
    args32 = [x, target, w1, b1, w2, b2]
    args64 = [t.double() if t is not None and t.is_floating_point() else t for t in args32]
    os.environ["TORCH_WS_ENGINE"] = engine
    trace32, trace_sq32 = (float(t) for t in torch.ops.torch_ws._traces_with_gradients(
        *args32, act, red, False, "benchmark", loss)[:2])
    os.environ["TORCH_WS_ENGINE"] = "auto"
    trace, trace_sq = (float(t) for t in torch_ws.hessian_traces(*args64, act, red, loss))
    return errors_in_units(trace32, trace_sq32, trace, trace_sq, torch_ws.num_params(w1, b1, w2, b2),
                           (act, loss, engine))


def one_deep_trial(rng: random.Random, scale: float, seed: int):
    n, d = rng.randint(1, 30), rng.randint(1, 6)
    widths = [rng.randint(1, 7) for _ in range(rng.choice([2, 3]))]
    loss, c = rng.choice([("bce", 1), ("cross_entropy", 3), ("mse", 2), ("mse", 1)])
    act, red = rng.choice(torch_ws.ACTIVATIONS), rng.choice(torch_ws.REDUCTIONS)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) * scale
    dims = [d] + widths + [c]
    weights = [torch.randn(o, i, generator=gen) * scale / math.sqrt(i) for i, o in zip(dims, dims[1:])]
    weights[-1] = weights[-1] * math.sqrt(dims[-2])  # the output layer unnormalised, as above
    biases = [torch.randn(o, generator=gen) if rng.random() < 0.5 else None for o in dims[1:]]
    target = random_target(loss, n, c, gen)
    wide = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
    trace32, trace_sq32 = (float(t) for t in torch_ws.deep_hessian_traces(
        x, target, weights, biases, act, red, loss))
    trace, trace_sq = (float(t) for t in torch_ws.deep_hessian_traces(
        wide(x), wide(target), [wide(w) for w in weights], [wide(b) for b in biases], act, red, loss))
    return errors_in_units(trace32, trace_sq32, trace, trace_sq,
                           torch_ws.deep_num_params(weights, biases),
                           (act, loss, f"{len(widths)} layers"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400, help="random problems per scale")
    parser.add_argument("--deep", action="store_true", help="deep_hessian_traces, 2-3 hidden layers")
    args = parser.parse_args()
    trial = one_deep_trial if args.deep else one_trial
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| weight scale | problems | tiny (skipped) | max |Δm|/(uq) | max |Δs²|/(uq²) | worst case |")
    print("|---|---|---|---|---|---|")
    for scale in (0.1, 1.0, 3.0, 10.0, 30.0):
        rng = random.Random(int(scale * 1000))
        results = [trial(rng, scale, seed) for seed in range(args.trials)]
        kept = [r for r in results if r is not None]
        worst_m = max(r[0] for r in kept)
        worst = max(kept, key=lambda r: r[1])
        print(f"| {scale:g} | {len(kept)} | {len(results) - len(kept)} | {worst_m:.0f} | "
              f"{worst[1]:.0f} | {'/'.join(worst[2])} |")


if __name__ == "__main__":
    main()
