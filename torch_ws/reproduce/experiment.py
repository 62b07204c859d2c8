"""`torch-ws reproduce`: train, measure, analyse, plot, report."""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

from .. import model as mlp
from .analysis import summarize
from .config import ReproduceConfig
from .data import make_dataset
from .batched import measure_batch, spectral_bounds, train_batch
from .claims import claims
from .training import Run, deduplicate


def _tasks(cfg: ReproduceConfig):
    """One task per (width, activation, run, method); seeds and learning rates are drawn from
    ``cfg.seed`` so a configuration always yields the same runs."""
    gen = torch.Generator().manual_seed(cfg.seed)
    tasks = []
    for width in cfg.widths:
        for act in cfg.activations:
            for _ in range(cfg.runs):
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                lr = float(cfg.lr_range[0] + (cfg.lr_range[1] - cfg.lr_range[0]) * torch.rand(1, generator=gen))
                for hsr in (False, True):
                    tasks.append(dict(width=width, activation=act, seed=seed, lr=lr, hsr=hsr))
    return tasks


#: Models per batch: a setting's runs are split into batches of at most this many, so that two
#: workers share the settings evenly and the progress bar moves as batches run.
BATCH_MODELS = 125


def _batches(cfg: ReproduceConfig) -> list[dict]:
    """The tasks of :func:`_tasks` as batches of one (width, activation, method), the costliest
    first (HSR before plain, wide before narrow) so that the last batches to finish are short."""
    groups: dict = {}
    for t in _tasks(cfg):
        groups.setdefault((t["width"], t["activation"], t["hsr"]), []).append(t)
    batches = []
    for (width, act, hsr), members in groups.items():
        for start in range(0, len(members), BATCH_MODELS):
            part = members[start:start + BATCH_MODELS]
            batches.append(dict(width=width, activation=act, hsr=hsr,
                                seeds=[t["seed"] for t in part], lrs=[t["lr"] for t in part]))
    return sorted(batches, key=lambda b: (not b["hsr"], -b["width"]))


_WORKER_STATE: dict = {}


def _init_worker(cfg_dict: dict, queue=None, progress=None):
    """A worker's data set and settings; ``progress`` (or a put on ``queue``, from another
    process) receives the number of models that just stopped."""
    torch.set_num_threads(1)  # small tensors: processes give the parallelism
    cfg = ReproduceConfig(**cfg_dict, progress=False)
    _WORKER_STATE["cfg"] = cfg
    _WORKER_STATE["data"] = make_dataset(cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed)
    _WORKER_STATE["ticks"] = queue.put if queue is not None else progress


def _work(batch: dict):
    """Train one batch of models and measure their end points: [(Run, point dict)]."""
    cfg, data, ticks = _WORKER_STATE["cfg"], _WORKER_STATE["data"], _WORKER_STATE["ticks"]
    runs = train_batch(data, batch["width"], batch["activation"], batch["seeds"], batch["lrs"],
                       batch["hsr"], cfg.rho, cfg.init_std, cfg.max_steps, cfg.grad_tol,
                       cfg.record_points, progress=ticks)
    return list(zip(runs, measure_batch(data, runs)))


def _train_all(cfg: ReproduceConfig, jobs: int) -> list:
    """Every batch of :func:`_batches`, on ``jobs`` processes, with a progress bar counting the
    models that have stopped (converged, diverged or out of steps)."""
    batches = _batches(cfg)
    total = sum(len(b["seeds"]) for b in batches)
    bar = _progress_bar(total, cfg.progress)
    cfg_dict = cfg.to_dict()
    if jobs <= 1:
        threads = torch.get_num_threads()
        _init_worker(cfg_dict, progress=bar.update if bar else None)
        try:
            return [pair for b in batches for pair in _work(b)]
        finally:
            torch.set_num_threads(threads)
            if bar:
                bar.close()
    ctx = mp.get_context("spawn")
    with contextlib.ExitStack() as stack:
        # The workers report stopped models through a managed queue (the main process keeps
        # the bar); both the manager and the pool end with this block.
        ticks = stack.enter_context(ctx.Manager()).Queue() if bar else None
        pool = stack.enter_context(
            ctx.Pool(jobs, initializer=_init_worker, initargs=(cfg_dict, ticks)))
        pending = pool.map_async(_work, batches, chunksize=1)
        while not pending.ready():
            pending.wait(0.5)
            while ticks is not None and not ticks.empty():
                bar.update(ticks.get())
        results = pending.get()
    if bar:
        bar.update(total - bar.n)
        bar.close()
    return [pair for part in results for pair in part]


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="reproduce", unit="model", smoothing=0.05)


