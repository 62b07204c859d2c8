"""Command line: `torch-ws reproduce ...` (also `python -m torch_ws reproduce ...`)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .reproduce.config import ReproduceConfig
from .reproduce.data import DATASETS

#: --dataset choices: the papers' binary protocol on DATASETS, and the 10-class digits experiment.
ALL_DATASETS = (*DATASETS, "digits")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-ws", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="rerun the papers' experiments and write a report folder",
                         description="Train many 3-layer MLPs to critical points with and without HSR "
                                     "regularization, measure the WS bound against the exact Hessian "
                                     "spectrum, and write report.md, PNG figures and results.json.")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="24 initializations per setting, under a minute on 2 cores (default)")
    size.add_argument("--full", action="store_true",
                      help="the papers' scale: 500 initializations per setting (Gaussians: about "
                           "5 minutes on 2 cores)")
    rep.add_argument("--out", help="report folder (default: reports/reproduce for the Gaussians, "
                                    "reports/reproduce-<dataset> for another data set)")
    rep.add_argument("--experiment", choices=("papers", "edge-of-stability", "deep"),
                     default="papers",
                     help="papers (default): the papers' experiments; edge-of-stability: "
                          "full-batch GD on digits with the top Hessian eigenvalue certified every "
                          "10 steps, against 2/η (--hidden, default 32; --max-steps, --seed, "
                          "--out); deep: the papers' "
                          "protocol with several hidden layers (--hidden, default 10 10; --runs, "
                          "--activations one, --rho, --dataset, --train-size, --test-size, "
                          "--max-steps, --grad-tol, --lr-range, --seed)")
    rep.add_argument("--dataset", choices=ALL_DATASETS,
                     help="default: gaussians. digits: a 10-class head (cross-entropy) trained by "
                          "minibatch SGD, plain and with HSR, paired by seed (--runs seeds, "
                          "--widths one H, --activations one, --rho one ρ, --epochs)")
    rep.add_argument("--seed", type=int, help="master seed; results are deterministic for it")
    rep.add_argument("--runs", type=int, help="initializations per (width, activation)")
    rep.add_argument("--train-size", type=int)
    rep.add_argument("--test-size", type=int)
    rep.add_argument("--widths", type=int, nargs="+")
    rep.add_argument("--hidden", type=int, nargs="+",
                     help="--experiment deep and edge-of-stability only: the hidden layers' "
                          "widths (deep: default 10 10; edge-of-stability: default 32, one layer)")
    rep.add_argument("--activations", nargs="+")
    rep.add_argument("--max-steps", type=int)
    rep.add_argument("--epochs", type=int, help="digits only: SGD epochs")
    rep.add_argument("--grad-tol", type=float)
    rep.add_argument("--rho", type=float, help="HSR strength ρ in L + ρ·λ_sup")
    rep.add_argument("--lr-range", type=float, nargs=2)
    rep.add_argument("--jobs", type=int, help="worker processes (default: up to 2)")
    rep.add_argument("--no-progress", action="store_true")
    rep.add_argument("--reanalyse", metavar="DIR",
                     help="no training: rewrite the statistics, figures and report.md of an "
                          "earlier run from DIR/results.json")
    return parser


def default_out(dataset: str) -> str:
    """Each data set's report has a folder of its own, so one run never overwrites another's."""
    return "reports/reproduce" if dataset == "gaussians" else f"reports/reproduce-{dataset}"


def main(argv=None) -> int:
    """Entry point of the `torch-ws` console script."""
    args = _parser().parse_args(argv)
    if args.command == "reproduce" and args.reanalyse:
        from .reproduce import reanalyse
        from .reproduce.edge_of_stability import (is_edge_of_stability_run,
                                                  reanalyse_edge_of_stability)

        try:
            with open(os.path.join(args.reanalyse, "results.json")) as f:
                edge_of_stability = is_edge_of_stability_run(json.load(f))
        except (OSError, ValueError):
            edge_of_stability = False  # reanalyse names what is missing
        try:
            (reanalyse_edge_of_stability if edge_of_stability else reanalyse)(args.reanalyse)
        except FileNotFoundError as error:
            print(f"torch-ws: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.reanalyse}/report.md")
        return 0
    if args.command == "reproduce" and args.experiment == "edge-of-stability":
        return _reproduce_edge_of_stability(args)
    if args.command == "reproduce" and args.experiment == "deep":
        return _reproduce_deep(args)
    if args.command == "reproduce" and args.hidden is not None:
        print("torch-ws: --hidden is an option of --experiment deep and edge-of-stability",
              file=sys.stderr)
        return 2
    if args.command == "reproduce" and args.dataset == "digits":
        return _reproduce_digits(args)
    if args.command == "reproduce":
        if args.epochs is not None:
            print("torch-ws: --epochs is an option of --dataset digits; the binary protocol "
                  "trains for --max-steps", file=sys.stderr)
            return 2
        from .reproduce import run

        overrides = {k: v for k, v in dict(
            dataset=args.dataset, seed=args.seed, runs=args.runs, train_size=args.train_size,
            test_size=args.test_size, max_steps=args.max_steps, grad_tol=args.grad_tol, rho=args.rho,
            widths=tuple(args.widths) if args.widths else None,
            activations=tuple(args.activations) if args.activations else None,
            lr_range=tuple(args.lr_range) if args.lr_range else None,
        ).items() if v is not None}
        overrides["progress"] = not args.no_progress
        if args.dataset == "breast_cancer" and args.train_size is None:
            overrides["train_size"] = 100
        cfg = (ReproduceConfig.full if args.full else ReproduceConfig.quick)(**overrides)
        import torch_ws  # noqa: F401  (validates activations against the C++ table below)

        unknown = [a for a in cfg.activations if a not in torch_ws.ACTIVATIONS]
        if unknown:
            print(f"torch-ws: unknown activation(s) {unknown}; expected {torch_ws.ACTIVATIONS}", file=sys.stderr)
            return 2
        out = args.out or default_out(cfg.dataset)
        results = run(cfg, out, jobs=args.jobs)
        print(f"wrote {out}/report.md ({results['seconds']} s)")
    return 0


def _reproduce_edge_of_stability(args) -> int:
    """`torch-ws reproduce --experiment edge-of-stability`: --hidden, --max-steps, --seed, --out
    and --no-progress apply; the other options belong to the papers' experiments."""
    from .reproduce.edge_of_stability import EdgeOfStabilityConfig, run_edge_of_stability

    unused = [flag for flag, value in vars(args).items()
              if value not in (None, False) and flag not in (
                  "command", "experiment", "hidden", "max_steps", "seed", "out", "no_progress",
                  "quick")]
    if unused:
        print(f"torch-ws: --experiment edge-of-stability does not take "
              f"{', '.join('--' + u.replace('_', '-') for u in unused)}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in dict(
        steps=args.max_steps, seed=args.seed,
        hidden=tuple(args.hidden) if args.hidden else None).items() if v is not None}
    try:
        cfg = EdgeOfStabilityConfig(progress=not args.no_progress, **overrides)
    except ValueError as error:
        print(f"torch-ws: {error}", file=sys.stderr)
        return 2
    # A network of its own, a folder of its own: the default run's report is not overwritten.
    out = args.out or ("reports/edge-of-stability" if args.hidden is None else
                       "reports/edge-of-stability-" + "-".join(map(str, cfg.hidden)))
    results = run_edge_of_stability(cfg, out)
    print(f"wrote {out}/report.md ({results['seconds']} s)")
    return 0


