"""Statistics over critical points: group comparisons with the papers' tests."""
from __future__ import annotations

import math
from statistics import median

import numpy as np
from scipy import stats


def config_key(point: dict) -> str:
    return f"{point['activation']} H={point['width']}"


def _p(test, *args, **kwargs) -> float:
    try:
        return float(test(*args, **kwargs).pvalue)
    except ValueError:  # too few samples, or all differences zero
        return math.nan


def mann_whitney(a, b) -> float:
    """Two-sided Mann-Whitney U p-value (NaN when a group is empty)."""
    if len(a) == 0 or len(b) == 0:
        return math.nan
    return _p(stats.mannwhitneyu, a, b, alternative="two-sided")


def wilcoxon(a, b) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN when fewer than 2 pairs)."""
    if len(a) < 2:
        return math.nan
    return _p(stats.wilcoxon, a, b)


def _median(values) -> float:
    return float(median(values)) if len(values) else math.nan


def summarize(points: list[dict], high_quantile: float) -> dict:
    """Every number the report states, from the measured points (plain and HSR)."""
    plain = [p for p in points if not p["hsr"]]
    hsr = [p for p in points if p["hsr"]]
    configs = sorted({config_key(p) for p in points})
    out: dict = {"configs": {}, "high_low": {}, "plain_vs_hsr": {}, "width": {}}

    for cfg in configs:
        pts = [p for p in plain if config_key(p) == cfg]
        ratio = [p["bound"] / p["lambda_max"] for p in pts if p["lambda_max"] > 0]
        out["configs"][cfg] = {
            "points": len(pts),
            "median_bound": _median([p["bound"] for p in pts]),
            "median_lambda_max": _median([p["lambda_max"] for p in pts]),
            "median_ratio": _median(ratio),
            "max_ratio": max(ratio) if ratio else math.nan,
            "bound_holds": all(p["bound"] >= p["lambda_max"] * (1 - 1e-9) for p in pts),
            "spearman": float(stats.spearmanr([p["bound"] for p in pts], [p["lambda_max"] for p in pts])[0])
            if len(pts) > 2 else math.nan,
        }

    # High-bound vs low-bound groups: above the quantile of the bound within each configuration.
    high, low = [], []
    for cfg in configs:
        pts = [p for p in plain if config_key(p) == cfg]
        if not pts:
            continue
        threshold = float(np.quantile([p["bound"] for p in pts], high_quantile))
        for p in pts:
            p["high_bound"] = p["bound"] > threshold
            (high if p["high_bound"] else low).append(p["test_f1"])
    out["high_low"] = {
        "high_n": len(high), "low_n": len(low),
        "high_median_f1": _median(high), "low_median_f1": _median(low),
        "mann_whitney_p": mann_whitney(high, low),
    }

    # Plain vs HSR, paired by (configuration, seed) where both ends are in the analysis.
    by_key = {(config_key(p), p["seed"]): p for p in hsr}
    pairs = [(p, by_key[(config_key(p), p["seed"])]) for p in plain if (config_key(p), p["seed"]) in by_key]
    for metric in ("lambda_max", "lambda_min", "bound", "test_f1", "train_loss"):
        a = [x[metric] for x, _ in pairs]
        b = [y[metric] for _, y in pairs]
        out["plain_vs_hsr"][metric] = {
            "pairs": len(pairs),
            "plain_median": _median(a), "hsr_median": _median(b),
            "hsr_lower_fraction": float(np.mean([bb < aa for aa, bb in zip(a, b)])) if pairs else math.nan,
            "wilcoxon_p": wilcoxon(a, b),
            "mann_whitney_p": mann_whitney([p[metric] for p in plain], [p[metric] for p in hsr]),
        }

    widths = sorted({p["width"] for p in plain})
    if len(widths) >= 2:
        lo, hi = widths[0], widths[-1]
        a = [p["bound"] for p in plain if p["width"] == lo]
        b = [p["bound"] for p in plain if p["width"] == hi]
        out["width"] = {"widths": [lo, hi], "median_bound": [_median(a), _median(b)],
                        "mann_whitney_p": mann_whitney(a, b)}
    return out