def run(cfg: ReproduceConfig, out_dir: str | os.PathLike, jobs: int | None = None) -> dict:
    """Run the experiments of ``cfg`` and write ``report.md``, the PNG figures and
    ``results.json`` into ``out_dir``. Returns the results dictionary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = jobs or min(2, os.cpu_count() or 1)
    results = _train_all(cfg, jobs)
    training_seconds = round(time.perf_counter() - started, 1)
    data = make_dataset(cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed)

    # Critical points: converged runs, duplicates removed within each (width, activation, method).
    points, runs_by_point, fallback = [], [], False
    groups: dict = {}
    for run_, point in results:
        groups.setdefault((run_.width, run_.activation, run_.hsr), []).append((run_, point))
    for key, members in sorted(groups.items()):
        converged = [r for r, _ in members if r.converged]
        chosen = deduplicate(converged, cfg.dedup_tol)
        if len(chosen) < 3:  # too few critical points to analyse: use every non-diverged end point
            fallback = True
            chosen = deduplicate([r for r, _ in members if not r.diverged], cfg.dedup_tol)
        ids = {id(r) for r in chosen}
        for r, p in members:
            if id(r) in ids:
                points.append(p)
                runs_by_point.append(r)
    counts = {
        f"{act} H={w} {'HSR' if hsr else 'plain'}": {
            "runs": len(m), "converged": sum(r.converged for r, _ in m),
            "diverged": sum(r.diverged for r, _ in m),
            "analysed": sum(1 for r in runs_by_point if (r.width, r.activation, r.hsr) == (w, act, hsr)),
            "median_steps": float(torch.tensor([float(r.steps) for r, _ in m]).median()),
        }
        for (w, act, hsr), m in sorted(groups.items())
    }
    results_json = {
        "config": cfg.to_dict(),
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "jobs": jobs},
        "seconds": None,
        "training_seconds": training_seconds,
        # The sizes the data set really has (breast_cancer's test set is what training leaves).
        "data": {"dataset": data.name, "features": data.dim, "train_size": len(data.y_train),
                 "test_size": len(data.y_test)},
        "used_final_iterates": fallback,
        "counts": counts,
        "points": points,
        # Each analysed point's run: its trajectory and end point θ (flatten_params' order).
        "trajectories": [
            {k: getattr(r, k) for k in ("width", "activation", "seed", "lr", "hsr")} | r.trajectory
            | {"params": mlp.flatten_params(*r.params).tolist()}
            for r in runs_by_point
        ],
    }
    return _analyse_and_write(cfg, data, results_json, runs_by_point, out, started)


def _analyse_and_write(cfg: ReproduceConfig, data, results_json: dict, runs_by_point: list,
                       out: Path, started: float | None) -> dict:
    """The statistics, the claims, the figures, results.json and report.md from the analysed
    points; ``started`` (a perf_counter time) sets the run's total seconds, None keeps them."""
    from .figures import make_figures
    from .report import write_report

    points = results_json["points"]

    def save():
        # Compact: a full run holds thousands of points and trajectories.
        (out / "results.json").write_text(json.dumps(results_json, default=float))

    # Saved first, so that a failure below never loses a run (--reanalyse picks it up).
    save()
    summary = summarize(points, cfg.high_quantile, cfg.saddle_tol)
    results_json["summary"] = summary
    results_json["claims"] = [c._asdict() for c in claims(summary, points)]
    figures = make_figures(data, points, runs_by_point, summary, out)
    if started is not None:
        results_json["seconds"] = round(time.perf_counter() - started, 1)
    save()
    write_report(cfg, results_json, figures, out)
    return results_json


def reanalyse(out_dir: str | os.PathLike) -> dict:
    """Rewrite the statistics, figures and report of an earlier run from its ``results.json``
    (no training): for a report of a newer version of the analysis, or after editing it."""
    out = Path(out_dir)
    path = out / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results.json to reanalyse (run `torch-ws reproduce` "
                                "with this --out first)")
    results_json = json.loads(path.read_text())
    settings = {k: tuple(v) if isinstance(v, list) else v
                for k, v in results_json["config"].items()}
    cfg = ReproduceConfig(**settings, progress=False)
    data = make_dataset(cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed)
    runs_by_point = []
    for point, t in zip(results_json["points"], results_json["trajectories"]):
        theta = torch.tensor(t["params"], dtype=torch.float64)
        width = t["width"]
        shapes = [torch.empty(width, data.dim), torch.empty(width), torch.empty(1, width),
                  torch.empty(1)]
        params = [p.clone() for p in mlp.unflatten_params(theta, *shapes)]
        trajectory = {k: t[k] for k in ("step", "loss", "bound", "lambda_max")}
        runs_by_point.append(Run(width, t["activation"], t["seed"], t["lr"], t["hsr"],
                                 point["converged"], False, point["steps"], point["grad_norm"],
                                 params, trajectory))
    # Measurements a newer version takes at every point, added to an older run's points.
    missing = [i for i, p in enumerate(results_json["points"]) if "spectral_bound" not in p]
    if missing:
        values = spectral_bounds(data, [runs_by_point[i] for i in missing])
        for i, value in zip(missing, values):
            results_json["points"][i]["spectral_bound"] = value
    return _analyse_and_write(cfg, data, results_json, runs_by_point, out, started=None)
