"""The interval's Weyl candidate at scale with R's blocks against R's majorant (docs/math.md §11.2
"Weyl at scale"), on random networks between the dual matrix's scale limits (N·C between 8192 and
16,384, n too large for the assembled Hessian), where the interval has nothing tighter.

For each problem: the interval's `upper` with 2 Lanczos steps (its source, and its time), what the
same Weyl bound gives with R's majorant in place of R's blocks (spectral_bound's λ_max(GGN) plus
the private op _residual_majorant, the candidate before R's blocks were used at scale), and the
interval's `lower` with the default 32 steps. Writes results/weyl_at_scale.{json,md}.

    python benchmarks/weyl_at_scale.py      (about 1 minute on 2 cores)
"""
import sys
import time
from pathlib import Path

import torch

import torch_ws

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, publish  # noqa: E402
from testing import make_head_problem  # noqa: E402

PROBLEMS = [("cross_entropy", 6, "indices", 1700, 3, 330), ("cross_entropy", 10, "probabilities",
                                                              1000, 3, 420)]


def main():
    rows = []
    for loss, c, kind, n, d, h in PROBLEMS:
        args = make_head_problem(loss, c, kind, n=n, d=d, h=h, seed=17)
        start = time.perf_counter()
        wide = torch_ws.lambda_max_interval(*args, "tanh", "mean", loss, steps=2)
        seconds = time.perf_counter() - start
        ggn = torch_ws.spectral_bound(*args, "tanh", "mean", loss).ggn_lambda_max
        majorant = torch.ops.torch_ws._residual_majorant(*args, "tanh", "mean", loss)
        lower = torch_ws.lambda_max_interval(*args, "tanh", "mean", loss).lower
        rows.append({"loss": loss, "classes": c, "samples": n, "inputs": d, "hidden": h,
                     "params": torch_ws.num_params(*args[2:]), "upper": float(wide.upper),
                     "source": wide.source, "seconds": seconds,
                     "ggn_plus_majorant": float(ggn) + float(majorant), "lower": float(lower)})
    m = machine()
    lines = [machine_line(m, "python benchmarks/weyl_at_scale.py"), "",
             "| loss | C | N | D | H | n | interval upper (source) | time | GGN + majorant | "
             "λ_max ≥ |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['classes']} | {r['samples']} | {r['inputs']} | "
                     f"{r['hidden']} | {r['params']} | {r['upper']:.3f} ({r['source']}) | "
                     f"{r['seconds']:.1f} s | {r['ggn_plus_majorant']:.3f} | {r['lower']:.3f} |")
    publish("weyl_at_scale", {"machine": m, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
