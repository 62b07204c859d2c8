"""Figures and report.md of `torch-ws reproduce --dataset digits` (digits.py)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .analysis import _median  # noqa: E402
from .config import setting_name  # noqa: E402
from .figures import _save, bound_equals_lambda_max_line  # noqa: E402

#: The significance level the findings are stated at.
ALPHA = 0.01


def _settings(cfg) -> list:
    return [setting_name(rho) for rho in (None, *cfg.rhos)]


def paired_figure(cfg, runs, out: Path) -> str:
    """One panel per metric; each seed is a line through its runs (plain, then each ρ)."""
    settings = _settings(cfg)
    panels = [("lambda_max", "exact λ_max"), ("bound", "WS bound λ_sup"),
              ("test_accuracy", "test accuracy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (metric, label) in zip(axes, panels):
        for seed in sorted({r["seed"] for r in runs}):
            by_setting = {r["setting"]: r[metric] for r in runs if r["seed"] == seed}
            xs = [i for i, s in enumerate(settings) if s in by_setting]
            ax.plot(xs, [by_setting[settings[i]] for i in xs], "-o", color="0.6", lw=0.8, ms=3)
        medians = [_median([r[metric] for r in runs if r["setting"] == s]) for s in settings]
        ax.plot(range(len(settings)), medians, "-s", color="C3", lw=2, ms=6, label="median")
        ax.set_xticks(range(len(settings)), settings, fontsize=8)
        ax.set_title(label)
        if metric != "test_accuracy":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    return _save(fig, out, "paired.png")


def bound_figure(cfg, runs, out: Path) -> str:
    """The closed-form bound against the exact λ_max, every run."""
    fig, ax = plt.subplots(figsize=(5, 4.6))
    for i, setting in enumerate(_settings(cfg)):
        pts = [r for r in runs if r["setting"] == setting]
        ax.scatter([r["lambda_max"] for r in pts], [r["bound"] for r in pts], s=20, color=f"C{i}",
                   label=setting)
    bound_equals_lambda_max_line(ax, [v for r in runs for v in (r["lambda_max"], r["bound"])], 1.3)
    ax.set_xlabel("exact λ_max (explicit Hessian, whole training set)")
    ax.set_ylabel("WS upper bound λ_sup")
    ax.legend(fontsize=8)
    return _save(fig, out, "bound_vs_lambda_max.png")


def training_figure(cfg, runs, out: Path) -> str:
    """Median over the seeds, per recorded epoch: training loss and the mean minibatch bound."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, setting in enumerate(_settings(cfg)):
        pts = [r["trajectory"] for r in runs if r["setting"] == setting]
        if not pts:
            continue
        epochs = pts[0]["epoch"]
        for ax, key in zip(axes, ("train_loss", "batch_bound")):
            med = [_median([t[key][j] for t in pts]) for j in range(len(epochs))]
            ax.plot(epochs, med, color=f"C{i}", label=setting)
    axes[0].set_title("training loss (whole set, median over seeds)")
    axes[1].set_title("WS bound of the minibatches (median)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    return _save(fig, out, "training.png")


def make_figures(cfg, runs, out: Path) -> dict:
    """{name: (file, caption)} for the report."""
    return {
        "paired runs": (paired_figure(cfg, runs, out),
                        "Each grey line is one seed: the same initialization and batches trained "
                        "plainly and with HSR at each ρ. Red: medians."),
        "bound vs exact λ_max": (bound_figure(cfg, runs, out),
                                 "Every trained network, on the whole training set: the closed-form "
                                 "bound lies above the dashed line wherever it is a bound."),
        "training": (training_figure(cfg, runs, out),
                     "How the loss and the minibatch bound evolve, median over the seeds."),
    }


def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def _finding(name: str, metric_label: str, c: dict, higher_is_better: bool) -> str:
    """One plain sentence per (setting, metric), from the paired test at level ALPHA."""
    n, p = c["pairs"], c["wilcoxon_p"]
    moved = f"median {_f(c['plain_median'])} → {_f(c['hsr_median'])}"
    counts = f"lower in {c['hsr_lower']} of {n} seeds, higher in {c['hsr_higher']}"
    if not (p < ALPHA):
        verdict = f"no significant change at the {ALPHA:g} level"
    else:
        up = c["median_difference"] > 0
        verdict = f"significantly {'higher' if up else 'lower'}"
        if higher_is_better is not None:
            verdict += " (better)" if up == higher_is_better else " (worse)"
    return f"- {name}, {metric_label}: {verdict}; {moved}, {counts}, Wilcoxon p = {_f(p, 2)}."


def write_report(cfg, results: dict, figures: dict, out: Path) -> None:
    """report.md: configuration, per-setting medians, paired tests, findings, figures."""
    runs, data = results["runs"], results["data"]
    lines = [
        "# torch-ws: HSR on a 10-class head (scikit-learn digits)",
        "",
        f"`Linear(64, {cfg.hidden}) → {cfg.activation} → Linear({cfg.hidden}, 10)` "
        f"(n = {runs[0]['num_params']} parameters) with `nn.CrossEntropyLoss`, {data['train_size']} "
        f"training and {data['test_size']} test images (standardized with the training split's "
        f"statistics), SGD (lr {cfg.lr:g}, momentum {cfg.momentum:g}, batches of {cfg.batch_size}) "
        f"for {cfg.epochs} epochs, {cfg.seeds} seeds. For each seed the same initialization and "
        f"batches are trained plainly and with HSR, `loss + ρ·HSRRegularizer(model, "
        f"loss=criterion)(x_batch, y_batch)`, ρ ∈ {list(cfg.rhos)}. Measured after training in "
        f"float64 on the whole training set: exact λ_max and λ_min (eigvalsh of the explicit "
        f"Hessian), the WS bound. Split seed {cfg.seed}; {results['seconds']} s on "
        f"{results['machine']['jobs']} processes, torch {results['machine']['torch']}.",
        "",
        "The networks are the end points of a fixed training budget, not critical points (unlike "
        "the binary protocol, no gradient threshold is reached), so a negative λ_min says that "
        "training stopped near a saddle direction, not that it converged to a saddle point.",
        "",
        "## Per setting (medians over the seeds)",
        "",
        "| setting | λ_max | WS bound | bound/λ_max | λ_min | training loss | train acc. | test acc. | s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in _settings(cfg):
        pts = [r for r in runs if r["setting"] == setting]
        med = {k: _median([r[k] for r in pts]) for k in
               ("lambda_max", "bound", "lambda_min", "train_loss", "train_accuracy",
                "test_accuracy", "train_seconds")}
        ratio = _median([r["bound"] / r["lambda_max"] for r in pts])
        lines.append(f"| {setting} | {_f(med['lambda_max'])} | {_f(med['bound'])} | {_f(ratio)} | "
                     f"{_f(med['lambda_min'])} | {_f(med['train_loss'])} | "
                     f"{_f(med['train_accuracy'], 4)} | {_f(med['test_accuracy'], 4)} | "
                     f"{_f(med['train_seconds'], 2)} |")
    labels = {"lambda_max": ("exact λ_max", False), "bound": ("WS bound", False),
              "test_accuracy": ("test accuracy", True), "train_loss": ("training loss", False),
              "lambda_min": ("λ_min (negative: a saddle direction)", True)}
    lines += ["", "## HSR against plain training, seed by seed", "",
              "| setting | metric | pairs | plain median | HSR median | median difference | "
              "HSR lower in | Wilcoxon p |", "|---|---|---|---|---|---|---|---|"]
    for name, metrics in results["paired"].items():
        for metric, c in metrics.items():
            lines.append(f"| {name} | {labels[metric][0]} | {c['pairs']} | {_f(c['plain_median'])} | "
                         f"{_f(c['hsr_median'])} | {_f(c['median_difference'])} | "
                         f"{c['hsr_lower']}/{c['pairs']} | {_f(c['wilcoxon_p'], 2)} |")
    lines += ["", "## What it shows", ""]
    holds = "holds" if results["bound_holds"] else "FAILS"
    ratios = [r["bound"] / r["lambda_max"] for r in runs]
    lines.append(f"- The bound {holds} on every trained network (bound ≥ exact λ_max), "
                 f"{_f(min(ratios))}–{_f(max(ratios))} times λ_max.")
    for name, metrics in results["paired"].items():
        for metric in ("lambda_max", "lambda_min", "test_accuracy", "train_loss"):
            label, better = labels[metric]
            lines.append(_finding(name, label, metrics[metric],
                                  None if metric == "train_loss" else better))
    lines += ["", f"Two-sided tests at the {ALPHA:g} level; with {cfg.seeds} seeds the smallest "
              f"attainable Wilcoxon p is {_f(2 / 2 ** cfg.seeds, 2)}. A change in test accuracy that "
              "is not significant is reported as such: it is not evidence that HSR helps.", "",
              "## Figures", ""]
    for name, (file, caption) in figures.items():
        lines += [f"### {name}", "", caption, "", f"![{name}]({file})", ""]
    lines += ["All numbers, every run and trajectory, are in `results.json`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
