"""`torch-ws reproduce --dataset digits`: the HSR experiment on a 10-class head.

scikit-learn's bundled digits (1,797 8×8 images, 64 features, 10 classes), a
``Linear(64, H) → tanh → Linear(H, 10)`` network trained with ``nn.CrossEntropyLoss`` by minibatch
SGD, plainly and with HSR (``loss + ρ·HSRRegularizer(model, loss=criterion)(x_batch, y_batch)``)
from the same initialization and the same batches for each seed, so that every HSR run has a
plain twin. At the end of training, on the whole training set in float64: the exact λ_max and
λ_min of the loss Hessian (``torch.linalg.eigvalsh`` of the explicit Hessian), the WS bound, the
training loss; and the test accuracy. Paired two-sided Wilcoxon signed-rank tests over the seeds
say whether HSR changed each of them.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import SizePresets, setting_name

DIGITS_FEATURES, DIGITS_CLASSES = 64, 10


@dataclass
class DigitsConfig(SizePresets):
    """Everything that determines a digits run; results are a function of it alone."""

    hidden: int = 16                    # n = 64H + H + 10H + 10 = 1,210 parameters at H = 16
    activation: str = "tanh"
    seeds: int = 8                      # paired runs (one plain, one per ρ) per seed
    rhos: tuple = (0.01, 0.1)           # HSR strengths ρ in L + ρ·λ_sup
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05                    # SGD with momentum
    momentum: float = 0.9
    train_size: int = 1200              # the other 597 images are the test set
    record_every: int = 1               # epochs between trajectory records
    seed: int = 0                       # the split; seed s of the runs is seed + 1 + s
    progress: bool = True

    # quick: 8 seeds, ρ = 0.01 and 0.1, 30 epochs: about a minute on 2 cores (58 s measured).
    # full: 30 seeds, ρ = 0.01, 0.03 and 0.1, 60 epochs: about 7 minutes on 2 cores (390 s).
    FULL = dict(seeds=30, rhos=(0.01, 0.03, 0.1), epochs=60)


@dataclass
class DigitsData:
    """Standardized with the training split's statistics (constant pixels stay 0)."""

    x_train: torch.Tensor  # (N, 64) float64
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(train_size: int, seed: int) -> DigitsData:
    """A random split of scikit-learn's digits: ``train_size`` images for training, the rest for
    testing, deterministic for ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.int64)
    if not 0 < train_size < len(y):
        raise ValueError(f"digits has {len(y)} images; train_size must be in [1, {len(y) - 1}], "
                         f"got {train_size}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:train_size], perm[train_size:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return DigitsData(x[train], y[train], x[test], y[test])


#: The module of each activation of the table (torch_ws.ACTIVATIONS).
ACTIVATION_MODULES = {
    "linear": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus,
    "gelu": nn.GELU, "silu": nn.SiLU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
}


def make_model(cfg: DigitsConfig, seed: int) -> nn.Sequential:
    """``Linear(64, H) → act → Linear(H, 10)`` with PyTorch's default initialization, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIGITS_FEATURES, cfg.hidden), ACTIVATION_MODULES[cfg.activation](),
                         nn.Linear(cfg.hidden, DIGITS_CLASSES))


