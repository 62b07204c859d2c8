"""Value + gradient of the WS bound λ_sup: torch_ws (C++ op) against the same closed form in plain
PyTorch (autograd), autograd double-backprop through an explicit Hessian, the numerical
estimators people use today (value only), and whole training steps (plain, HSR, SAM).

    python benchmarks/bench_ws.py --quick     # headline table, < 2 minutes
    python benchmarks/bench_ws.py             # every sweep (make bench)

Each configuration times its methods alternately in one process and reports medians; peak
memory is the resident-set high-water mark each method adds. Results go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The slow references the tests check against (never part of the package): the baselines.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import (  # noqa: E402
    RESULTS, fmt_bytes, fmt_time, machine, mlp_problem, peak_memory, peak_memory_in_subprocess,
    time_alternating, write_json,
)

import torch_ws  # noqa: E402
import reference  # noqa: E402

ACT = "tanh"
# Above this many parameters the explicit n×n Hessian (and third-order autograd through it) is
# not attempted: its memory grows as n² per sample batch and its time as n·(cost of a backward).
DOUBLE_BACKPROP_MAX_PARAMS = 2500


def _clear(params):
    for p in params:
        p.grad = None


def value_and_grad_methods(x, t, params, include_double_backprop: bool):
    def op():
        _clear(params)
        torch_ws.ws_bound(x, t, *params, ACT).backward()

    def closed_form():
        _clear(params)
        reference.ws_bound_closed_form(x, t, *params, ACT).backward()

    def double_backprop():
        _clear(params)
        reference.ws_bound_explicit(x, t, *params, ACT).backward()

    methods = {"torch_ws": op, "plain_pytorch": closed_form}
    if include_double_backprop:
        methods["double_backprop"] = double_backprop
    return methods


def autograd_floor(params):
    """The cheapest differentiable call over the same parameters: one sum each, one backward.
    Any op pays at least this much (an op call, a graph node, a backward, four gradient
    accumulations), so double-backprop / floor bounds the ratio any op could show here."""
    def floor():
        _clear(params)
        sum(p.sum() for p in params).backward()

    return floor


def bench_value_and_grad(n, d, h, dtype, reps, budget_s=None, memory=True, with_floor=False):
    x, t, params = mlp_problem(n, d, h, dtype)
    num_params = torch_ws.num_params(*params)
    feasible = num_params <= DOUBLE_BACKPROP_MAX_PARAMS
    methods = value_and_grad_methods(x, t, params, feasible)
    timed = dict(methods, autograd_floor=autograd_floor(params)) if with_floor else methods
    times = time_alternating(timed, reps, budget_s=budget_s)
    row = {"N": n, "D": d, "H": h, "n": num_params, "dtype": str(dtype).replace("torch.", ""),
           "time_s": times, "peak_bytes": {}, "engine": torch.ops.torch_ws._engine(x, params[0], True, True)}
    if memory:
        args = [str(n), str(d), str(h), row["dtype"]]
        row["peak_bytes"] = {k: peak_memory_in_subprocess(__file__, args + [k]) for k in methods}
    if not feasible:
        row["double_backprop"] = (f"not run: n = {num_params} > {DOUBLE_BACKPROP_MAX_PARAMS}; the explicit "
                                  f"Hessian alone is {num_params**2 * x.element_size() / 2**30:.1f} GiB")
    return row


# ---------------------------------------------------------------- numerical estimators (value only)

def hvp_factory(x, t, params):
    """Hessian-vector products by double backprop of the loss (what PyHessian does)."""
    loss = reference.mlp_loss(x, t, *params, ACT, "mean")
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(vs):
        return torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)

    return hvp


def power_iteration(x, t, params, iters=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hvp = hvp_factory(x, t, params)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = hvp(v)
        lam = sum(float((a * b).sum()) for a, b in zip(v, hv))
        v = [h.detach() for h in hv]
    return lam


def hutchinson(x, t, params, probes=100, seed=0):
    """(tr H, tr H²) estimates: E[vᵀHv] and E[‖Hv‖²] with Rademacher v, one HVP per probe."""
    gen = torch.Generator().manual_seed(seed)
    hvp = hvp_factory(x, t, params)
    tr = tr2 = 0.0
    for _ in range(probes):
        v = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
        hv = hvp(v)
        tr += sum(float((a * b).sum()) for a, b in zip(v, hv))
        tr2 += sum(float((h * h).sum()) for h in hv)
    return tr / probes, tr2 / probes


def bench_estimators(n, d, h, dtype, reps, probes=100):
    x, t, params = mlp_problem(n, d, h, dtype)
    num_params = torch_ws.num_params(*params)
    with torch.no_grad():
        trace, trace_sq = (float(v) for v in torch_ws.hessian_traces(x, t, *[p.detach() for p in params], ACT))
    lam_exact = None
    if num_params <= DOUBLE_BACKPROP_MAX_PARAMS:
        with torch.no_grad():
            hess = reference.explicit_hessian(x, t, *[p.detach().double() for p in params], ACT)
            lam_exact = float(torch.linalg.eigvalsh(hess).max())
    results = {}

    def op_value():
        with torch.no_grad():
            results["bound"] = float(torch_ws.ws_bound(x, t, *params, ACT))

    def power():
        results["power"] = power_iteration(x, t, params)

    def hutch():
        results["hutchinson"] = hutchinson(x, t, params, probes)

    times = time_alternating({"torch_ws (exact traces, bound)": op_value, "power iteration (20 HVPs)": power,
                              f"Hutchinson ({probes} probes)": hutch}, reps)
    tr_h, tr2_h = results["hutchinson"]
    return {
        "N": n, "D": d, "H": h, "n": num_params, "dtype": str(dtype).replace("torch.", ""), "time_s": times,
        "exact": {"trace": trace, "trace_sq": trace_sq, "lambda_max": lam_exact},
        "estimates": {"ws_bound": results["bound"], "power_lambda_max": results["power"],
                      "hutchinson_trace": tr_h, "hutchinson_trace_sq": tr2_h},
        "rel_errors": {
            "hutchinson_trace": abs(tr_h - trace) / abs(trace),
            "hutchinson_trace_sq": abs(tr2_h - trace_sq) / abs(trace_sq),
            "power_lambda_max": None if lam_exact is None else abs(results["power"] - lam_exact) / abs(lam_exact),
            "ws_bound_over_lambda_max": None if lam_exact is None else results["bound"] / lam_exact,
        },
    }


# ---------------------------------------------------------------- training steps

def bench_training_step(batch, d, h, reps, rho=0.1, sam_rho=0.05, extra=None):
    """Median times of one SGD step, plain, with HSR (ρ·λ_sup) and with SAM, alternated; `extra`
    (name → callable) joins the alternation, e.g. a reference product timed under the same
    machine conditions."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    reg = torch_ws.HSRRegularizer(model)
    x = torch.randn(batch, d)
    y = (torch.rand(batch) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def plain():
        opt.zero_grad()
        bce(model(x).squeeze(-1), y).backward()
        opt.step()

    def hsr():
        opt.zero_grad()
        (bce(model(x).squeeze(-1), y) + rho * reg(x, y)).backward()
        opt.step()

    def sam():
        # Sharpness-aware minimization: ascend to θ + ε, take the gradient there, step from θ.
        opt.zero_grad()
        bce(model(x).squeeze(-1), y).backward()
        params = [p for p in model.parameters()]
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad * p.grad).sum() for p in params)) + 1e-12
            eps = [sam_rho * p.grad / norm for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad()
        bce(model(x).squeeze(-1), y).backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()

    methods = {"plain": plain, "HSR (torch_ws)": hsr, "SAM (2 passes)": sam, **(extra or {})}
    times = time_alternating(methods, reps)
    return {"batch": batch, "D": d, "H": h, "time_s": times}


# ---------------------------------------------------------------- report

TARGETS = [
    # (label, row selector, numerator method, denominator method, target ratio)
    ("papers' scale N=200 D=2 H=10 float64: double-backprop / torch_ws", (200, 2, 10, "float64"), "double_backprop", 100),
    ("papers' scale N=200 D=2 H=10 float64: plain PyTorch / torch_ws", (200, 2, 10, "float64"), "plain_pytorch", 3),
    ("N=1024 D=64 H=128 float32: plain PyTorch / torch_ws", (1024, 64, 128, "float32"), "plain_pytorch", 1.5),
]


def find_row(rows, key):
    for r in rows:
        if (r["N"], r["D"], r["H"], r["dtype"]) == key:
            return r
    return None


def check_targets(rows):
    out = []
    for label, key, method, target in TARGETS:
        row = find_row(rows, key)
        if row is None or method not in row["time_s"]:
            continue
        ratio = row["time_s"][method] / row["time_s"]["torch_ws"]
        entry = {"target": label, "ratio": ratio, "required": target, "met": ratio >= target}
        if method == "double_backprop" and "autograd_floor" in row["time_s"]:
            entry["floor_s"] = row["time_s"]["autograd_floor"]
            entry["floor_ratio"] = row["time_s"][method] / entry["floor_s"]
        if key == (1024, 64, 128, "float32") and row["peak_bytes"]:
            mem_ok = (row["peak_bytes"]["torch_ws"] or 0) < (row["peak_bytes"]["plain_pytorch"] or 0)
            entry["lower_peak_memory"] = mem_ok
            entry["met"] = entry["met"] and mem_ok
        out.append(entry)
    return out


def markdown(payload) -> str:
    m = payload["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, {m['blas']}.",
             f"Command: `{payload['command']}`; medians of alternating repetitions.", "",
             "### Value + gradient of λ_sup", "",
             "| N | D | H | n | dtype | torch_ws (engine) | plain PyTorch (ratio) | double-backprop (ratio) | peak mem torch_ws / plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["value_and_grad"]:
        t = r["time_s"]
        op = t["torch_ws"]
        cf = f"{fmt_time(t['plain_pytorch'])} ({t['plain_pytorch'] / op:.1f}×)"
        db = f"{fmt_time(t['double_backprop'])} ({t['double_backprop'] / op:.0f}×)" if "double_backprop" in t else "not feasible"
        mem = r["peak_bytes"]
        mem_s = f"{fmt_bytes(mem.get('torch_ws'))} / {fmt_bytes(mem.get('plain_pytorch'))}" if mem else "—"
        lines.append(f"| {r['N']} | {r['D']} | {r['H']} | {r['n']} | {r['dtype']} | {fmt_time(op)} ({r.get('engine', '?')}) | {cf} | {db} | {mem_s} |")
    lines += ["", "### Targets", "", "| target | ratio | required | met |", "|---|---|---|---|"]
    for tg in payload["targets"]:
        extra = "" if "lower_peak_memory" not in tg else f" (lower peak memory: {tg['lower_peak_memory']})"
        lines.append(f"| {tg['target']} | {tg['ratio']:.1f}× | ≥ {tg['required']}× | {'yes' if tg['met'] else '**no**'}{extra} |")
    for tg in payload["targets"]:
        if "floor_ratio" in tg:
            lines += ["", f"Floor for \"{tg['target']}\": in the same alternation, a trivial autograd call over "
                          f"the same four parameters (one sum each, then backward) took {fmt_time(tg['floor_s'])}, "
                          f"so an op costing no more than that would show double-backprop / op = "
                          f"**{tg['floor_ratio']:.0f}×** on this machine."]
    if payload.get("estimators"):
        lines += ["", "### Numerical estimators (value only)", "",
                  "| N | D | H | n | method | time | relative error |", "|---|---|---|---|---|---|---|"]
        for r in payload["estimators"]:
            errs = r["rel_errors"]
            err_of = {"torch_ws (exact traces, bound)": "exact traces; bound/λ_max = " + (f"{errs['ws_bound_over_lambda_max']:.3f}" if errs["ws_bound_over_lambda_max"] else "n/a"),
                      "power iteration (20 HVPs)": "λ_max: " + (f"{errs['power_lambda_max']:.2e}" if errs["power_lambda_max"] is not None else "n/a (no exact λ_max)")}
            for name, tm in r["time_s"].items():
                err = err_of.get(name, f"tr H: {errs['hutchinson_trace']:.2e}, tr H²: {errs['hutchinson_trace_sq']:.2e}")
                lines.append(f"| {r['N']} | {r['D']} | {r['H']} | {r['n']} | {name} | {fmt_time(tm)} | {err} |")
    if payload.get("training"):
        lines += ["", "### One optimizer step (float32)", "", "| batch | D | H | plain | HSR (ratio) | SAM (ratio) |", "|---|---|---|---|---|---|"]
        for r in payload["training"]:
            t = r["time_s"]
            p = t["plain"]
            lines.append(f"| {r['batch']} | {r['D']} | {r['H']} | {fmt_time(p)} | {fmt_time(t['HSR (torch_ws)'])} ({t['HSR (torch_ws)'] / p:.1f}×) | {fmt_time(t['SAM (2 passes)'])} ({t['SAM (2 passes)'] / p:.1f}×) |")
    for note in payload.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plots(payload):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    series = {"N": payload.get("sweep_N", []), "n": payload.get("sweep_params", [])}
    for axis, rows in series.items():
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method, style in (("torch_ws", "o-"), ("plain_pytorch", "s--"), ("double_backprop", "^:")):
            pts = [(r[axis], r["time_s"][method]) for r in rows if method in r["time_s"]]
            if pts:
                ax.plot(*zip(*pts), style, label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (samples)" if axis == "N" else "n (parameters)")
        ax.set_ylabel("value + gradient, median seconds")
        r0 = rows[0]
        ax.set_title(f"time vs {axis} ({'D=%d, H=%d' % (r0['D'], r0['H']) if axis == 'N' else 'N=%d' % r0['N']}, {r0['dtype']})", fontsize=9)
        ax.legend()
        name = f"time_vs_{'N' if axis == 'N' else 'params'}.png"
        fig.tight_layout()
        fig.savefig(RESULTS / name, dpi=110)
        plt.close(fig)
        files.append(name)
    rows = payload.get("sweep_N", [])
    if rows and rows[0]["peak_bytes"]:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method, style in (("torch_ws", "o-"), ("plain_pytorch", "s--")):
            pts = [(r["N"], r["peak_bytes"][method] / 2**20) for r in rows if r["peak_bytes"].get(method)]
            if pts:
                ax.plot(*zip(*pts), style, label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (samples)")
        ax.set_ylabel("peak extra resident memory (MiB)")
        ax.set_title(f"memory vs N (D={rows[0]['D']}, H={rows[0]['H']}, {rows[0]['dtype']})", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "memory_vs_N.png", dpi=110)
        plt.close(fig)
        files.append("memory_vs_N.png")
    return files


def measure_peak(n, d, h, dtype, method) -> None:
    """The --peak mode: one call of one method in this (fresh) process; prints the bytes."""
    x, t, params = mlp_problem(int(n), int(d), int(h), getattr(torch, dtype))
    methods = value_and_grad_methods(x, t, params, include_double_backprop=True)
    print(peak_memory(methods[method]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="headline table only (< 2 minutes)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--peak", nargs=5, metavar=("N", "D", "H", "DTYPE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak:
        measure_peak(*args.peak)
        return
    from tqdm import tqdm

    payload = {"machine": machine(), "command": "python benchmarks/bench_ws.py" + (" --quick" if args.quick else ""),
               "value_and_grad": [], "notes": []}
    headline = [(200, 2, 3, torch.float64), (200, 2, 10, torch.float64), (200, 2, 10, torch.float32),
                (1024, 64, 128, torch.float32)]
    for cfg in tqdm(headline, desc="headline"):
        floor = cfg == (200, 2, 10, torch.float64)
        payload["value_and_grad"].append(bench_value_and_grad(*cfg, reps=args.reps, with_floor=floor))
    payload["estimators"] = [bench_estimators(200, 2, 10, torch.float64, reps=5)]
    payload["training"] = [bench_training_step(256, 784, 256, reps=10)]
    if not args.quick:
        sweep_params = []
        for d, h in tqdm([(2, 10), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256), (784, 256)], desc="params"):
            sweep_params.append(bench_value_and_grad(200, d, h, torch.float64, reps=7, budget_s=60))
        payload["sweep_params"] = sweep_params
        sweep_n = []
        for n in tqdm([64, 128, 256, 512, 1024, 2048, 4096, 8192], desc="N sweep"):
            sweep_n.append(bench_value_and_grad(n, 784, 256, torch.float32, reps=7, budget_s=60))
        payload["sweep_N"] = sweep_n
        payload["value_and_grad"] += sweep_params + sweep_n
        payload["estimators"].append(bench_estimators(1024, 64, 128, torch.float32, reps=3))
        payload["training"] = [bench_training_step(b, 784, 256, reps=10) for b in tqdm([64, 128, 256, 512, 1024], desc="training")]
        payload["notes"].append(f"Double-backprop is not run above n = {DOUBLE_BACKPROP_MAX_PARAMS} parameters (see "
                                "the JSON's `double_backprop` field for each such row): the explicit Hessian is n×n.")
    payload["targets"] = check_targets(payload["value_and_grad"])
    payload["plots"] = plots(payload)
    suffix = "_quick" if args.quick else ""
    write_json(f"bench_ws{suffix}.json", payload)
    md = markdown(payload)
    (RESULTS / f"bench_ws{suffix}.md").write_text(md)
    print(md)
    for tg in payload["targets"]:
        floor = f"; a trivial autograd call would show {tg['floor_ratio']:.0f}×" if "floor_ratio" in tg else ""
        print(f"{'MET ' if tg['met'] else 'MISSED'}  {tg['target']}: {tg['ratio']:.1f}× (target ≥ {tg['required']}×{floor})")


if __name__ == "__main__":
    main()
