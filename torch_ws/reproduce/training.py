"""Full-batch gradient descent to a critical point, plain or with HSR, and the measurements taken
at each critical point (the exact spectrum comes from an explicit Hessian)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import model as mlp, ops
from .data import Dataset


@dataclass
class Run:
    """One gradient-descent run: its setting, where it ended, and a sampled trajectory."""

    width: int
    activation: str
    seed: int
    lr: float
    hsr: bool
    converged: bool
    diverged: bool
    steps: int
    grad_norm: float
    params: list  # [w1, b1, w2, b2] at the end (float64)
    trajectory: dict = field(default_factory=dict)  # step, loss, bound, lambda_max lists


def init_params(dim: int, width: int, std: float, gen: torch.Generator) -> list:
    """w1 (H, D), b1 (H,), w2 (1, H), b2 (1,), i.i.d. N(0, std²)."""
    shapes = [(width, dim), (width,), (1, width), (1,)]
    return [torch.randn(*s, generator=gen, dtype=torch.float64) * std for s in shapes]


def exact_extreme_eigenvalues(data: Dataset, params, activation: str) -> tuple[float, float]:
    """(λ_max, λ_min) of the explicit loss Hessian."""
    hess = ops.explicit_hessian(data.x_train, data.y_train, *params, activation, "mean")
    eig = torch.linalg.eigvalsh(hess)
    return float(eig[-1]), float(eig[0])


def train_run(data: Dataset, width: int, activation: str, seed: int, lr: float, hsr: bool,
              rho: float, init_std: float, max_steps: int, grad_tol: float,
              record_points: int) -> Run:
    """Gradient descent on L (or L + rho·λ_sup with HSR) from the initialization of ``seed``,
    until ‖∇‖ < grad_tol, divergence, or ``max_steps``."""
    gen = torch.Generator().manual_seed(seed)
    params = [p.requires_grad_(True) for p in init_params(data.dim, width, init_std, gen)]
    x, y = data.x_train, data.y_train
    record_every = max(1, max_steps // max(1, record_points))
    traj = {"step": [], "loss": [], "bound": [], "lambda_max": []}
    converged = diverged = False
    grad_norm = math.inf
    step = 0
    for step in range(max_steps + 1):
        loss = mlp.mlp_loss(x, y, *params, activation, "mean")
        bound = ops.ws_bound(x, y, *params, activation, "mean") if hsr else None
        objective = loss + rho * bound if hsr else loss
        grads = torch.autograd.grad(objective, params)
        grad_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        loss_value = float(loss.detach())
        if not math.isfinite(grad_norm) or not math.isfinite(loss_value):
            diverged = True
            break
        if step % record_every == 0 or grad_norm < grad_tol:
            detached = [p.detach() for p in params]
            with torch.no_grad():
                b = bound if hsr else ops.ws_bound(x, y, *detached, activation, "mean")
            traj["step"].append(step)
            traj["loss"].append(loss_value)
            traj["bound"].append(float(b.detach()))
            traj["lambda_max"].append(exact_extreme_eigenvalues(data, detached, activation)[0])
        if grad_norm < grad_tol:
            converged = True
            break
        if step == max_steps:
            break
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    return Run(width, activation, seed, lr, hsr, converged, diverged, step, grad_norm,
               [p.detach().clone() for p in params], traj)


def macro_f1(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Macro-averaged F1 over the two classes along the last dimension (predictions of one model
    (N,), or of B models (B, N)); a class never predicted nor present scores 0."""
    scores = []
    for cls in (0.0, 1.0):
        tp = ((pred == cls) & (truth == cls)).sum(-1).double()
        fp = ((pred == cls) & (truth != cls)).sum(-1).double()
        fn = ((pred != cls) & (truth == cls)).sum(-1).double()
        scores.append(torch.where(tp == 0, 0.0, 2 * tp / (2 * tp + fp + fn)))
    return (scores[0] + scores[1]) / 2


def measure(data: Dataset, run: Run) -> dict:
    """Everything the figures need at a run's end point."""
    params, act = run.params, run.activation
    x, y = data.x_train, data.y_train
    with torch.no_grad():
        bounds = ops.ws_bounds(x, y, *params, act, "mean")
        lam_max, lam_min = exact_extreme_eigenvalues(data, params, act)
        hidden = mlp.ACTIVATION_FUNCTIONS[act](torch.nn.functional.linear(x, params[0], params[1]))
        test_logits = mlp.mlp_logits(data.x_test, *params, act)
        train_loss = float(mlp.mlp_loss(x, y, *params, act, "mean"))
    return {
        "width": run.width,
        "activation": act,
        "seed": run.seed,
        "lr": run.lr,
        "hsr": run.hsr,
        "converged": run.converged,
        "steps": run.steps,
        "grad_norm": run.grad_norm,
        "bound": float(bounds.lambda_max_upper),
        "bound_lower": float(bounds.lambda_max_lower),
        "lambda_min_lower": float(bounds.lambda_min_lower),
        "lambda_max": lam_max,
        "lambda_min": lam_min,
        "trace": float(bounds.trace),
        "w2_norm": float(params[2].norm()),
        "w1_norm": float(params[0].norm()),
        "hidden_gram_norm": float((hidden @ hidden.T).norm()),
        "train_loss": train_loss,
        "test_f1": float(macro_f1((test_logits > 0).double(), data.y_test)),
        "spectral_bound": float(ops.spectral_bound(x, y, *params, act, "mean").upper),
    }


def deduplicate(runs: list[Run], tol: float) -> list[Run]:
    """Keep the first of every group of end points closer than ``tol`` in parameter space
    (runs of one width, activation and method)."""
    kept: list[Run] = []
    for run in runs:
        theta = mlp.flatten_params(*run.params)
        if all(mlp.flatten_params(*k.params).sub(theta).norm() >= tol for k in kept):
            kept.append(run)
    return kept
