"""No performance cliff at the engine and tile switch points, and an HSR step near its least work.

    python benchmarks/bench_sweep.py            # make bench (about 4 minutes on 2 cores)
    python benchmarks/bench_sweep.py --quick    # fewer repetitions

1. Value + gradient of λ_sup for N = 128, 160, …, 1024 at D=64, H=128 and D=784, H=256 (float32,
   the automatic engine and tile): the median time of each N, and the largest step up between
   neighbours, which must stay under 15%.
2. One HSR training step (SGD, BCE + 0.1·λ_sup) at batch 256 and 1,024, D=784, H=256, against
   the least-work prediction: the plain step's time plus the op's least matrix-product work (as in
   bench_scale.py: N²D/2 + 12N²H multiply-adds) at the best torch.mm rate measured in this run.
   The step must take at most 1.5× the prediction.
"""
from __future__ import annotations

import argparse

import torch
from bench_scale import best_mm_rate, value_and_grad
from bench_ws import bench_training_step
from common import RESULTS, fmt_time, machine, mlp_problem, time_alternating, write_json


MAX_STEP = 0.15
MAX_STEP_RATIO = 1.5


def sweep(d, h, reps):
    rows = []
    for n in range(128, 1025, 32):
        x, t, params = mlp_problem(n, d, h, torch.float32)
        secs = time_alternating({"op": lambda: value_and_grad(x, t, params)}, reps)["op"]
        rows.append({"N": n, "D": d, "H": h, "time_s": secs, "tile": torch.ops.torch_ws._tile_size(n),
                     "engine": torch.ops.torch_ws._engine(x, params[0], True, True)})
    steps = [b["time_s"] / a["time_s"] - 1 for a, b in zip(rows, rows[1:])]
    worst = max(range(len(steps)), key=steps.__getitem__)
    return {"D": d, "H": h, "rows": rows, "max_step": steps[worst],
            "max_step_at": (rows[worst]["N"], rows[worst + 1]["N"]), "met": steps[worst] <= MAX_STEP}


def hsr_step(batch, d, h, rate, reps):
    """bench_ws's training step (plain and HSR, same model and data) against the prediction."""
    times = bench_training_step(batch, d, h, reps)["time_s"]
    plain, hsr = times["plain"], times["HSR (torch_ws)"]
    least_work = 2 * (batch * batch * d / 2 + 12 * batch * batch * h)
    predicted = plain + least_work / rate
    ratio = hsr / predicted
    return {"batch": batch, "D": d, "H": h, "plain_s": plain, "hsr_s": hsr,
            "predicted_s": predicted, "ratio": ratio, "met": ratio <= MAX_STEP_RATIO}


def markdown(payload) -> str:
    m = payload["machine"]
    lines = [f"# Sweep: time vs N at the tile switch points, and the HSR step", "",
             f"`{payload['command']}` on {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"{m['torch_threads']} threads. Medians of alternating repetitions.", ""]
    for s in payload["sweeps"]:
        lines += [f"## D={s['D']}, H={s['H']} float32", "", "| N | tile | engine | value + gradient |",
                  "|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['tile']} | {r['engine']} | {fmt_time(r['time_s'])} |" for r in s["rows"]]
        a, b = s["max_step_at"]
        lines += ["", f"Largest step up between neighbours: {s['max_step'] * 100:+.1f}% ({a} → {b}); "
                      f"target ≤ {MAX_STEP * 100:.0f}%: {'met' if s['met'] else '**missed**'}.", ""]
    lines += ["## One HSR step against its least-work prediction (D=784, H=256 float32)", "",
              f"Best torch.mm rate in this run: {payload['mm_rate'] / 1e9:.0f} GFLOP/s ({payload['mm_shape']}).", "",
              "| batch | plain step | HSR step | predicted | HSR / predicted | ≤ 1.5× |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {fmt_time(r['plain_s'])} | {fmt_time(r['hsr_s'])} | {fmt_time(r['predicted_s'])} | "
              f"{r['ratio']:.2f} | {'yes' if r['met'] else '**no**'} |" for r in payload["steps"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    reps = 5 if args.quick else 11
    payload = {"machine": machine(), "command": "python benchmarks/bench_sweep.py" + (" --quick" if args.quick else "")}
    payload["sweeps"] = [sweep(d, h, reps) for d, h in tqdm([(64, 128), (784, 256)], desc="sweeps")]
    rate, shape = best_mm_rate([(256, 256, 256), (512, 256, 512), (1024, 256, 1024), (256, 784, 256)])
    payload["mm_rate"], payload["mm_shape"] = rate, shape
    payload["steps"] = [hsr_step(b, 784, 256, rate, reps) for b in (256, 1024)]
    suffix = "_quick" if args.quick else ""
    write_json(f"bench_sweep{suffix}.json", payload)
    md = markdown(payload)
    (RESULTS / f"bench_sweep{suffix}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
