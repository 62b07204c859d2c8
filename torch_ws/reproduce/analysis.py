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


def _iqr(values) -> float:
    return float(np.subtract(*np.percentile(values, [75, 25]))) if len(values) else math.nan


def _tails(plain: list[dict], configs: list[str]) -> dict:
    """The right tail of the bound's distribution at plain-GD critical points, per setting: its
    skewness, the D'Agostino skewness test (two-sided), and the largest bound over the median."""
    out = {}
    for cfg in configs:
        bounds = [p["bound"] for p in plain if config_key(p) == cfg]
        out[cfg] = {
            "points": len(bounds),
            "skewness": float(stats.skew(bounds)) if len(bounds) > 2 else math.nan,
            "skewtest_p": _p(stats.skewtest, bounds) if len(bounds) >= 8 else math.nan,
            "max_over_median": max(bounds) / _median(bounds) if bounds else math.nan,
        }
    return out


def _spearman(a, b) -> tuple[float, float]:
    if len(a) < 3:
        return math.nan, math.nan
    result = stats.spearmanr(a, b)
    return float(result[0]), float(result[1])


def _norm_correlations(plain: list[dict]) -> dict:
    """Spearman correlations of the bound with ‖w2‖ and with ‖W1‖ at plain-GD critical points,
    per setting and over all of them."""
    out = {}
    groups = {"all": plain} | {cfg: [p for p in plain if config_key(p) == cfg]
                               for cfg in sorted({config_key(p) for p in plain})}
    for name, pts in groups.items():
        bounds = [p["bound"] for p in pts]
        rho_w2, p_w2 = _spearman(bounds, [p["w2_norm"] for p in pts])
        rho_w1, p_w1 = _spearman(bounds, [p["w1_norm"] for p in pts])
        out[name] = {"points": len(pts), "rho_w2": rho_w2, "p_w2": p_w2, "rho_w1": rho_w1,
                     "p_w1": p_w1}
    return out


def _fisher(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    if n_a == 0 or n_b == 0:
        return math.nan
    return float(stats.fisher_exact([[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]])[1])


def _sharp_and_saddle(plain, hsr, configs, high_quantile: float, saddle_tol: float) -> dict:
    """Sharp minima: points whose bound exceeds the plain-GD ``high_quantile`` of their setting
    (by construction about 1 − high_quantile of plain points), plain vs HSR. Saddle points:
    λ_min < −saddle_tol. Two-sided Fisher exact tests of equal fractions."""
    sharp_plain = sharp_hsr = 0
    for cfg in configs:
        bounds = [p["bound"] for p in plain if config_key(p) == cfg]
        if not bounds:
            continue
        threshold = float(np.quantile(bounds, high_quantile))
        sharp_plain += sum(b > threshold for b in bounds)
        sharp_hsr += sum(p["bound"] > threshold for p in hsr if config_key(p) == cfg)
    saddle_plain = sum(p["lambda_min"] < -saddle_tol for p in plain)
    saddle_hsr = sum(p["lambda_min"] < -saddle_tol for p in hsr)
    n_plain, n_hsr = len(plain), len(hsr)
    return {
        "plain_points": n_plain, "hsr_points": n_hsr, "saddle_tol": saddle_tol,
        "sharp_plain": sharp_plain, "sharp_hsr": sharp_hsr,
        "sharp_fisher_p": _fisher(sharp_plain, n_plain, sharp_hsr, n_hsr),
        "saddle_plain": saddle_plain, "saddle_hsr": saddle_hsr,
        "saddle_fisher_p": _fisher(saddle_plain, n_plain, saddle_hsr, n_hsr),
    }


def summarize(points: list[dict], high_quantile: float, saddle_tol: float = 1e-3) -> dict:
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
        # The spectral bound (docs/math.md §9), where the run measured it.
        spectral = [p["spectral_bound"] / p["lambda_max"] for p in pts
                    if p["lambda_max"] > 0 and "spectral_bound" in p]
        if spectral:
            out["configs"][cfg] |= {
                "median_spectral_ratio": _median(spectral),
                "max_spectral_ratio": max(spectral),
                "spectral_holds": all(p["spectral_bound"] >= p["lambda_max"] * (1 - 1e-9)
                                      for p in pts),
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
        # "More variable": the spread of test F1 in each group, and the Brown-Forsythe test
        # (Levene's with medians) of equal variances.
        "high_iqr_f1": _iqr(high), "low_iqr_f1": _iqr(low),
        "high_std_f1": float(np.std(high)) if high else math.nan,
        "low_std_f1": float(np.std(low)) if low else math.nan,
        "brown_forsythe_p": _p(stats.levene, high, low, center="median")
        if len(high) > 1 and len(low) > 1 else math.nan,
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

    # HSR narrows the spectrum: the paired spread λ_max − λ_min.
    a = [x["lambda_max"] - x["lambda_min"] for x, _ in pairs]
    b = [y["lambda_max"] - y["lambda_min"] for _, y in pairs]
    out["plain_vs_hsr"]["spread"] = {
        "pairs": len(pairs), "plain_median": _median(a), "hsr_median": _median(b),
        "hsr_lower_fraction": float(np.mean([bb < aa for aa, bb in zip(a, b)])) if pairs else math.nan,
        "wilcoxon_p": wilcoxon(a, b),
        "mann_whitney_p": mann_whitney([p["lambda_max"] - p["lambda_min"] for p in plain],
                                       [p["lambda_max"] - p["lambda_min"] for p in hsr]),
    }
    out["tail"] = _tails(plain, configs)
    out["norms"] = _norm_correlations(plain)
    out["sharp_and_saddle"] = _sharp_and_saddle(plain, hsr, configs, high_quantile, saddle_tol)

    widths = sorted({p["width"] for p in plain})
    if len(widths) >= 2:
        lo, hi = widths[0], widths[-1]
        a = [p["bound"] for p in plain if p["width"] == lo]
        b = [p["bound"] for p in plain if p["width"] == hi]
        out["width"] = {"widths": [lo, hi], "median_bound": [_median(a), _median(b)],
                        "mann_whitney_p": mann_whitney(a, b)}
    return out
