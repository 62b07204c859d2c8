"""The report's figures (matplotlib, PNG). Each function draws one figure and returns its file
name; :func:`make_figures` returns {name: (file, caption)}."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .. import model as mlp, ops  # noqa: E402
from .analysis import config_key  # noqa: E402
from .claims import p_text  # noqa: E402

PLAIN_COLOR, HSR_COLOR = "#1f77b4", "#d62728"


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def bound_equals_lambda_max_line(ax, values, margin: float) -> None:
    """The dashed line bound = λ_max over the positive ``values`` (widened by ``margin`` on each
    side) and log axes, for a scatter of bounds against exact λ_max; nothing if none is positive."""
    positive = [v for v in values if v > 0]
    if positive:
        lo, hi = min(positive) / margin, max(positive) * margin
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="bound = λ_max")
        ax.set_xscale("log")
        ax.set_yscale("log")


def bound_vs_lambda_max(points, out):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    cfgs = sorted({config_key(p) for p in points})
    markers = "osD^v<>"
    for i, cfg in enumerate(cfgs):
        for hsr, face in ((False, None), (True, "none")):
            pts = [p for p in points if config_key(p) == cfg and p["hsr"] == hsr]
            if pts:
                ax.scatter([p["lambda_max"] for p in pts], [p["bound"] for p in pts], s=18,
                           marker=markers[i % len(markers)], facecolors=face,
                           edgecolors=f"C{i}", color=f"C{i}",
                           label=f"{cfg} {'HSR' if hsr else 'plain'}")
    bound_equals_lambda_max_line(ax, [v for p in points for v in (p["lambda_max"], p["bound"])], 1.5)
    ax.set_xlabel("exact λ_max (explicit Hessian)")
    ax.set_ylabel("WS upper bound λ_sup (closed form)")
    ax.legend(fontsize=7)
    ax.set_title("Bound vs exact largest eigenvalue")
    return _save(fig, out, "bound_vs_lambda_max.png")


def tightness_histograms(points, out):
    """bound/λ_max at plain-GD critical points, WS and spectral side by side, per setting; None
    where the points have no spectral bound (results of an older version)."""
    plain = [p for p in points if not p["hsr"] and p["lambda_max"] > 0]
    if not plain or any("spectral_bound" not in p for p in plain):
        return None
    cfgs = sorted({config_key(p) for p in plain})
    fig, axes = plt.subplots(1, len(cfgs), figsize=(3.6 * len(cfgs), 3), squeeze=False)
    for ax, cfg in zip(axes[0], cfgs):
        pts = [p for p in plain if config_key(p) == cfg]
        ws = [p["bound"] / p["lambda_max"] for p in pts]
        spectral = [p["spectral_bound"] / p["lambda_max"] for p in pts]
        bins = torch.linspace(1.0, max(ws + spectral) * 1.01, 30).tolist()
        ax.hist(ws, bins=bins, alpha=0.6, color=PLAIN_COLOR, label="Wolkowicz-Styan")
        ax.hist(spectral, bins=bins, alpha=0.6, color=HSR_COLOR, label="spectral (GGN + R)")
        ax.axvline(1.0, color="k", lw=1)
        ax.set_title(cfg, fontsize=9)
        ax.set_xlabel("bound / exact λ_max")
    axes[0][0].set_ylabel("critical points")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out, "tightness_histograms.png")


def bound_histogram(points, out):
    plain = [p for p in points if not p["hsr"]]
    cfgs = sorted({config_key(p) for p in plain})
    fig, axes = plt.subplots(1, max(1, len(cfgs)), figsize=(3.2 * max(1, len(cfgs)), 3), squeeze=False)
    for ax, cfg in zip(axes[0], cfgs):
        pts = [p for p in plain if config_key(p) == cfg]
        ax.hist([p["bound"] for p in pts], bins=20, color=PLAIN_COLOR)
        highs = [p["bound"] for p in pts if p.get("high_bound")]
        lows = [p["bound"] for p in pts if not p.get("high_bound")]
        if highs and lows:
            ax.axvline((max(lows) + min(highs)) / 2, color="k", ls="--", lw=1)
        ax.set_title(cfg, fontsize=9)
        ax.set_xlabel("λ_sup")
    axes[0][0].set_ylabel("critical points")
    return _save(fig, out, "bound_histogram.png")


def training_dynamics(points, runs, out):
    plain = [(p, r) for p, r in zip(points, runs) if not p["hsr"] and r.trajectory.get("step")]
    if not plain:
        return None
    plain.sort(key=lambda pr: pr[0]["bound"])
    chosen = [("sharpest", plain[-1]), ("flattest", plain[0])]
    fig, axes = plt.subplots(2, 1, figsize=(6, 6))
    for ax, (label, (p, r)) in zip(axes, chosen):
        t = r.trajectory
        ax.plot(t["step"], t["loss"], color="k", label="train loss")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(t["step"], t["bound"], color=HSR_COLOR, label="WS bound")
        ax2.plot(t["step"], t["lambda_max"], color=PLAIN_COLOR, ls="--", label="exact λ_max")
        ax2.set_yscale("log")
        ax2.set_ylabel("curvature")
        ax.set_title(f"{label}: {config_key(p)}, lr={p['lr']:.2f}, final bound {p['bound']:.3g}", fontsize=9)
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [l.get_label() for l in lines], fontsize=7, loc="center right")
    axes[-1].set_xlabel("gradient-descent step")
    return _save(fig, out, "training_dynamics.png")


def landscapes(data, points, runs, out):
    """Decision boundaries (2-D data only) and the loss along the top Hessian eigenvector for the
    two sharpest and two flattest critical points (plain runs)."""
    plain = sorted(((p, r) for p, r in zip(points, runs) if not p["hsr"]), key=lambda pr: pr[0]["bound"])
    if len(plain) < 2:
        return None
    chosen = plain[-2:][::-1] + plain[:2]
    labels = ["sharpest", "2nd sharpest", "flattest", "2nd flattest"][: len(chosen)]
    two_d = data.dim == 2
    rows = 2 if two_d else 1
    fig, axes = plt.subplots(rows, len(chosen), figsize=(3.2 * len(chosen), 3.0 * rows), squeeze=False)
    x, y = data.x_train, data.y_train
    for col, (label, (p, r)) in enumerate(zip(labels, chosen)):
        act = p["activation"]
        if two_d:
            ax = axes[0][col]
            g = torch.linspace(-6, 6, 150, dtype=torch.float64)
            gx, gy = torch.meshgrid(g, g, indexing="xy")
            grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
            with torch.no_grad():
                z = mlp.mlp_logits(grid, *r.params, act).reshape(gx.shape)
            ax.contourf(gx, gy, torch.sigmoid(z), levels=20, cmap="coolwarm", alpha=0.6)
            ax.contour(gx, gy, z, levels=[0], colors="k")
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=6, edgecolors="k", linewidths=0.2)
            ax.set_title(f"{label}\n{config_key(p)}, bound {p['bound']:.3g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = axes[rows - 1][col]
        with torch.no_grad():
            hess = ops.explicit_hessian(x, y, *r.params, act, "mean")
            _, vecs = torch.linalg.eigh(hess)
            direction = vecs[:, -1]
            theta = mlp.flatten_params(*r.params)
            alphas = torch.linspace(-1.0, 1.0, 61, dtype=torch.float64)
            losses = [float(mlp.mlp_loss(x, y, *mlp.unflatten_params(theta + a * direction, *r.params), act, "mean"))
                      for a in alphas]
        ax.plot(alphas, losses, color="k")
        ax.set_xlabel("step along top eigenvector")
        if col == 0:
            ax.set_ylabel("train loss")
        if not two_d:
            ax.set_title(f"{label}: bound {p['bound']:.3g}", fontsize=8)
    return _save(fig, out, "landscapes.png")


def f1_high_low(points, summary, out):
    plain = [p for p in points if not p["hsr"]]
    high = [p["test_f1"] for p in plain if p.get("high_bound")]
    low = [p["test_f1"] for p in plain if not p.get("high_bound")]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.boxplot([low, high] if high else [low], tick_labels=["low bound", "high bound"][: 2 if high else 1])
    ax.set_ylabel("test macro-F1")
    ax.set_title(f"Test F1 by bound group (Mann-Whitney {p_text(summary['high_low']['mann_whitney_p'])})", fontsize=9)
    return _save(fig, out, "f1_high_vs_low_bound.png")


def plain_vs_hsr(points, summary, out):
    cfgs = sorted({config_key(p) for p in points})
    metrics = [("lambda_max", "exact λ_max"), ("lambda_min", "exact λ_min"), ("test_f1", "test macro-F1")]
    fig, axes = plt.subplots(1, 3, figsize=(4 * 3, 4))
    for ax, (metric, label) in zip(axes, metrics):
        data, positions, colors = [], [], []
        for i, cfg in enumerate(cfgs):
            for j, hsr in enumerate((False, True)):
                data.append([p[metric] for p in points if config_key(p) == cfg and p["hsr"] == hsr])
                positions.append(3 * i + j)
                colors.append(HSR_COLOR if hsr else PLAIN_COLOR)
        parts = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True)
        for patch, c in zip(parts["boxes"], colors):
            patch.set_facecolor(c)
            patch.set_alpha(0.5)
        ax.set_xticks([3 * i + 0.5 for i in range(len(cfgs))])
        ax.set_xticklabels(cfgs, fontsize=7, rotation=20)
        if metric == "lambda_max":
            ax.set_yscale("log")
        s = summary["plain_vs_hsr"][metric]
        ax.set_title(f"{label}\nWilcoxon {p_text(s['wilcoxon_p'])} ({s['pairs']} pairs)", fontsize=9)
    axes[0].plot([], [], color=PLAIN_COLOR, lw=6, alpha=0.5, label="plain GD")
    axes[0].plot([], [], color=HSR_COLOR, lw=6, alpha=0.5, label="HSR")
    axes[0].legend(fontsize=8)
    return _save(fig, out, "plain_vs_hsr.png")


def bound_vs_norms(points, out):
    plain = [p for p in points if not p["hsr"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (key, label) in zip(axes, [("w2_norm", "‖w2‖ (hidden → output)"),
                                       ("hidden_gram_norm", "‖Φ0 Φ0ᵀ‖_F (hidden Gram)")]):
        for i, cfg in enumerate(sorted({config_key(p) for p in plain})):
            pts = [p for p in plain if config_key(p) == cfg]
            ax.scatter([p[key] for p in pts], [p["bound"] for p in pts], s=12, color=f"C{i}", label=cfg)
        ax.set_xlabel(label)
        ax.set_ylabel("λ_sup")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, out, "bound_vs_norms.png")


def width_comparison(points, summary, out):
    if not summary.get("width"):
        return None
    lo, hi = summary["width"]["widths"]
    plain = [p for p in points if not p["hsr"]]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.boxplot([[p["bound"] for p in plain if p["width"] == w] for w in (lo, hi)], tick_labels=[f"H = {lo}", f"H = {hi}"])
    ax.set_yscale("log")
    ax.set_ylabel("λ_sup at critical points")
    ax.set_title(f"Hidden width (Mann-Whitney {p_text(summary['width']['mann_whitney_p'])})", fontsize=9)
    return _save(fig, out, "width_comparison.png")


def make_figures(data, points, runs, summary, out: Path) -> dict:
    figs = {
        "bound_vs_lambda_max": (bound_vs_lambda_max(points, out),
                                "Closed-form WS bound against the exact λ_max of the explicit Hessian, every critical point (hollow: HSR)."),
        "tightness_histograms": (tightness_histograms(points, out),
                                 "bound / exact λ_max at plain-GD critical points: the WS bound and the spectral bound (torch_ws.spectral_bound), side by side."),
        "bound_histogram": (bound_histogram(points, out),
                            "Distribution of the bound at plain-GD critical points; dashed: the high/low group boundary."),
        "training_dynamics": (training_dynamics(points, runs, out),
                              "Loss, bound and exact λ_max along training for the sharpest and the flattest run."),
        "landscapes": (landscapes(data, points, runs, out),
                       "Decision boundaries (2-D data) and the loss along the top Hessian eigenvector: two sharpest, two flattest critical points."),
        "f1_high_low": (f1_high_low(points, summary, out),
                        "Test macro-F1 of the high-bound group against the rest."),
        "plain_vs_hsr": (plain_vs_hsr(points, summary, out),
                         "Plain gradient descent against HSR regularization: λ_max, λ_min and test F1 at the critical points."),
        "bound_vs_norms": (bound_vs_norms(points, out),
                           "The bound against ‖w2‖ and against the hidden-layer Gram norm."),
        "width_comparison": (width_comparison(points, summary, out),
                             "The bound at critical points for the two hidden widths."),
    }
    return {k: v for k, v in figs.items() if v[0] is not None}
