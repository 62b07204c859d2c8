"""The certified λ_max interval (torch_ws.lambda_max_interval, docs/math.md §11): tightness and
time against the WS bound, spectral_bound, and PyHessian's power iteration, and the closed-form
Hessian-vector products against autograd's double-backward ones.

For each problem (tanh, mean reduction; BCE on one logit for the synthetic problems of
bench_spectral.py, cross-entropy on the full digits set, C = 10) and each network (PyTorch's
default initialization, and trained: full-batch Adam on a random teacher's labels, or on the
digits labels), it reports:

- λ_max: eigvalsh of the explicit Hessian where n ≤ 2500; above, the interval of 128 Lanczos
  steps when it is narrower than 10⁻⁶ (a certified value), else that interval;
- the interval's lower / λ_max and upper / λ_max with its default 32 steps (33 products), which
  guarantee gave `upper`, and spectral_bound's upper / λ_max;
- median times, timed in turn in one process (benchmarks/common.py): ws_bound value, ws_bound
  value + gradient, the interval's value, value + gradient (of upper), spectral_bound value, and
  PyHessian 0.1's `hessian(...).eigenvalues(maxIter=20)` (its constructor, which builds the
  gradient graph, included; float32, since PyHessian draws float32 vectors);
- the time per vector of 16 closed-form products (one block) against 16 autograd
  double-backward products on one graph.

Usage: python benchmarks/bench_interval.py [--quick | --digits | --products]  (--quick leaves out
N=8192, D=784, and the trained digits net; --digits runs the two digits rows alone; --products
the products against autograd alone). Writes results/bench_interval.{json,md} (and _quick,
_digits, _products).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import torch_ws

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402  (the baselines: never part of the package)

from bench_spectral import make_network  # noqa: E402
from common import fmt_time, machine, machine_line, publish, time_alternating  # noqa: E402

PROBLEMS = [  # (N, D, H, dtype)
    (200, 2, 10, torch.float64),
    (1000, 32, 64, torch.float64),
    (2048, 128, 256, torch.float32),
    (8192, 784, 256, torch.float32),
]
EXPLICIT_LIMIT = 2500
BLOCK = 16
PRODUCT_REPS = 40


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def digits_network(trained: bool):
    """The full digits set (N = 1797, standardized), Linear(64, 32) → tanh → Linear(32, 10),
    cross-entropy; trained: 300 full-batch Adam steps."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    if trained:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    params = [p.detach().requires_grad_() for p in model.parameters()]
    return x, y, params


def exact_lambda_max(x, target, params, loss):
    n = torch_ws.num_params(*params)
    detached = [p.detach().double() for p in params]
    xd = x.double()
    td = target.double() if target.is_floating_point() else target
    if n <= EXPLICIT_LIMIT:
        hessian = reference.explicit_hessian(xd, td, *detached, "tanh", "mean", loss)
        return float(torch.linalg.eigvalsh(hessian)[-1]), "eigvalsh"
    interval = torch_ws.lambda_max_interval(xd, td, *detached, "tanh", "mean", loss, steps=128)
    lower, upper = float(interval.lower), float(interval.upper)
    if upper - lower <= 1e-6 * upper:
        return lower, "certified to 1e-6 (128 Lanczos steps)"
    return lower, f"≥ (interval [{lower:.4g}, {upper:.4g}], 128 steps)"


def pyhessian_power_iteration(x, target, params, loss):
    """PyHessian 0.1's top eigenvalue, 20 power-iteration steps, on the same network (float32)."""
    from pyhessian import hessian

    d, h = params[0].shape[1], params[0].shape[0]
    c = params[2].shape[0]
    model = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))
    with torch.no_grad():
        for p, q in zip(model.parameters(), params):
            p.copy_(q.float())
    if loss == "bce":
        criterion, t = nn.BCEWithLogitsLoss(), target.float().reshape(-1, 1)
    else:
        criterion, t = nn.CrossEntropyLoss(), target
    xf = x.float()

    def run():
        return hessian(model, criterion, data=(xf, t), cuda=False).eigenvalues(maxIter=20, tol=0)[0][0]

    return run


