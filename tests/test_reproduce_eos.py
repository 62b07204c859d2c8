"""The edge-of-stability experiment (torch_ws/reproduce/edge_of_stability.py) on a small run: its
files, its intervals against eigvalsh of the explicit Hessian, and its command line."""
import json
import subprocess
import sys

import torch
import torch_ws
from torch_ws.reproduce.edge_of_stability import (
    EdgeOfStabilityConfig,
    binary_digits,
    run_edge_of_stability,
    train_one,
)

SMALL = dict(step_sizes=(0.3,), steps=30, every=10, train_size=150, hidden=6, progress=False)


def test_run_writes_report_figure_and_results(tmp_path):
    results = run_edge_of_stability(EdgeOfStabilityConfig(**SMALL), str(tmp_path))
    for name in ("report.md", "edge_of_stability.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    record = results["records"][0]
    assert record["step"] == [0, 10, 20, 30]
    assert all(lo <= up for lo, up in zip(record["lower"], record["upper"]))
    assert json.loads((tmp_path / "results.json").read_text())["summaries"][0]["eta"] == 0.3
    assert "## What the run shows" in (tmp_path / "report.md").read_text()


def test_last_interval_contains_the_final_lambda_max():
    cfg = EdgeOfStabilityConfig(**SMALL)
    x, target = binary_digits(cfg.train_size, cfg.seed)
    record, model = train_one(cfg, 0.3, x, target)
    args = (x.double(), target.double(), *(p.detach().double() for p in model.parameters()))
    H = torch_ws.explicit_hessian(*args, "tanh", "mean", "mse")
    top = float(torch.linalg.eigvalsh(H)[-1])
    assert record["lower"][-1] <= top * (1 + 1e-6) and top <= record["upper"][-1] * (1 + 1e-6)


def test_command_line_refuses_options_of_other_experiments():
    run = subprocess.run([sys.executable, "-m", "torch_ws", "reproduce", "--experiment",
                          "edge-of-stability", "--dataset", "digits"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "does not take --dataset" in run.stderr