def _reproduce_deep(args) -> int:
    """`torch-ws reproduce --experiment deep`: options mapped onto DeepConfig, and refused where
    the experiment has no such setting."""
    from .reproduce.deep_networks import DeepConfig, run_deep

    taken = dict(dataset="dataset", hidden="hidden", runs="runs", rho="rho", seed="seed",
                 max_steps="max_steps", grad_tol="grad_tol", lr_range="lr_range",
                 train_size="train_size", test_size="test_size")
    unused = [flag for flag, value in vars(args).items()
              if value not in (None, False) and flag not in taken and flag not in (
                  "command", "experiment", "out", "no_progress", "quick", "full", "activations")]
    if unused:
        print(f"torch-ws: --experiment deep does not take "
              f"{', '.join('--' + u.replace('_', '-') for u in unused)}", file=sys.stderr)
        return 2
    overrides = {field: getattr(args, flag) for flag, field in taken.items()
                 if getattr(args, flag) is not None}
    if args.activations is not None:
        if len(args.activations) != 1:
            print("torch-ws: --experiment deep takes one activation (every hidden layer has it), "
                  f"got {args.activations}", file=sys.stderr)
            return 2
        overrides["activation"] = args.activations[0]
    try:
        preset = DeepConfig.full if args.full else DeepConfig.quick
        cfg = preset(progress=not args.no_progress, **overrides)
    except ValueError as error:
        print(f"torch-ws: {error}", file=sys.stderr)
        return 2
    out = args.out or "reports/reproduce-deep"
    results = run_deep(cfg, out)
    print(f"wrote {out}/report.md ({results['seconds']} s)")
    return 0


def _reproduce_digits(args) -> int:
    """`torch-ws reproduce --dataset digits`: options mapped onto DigitsConfig, and refused where
    the digits experiment has no such setting."""
    from .reproduce.digits import DigitsConfig, run_digits

    unused = [flag for flag, value in (("--max-steps", args.max_steps), ("--grad-tol", args.grad_tol),
                                       ("--lr-range", args.lr_range), ("--test-size", args.test_size))
              if value is not None]
    if unused:
        print(f"torch-ws: {', '.join(unused)} not used by --dataset digits (minibatch SGD for "
              f"--epochs; the test set is what --train-size leaves)", file=sys.stderr)
        return 2
    for flag, values in (("--widths", args.widths), ("--activations", args.activations)):
        if values is not None and len(values) != 1:
            print(f"torch-ws: --dataset digits takes one value of {flag}, got {values}", file=sys.stderr)
            return 2
    import torch_ws

    if args.activations and args.activations[0] not in torch_ws.ACTIVATIONS:
        print(f"torch-ws: unknown activation(s) {args.activations}; expected {torch_ws.ACTIVATIONS}",
              file=sys.stderr)
        return 2
    overrides = {k: v for k, v in dict(
        seeds=args.runs, epochs=args.epochs, train_size=args.train_size, seed=args.seed,
        hidden=args.widths[0] if args.widths else None,
        activation=args.activations[0] if args.activations else None,
        rhos=(args.rho,) if args.rho is not None else None,
    ).items() if v is not None}
    overrides["progress"] = not args.no_progress
    cfg = (DigitsConfig.full if args.full else DigitsConfig.quick)(**overrides)
    out = args.out or default_out("digits")
    try:
        results = run_digits(cfg, out, jobs=args.jobs)
    except ValueError as error:
        print(f"torch-ws: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}/report.md ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
