"""Each claim of the two papers, answered by the numbers of a run: one row per claim with our
number, the test and its p-value, and a verdict at the papers' 1% level.

A verdict is "holds" when the test is significant at 1% in the claimed direction, "does not
hold" when it is not significant or goes the other way, and "inconclusive" when there are too
few points to test or the settings disagree. Claims without a test (the bound's tightness) state
their criterion in the row.
"""
from __future__ import annotations

import math
from typing import NamedTuple

#: The papers' significance level.
LEVEL = 0.01

WS = "WS paper"    # Omae et al., arXiv:2604.10202
HSR = "HSR paper"  # Omae et al., arXiv:2606.28662


class Claim(NamedTuple):
    source: str
    claim: str
    number: str
    test: str
    verdict: str


def _g(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def p_value(v) -> str:
    """A p-value as the reports write it; one that underflowed to 0 is below the smallest
    positive double."""
    if v is None or math.isnan(v):
        return "n/a"
    return "< 1e-300" if v == 0 else f"{v:.2g}"


def p_text(v) -> str:
    """"p = 0.012", or "p < 1e-300"."""
    text = p_value(v)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _verdict(p: float, direction_ok: bool) -> str:
    if p is None or math.isnan(p):
        return "inconclusive"
    return "holds" if p < LEVEL and direction_ok else "does not hold"


def claims(summary: dict, points: list[dict]) -> list[Claim]:
    """The claims of both papers, answered from :func:`analysis.summarize`'s summary."""
    rows: list[Claim] = []
    configs = summary["configs"]
    medians = [c["median_ratio"] for c in configs.values() if not math.isnan(c["median_ratio"])]
    worst = [c["max_ratio"] for c in configs.values() if not math.isnan(c["max_ratio"])]
    holds_everywhere = all(c["bound_holds"] for c in configs.values())
    hsr_ratios = sorted(p["bound"] / p["lambda_max"] for p in points
                        if p["hsr"] and p["lambda_max"] > 0)
    hsr_median = hsr_ratios[len(hsr_ratios) // 2] if hsr_ratios else math.nan
    if medians:
        tight = max(medians) <= 1.5 and holds_everywhere
        rows.append(Claim(
            WS, "The bound is close to λ_max at critical points (Fig. 2)",
            f"median bound/λ_max {_g(min(medians))}–{_g(max(medians))} across settings "
            f"(worst point {_g(max(worst))}); {_g(hsr_median)} at HSR's points; bound ≥ λ_max at "
            f"every point: {holds_everywhere}",
            "criterion: every setting's median ≤ 1.5 and no violation",
            "holds" if tight else "does not hold"))

    tails = summary.get("tail", {})
    if tails:
        skewed = [t for t in tails.values() if t["skewness"] > 0 and t["skewtest_p"] < LEVEL]
        testable = [t for t in tails.values() if not math.isnan(t["skewtest_p"])]
        verdict = ("inconclusive" if not testable else "holds" if len(skewed) == len(tails)
                   else "does not hold" if not skewed else "inconclusive")
        rows.append(Claim(
            WS, "The bound's distribution has a long right tail (Fig. 6)",
            "skewness " + ", ".join(f"{k} {_g(t['skewness'], 2)}" for k, t in tails.items())
            + "; largest/median " + _g(max(t["max_over_median"] for t in tails.values()), 3),
            f"D'Agostino skewness test: significant and right-skewed in {len(skewed)} of "
            f"{len(tails)} settings",
            verdict))

    hl = summary["high_low"]
    rows.append(Claim(
        WS, "High-bound critical points have lower test F1 (Fig. 7)",
        f"median F1 {_g(hl['high_median_f1'], 4)} (high, {hl['high_n']} points) vs "
        f"{_g(hl['low_median_f1'], 4)} (low, {hl['low_n']})",
        f"two-sided Mann-Whitney U, {p_text(hl['mann_whitney_p'])}",
        _verdict(hl["mann_whitney_p"], hl["high_median_f1"] < hl["low_median_f1"])))
    if "brown_forsythe_p" in hl:
        rows.append(Claim(
            WS, "… and more variable test F1 (Fig. 7)",
            f"F1 std {_g(hl['high_std_f1'], 2)} (high) vs {_g(hl['low_std_f1'], 2)} (low); "
            f"IQR {_g(hl['high_iqr_f1'], 2)} vs {_g(hl['low_iqr_f1'], 2)}",
            f"Brown-Forsythe test of equal variances, {p_text(hl['brown_forsythe_p'])}",
            _verdict(hl["brown_forsythe_p"], hl["high_std_f1"] > hl["low_std_f1"])))

    norms = summary.get("norms", {}).get("all")
    if norms:
        rows.append(Claim(
            WS, "The bound grows with ‖w2‖ (Fig. 10, left)",
            f"Spearman ρ(bound, ‖w2‖) = {_g(norms['rho_w2'], 2)} over {norms['points']} "
            "plain-GD points",
            f"Spearman test, {p_text(norms['p_w2'])}",
            _verdict(norms["p_w2"], norms["rho_w2"] > 0)))
        rho_w1, p_w1 = norms["rho_w1"], norms["p_w1"]
        no_relation = not math.isnan(p_w1) and p_w1 >= LEVEL
        rows.append(Claim(
            WS, "… and not with ‖W1‖ (Fig. 10, right)",
            f"Spearman ρ(bound, ‖W1‖) = {_g(rho_w1, 2)}",
            f"Spearman test, {p_text(p_w1)} (the claim holds if not significant)",
            "inconclusive" if math.isnan(p_w1) else "holds" if no_relation else "does not hold"))

    width = summary.get("width")
    if width:
        lo, hi = width["median_bound"]
        rows.append(Claim(
            WS, f"Wider networks have larger bounds (H = {width['widths'][1]} vs "
                f"{width['widths'][0]}, Fig. 11)",
            f"median bound {_g(hi)} vs {_g(lo)}",
            f"two-sided Mann-Whitney U, {p_text(width['mann_whitney_p'])}",
            _verdict(width["mann_whitney_p"], hi > lo)))

    paired = summary["plain_vs_hsr"]

    def paired_row(metric: str, claim: str, lower_is_claimed: bool = True, digits: int = 3):
        c = paired.get(metric)
        if not c:
            return
        direction = (c["hsr_median"] < c["plain_median"]) == lower_is_claimed
        rows.append(Claim(
            HSR, claim,
            f"median {_g(c['plain_median'], digits)} (plain) → {_g(c['hsr_median'], digits)} "
            f"(HSR); lower with HSR in {_g(100 * c['hsr_lower_fraction'], 3)}% of "
            f"{c['pairs']} pairs",
            f"two-sided Wilcoxon signed-rank (paired by seed), {p_text(c['wilcoxon_p'])}",
            _verdict(c["wilcoxon_p"], direction)))

    paired_row("lambda_max", "HSR lowers λ_max")
    paired_row("spread", "HSR narrows the spectrum (λ_max − λ_min)")
    ss = summary.get("sharp_and_saddle")
    if ss:
        def fraction(hits: int, n: int) -> str:
            return f"{hits}/{n} ({_g(100 * hits / n, 2)}%)" if n else "n/a"

        def avoids_row(kind: str, claim: str, criterion: str):
            # HSR avoids `kind` if its fraction of such points is significantly lower.
            plain, hsr = ss[f"{kind}_plain"], ss[f"{kind}_hsr"]
            rows.append(Claim(
                HSR, claim,
                f"{criterion}: {fraction(plain, ss['plain_points'])} plain vs "
                f"{fraction(hsr, ss['hsr_points'])} HSR",
                f"two-sided Fisher exact test, {p_text(ss[f'{kind}_fisher_p'])}",
                _verdict(ss[f"{kind}_fisher_p"],
                         hsr * ss["plain_points"] < plain * ss["hsr_points"])))

        avoids_row("sharp", "HSR avoids sharp minima",
                   "bound above plain GD's high-bound threshold")
        avoids_row("saddle", "HSR avoids saddle points", f"λ_min < −{ss['saddle_tol']:g}")
    paired_row("test_f1", "HSR's flat minima generalize better (higher test F1)",
               lower_is_claimed=False, digits=4)
    return rows


def claims_table(rows: list[Claim]) -> list[str]:
    """The rows as a markdown table."""
    lines = ["| source | claim | our number | test | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r.source} | {r.claim} | {r.number} | {r.test} | **{r.verdict}** |" for r in rows]
    return lines
