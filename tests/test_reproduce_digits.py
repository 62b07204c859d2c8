"""`torch-ws reproduce --dataset digits` (the 10-class experiment) end to end on a tiny
configuration, its pairing of runs, and its command line."""
import json

import pytest
import torch

import torch_ws
import reference
from torch_ws.__main__ import main
from torch_ws.reproduce.digits import (
    DigitsConfig, load_digits_split, make_model, measure, run_digits, train,
)

TINY = dict(seeds=2, rhos=(0.1,), epochs=2, hidden=4, train_size=150, progress=False)


def test_writes_the_report_figures_and_json(tmp_path):
    results = run_digits(DigitsConfig(**TINY), tmp_path, jobs=1)
    report = (tmp_path / "report.md").read_text()
    for name in ("paired.png", "bound_vs_lambda_max.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
        assert f"({name})" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["data"] == {"dataset": "digits", "features": 64, "classes": 10,
                             "train_size": 150, "test_size": 1797 - 150}
    runs = saved["runs"]
    assert sorted((r["seed"], r["setting"]) for r in runs) == [
        (1, "HSR ρ=0.1"), (1, "plain"), (2, "HSR ρ=0.1"), (2, "plain")]
    for r in runs:
        # The exact spectrum comes from the explicit Hessian, independently of the op.
        assert r["bound"] >= r["lambda_max"] * (1 - 1e-9)
        assert r["lambda_min_lower"] <= r["lambda_min"] + 1e-12 * abs(r["lambda_min"])
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["train_accuracy"] <= 1
        assert r["num_params"] == 64 * 4 + 4 + 4 * 10 + 10
        assert len(r["trajectory"]["train_loss"]) == 2
    paired = saved["paired"]["HSR ρ=0.1"]["lambda_max"]
    assert paired["pairs"] == 2 and paired["hsr_lower"] + paired["hsr_higher"] <= 2
    assert saved["bound_holds"] is True and results["seconds"] == saved["seconds"]
    assert "## What it shows" in report


def test_measure_matches_an_independent_computation():
    cfg = DigitsConfig(**TINY)
    data = load_digits_split(cfg.train_size, cfg.seed)
    model = make_model(cfg, seed=3)
    m = measure(cfg, data, model)
    params = [t.detach().double() for t in (model[0].weight, model[0].bias, model[2].weight,
                                            model[2].bias)]
    hess = reference.explicit_hessian(data.x_train, data.y_train, *params, "tanh", "mean",
                                      "cross_entropy").detach()
    eig = torch.linalg.eigvalsh(hess)
    assert m["lambda_max"] == pytest.approx(float(eig[-1]), rel=1e-12)
    assert m["lambda_min"] == pytest.approx(float(eig[0]), rel=1e-12)
    with torch.no_grad():
        logits = model.double()(data.x_test)
        train_loss = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
    assert m["test_accuracy"] == pytest.approx(float((logits.argmax(1) == data.y_test).double().mean()))
    assert m["train_loss"] == pytest.approx(float(train_loss), rel=1e-12)


def test_runs_of_one_seed_are_paired():
    """Same initialization and batches: HSR with ρ = 0 trains exactly the plain model."""
    cfg = DigitsConfig(**TINY)
    data = load_digits_split(cfg.train_size, cfg.seed)
    plain = train(cfg, data, seed=5, rho=None)["model"]
    zero = train(cfg, data, seed=5, rho=0.0)["model"]
    other = train(cfg, data, seed=6, rho=None)["model"]
    for a, b, c in zip(plain.parameters(), zero.parameters(), other.parameters()):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_hsr_lowers_the_bound_it_regularizes():
    """A strong ρ on one seed: the trained network's bound is below the plain twin's."""
    cfg = DigitsConfig(**{**TINY, "epochs": 5})
    data = load_digits_split(cfg.train_size, cfg.seed)
    bounds = {}
    for rho in (None, 1.0):
        model = train(cfg, data, seed=1, rho=rho)["model"]
        bounds[rho] = measure(cfg, data, model)["bound"]
    assert bounds[1.0] < bounds[None]


def test_split_is_standardized_and_deterministic():
    a, b = load_digits_split(1000, seed=4), load_digits_split(1000, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1000, 64) and a.x_test.shape == (797, 64)
    assert torch.allclose(a.x_train.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    assert set(a.y_train.tolist()) == set(range(10))
    with pytest.raises(ValueError, match=r"digits has 1797 images; train_size must be in "
                                         r"\[1, 1796\], got 1797"):
        load_digits_split(1797, seed=0)


def test_cli_runs_digits(tmp_path, capsys):
    assert main(["reproduce", "--dataset", "digits", "--runs", "1", "--epochs", "1", "--widths", "3",
                 "--rho", "0.5", "--train-size", "120", "--jobs", "1", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    assert "report.md" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["hidden"] == 3 and saved["config"]["rhos"] == [0.5]
    assert {r["setting"] for r in saved["runs"]} == {"plain", "HSR ρ=0.5"}


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "5"], "--max-steps not used by --dataset digits"),
    (["--widths", "3", "10"], "--dataset digits takes one value of --widths, got [3, 10]"),
    (["--activations", "elu"], "unknown activation(s) ['elu']"),
    (["--train-size", "1797", "--runs", "1", "--epochs", "1"],
     "digits has 1797 images; train_size must be in [1, 1796], got 1797"),
])
def test_cli_refuses_what_digits_cannot_honour(argv, message, tmp_path, capsys):
    assert main(["reproduce", "--dataset", "digits", "--jobs", "1", "--no-progress",
                 "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_epochs_belongs_to_digits(capsys):
    assert main(["reproduce", "--epochs", "3"]) == 2
    assert "--epochs is an option of --dataset digits" in capsys.readouterr().err


def test_every_activation_of_the_table_builds_a_model_the_regularizer_takes():
    for act in torch_ws.ACTIVATIONS:
        torch_ws.HSRRegularizer(make_model(DigitsConfig(activation=act), seed=0), loss="cross_entropy")


def test_paired_statistics_use_the_usual_median():
    """Four seeds: medians are means of the two middle values (torch.median's lower middle
    misreported them before)."""
    from torch_ws.reproduce.digits import _paired

    runs = [{"seed": s, "rho": rho, "m": v} for s, (p, h) in enumerate([(1, 0), (2, 4), (3, 1),
                                                                        (10, 2)])
            for rho, v in ((None, p), (0.1, h))]
    c = _paired(runs, 0.1, "m")
    assert (c["plain_median"], c["hsr_median"]) == (2.5, 1.5)
    assert c["median_difference"] == -1.5  # differences -1, 2, -2, -8
    assert (c["hsr_lower"], c["hsr_higher"], c["pairs"]) == (3, 1, 4)
