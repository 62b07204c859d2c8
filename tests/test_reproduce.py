"""`torch-ws reproduce` end to end on a tiny configuration: every figure and the JSON."""
import json

import pytest
import torch

from torch_ws.__main__ import main
from torch_ws.reproduce import ReproduceConfig, run

FIGURES = [
    "bound_vs_lambda_max.png", "bound_histogram.png", "training_dynamics.png", "landscapes.png",
    "f1_high_vs_low_bound.png", "plain_vs_hsr.png", "bound_vs_norms.png", "width_comparison.png",
    "tightness_histograms.png",
]


def test_reproduce_writes_every_figure_and_the_json(tmp_path):
    cfg = ReproduceConfig(runs=4, max_steps=150, train_size=30, test_size=100, widths=(3, 10),
                          activations=("tanh",), record_points=4, progress=False)
    results = run(cfg, tmp_path, jobs=1)
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 1000, name
    report = (tmp_path / "report.md").read_text()
    for name in FIGURES:
        assert f"({name})" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["runs"] == 4
    points = saved["points"]
    assert points and {p["hsr"] for p in points} == {False, True}
    for p in points:
        # The closed-form bound is an upper bound of the exact spectrum at every analysed point.
        assert p["bound"] >= p["lambda_max"] * (1 - 1e-9)
        assert p["lambda_min_lower"] <= p["lambda_min"] * (1 + 1e-9) + 1e-12
        assert 0 <= p["test_f1"] <= 1
    assert set(saved["summary"]) == {"configs", "high_low", "plain_vs_hsr", "width", "tail",
                                     "norms", "sharp_and_saddle"}
    assert results["seconds"] == saved["seconds"]
    # Every claim of the papers has a row with a verdict, in the JSON and the report.
    assert len(saved["claims"]) == 12
    assert all(c["verdict"] in ("holds", "does not hold", "inconclusive") for c in saved["claims"])
    assert "## The papers' claims" in report and report.count("| WS paper |") == 7

    # --reanalyse rebuilds the same statistics, claims and report from results.json alone.
    (tmp_path / "report.md").unlink()
    assert main(["reproduce", "--reanalyse", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["summary"] == saved["summary"] and again["claims"] == saved["claims"]
    assert (tmp_path / "report.md").read_text() == report


def test_reanalyse_without_results_says_so(tmp_path, capsys):
    assert main(["reproduce", "--reanalyse", str(tmp_path)]) == 2
    assert "no results.json to reanalyse" in capsys.readouterr().err


def _summary_for_claims(high_f1, low_f1):
    """A summary whose only data are the high- and low-bound groups' test F1."""
    from torch_ws.reproduce.analysis import summarize

    points = []
    for i, f1 in enumerate(high_f1 + low_f1):
        high = i < len(high_f1)
        points.append(dict(activation="tanh", width=3, seed=i, hsr=False, test_f1=f1,
                           bound=10.0 + i if high else 1.0 + i / 1000, lambda_max=1.0,
                           lambda_min=0.0, w1_norm=1.0 + i % 7, w2_norm=1.0 + i,
                           train_loss=0.1))
    return summarize(points, high_quantile=1 - len(high_f1) / len(points)), points


def test_claim_verdicts_follow_the_tests():
    from torch_ws.reproduce.claims import claims

    rows = {r.claim: r for r in claims(*_summary_for_claims([0.5, 0.6, 0.4] * 5, [0.9] * 45 + [0.91] * 45))}
    f1 = rows["High-bound critical points have lower test F1 (Fig. 7)"]
    assert f1.verdict == "holds" and "p = " in f1.test
    assert rows["… and more variable test F1 (Fig. 7)"].verdict == "holds"
    # Same F1 in both groups: no difference, so the claim does not hold.
    rows = {r.claim: r for r in claims(*_summary_for_claims([0.9, 0.91] * 8, [0.9, 0.91] * 45))}
    assert rows["High-bound critical points have lower test F1 (Fig. 7)"].verdict == "does not hold"


def test_reproduce_is_deterministic_for_a_seed(tmp_path):
    cfg = dict(runs=2, max_steps=40, train_size=20, test_size=50, widths=(3,), activations=("sigmoid",),
               record_points=2, progress=False)
    a = run(ReproduceConfig(**cfg), tmp_path / "a", jobs=1)["points"]
    b = run(ReproduceConfig(**cfg), tmp_path / "b", jobs=1)["points"]
    assert a == b


def test_cli_breast_cancer(tmp_path, capsys):
    assert main(["reproduce", "--dataset", "breast_cancer", "--runs", "2", "--max-steps", "30",
                 "--widths", "3", "10", "--activations", "tanh", "--train-size", "40",
                 "--jobs", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "report.md" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["dataset"] == "breast_cancer"
    assert (tmp_path / "landscapes.png").exists()
    # The header states the sizes the data set has: 40 for training, the other 529 for testing.
    from sklearn.datasets import load_breast_cancer

    total = len(load_breast_cancer().target)
    report = (tmp_path / "report.md").read_text()
    assert f"30 features; 40 training, {total - 40} test points" in report
    assert saved["data"] == {"dataset": "breast_cancer", "features": 30, "train_size": 40,
                             "test_size": total - 40}


def test_each_dataset_has_its_own_default_report_folder():
    from torch_ws.__main__ import default_out

    assert default_out("gaussians") != default_out("breast_cancer")
    assert default_out("breast_cancer") == "reports/reproduce-breast_cancer"


def test_cli_rejects_unknown_activation(tmp_path, capsys):
    assert main(["reproduce", "--activations", "elu", "--out", str(tmp_path)]) == 2
    assert "unknown activation" in capsys.readouterr().err


def test_cli_rejects_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--dataset", "mnist"])


def test_breast_cancer_standardization():
    """Standardized with the training split's own statistics; standardize=False gives the raw rows
    of the same split (what load_breast_cancer returns)."""
    from sklearn.datasets import load_breast_cancer

    from torch_ws.reproduce.data import make_dataset

    scaled = make_dataset("breast_cancer", train_size=100, test_size=0, seed=3)
    raw = make_dataset("breast_cancer", train_size=100, test_size=0, seed=3, standardize=False)
    assert torch.allclose(scaled.x_train.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(scaled.x_train.std(0), torch.ones(30, dtype=torch.float64), atol=1e-12)
    expected = (raw.x_train - raw.x_train.mean(0)) / raw.x_train.std(0)
    assert torch.allclose(scaled.x_train, expected, atol=1e-12)
    source = torch.tensor(load_breast_cancer().data, dtype=torch.float64)
    for row in raw.x_train[:5]:
        assert (source == row).all(1).any()
    assert torch.equal(scaled.y_train, raw.y_train)
