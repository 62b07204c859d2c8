"""Experiment settings: the papers' protocol with sizes as options (`--quick`, `--full`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


class SizePresets:
    """`--quick` and `--full` for an experiment's config dataclass: ``quick`` is the defaults,
    ``full`` the defaults with the class's ``FULL`` settings (a plain class attribute, not a
    field), each with the caller's overrides on top. ``to_dict`` is what a report records (the
    progress bar setting is not a result's cause)."""

    FULL: dict = {}

    @classmethod
    def quick(cls, **overrides):
        """The defaults, with ``overrides``."""
        return cls(**overrides)

    @classmethod
    def full(cls, **overrides):
        """The defaults with the class's ``FULL`` settings, then ``overrides``."""
        return cls(**{**cls.FULL, **overrides})

    def to_dict(self) -> dict:
        """The settings as a dict, without ``progress``."""
        out = asdict(self)
        out.pop("progress")
        return out


@dataclass
class ReproduceConfig(SizePresets):
    """Everything that determines a reproduction run; results are a function of it alone.

    The papers (Omae et al. 2026) train 3-layer MLPs on two 2-D Gaussian classes from 500 random
    initializations with full-batch gradient descent, a learning rate drawn per run from a wide
    interval, and stop at a critical point (gradient norm below a threshold). Their text lost the
    numbers; the defaults here are ours and are written into every report.
    """

    dataset: str = "gaussians"          # "gaussians" or "breast_cancer"
    train_size: int = 100               # total, balanced
    test_size: int = 2000
    widths: tuple = (3, 10)
    activations: tuple = ("tanh", "sigmoid")
    runs: int = 24                      # random initializations per (width, activation)
    lr_range: tuple = (0.1, 2.5)        # learning rate ~ U(lr_range), one draw per run
    init_std: float = 1.0               # parameters ~ N(0, init_std²): diverse critical points
    max_steps: int = 4000
    grad_tol: float = 5e-3              # critical point: ‖∇L‖ < grad_tol (BCE has a slow tail)
    dedup_tol: float = 1e-2             # two critical points closer than this are one
    rho: float = 0.1                    # HSR: minimise L + rho·λ_sup
    record_points: int = 25             # trajectory samples per run (loss, bound, exact λ_max)
    seed: int = 0
    high_quantile: float = 0.9          # "high bound" group: above this quantile of the bound
    saddle_tol: float = 1e-3            # a saddle point: λ_min < −saddle_tol
    progress: bool = True

    # quick: under half a minute on 2 cores (the `make demo` setting).
    # full: the papers' scale, 500 initializations per setting on 200 training points, in well
    # under an hour on 2 cores (models trained in batches, batched.py). The threshold is the
    # smallest at which most runs stop within the step budget: at N = 200 (tanh, H = 10, plain
    # GD) 94% of runs reach ‖∇‖ < 5e-3 within 10,000 steps, but only 39% reach 2e-3 and 2%
    # reach 1e-3 (mean-reduced BCE on overlapping classes has a slow tail: the loss keeps
    # fitting noise along flat directions).
    FULL = dict(train_size=200, test_size=10000, runs=500, max_steps=20000, record_points=50)


def setting_name(rho: Optional[float]) -> str:
    """The name of a training setting in the digits reports: plain, or HSR with weight ρ."""
    return "plain" if rho is None else f"HSR ρ={rho:g}"
