"""No performance cliff at the engine and tile switch points, and an HSR step near its least work.

    python benchmarks/bench_sweep.py            # make bench (under a minute on 2 cores)
    python benchmarks/bench_sweep.py --quick    # fewer repetitions

1. Value + gradient of λ_sup for N = 128, 160, …, 1024 at D=64, H=128 and D=784, H=256 (float32,
   the automatic engine and tile): the median time of each N, every N timed in the same alternation
   (so that drift in machine speed hits all alike), and the largest step up between neighbours.
   A step is judged against the growth of the work itself: the least work grows as N², by 56%
   from 128 to 160 and still by 16% from 352 to 384, so the criterion is on the time per unit of
   least work (a cliff shows there as a jump); the raw steps are reported beside it.
2. One HSR training step (SGD, BCE + 0.1·λ_sup) at batch 256 and 1,024, D=784, H=256, against
   the least-work prediction: the plain step's time plus the op's least matrix-product work (as in
   bench_scale.py: N²D/2 + 12N²H multiply-adds) at the best torch.mm rate. The reference
   products are timed in the same alternation as the steps: this machine's speed drifts by tens
   of percent within minutes, and a rate taken at another moment moved the ratio by as much.
   The step must take at most 1.5× the prediction.
"""
from __future__ import annotations

import argparse

import torch
from bench_scale import value_and_grad
from bench_ws import bench_training_step
from common import RESULTS, fmt_time, machine, mlp_problem, time_alternating, write_json


MAX_STEP = 0.15
MAX_STEP_RATIO = 1.5


def least_work_macs(n, d, h):
    """The op's least matrix-product work (multiply-adds), as in bench_scale.py: the Gram tiles of X
    (N²D/2) and the H-wide pairwise products with their adjoints (12N²H)."""
    return n * n * d / 2 + 12 * n * n * h


def sweep(d, h, reps):
    sizes = list(range(128, 1025, 32))
    problems = {n: mlp_problem(n, d, h, torch.float32) for n in sizes}
    times = time_alternating({n: (lambda p=p: value_and_grad(*p)) for n, p in problems.items()}, reps)
    rows = [{"N": n, "D": d, "H": h, "time_s": times[n], "tile": torch.ops.torch_ws._tile_size(n),
             "engine": torch.ops.torch_ws._engine(problems[n][0], problems[n][2][0], True, True),
             "ns_per_mac": times[n] / least_work_macs(n, d, h) * 1e9} for n in sizes]
    raw = [b["time_s"] / a["time_s"] - 1 for a, b in zip(rows, rows[1:])]
    per_work = [b["ns_per_mac"] / a["ns_per_mac"] - 1 for a, b in zip(rows, rows[1:])]
    for row, r, w in zip(rows[1:], raw, per_work):
        row["step"], row["step_per_work"] = r, w
    worst = max(range(len(per_work)), key=per_work.__getitem__)
    worst_raw = max(range(len(raw)), key=raw.__getitem__)
    return {"D": d, "H": h, "rows": rows,
            "max_step_per_work": per_work[worst], "max_step_per_work_at": (sizes[worst], sizes[worst + 1]),
            "max_step": raw[worst_raw], "max_step_at": (sizes[worst_raw], sizes[worst_raw + 1]),
            "met": per_work[worst] <= MAX_STEP}


MM_SHAPES = [(256, 256, 256), (512, 256, 512), (1024, 256, 1024), (256, 784, 256)]


