"""``torch-ws reproduce --experiment deep``: the papers' experiment with several hidden layers.

The papers (Omae et al. 2026) train ``Linear → φ → Linear`` networks on two Gaussian classes to
critical points by full-batch gradient descent, plain and with HSR (L + ρ·λ_sup), and ask how
tight the Wolkowicz-Styan bound is and whether HSR finds flatter minima; they name deeper
networks as their open direction. This runs the same protocol on ``Linear → φ → Linear → φ →
Linear`` (hidden widths ``hidden``, default [10, 10]), with HSR on the deep bound
(:func:`torch_ws.deep_ws_bounds`, docs/math.md §12), paired by seed: each initialization and step
size is trained once plainly and once with HSR. At every end point it records the exact spectrum
(eigvalsh of the Hessian assembled from :func:`torch_ws.deep_hessian_vector_products`), the WS
bound and the certified interval (:func:`torch_ws.deep_lambda_max_interval`).

Writes ``results.json`` (every run), ``deep_bound_vs_lambda_max.png`` and ``report.md``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..deep import (deep_hessian_vector_products, deep_lambda_max_interval, deep_num_params,
                    deep_ws_bounds)
from ..regularizer import HSRRegularizer
from .analysis import _median, _spearman, wilcoxon
from .claims import HSR, LEVEL, WS, Claim, p_text
from .config import SizePresets
from .data import DATASETS, make_dataset

ACTIVATION_MODULES = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus,
                      "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class DeepConfig(SizePresets):
    """The experiment's settings; results are a function of them alone. An HSR step costs about
    15 ms at N = 100, [10, 10] on this project's 2-core machine (the deep bound's gradient is
    autograd through its Gram forms), so the quick setting takes a few minutes and the full one
    about an hour; plain steps cost 0.3 ms."""

    dataset: str = "gaussians"
    hidden: tuple = (10, 10)
    activation: str = "tanh"
    runs: int = 8                  # initializations, each trained plainly and with HSR
    train_size: int = 100
    test_size: int = 2000
    lr_range: tuple = (0.1, 1.0)   # step size ~ U(lr_range), one draw per initialization
    init_std: float = 0.5          # every parameter ~ N(0, init_std²)
    max_steps: int = 1500
    grad_tol: float = 5e-3         # a critical point: ‖∇ objective‖ < grad_tol
    rho: float = 0.1               # HSR: minimise L + ρ·λ_sup
    lanczos_steps: int = 32        # of the certified interval at each end point
    seed: int = 0
    progress: bool = True

    FULL = dict(runs=48, max_steps=6000)

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if len(self.hidden) < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden: expected one or more positive widths, got {self.hidden}")
        if self.activation not in ACTIVATION_MODULES:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATION_MODULES)} (smooth, "
                             f"for an exact Hessian), got {self.activation!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {DATASETS}, got {self.dataset!r}")
        if self.runs < 1 or self.max_steps < 1:
            raise ValueError(f"runs and max_steps must be >= 1, got {self.runs}, {self.max_steps}")


def make_network(cfg: DeepConfig, dim: int, seed: int) -> nn.Sequential:
    """``Linear(D, H_1) → φ → … → Linear(H_L, 1)`` in float64, parameters i.i.d. N(0, init_std²)
    from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    widths = (dim, *cfg.hidden, 1)
    layers: list = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layer = nn.Linear(fan_in, fan_out).double()
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * cfg.init_std)
        layers.append(layer)
        if i < len(widths) - 2:
            layers.append(ACTIVATION_MODULES[cfg.activation]())
    return nn.Sequential(*layers)


def _layers(net: nn.Sequential) -> tuple[list, list]:
    return ([m.weight.detach() for m in net[::2]], [m.bias.detach() for m in net[::2]])


