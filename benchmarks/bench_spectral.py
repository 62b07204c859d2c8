"""Tightness and time of the two guaranteed bounds on λ_max of the loss Hessian (docs/math.md §5
and §9) against Lanczos on Hessian-vector products, the estimator PyHessian and curvlinops use.

For each problem (N, D, H; tanh, BCE, mean) and each network (random at init, and trained by
full-batch Adam on labels from a random teacher network), it reports:

- λ_max: eigvalsh of the explicit Hessian where n ≤ 2500; above, Lanczos on Hessian-vector
  products run to a relative residual of 1e-7 (a Ritz value is ≤ λ_max, so the ratios below are
  then, if anything, overstated);
- bound / λ_max for the Wolkowicz-Styan bound (ws_bound) and the spectral bound (spectral_bound's
  upper), and Lanczos-30's estimate / λ_max (30 HVPs: an estimate, not a bound);
- the median time of ws_bound value + gradient, spectral_bound value + gradient, and 30 Lanczos
  steps on HVPs (value only), timed in turn in one process.

Usage: python benchmarks/bench_spectral.py [--quick]  (--quick leaves out N=8192, D=784).
Writes results/bench_spectral.{json,md} (and _quick), and results/spectral_tightness.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import torch_ws
# The slow references the tests check against (never part of the package): the baselines.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402

from common import RESULTS, fmt_time, machine, machine_line, publish, time_alternating

PROBLEMS = [  # (N, D, H, dtype)
    (200, 2, 10, torch.float64),
    (1000, 32, 64, torch.float64),
    (2048, 128, 256, torch.float32),
    (8192, 784, 256, torch.float32),
]
EXPLICIT_LIMIT = 2500  # largest n whose explicit Hessian is built
LANCZOS_STEPS = 30


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def make_network(n, d, h, dtype, trained, seed=0):
    """x, target and [w1, b1, w2, b2]: PyTorch's default init; trained: 300 full-batch Adam steps
    on the labels of a random teacher network of the same shape."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    torch.manual_seed(seed)
    teacher = (torch.nn.Linear(d, h), torch.nn.Linear(h, 1))
    with torch.no_grad():
        logits = teacher[1](torch.tanh(teacher[0](x.float()))).squeeze(1)
        target = (logits > logits.median()).to(dtype)
    student = [torch.nn.Linear(d, h), torch.nn.Linear(h, 1)]
    params = [p.detach().to(dtype).requires_grad_() for layer in student
              for p in (layer.weight, layer.bias)]
    if trained:
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            loss = reference.mlp_loss(x, target, *params, "tanh", "mean")
            loss.backward()
            opt.step()
    return x, target, params


