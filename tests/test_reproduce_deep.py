"""The deeper-network experiment (torch_ws/reproduce/deep_networks.py) on a small run: its files,
its exact spectra against torch.func.hessian of the trained nn.Sequential, its claims, and its
command line."""
import json
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call, hessian

from torch_ws.reproduce.data import make_dataset
from torch_ws.reproduce.deep_networks import DeepConfig, make_network, measure, run_deep, summarize

SMALL = dict(runs=2, max_steps=30, train_size=40, test_size=60, hidden=(4, 3), progress=False)


def test_run_writes_report_figure_and_results(tmp_path):
    results = run_deep(DeepConfig(**SMALL), tmp_path)
    for name in ("report.md", "deep_bound_vs_lambda_max.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["points"]) == 4 and saved["config"]["hidden"] == [4, 3]
    assert saved["num_params"] == 2 * 4 + 4 + 4 * 3 + 3 + 3 + 1
    for point in results["points"]:
        assert point["lambda_max"] <= point["bound"]
        assert point["interval_lower"] <= point["lambda_max"] <= point["interval_upper"]
    report = (tmp_path / "report.md").read_text()
    assert "hidden layers [4, 3]" in report and "## The papers' claims" in report
    # Two pairs cannot reach 1% with a signed-rank test: the paired claims say so.
    verdicts = {c["claim"]: c["verdict"] for c in results["claims"]}
    assert verdicts["HSR finds flatter minima (lower λ_max)"] == "inconclusive"
    assert verdicts["λ_max ≤ the WS bound at every point"] == "holds"


def test_measured_spectrum_is_the_networks():
    """The experiment's λ_max and λ_min are those of torch.func.hessian of the real network."""
    cfg = DeepConfig(**SMALL)
    data = make_dataset(cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed)
    net = make_network(cfg, data.dim, seed=3)
    point = measure(cfg, data, net)
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(th):
        params = dict(zip(names, (t.view(s) for t, s in zip(torch.split(th, [s.numel() for s in
                                                                              shapes]), shapes))))
        logits = functional_call(net, params, (data.x_train,)).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, data.y_train)

    eigenvalues = torch.linalg.eigvalsh(hessian(loss)(theta))
    assert point["lambda_max"] == pytest.approx(float(eigenvalues[-1]), rel=1e-10)
    assert point["lambda_min"] == pytest.approx(float(eigenvalues[0]), rel=1e-8, abs=1e-12)


def test_paired_claims_with_enough_pairs():
    """Eight pairs where HSR always lowers λ_max: the signed-rank test reaches 1% and the claim
    holds; the same numbers the other way round do not."""
    def point(seed, hsr, lam):
        return dict(seed=seed, hsr=hsr, diverged=False, converged=True, lambda_max=lam,
                    bound=2 * lam, interval_lower=lam, interval_upper=lam, test_accuracy=0.9)
    lower = [point(s, False, 2.0 + s) for s in range(8)] + [point(s, True, 1.0 + s / 2) for s in range(8)]
    from torch_ws.reproduce.deep_networks import claims

    verdicts = {c.claim: c.verdict for c in claims(summarize(DeepConfig(**SMALL), lower))}
    assert verdicts["HSR finds flatter minima (lower λ_max)"] == "holds"
    assert verdicts["the bound tracks λ_max across end points"] == "holds"
    higher = [dict(p, hsr=not p["hsr"]) for p in lower]
    verdicts = {c.claim: c.verdict for c in claims(summarize(DeepConfig(**SMALL), higher))}
    assert verdicts["HSR finds flatter minima (lower λ_max)"] == "does not hold"


def test_command_line(tmp_path):
    def cli(*flags):
        return subprocess.run([sys.executable, "-m", "torch_ws", "reproduce", *flags],
                              capture_output=True, text=True)
    refused = cli("--experiment", "deep", "--widths", "3")
    assert refused.returncode == 2 and "--experiment deep does not take --widths" in refused.stderr
    refused = cli("--hidden", "3", "3")
    assert refused.returncode == 2 and "--hidden is an option of --experiment deep" in refused.stderr
    refused = cli("--experiment", "deep", "--activations", "relu")
    assert refused.returncode == 2 and "smooth" in refused.stderr
    done = cli("--experiment", "deep", "--hidden", "3", "2", "--runs", "1", "--max-steps", "5",
               "--train-size", "20", "--test-size", "20", "--no-progress", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "hidden layers [3, 2]" in (tmp_path / "report.md").read_text()