def train(cfg: DigitsConfig, data: DigitsData, seed: int, rho: float | None) -> dict:
    """One run: SGD on the float32 model, with HSR of strength ``rho`` unless it is None. The
    initialization and the order of the batches depend on ``seed`` alone, so runs of one seed are
    paired. Returns the trajectory (per recorded epoch: training loss and the mean minibatch bound)
    and the trained model."""
    import torch_ws

    model = make_model(cfg, seed)
    criterion = nn.CrossEntropyLoss()
    reg = torch_ws.HSRRegularizer(model, loss=criterion)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x, y = data.x_train.float(), data.y_train
    order = torch.Generator().manual_seed(seed)
    trajectory = {"epoch": [], "train_loss": [], "batch_bound": []}
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(len(y), generator=order)
        bounds = []
        for start in range(0, len(y), cfg.batch_size):
            batch = perm[start:start + cfg.batch_size]
            loss = criterion(model(x[batch]), y[batch])
            if rho is not None:
                bound = reg(x[batch], y[batch])
                loss = loss + rho * bound
            else:
                with torch.no_grad():
                    bound = reg(x[batch], y[batch])
            bounds.append(float(bound.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % cfg.record_every == 0 or epoch == cfg.epochs:
            with torch.no_grad():
                trajectory["epoch"].append(epoch)
                trajectory["train_loss"].append(float(criterion(model(x), y)))
                trajectory["batch_bound"].append(sum(bounds) / len(bounds))
    return {"trajectory": trajectory, "model": model}


def measure(cfg: DigitsConfig, data: DigitsData, model: nn.Sequential) -> dict:
    """The trained model in float64 on the whole training set: the exact extreme eigenvalues of the
    loss Hessian (explicit Hessian, ``eigvalsh``), the WS bounds, training loss and accuracy; and
    the test accuracy."""
    import torch_ws
    from .. import model as mlp, ops

    w1, b1, w2, b2 = (t.detach().double() for t in (model[0].weight, model[0].bias,
                                                    model[2].weight, model[2].bias))
    args = (data.x_train, data.y_train, w1, b1, w2, b2, cfg.activation, "mean", "cross_entropy")
    eig = torch.linalg.eigvalsh(ops.explicit_hessian(*args).detach())
    bounds = torch_ws.ws_bounds(*args)
    logits = mlp.mlp_logits(data.x_train, w1, b1, w2, b2, cfg.activation)
    test_logits = mlp.mlp_logits(data.x_test, w1, b1, w2, b2, cfg.activation)
    return {
        "lambda_max": float(eig[-1]), "lambda_min": float(eig[0]),
        "bound": float(bounds.lambda_max_upper), "lambda_min_lower": float(bounds.lambda_min_lower),
        "train_loss": float(nn.functional.cross_entropy(logits, data.y_train)),
        "train_accuracy": float((logits.argmax(1) == data.y_train).double().mean()),
        "test_accuracy": float((test_logits.argmax(1) == data.y_test).double().mean()),
        "num_params": int(eig.numel()),
    }


_WORKER: dict = {}


def _init_worker(cfg_dict: dict):
    torch.set_num_threads(1)  # small products: processes give the parallelism
    cfg = DigitsConfig(**cfg_dict, progress=False)
    _WORKER["cfg"], _WORKER["data"] = cfg, load_digits_split(cfg.train_size, cfg.seed)


def _work(task: tuple) -> dict:
    seed, rho = task
    cfg, data = _WORKER["cfg"], _WORKER["data"]
    started = time.perf_counter()
    run = train(cfg, data, seed, rho)
    trained = time.perf_counter()
    out = {"seed": seed, "rho": rho, "setting": setting_name(rho),
           **measure(cfg, data, run["model"]), "trajectory": run["trajectory"]}
    out["train_seconds"] = round(trained - started, 2)
    return out


def _paired(runs: list[dict], rho: float, metric: str) -> dict:
    """HSR at ``rho`` against plain, seed by seed: medians, the median paired difference, how many
    seeds HSR lowered the metric in, and the two-sided Wilcoxon signed-rank p-value."""
    from .analysis import _median, wilcoxon

    plain = {r["seed"]: r[metric] for r in runs if r["rho"] is None}
    hsr = {r["seed"]: r[metric] for r in runs if r["rho"] == rho}
    seeds = sorted(set(plain) & set(hsr))
    a, b = [plain[s] for s in seeds], [hsr[s] for s in seeds]
    diffs = sorted(y - x for x, y in zip(a, b))
    return {"pairs": len(seeds), "plain_median": _median(a), "hsr_median": _median(b),
            "median_difference": _median(diffs), "hsr_lower": sum(d < 0 for d in diffs),
            "hsr_higher": sum(d > 0 for d in diffs), "wilcoxon_p": wilcoxon(a, b)}


METRICS = ("lambda_max", "bound", "test_accuracy", "train_loss", "lambda_min")


def run_digits(cfg: DigitsConfig, out_dir: str | os.PathLike, jobs: int | None = None) -> dict:
    """Train, measure, test, plot and write ``report.md``, the figures and ``results.json`` into
    ``out_dir``. Returns the results dictionary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tasks = [(cfg.seed + 1 + s, rho) for s in range(cfg.seeds) for rho in (None, *cfg.rhos)]
    jobs = jobs or min(2, os.cpu_count() or 1)
    cfg_dict = cfg.to_dict()
    progress = _progress(len(tasks), cfg.progress)
    if jobs > 1:
        with mp.get_context("spawn").Pool(jobs, initializer=_init_worker, initargs=(cfg_dict,)) as pool:
            runs = [progress(r) for r in pool.imap(_work, tasks, chunksize=1)]
    else:
        threads = torch.get_num_threads()
        _init_worker(cfg_dict)
        try:
            runs = [progress(_work(t)) for t in tasks]
        finally:
            torch.set_num_threads(threads)
    progress(None)
    data = load_digits_split(cfg.train_size, cfg.seed)
    results = {
        "config": cfg_dict,
        "machine": {"torch": torch.__version__, "jobs": jobs},
        "data": {"dataset": "digits", "features": DIGITS_FEATURES, "classes": DIGITS_CLASSES,
                 "train_size": len(data.y_train), "test_size": len(data.y_test)},
        "paired": {setting_name(rho): {m: _paired(runs, rho, m) for m in METRICS}
                   for rho in cfg.rhos},
        "bound_holds": all(r["bound"] >= r["lambda_max"] * (1 - 1e-9) for r in runs),
        "runs": runs,
    }
    from .digits_report import make_figures, write_report

    figures = make_figures(cfg, runs, out)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    write_report(cfg, results, figures, out)
    return results


def _progress(total: int, enabled: bool):
    """A callable that advances a tqdm bar by one per result and closes it on None."""
    if not enabled:
        return lambda item: item
    from tqdm import tqdm

    bar = tqdm(total=total, desc="reproduce digits", unit="run")

    def advance(item):
        if item is None:
            bar.close()
        else:
            bar.update(1)
        return item

    return advance
