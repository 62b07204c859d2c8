"""`torch-ws reproduce`: train, measure, analyse, plot, report."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

from .analysis import summarize
from .config import ReproduceConfig
from .data import make_dataset
from .training import deduplicate, measure, train_run


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


_WORKER_STATE: dict = {}


def _init_worker(cfg_dict: dict):
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead; processes give parallelism
    cfg = ReproduceConfig(**cfg_dict, progress=False)
    _WORKER_STATE["cfg"] = cfg
    _WORKER_STATE["data"] = make_dataset(cfg.dataset, cfg.train_size, cfg.test_size, cfg.seed)


def _work(task: dict):
    cfg, data = _WORKER_STATE["cfg"], _WORKER_STATE["data"]
    run = train_run(data, task["width"], task["activation"], task["seed"], task["lr"], task["hsr"],
                    cfg.rho, cfg.init_std, cfg.max_steps, cfg.grad_tol, cfg.record_points)
    return run, measure(data, run)


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="reproduce", unit="run")


def run(cfg: ReproduceConfig, out_dir: str | os.PathLike, jobs: int | None = None) -> dict:
    """Run the experiments of ``cfg`` and write ``report.md``, the PNG figures and
    ``results.json`` into ``out_dir``. Returns the results dictionary."""
    from .figures import make_figures
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tasks = _tasks(cfg)
    jobs = jobs or min(2, os.cpu_count() or 1)
    cfg_dict = cfg.to_dict()
    if jobs > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(cfg_dict,)) as pool:
            results = list(_progress(pool.imap(_work, tasks, chunksize=1), len(tasks), cfg.progress))
    else:
        threads = torch.get_num_threads()
        _init_worker(cfg_dict)
        try:
            results = [_work(t) for t in _progress(tasks, len(tasks), cfg.progress)]
        finally:
            torch.set_num_threads(threads)
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
    summary = summarize(points, cfg.high_quantile)
    counts = {
        f"{act} H={w} {'HSR' if hsr else 'plain'}": {
            "runs": len(m), "converged": sum(r.converged for r, _ in m),
            "diverged": sum(r.diverged for r, _ in m),
            "analysed": sum(1 for r in runs_by_point if (r.width, r.activation, r.hsr) == (w, act, hsr)),
        }
        for (w, act, hsr), m in sorted(groups.items())
    }
    results_json = {
        "config": cfg_dict,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "jobs": jobs},
        "seconds": None,
        # The sizes the data set really has (breast_cancer's test set is what training leaves).
        "data": {"dataset": data.name, "features": data.dim, "train_size": len(data.y_train),
                 "test_size": len(data.y_test)},
        "used_final_iterates": fallback,
        "counts": counts,
        "summary": summary,
        "points": points,
        "trajectories": [
            {k: getattr(r, k) for k in ("width", "activation", "seed", "lr", "hsr")} | r.trajectory
            for r in runs_by_point
        ],
    }
    figures = make_figures(data, points, runs_by_point, summary, out)
    results_json["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results_json, indent=1, default=float))
    write_report(cfg, results_json, figures, out)
    return results_json
