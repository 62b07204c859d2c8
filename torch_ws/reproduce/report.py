"""report.md: the configuration, the numbers and the figures, with what they show."""
from __future__ import annotations

import math
from pathlib import Path

from .claims import Claim, claims_table, p_text, p_value


def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _duration(results: dict) -> str:
    total = results["seconds"]
    training = results.get("training_seconds")
    text = f"{total} s ({total / 60:.1f} min)" if total else "n/a"
    return f"{text}, of which training {training} s" if training else text


def write_report(cfg, results: dict, figures: dict, out: Path) -> None:
    s = results["summary"]
    data = results["data"]
    lines = [
        "# torch-ws reproduction of the WS-bound and HSR experiments",
        "",
        f"Data set `{data['dataset']}` ({data['features']} features; {data['train_size']} training, "
        f"{data['test_size']} test points), "
        f"widths {list(cfg.widths)}, activations {list(cfg.activations)}, {cfg.runs} initializations "
        f"per setting, full-batch GD with lr ~ U{tuple(cfg.lr_range)}, critical point when "
        f"‖∇‖ < {cfg.grad_tol:g} within {cfg.max_steps} steps, duplicates closer than "
        f"{cfg.dedup_tol:g} removed, HSR with ρ = {cfg.rho:g}. Seed {cfg.seed}; "
        f"{_duration(results)} on {results['machine']['jobs']} process(es), torch "
        f"{results['machine']['torch']}.",
        "",
    ]
    if results.get("claims"):
        lines += ["## The papers' claims", "",
                  "Each claim of the two papers with our number, the test and its p-value. "
                  f"Verdicts at the papers' 1% level: **holds** when the test is significant in "
                  "the claimed direction, **does not hold** when it is not significant or goes "
                  "the other way, **inconclusive** when there are too few points or the settings "
                  "disagree.", ""]
        lines += claims_table([Claim(**c) for c in results["claims"]])
        lines.append("")
    if results["used_final_iterates"]:
        lines += ["**Note:** some settings had fewer than 3 runs reach the gradient threshold; "
                  "for those, every non-diverged final iterate was analysed instead.", ""]
    lines += ["## Runs", "", "| setting | runs | converged | diverged | analysed | median steps |",
              "|---|---|---|---|---|---|"]
    for key, c in results["counts"].items():
        lines.append(f"| {key} | {c['runs']} | {c['converged']} | {c['diverged']} | {c['analysed']} | "
                     f"{_f(c.get('median_steps'))} |")
    lines += ["", "## Is the bound tight?", "",
              "| setting (plain GD) | points | median bound | median λ_max | median bound/λ_max | worst bound/λ_max | Spearman | bound ≥ λ_max everywhere |",
              "|---|---|---|---|---|---|---|---|"]
    for cfg_name, c in s["configs"].items():
        lines.append(f"| {cfg_name} | {c['points']} | {_f(c['median_bound'])} | {_f(c['median_lambda_max'])} | "
                     f"{_f(c['median_ratio'])} | {_f(c['max_ratio'])} | {_f(c['spearman'], 2)} | {c['bound_holds']} |")
    if any("median_spectral_ratio" in c for c in s["configs"].values()):
        lines += ["", "The spectral bound (`torch_ws.spectral_bound`: λ_max of the Gauss-Newton part "
                  "plus λ_max of the residual, by Weyl, or WS where smaller; docs/math.md §9) at the "
                  "same points:", "",
                  "| setting (plain GD) | median WS/λ_max | median spectral/λ_max | worst spectral/λ_max | spectral ≥ λ_max everywhere |",
                  "|---|---|---|---|---|"]
        for cfg_name, c in s["configs"].items():
            if "median_spectral_ratio" in c:
                lines.append(f"| {cfg_name} | {_f(c['median_ratio'])} | {_f(c['median_spectral_ratio'])} | "
                             f"{_f(c['max_spectral_ratio'])} | {c['spectral_holds']} |")
    hl = s["high_low"]
    lines += ["", "## Sharpness and test performance", "",
              f"High-bound group (above the {cfg.high_quantile:.0%} quantile within each setting): "
              f"{hl['high_n']} points, median test F1 {_f(hl['high_median_f1'])}; low-bound group: "
              f"{hl['low_n']} points, median {_f(hl['low_median_f1'])}; two-sided Mann-Whitney "
              f"{p_text(hl['mann_whitney_p'])}.", "",
              "## Plain gradient descent vs HSR", "",
              "| metric | pairs | plain median | HSR median | HSR lower in | Wilcoxon p | Mann-Whitney p |",
              "|---|---|---|---|---|---|---|"]
    for metric, c in s["plain_vs_hsr"].items():
        lines.append(f"| {metric} | {c['pairs']} | {_f(c['plain_median'])} | {_f(c['hsr_median'])} | "
                     f"{_f(c['hsr_lower_fraction'] * 100 if c['pairs'] else math.nan, 3)}% | "
                     f"{p_value(c['wilcoxon_p'])} | {p_value(c['mann_whitney_p'])} |")
    if s.get("width"):
        w = s["width"]
        lines += ["", f"Hidden width: median bound {_f(w['median_bound'][0])} at H = {w['widths'][0]} vs "
                      f"{_f(w['median_bound'][1])} at H = {w['widths'][1]} (Mann-Whitney {p_text(w['mann_whitney_p'])})."]
    lines += ["", "## Figures", ""]
    for name, (file, caption) in figures.items():
        lines += [f"### {name.replace('_', ' ')}", "", caption, "", f"![{name}]({file})", ""]
    lines += ["All numbers are in `results.json` (every critical point and trajectory)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