def train(cfg: DeepConfig, data, seed: int, lr: float, hsr: bool, tick=None) -> dict:
    """Full-batch gradient descent on L (or L + ρ·λ_sup) until ‖∇‖ < grad_tol, divergence or
    max_steps; then the measurements at the end point."""
    net = make_network(cfg, data.dim, seed)
    x, y = data.x_train, data.y_train
    regularizer = HSRRegularizer(net, loss="bce") if hsr else None
    converged = diverged = False
    grad_norm, step, counted = math.inf, 0, 0
    for step in range(cfg.max_steps + 1):
        net.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), y)
        objective = loss + cfg.rho * regularizer(x, y) if hsr else loss
        objective.backward()
        grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in net.parameters()))
        if not math.isfinite(grad_norm) or not math.isfinite(objective.item()):
            diverged = True
            break
        if grad_norm < cfg.grad_tol:
            converged = True
            break
        if step == cfg.max_steps:
            break
        with torch.no_grad():
            for p in net.parameters():
                p -= lr * p.grad
        if tick and step % 100 == 99:
            tick(100)
            counted += 100
    if tick:  # a run counts max_steps on the bar however early it stops
        tick(cfg.max_steps - counted)
    point = dict(seed=seed, lr=lr, hsr=hsr, converged=converged, diverged=diverged, steps=step,
                 grad_norm=grad_norm)
    if diverged:
        return point
    return point | measure(cfg, data, net)


def measure(cfg: DeepConfig, data, net: nn.Sequential) -> dict:
    """The end point's exact λ_max and λ_min (eigvalsh of the Hessian assembled column by column
    from closed-form products), its WS bound, its certified interval, loss and test accuracy."""
    weights, biases = _layers(net)
    x, y = data.x_train, data.y_train
    n = deep_num_params(weights, biases)
    hessian = deep_hessian_vector_products(x, y, weights, biases,
                                           torch.eye(n, dtype=torch.float64), cfg.activation)
    eigenvalues = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    bounds = deep_ws_bounds(x, y, weights, biases, cfg.activation)
    interval = deep_lambda_max_interval(x, y, weights, biases, cfg.activation,
                                        steps=cfg.lanczos_steps)
    with torch.no_grad():
        loss = nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), y)
        accuracy = ((net(data.x_test).squeeze(1) > 0).double() == data.y_test).double().mean()
    return dict(lambda_max=float(eigenvalues[-1]), lambda_min=float(eigenvalues[0]),
                bound=float(bounds.lambda_max_upper), interval_lower=float(interval.lower),
                interval_upper=float(interval.upper), interval_source=interval.source,
                loss=float(loss), test_accuracy=float(accuracy), num_params=n)


def summarize(cfg: DeepConfig, points: list[dict]) -> dict:
    """Per method: counts, the bound's tightness, the interval's; then plain against HSR, paired
    by seed, and the claims."""
    summary: dict = {}
    for method, hsr in (("plain", False), ("HSR", True)):
        runs = [p for p in points if p["hsr"] == hsr]
        ok = [p for p in runs if not p["diverged"]]
        ratios = [p["bound"] / p["lambda_max"] for p in ok if p["lambda_max"] > 0]
        summary[method] = dict(
            runs=len(runs), converged=sum(p["converged"] for p in runs),
            diverged=sum(p["diverged"] for p in runs),
            median_lambda_max=_median([p["lambda_max"] for p in ok]),
            median_bound=_median([p["bound"] for p in ok]),
            median_ratio=_median(ratios), max_ratio=max(ratios, default=math.nan),
            bound_holds=sum(p["bound"] >= p["lambda_max"] for p in ok), measured=len(ok),
            interval_holds=sum(p["interval_lower"] <= p["lambda_max"] <= p["interval_upper"]
                               for p in ok),
            median_interval_width=_median([(p["interval_upper"] - p["interval_lower"])
                                           / abs(p["lambda_max"]) for p in ok
                                           if p["lambda_max"] != 0]),
            median_test_accuracy=_median([p["test_accuracy"] for p in ok]))
    plain = [p for p in points if not p["hsr"] and not p["diverged"]]
    rho, rho_p = _spearman([p["bound"] for p in plain], [p["lambda_max"] for p in plain])
    hsr_by_seed = {p["seed"]: p for p in points if p["hsr"] and not p["diverged"]}
    pairs = [(p, hsr_by_seed[p["seed"]]) for p in plain if p["seed"] in hsr_by_seed]
    difference = lambda key: _median([h[key] - q[key] for q, h in pairs])  # noqa: E731
    summary["paired"] = dict(
        pairs=len(pairs), spearman=rho, spearman_p=rho_p,
        lambda_max_difference=difference("lambda_max"),
        lambda_max_p=wilcoxon([q["lambda_max"] for q, _ in pairs], [h["lambda_max"] for _, h in pairs]),
        accuracy_difference=difference("test_accuracy"),
        accuracy_p=wilcoxon([q["test_accuracy"] for q, _ in pairs],
                            [h["test_accuracy"] for _, h in pairs]))
    return summary