def lanczos_on_hvps(x, target, params, steps, tol=None):
    """Top Ritz value of the Hessian after `steps` Lanczos steps on Hessian-vector products
    (full reorthogonalization); with `tol`, runs until the residual ≤ tol·θ. Returns (θ, steps)."""
    loss = reference.mlp_loss(x, target, *params, "tanh", "mean")
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    n = flat.numel()

    def hvp(v):
        out = torch.autograd.grad(flat @ v, params, retain_graph=True)
        return torch.cat([o.reshape(-1) for o in out]).detach()

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(n, generator=gen, dtype=flat.dtype)
    q /= q.norm()
    basis, alpha, beta = [q], [], []
    theta = float("nan")
    for j in range(min(steps, n)):
        w = hvp(basis[-1])
        alpha.append(float(basis[-1] @ w))
        Q = torch.stack(basis)
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        b = float(w.norm())
        k = len(alpha)
        T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(beta, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(T)
        theta = float(values[-1])
        if tol is not None and b * abs(float(vectors[-1, -1])) <= tol * abs(theta):
            return theta, k
        if b < 1e-12:
            return theta, k
        beta.append(b)
        basis.append(w / b)
    return theta, len(alpha)


def exact_lambda_max(x, target, params):
    n = torch_ws.num_params(*params)
    detached = [p.detach().double() for p in params]
    if n <= EXPLICIT_LIMIT:
        hessian = reference.explicit_hessian(x.double(), target.double(), *detached, "tanh")
        return float(torch.linalg.eigvalsh(hessian)[-1]), "eigvalsh"
    theta, steps = lanczos_on_hvps(x.double(), target.double(),
                                   [p.requires_grad_() for p in detached], 400, tol=1e-7)
    return theta, f"Lanczos ({steps} HVPs, float64)"


def run(quick: bool) -> dict:
    rows = []
    for n, d, h, dtype in PROBLEMS[:3] if quick else PROBLEMS:
        for trained in (False, True):
            label = f"N={n} D={d} H={h} {'trained' if trained else 'random'}"
            log(f"[{label}] building the network")
            x, target, params = make_network(n, d, h, dtype, trained)
            log(f"[{label}] reference λ_max")
            lam, how = exact_lambda_max(x, target, params)
            log(f"[{label}] bounds")
            ws = float(torch_ws.ws_bound(x, target, *params))
            t0 = time.perf_counter()
            sb = torch_ws.spectral_bound(x, target, *params)
            first_call = time.perf_counter() - t0
            estimate, _ = lanczos_on_hvps(x, target, params, LANCZOS_STEPS)

            def ws_step():
                torch.autograd.grad(torch_ws.ws_bound(x, target, *params), params)

            def spectral_step():
                torch.autograd.grad(torch_ws.spectral_bound(x, target, *params).upper, params)

            def lanczos_step():
                lanczos_on_hvps(x, target, params, LANCZOS_STEPS)

            reps = 5 if first_call < 5 else 1
            log(f"[{label}] timing ({reps} reps; spectral's first call {first_call:.2f} s)")
            times = time_alternating({"ws": ws_step, "spectral": spectral_step,
                                      "lanczos": lanczos_step}, reps=reps,
                                     warmup=1 if reps > 1 else 0)
            rows.append({
                "N": n, "D": d, "H": h, "dtype": str(dtype).replace("torch.", ""),
                "network": "trained" if trained else "random",
                "num_params": torch_ws.num_params(*params),
                "lambda_max": lam, "lambda_max_from": how,
                "ws": ws, "spectral": float(sb.upper),
                "ggn_lambda_max": float(sb.ggn_lambda_max),
                "residual_lambda_max": float(sb.residual_lambda_max),
                "lambda_min_lower": float(sb.lambda_min_lower),
                "lanczos_iterations": int(sb.iterations),
                "lanczos30_estimate": estimate,
                "ws_ratio": ws / lam, "spectral_ratio": float(sb.upper) / lam,
                "lanczos30_ratio": estimate / lam,
                "time_ws": times["ws"], "time_spectral": times["spectral"],
                "time_lanczos30": times["lanczos"],
            })
            log(f"[{label}] λ_max {lam:.4g}: WS {ws / lam:.2f}×, spectral "
                f"{float(sb.upper) / lam:.3f}×; {fmt_time(times['spectral'])} vs WS "
                f"{fmt_time(times['ws'])}")
    return {"machine": machine(), "rows": rows}


def table(payload: dict, command: str) -> str:
    m = payload["machine"]
    lines = [
        machine_line(m, command),
        "",
        "Tanh, BCE, mean reduction. Ratios are bound / λ_max (Lanczos-30: its estimate / λ_max, "
        "not a bound); times are medians of value + gradient (Lanczos: value only, 30 HVPs).",
        "",
        "| problem | network | n | λ_max (from) | WS / λ_max | spectral / λ_max | Lanczos-30 / "
        "λ_max | WS time | spectral time | Lanczos-30 time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| N={r['N']} D={r['D']} H={r['H']} {r['dtype']} | {r['network']} | "
            f"{r['num_params']:,} | {r['lambda_max']:.4g} ({r['lambda_max_from']}) | "
            f"{r['ws_ratio']:.2f} | {r['spectral_ratio']:.3f} | {r['lanczos30_ratio']:.4f} | "
            f"{fmt_time(r['time_ws'])} | {fmt_time(r['time_spectral'])} | "
            f"{fmt_time(r['time_lanczos30'])} |")
    worst = max(r["spectral_ratio"] for r in payload["rows"])
    lines += ["", "| target | value | met |", "|---|---|---|",
              f"| spectral / λ_max ≤ 1.5 on every problem | {worst:.3f} | "
              f"{'yes' if worst <= 1.5 else 'no'} |"]
    big = [r for r in payload["rows"] if (r["N"], r["D"], r["H"]) == (8192, 784, 256)]
    if big:
        ratio = max(r["time_spectral"] / r["time_ws"] for r in big)
        lines.append(f"| value + gradient ≤ 5× WS at N=8192 D=784 H=256 | {ratio:.1f}× | "
                     f"{'yes' if ratio <= 5 else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    labels = [f"N={r['N']}\nD={r['D']} H={r['H']}\n{r['network']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    width = 0.4
    ax.bar([i - width / 2 for i in xs], [r["ws_ratio"] for r in rows], width, label="WS bound")
    ax.bar([i + width / 2 for i in xs], [r["spectral_ratio"] for r in rows], width,
           label="spectral bound")
    ax.axhline(1, color="black", lw=0.8)
    ax.axhline(1.5, color="gray", lw=0.8, ls="--", label="target 1.5")
    ax.set_yscale("log")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("bound / λ_max")
    ax.set_title("Guaranteed upper bounds on λ_max (tanh, BCE)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "spectral_tightness.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out N=8192, D=784, H=256")
    args = parser.parse_args()
    payload = run(args.quick)
    name = "bench_spectral_quick" if args.quick else "bench_spectral"
    command = "python benchmarks/bench_spectral.py" + (" --quick" if args.quick else "")
    text = table(payload, command)
    if not args.quick:
        plot(payload)
    publish(name, payload, text)


if __name__ == "__main__":
    main()
