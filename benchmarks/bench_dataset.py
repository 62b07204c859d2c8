"""Whole-data-set bounds: torch_ws.dataset_bounds over a DataLoader on one process, and over 2
gloo processes each holding half of the data.

N = 100,000 samples, D = 32, H = 64, tanh, BCE, float32 (issue 16's size; --quick: N = 20,000).
It reports, value only (no gradient):

- one process: wall time of dataset_bounds over a DataLoader of batches of 4096, and the peak
  resident memory the call adds (measured in a fresh process);
- 2 gloo processes (spawned here, loopback), each splitting the one evaluation with the other
  (docs/math.md §4.1): wall time per rank and the bytes each rank receives
  (the pickled shards of the others, all_gather_object) against the N·(D + H) floats the design
  allows, and the agreement of the result with the one-process value.

Usage: python benchmarks/bench_dataset.py [--quick]. Writes results/bench_dataset.{json,md}
(and _quick).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torch_ws

from common import RESULTS, machine, peak_memory, write_json

D, H, BATCH = 32, 64, 4096


def problem(n: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=gen)
    teacher = torch.randn(D, generator=gen)
    y = (x @ teacher > 0).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1))
    return model, x, y


def one_process(n: int) -> float:
    model, x, y = problem(n)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return float(torch_ws.dataset_bounds(model, loader).lambda_max_upper)


def _rank(rank, world, n, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model, x, y = problem(n)
        shard = slice(rank * n // world, (rank + 1) * n // world)
        loader = DataLoader(TensorDataset(x[shard], y[shard]), batch_size=BATCH)
        dist.barrier()
        started = time.perf_counter()
        bound = float(torch_ws.dataset_bounds(model, loader).lambda_max_upper)
        seconds = time.perf_counter() - started
        received = sum(len(pickle.dumps((x[slice(r * n // world, (r + 1) * n // world)],
                                         y[slice(r * n // world, (r + 1) * n // world)])))
                       for r in range(world) if r != rank)
        torch.save({"seconds": seconds, "bound": bound, "received": received},
                   f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 20,000")
    parser.add_argument("--peak", type=int, help=argparse.SUPPRESS)  # fresh-process memory mode
    args = parser.parse_args()
    if args.peak:
        print(peak_memory(lambda: one_process(args.peak)))
        return
    n = 20_000 if args.quick else 100_000
    started = time.perf_counter()
    single = one_process(n)
    single_seconds = time.perf_counter() - started
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--peak", str(n)], capture_output=True,
                         text=True)
    peak = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    print(f"one process: {single_seconds:.1f} s, peak +{peak / 2**20:.0f} MiB", file=sys.stderr)

    import torch.multiprocessing as mp

    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, n, os.path.join(tmp, "init"), tmp), nprocs=world,
                 join=True)
        ranks = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    design = n * (D + H) * 4
    # Where the parameter-space order is chosen, the ranks also all-reduce the n×n float64
    # Hessian (their shares of it).
    model, x, _ = problem(n)
    engine = torch.ops.torch_ws._engine(x, model[0].weight.detach(), True, True)
    params = torch_ws.num_params(model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    hessian_bytes = params * params * 8 if engine == "parameter" else 0
    result = {"machine": machine(), "N": n, "D": D, "H": H, "dtype": "float32",
              "one_process": {"seconds": single_seconds, "peak_bytes": peak, "bound": single},
              "gloo_2": [{"seconds": r["seconds"], "received_bytes": r["received"],
                          "bound": r["bound"]} for r in ranks],
              "design_bytes": design, "engine": engine, "hessian_allreduce_bytes": hessian_bytes}
    suffix = "_quick" if args.quick else ""
    write_json(f"bench_dataset{suffix}.json", result)
    agreement = max(abs(r["bound"] - single) / abs(single) for r in ranks)
    lines = [
        "# dataset_bounds over a DataLoader: one process and 2 gloo processes", "",
        f"N = {n}, D = {D}, H = {H}, tanh, BCE, float32 inputs, value only. Machine: "
        f"{machine()['cpu']}, {machine()['cores']} cores, torch {torch.__version__}.", "",
        "| setting | time | memory / traffic |", "|---|---|---|",
        f"| one process (C++ engine) | {single_seconds:.1f} s | peak +{peak / 2**20:.0f} MiB |"
        if peak else f"| one process (C++ engine) | {single_seconds:.1f} s | n/a |",
    ]
    reduce_text = (f" + all-reduce of the {params}×{params} float64 Hessian "
                   f"({hessian_bytes / 2**20:.1f} MiB)" if hessian_bytes else "")
    for r, rank in enumerate(ranks):
        lines.append(f"| gloo rank {r} of 2 ({engine} order, C++ shares, one thread) | "
                     f"{rank['seconds']:.1f} s | receives {rank['received'] / 2**20:.1f} MiB of "
                     f"shards{reduce_text}; N·(D+H) float32 = {design / 2**20:.1f} MiB |")
    ratio = max(r["seconds"] for r in ranks) / single_seconds
    lines += ["", f"The ranks' bound agrees with the one-process value to {agreement:.1e} "
                  f"(relative). Slowest rank / one process: {ratio:.2f}. The ranks run one "
                  "thread each on the same cores that the one process runs its threads on: "
                  "the split saves that process's threading losses, not arithmetic; with "
                  "a core per thread for each rank it would be about 1/ranks."]
    (RESULTS / f"bench_dataset{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