def product_timings(x, target, params, loss):
    """Seconds per vector: one block of BLOCK closed-form products, and BLOCK autograd
    double-backward products on one graph (built inside the timing, as a caller would)."""
    n = torch_ws.num_params(*params)
    vectors = torch.randn(BLOCK, n, dtype=x.dtype)
    detached = [p.detach() for p in params]

    def closed_form():
        torch_ws.hessian_vector_products(x, target, *detached, vectors, "tanh", "mean", loss)

    def autograd():
        leaves = [p.detach().requires_grad_() for p in params]
        value = reference.mlp_loss(x, target, *leaves, "tanh", "mean", loss)
        grads = torch.autograd.grad(value, leaves, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        for v in vectors:
            torch.autograd.grad(flat @ v, leaves, retain_graph=True)

    # A product takes milliseconds and the machine's speed drifts: many alternations (five gave
    # 1.6x at N = 1000 where forty gave 2.0-2.2x in the same session).
    times = time_alternating({"closed_form": closed_form, "autograd": autograd},
                             reps=PRODUCT_REPS, warmup=3, budget_s=30)
    return {k: t / BLOCK for k, t in times.items()}


def cases(quick: bool, digits_only: bool = False) -> list:
    """(name, loss, trained, build) for each problem and network."""
    out = [(f"N={n} D={d} H={h}", "bce", trained, lambda n=n, d=d, h=h, dt=dt, tr=trained:
            make_network(n, d, h, dt, tr))
           for n, d, h, dt in (PROBLEMS[:3] if quick else PROBLEMS) for trained in (False, True)]
    if digits_only:
        out = []
    out += [("digits N=1797 D=64 H=32 C=10", "cross_entropy", trained,
             lambda tr=trained: digits_network(tr)) for trained in ((False,) if quick else (False, True))]
    return out


def run_products() -> dict:
    """The Hessian-vector products alone (--products): closed form against autograd, per vector."""
    rows = []
    for name, loss, trained, build in cases(quick=False):
        label = f"{name} {'trained' if trained else 'random'}"
        log(f"[{label}] building")
        x, target, params = build()
        per_vector = product_timings(x, target, params, loss)
        rows.append({"problem": name, "network": "trained" if trained else "random",
                     "dtype": str(x.dtype).replace("torch.", ""),
                     "hvp_closed_form_per_vector": per_vector["closed_form"],
                     "hvp_autograd_per_vector": per_vector["autograd"]})
        log(f"[{label}] {fmt_time(per_vector['closed_form'])} / "
            f"{fmt_time(per_vector['autograd'])} per vector")
    return {"machine": machine(), "rows": rows}


def products_table(payload: dict, command: str) -> str:
    lines = [
        machine_line(payload["machine"], command), "",
        f"Tanh, mean reduction. Per vector: one block of {BLOCK} closed-form products "
        f"(`hessian_vector_products`) against {BLOCK} autograd double-backward products on one "
        f"graph built inside the timing; medians of up to {PRODUCT_REPS} alternations.", "",
        "| problem | network | closed form | autograd | speed-up |", "|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        closed, auto = r["hvp_closed_form_per_vector"], r["hvp_autograd_per_vector"]
        lines.append(f"| {r['problem']} {r['dtype']} | {r['network']} | {fmt_time(closed)} | "
                     f"{fmt_time(auto)} | {auto / closed:.2f}× |")
    return "\n".join(lines) + "\n"


def run(quick: bool, digits_only: bool = False) -> dict:
    rows = []
    for name, loss, trained, build in cases(quick, digits_only):
        label = f"{name} {'trained' if trained else 'random'}"
        log(f"[{label}] building")
        x, target, params = build()
        lam, how = exact_lambda_max(x, target, params, loss)
        args = (x, target, *params, "tanh", "mean", loss)
        interval = torch_ws.lambda_max_interval(*args)
        t0 = time.perf_counter()
        spectral = torch_ws.spectral_bound(*args)
        spectral_first = time.perf_counter() - t0
        power = pyhessian_power_iteration(x, target, params, loss)
        estimate = power()

        def ws_value():
            with torch.no_grad():
                torch_ws.ws_bound(*args)

        def ws_step():
            torch.autograd.grad(torch_ws.ws_bound(*args), params)

        def interval_value():
            with torch.no_grad():
                torch_ws.lambda_max_interval(*args)

        def interval_step():
            torch.autograd.grad(torch_ws.lambda_max_interval(*args).upper, params)

        def spectral_value():
            with torch.no_grad():
                torch_ws.spectral_bound(*args)

        methods = {"ws_value": ws_value, "ws_step": ws_step, "interval_value": interval_value,
                   "interval_step": interval_step, "pyhessian": power}
        if spectral_first < 10:
            methods["spectral_value"] = spectral_value
        reps = 5 if spectral_first < 5 else 3
        log(f"[{label}] timing, {reps} reps")
        times = time_alternating(methods, reps=reps, warmup=1)
        per_vector = product_timings(x, target, params, loss)
        row = {
            "problem": name, "loss": loss, "network": "trained" if trained else "random",
            "dtype": str(x.dtype).replace("torch.", ""), "num_params": torch_ws.num_params(*params),
            "lambda_max": lam, "lambda_max_from": how,
            "lower_ratio": float(interval.lower) / lam, "upper_ratio": float(interval.upper) / lam,
            "upper_source": interval.source, "products": interval.products,
            "spectral_ratio": float(spectral.upper) / lam, "pyhessian_estimate_ratio": estimate / lam,
            **{f"time_{k}": v for k, v in times.items()},
            "time_spectral_first_call": spectral_first,
            "hvp_closed_form_per_vector": per_vector["closed_form"],
            "hvp_autograd_per_vector": per_vector["autograd"],
        }
        rows.append(row)
        log(f"[{label}] λ_max {lam:.4g}: interval [{row['lower_ratio']:.4f}, "
            f"{row['upper_ratio']:.4f}]× ({interval.source}) in {fmt_time(times['interval_value'])}"
            f"; WS {fmt_time(times['ws_value'])}; PyHessian {fmt_time(times['pyhessian'])}")
    return {"machine": machine(), "rows": rows}


def table(payload: dict, command: str) -> str:
    m = payload["machine"]
    lines = [
        machine_line(m, command),
        "",
        "Tanh, mean reduction. Ratios are to λ_max; the interval's are guarantees (lower ≤ λ_max ≤ "
        "upper), PyHessian's an estimate. Times are medians, all methods timed in turn.",
        "",
        "| problem | network | n | λ_max (from) | interval lower | upper (source) | spectral | "
        "PyHessian-20 | interval | + gradient | WS value | WS + gradient | spectral | PyHessian-20 "
        "| HVP per vector: closed form / autograd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['problem']} {r['dtype']} | {r['network']} | {r['num_params']:,} | "
            f"{r['lambda_max']:.4g} ({r['lambda_max_from']}) | {r['lower_ratio']:.4f} | "
            f"{r['upper_ratio']:.4f} ({r['upper_source']}) | {r['spectral_ratio']:.3f} | "
            f"{r['pyhessian_estimate_ratio']:.3f} | {fmt_time(r['time_interval_value'])} | "
            f"{fmt_time(r['time_interval_step'])} | {fmt_time(r['time_ws_value'])} | "
            f"{fmt_time(r['time_ws_step'])} | {fmt_time(r.get('time_spectral_value'))} | "
            f"{fmt_time(r['time_pyhessian'])} | {fmt_time(r['hvp_closed_form_per_vector'])} / "
            f"{fmt_time(r['hvp_autograd_per_vector'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true",
                       help="leave out N=8192, D=784, H=256 and the trained digits net")
    which.add_argument("--digits", action="store_true",
                       help="only the digits rows (random and trained; N·C = 17,970 dual rows)")
    which.add_argument("--products", action="store_true",
                       help="only the Hessian-vector products against autograd (about 6 minutes)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.products:
        command = "python benchmarks/bench_interval.py --products"
        payload = run_products()
        publish("bench_interval_products", payload, products_table(payload, command))
        return
    payload = run(args.quick, digits_only=args.digits)
    flag = " --quick" if args.quick else " --digits" if args.digits else ""
    name = "bench_interval" + flag.replace(" --", "_")
    command = "python benchmarks/bench_interval.py" + flag
    text = table(payload, command)
    publish(name, payload, text)


if __name__ == "__main__":
    main()