def claims(summary: dict) -> list[Claim]:
    """The papers' claims, asked of the deep networks."""
    both = [summary["plain"], summary["HSR"]]
    measured = sum(m["measured"] for m in both)
    holds = sum(m["bound_holds"] for m in both)
    paired = summary["paired"]

    # With fewer than 8 pairs no signed-rank test reaches 1% (its smallest two-sided p is 2/2^n).
    testable = paired["pairs"] >= 8

    def verdict(p, direction_ok):
        if not testable or p is None or math.isnan(p):
            return "inconclusive"
        return "holds" if p < LEVEL and direction_ok else "does not hold"

    return [
        Claim(WS, "λ_max ≤ the WS bound at every point", f"{holds} of {measured} points",
              "a guarantee: every point", "holds" if holds == measured and measured else "inconclusive"),
        Claim(WS, "the bound tracks λ_max across end points",
              f"Spearman ρ = {paired['spearman']:.3g}", p_text(paired["spearman_p"]),
              verdict(paired["spearman_p"], paired["spearman"] > 0)),
        Claim(HSR, "HSR finds flatter minima (lower λ_max)",
              f"median paired Δλ_max = {paired['lambda_max_difference']:.3g}",
              "Wilcoxon, " + p_text(paired["lambda_max_p"]),
              verdict(paired["lambda_max_p"], paired["lambda_max_difference"] < 0)),
        Claim(HSR, "HSR does not cost test accuracy",
              f"median paired Δaccuracy = {paired['accuracy_difference']:.3g}",
              "Wilcoxon, " + p_text(paired["accuracy_p"]),
              "inconclusive" if not testable else
              "does not hold" if (paired["accuracy_p"] < LEVEL
                                  and paired["accuracy_difference"] < 0) else "holds"),
    ]


