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
    make_model,
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
    report = (tmp_path / "report.md").read_text()
    assert "## What the run shows" in report
    # --reanalyse rewrites the report from results.json alone, the same one.
    (tmp_path / "report.md").unlink()
    run = subprocess.run([sys.executable, "-m", "torch_ws", "reproduce", "--reanalyse",
                          str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "report.md").read_text() == report


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


def explicit_top_eigenvalue(model, x, target) -> float:
    """λ_max of the MSE loss's Hessian of ``model`` at (x, target): eigvalsh of torch.func.hessian
    of the real module in float64, independent of torch_ws."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    names, shapes = list(params), [v.shape for v in params.values()]
    flat = torch.cat([v.reshape(-1) for v in params.values()])

    def loss(theta):
        chunks = theta.split([s.numel() for s in shapes])
        tensors = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(model, tensors, (x.double(),))
        return torch.nn.functional.mse_loss(out.squeeze(1), target.double())

    return float(torch.linalg.eigvalsh(torch.func.hessian(loss)(flat))[-1])


def test_deep_network_intervals_contain_the_explicit_lambda_max():
    # Two hidden layers (the deep interval, docs/math.md §12.6): every measured interval holds
    # the explicit Hessian's λ_max at the step it was taken, and the config takes an int or widths.
    cfg = EdgeOfStabilityConfig(**{**SMALL, "hidden": (5, 4), "steps": 20})
    assert make_model(cfg)[2].weight.shape == (4, 5) and len(make_model(cfg)) == 5
    assert EdgeOfStabilityConfig(**SMALL).hidden == (6,)
    x, target = binary_digits(cfg.train_size, cfg.seed)
    record, model = train_one(cfg, 0.3, x, target)
    top = explicit_top_eigenvalue(model, x, target)
    assert record["lower"][-1] <= top * (1 + 1e-6) and top <= record["upper"][-1] * (1 + 1e-6)
    model = make_model(cfg)  # step 0: the same initialization
    top = explicit_top_eigenvalue(model, x, target)
    assert record["lower"][0] <= top * (1 + 1e-6) and top <= record["upper"][0] * (1 + 1e-6)


def test_command_line_takes_hidden_widths(tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch_ws", "reproduce", "--experiment",
                          "edge-of-stability", "--hidden", "3", "3", "--max-steps", "1",
                          "--no-progress", "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = (tmp_path / "report.md").read_text()
    assert "Linear(64, 3) → tanh → Linear(3, 3) → tanh → Linear(3, 1)" in report
    assert "--hidden 3 3 --max-steps 1" in report
    run = subprocess.run([sys.executable, "-m", "torch_ws", "reproduce", "--experiment",
                          "edge-of-stability", "--hidden", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "positive layer widths, got (0,)" in run.stderr