def reference_products(shapes, repeat=4):
    """name → `repeat` torch.mm calls of that (m, k, n) shape (float32), and name → their flops.
    Repeated so that the rate is nearly that of warm caches, as in a loop of products, while the
    steps around it share the machine's speed of the moment."""
    calls, flops = {}, {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        name = f"{m}×{k}·{k}×{n}"
        calls[name] = lambda a=a, b=b: [torch.mm(a, b) for _ in range(repeat)]
        flops[name] = 2 * m * k * n * repeat
    return calls, flops


def hsr_step(batch, d, h, reps):
    """bench_ws's training step (plain and HSR, same model and data) against the prediction, the
    mm rate (the best of MM_SHAPES) timed in the same alternation. Also the prediction that counts
    the op's per-sample work too (A = XW1ᵀ and the chain back to W1: 2·N·D·H multiply-adds, which
    the least-work count leaves out and which matters at D=784)."""
    calls, flops = reference_products(MM_SHAPES)
    times = bench_training_step(batch, d, h, reps, extra=calls)["time_s"]
    rate, shape = max((flops[name] / times[name], name) for name in calls)
    plain, hsr = times["plain"], times["HSR (torch_ws)"]
    predicted = plain + 2 * least_work_macs(batch, d, h) / rate
    predicted_with_features = predicted + 2 * (2 * batch * d * h) / rate
    ratio = hsr / predicted
    return {"batch": batch, "D": d, "H": h, "plain_s": plain, "hsr_s": hsr, "mm_rate": rate,
            "mm_shape": shape,
            "predicted_s": predicted, "ratio": ratio, "met": ratio <= MAX_STEP_RATIO,
            "predicted_with_features_s": predicted_with_features,
            "ratio_with_features": hsr / predicted_with_features}


def markdown(payload) -> str:
    m = payload["machine"]
    lines = [f"# Sweep: time vs N at the tile switch points, and the HSR step", "",
             f"`{payload['command']}` on {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"{m['torch_threads']} threads. Medians of alternating repetitions.", ""]
    for s in payload["sweeps"]:
        lines += [f"## D={s['D']}, H={s['H']} float32", "",
                  "| N | tile | engine | value + gradient | step | time per unit of least work | step |",
                  "|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            step = f"{r['step'] * 100:+.0f}%" if "step" in r else ""
            step_w = f"{r['step_per_work'] * 100:+.0f}%" if "step" in r else ""
            lines.append(f"| {r['N']} | {r['tile']} | {r['engine']} | {fmt_time(r['time_s'])} | {step} | "
                         f"{r['ns_per_mac'] * 1e3:.1f} ps/MAC | {step_w} |")
        a, b = s["max_step_per_work_at"]
        ra, rb = s["max_step_at"]
        lines += ["", f"Largest step up of the time per unit of least work: {s['max_step_per_work'] * 100:+.1f}% "
                      f"({a} → {b}); target ≤ {MAX_STEP * 100:.0f}%: {'met' if s['met'] else '**missed**'}. "
                      f"Largest raw step: {s['max_step'] * 100:+.1f}% ({ra} → {rb}), where the least work "
                      f"itself grows by {((rb / ra) ** 2 - 1) * 100:.0f}%.", ""]
    lines += ["## One HSR step against its least-work prediction (D=784, H=256 float32)", "",
              "The mm rate: the best of the reference products, timed in the steps' alternation.", "",
              "| batch | plain step | HSR step | mm rate | predicted | HSR / predicted | ≤ 1.5× | "
              "predicted with per-sample work | HSR / that |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {fmt_time(r['plain_s'])} | {fmt_time(r['hsr_s'])} | "
              f"{r['mm_rate'] / 1e9:.0f} GFLOP/s ({r['mm_shape']}) | {fmt_time(r['predicted_s'])} | "
              f"{r['ratio']:.2f} | {'yes' if r['met'] else '**no**'} | {fmt_time(r['predicted_with_features_s'])} | "
              f"{r['ratio_with_features']:.2f} |" for r in payload["steps"]]
    lines += ["", "Predicted: the plain step plus the op's least work (N²D/2 + 12N²H multiply-adds) at the "
                  "best torch.mm rate; with per-sample work: plus 2·N·D·H more (A = XW1ᵀ and the chain to W1)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    reps = 5 if args.quick else 11
    payload = {"machine": machine(), "command": "python benchmarks/bench_sweep.py" + (" --quick" if args.quick else "")}
    payload["sweeps"] = [sweep(d, h, reps) for d, h in tqdm([(64, 128), (784, 256)], desc="sweeps")]
    payload["steps"] = [hsr_step(b, 784, 256, reps) for b in (256, 1024)]
    suffix = "_quick" if args.quick else ""
    write_json(f"bench_sweep{suffix}.json", payload)
    md = markdown(payload)
    (RESULTS / f"bench_sweep{suffix}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