def figure(points: list[dict], out: Path) -> str:
    """The WS bound and the certified interval against the exact λ_max, plain and HSR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import _save, bound_equals_lambda_max_line

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ok = [p for p in points if not p["diverged"] and p["lambda_max"] > 0]
    for hsr, color in ((False, "tab:blue"), (True, "tab:orange")):
        chosen = [p for p in ok if p["hsr"] == hsr]
        ax.scatter([p["lambda_max"] for p in chosen], [p["bound"] for p in chosen], s=14,
                   color=color, label=f"WS bound, {'HSR' if hsr else 'plain'}")
        ax.scatter([p["lambda_max"] for p in chosen], [p["interval_upper"] for p in chosen],
                   s=14, marker="x", color=color,
                   label=f"certified interval's upper end, {'HSR' if hsr else 'plain'}")
    bound_equals_lambda_max_line(ax, [p["lambda_max"] for p in ok] + [p["bound"] for p in ok], 1.3)
    from matplotlib.ticker import NullFormatter

    for axis in (ax.xaxis, ax.yaxis):  # the log axes' minor labels overlap over one decade
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("exact λ_max (eigvalsh)")
    ax.set_ylabel("upper bound")
    ax.legend(fontsize=7)
    return _save(fig, out, "deep_bound_vs_lambda_max.png")


def write_report(cfg: DeepConfig, results: dict, out: Path) -> None:
    s, rows = results["summary"], results["claims"]
    lines = [
        f"# Deeper networks: hidden layers {list(cfg.hidden)}, {cfg.activation}, {cfg.dataset}",
        "",
        f"`torch-ws reproduce --experiment deep` — {results['seconds']} s, torch "
        f"{results['machine']['torch']}, {results['machine']['threads']} threads. "
        f"{cfg.runs} initializations (parameters ~ N(0, {cfg.init_std}²), step size ~ "
        f"U{tuple(cfg.lr_range)}), each trained by full-batch gradient descent plainly and with "
        f"HSR (L + {cfg.rho}·WS bound), to ‖∇‖ < {cfg.grad_tol} or {cfg.max_steps} steps; "
        f"{results['data']['train_size']} training and {results['data']['test_size']} test "
        f"points; n = {results['num_params']} parameters. "
        f"{s['plain']['converged'] + s['HSR']['converged']} of {2 * cfg.runs} runs reached the "
        f"gradient tolerance; every run is measured where it stopped (its end point).",
        "",
        "| | runs | converged | diverged | median λ_max | median WS bound | median bound/λ_max "
        "| max bound/λ_max | bound ≥ λ_max | interval holds | median interval width / λ_max "
        "| median test accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in ("plain", "HSR"):
        m = s[method]
        lines.append(
            f"| {method} | {m['runs']} | {m['converged']} | {m['diverged']} | "
            f"{m['median_lambda_max']:.4g} | {m['median_bound']:.4g} | {m['median_ratio']:.3g} | "
            f"{m['max_ratio']:.3g} | {m['bound_holds']}/{m['measured']} | "
            f"{m['interval_holds']}/{m['measured']} | {m['median_interval_width']:.2g} | "
            f"{m['median_test_accuracy']:.3f} |")
    lines += ["", "## The papers' claims, asked of the deeper networks", "",
              "| source | claim | ours | test | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c['source']} | {c['claim']} | {c['number']} | {c['test']} | {c['verdict']} |"
              for c in rows]
    lines += ["", f"![bounds against λ_max]({results['figure']})", "",
              "λ_max is exact (eigvalsh of the Hessian assembled from closed-form products); the "
              "interval is the certified one of docs/math.md §12.6 "
              f"({cfg.lanczos_steps} Lanczos steps). Points that diverged are counted, not measured.",
              ""]
    (out / "report.md").write_text("\n".join(lines))


def run_deep(cfg: DeepConfig, out_dir: str | os.PathLike) -> dict:
    """Train, measure, summarize; write results.json, the figure and report.md into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_dataset(cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    draws = []
    for _ in range(cfg.runs):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        lr = float(cfg.lr_range[0] + (cfg.lr_range[1] - cfg.lr_range[0]) * torch.rand(1, generator=gen))
        draws.append((seed, lr))
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=2 * cfg.runs * cfg.max_steps, desc="deep", unit="step", smoothing=0.05)
    points = [train(cfg, data, seed, lr, hsr, bar.update if bar else None)
              for seed, lr in draws for hsr in (False, True)]
    if bar:
        bar.close()
    summary = summarize(cfg, points)
    results = dict(config=cfg.to_dict(),
                   machine={"torch": torch.__version__, "threads": torch.get_num_threads()},
                   data={"dataset": data.name, "features": data.dim,
                         "train_size": len(data.y_train), "test_size": len(data.y_test)},
                   num_params=deep_num_params(*_layers(make_network(cfg, data.dim, 0))),
                   points=points, summary=summary,
                   claims=[c._asdict() for c in claims(summary)],
                   figure=figure(points, out),
                   seconds=round(time.perf_counter() - started, 1))
    (out / "results.json").write_text(json.dumps(results, default=float, indent=1))
    write_report(cfg, results, out)
    return results
