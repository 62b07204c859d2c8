"""Many networks at once: full-batch gradient descent of B models of one shape as one batched
model, each with its own learning rate and its own stop, and the measurements at their end points.

A batch holds w1 (B, H, D), b1 (B, H), w2 (B, 1, H), b2 (B, 1). One step is a handful of batched
tensor operations for the losses' gradients and, with HSR, one call of
:func:`torch_ws.ws_bound_batched` for all the bounds and their gradients; models that reached a
critical point (or diverged) are frozen and dropped from the batch. Model b follows exactly the
update of :func:`training.train_run` for its seed and learning rate (the tests check it).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .. import model as mlp, ops
from .data import Dataset
from .training import Run, init_params, macro_f1

#: Called with the number of models that just finished (the progress bar's tick).
Progress = Optional[Callable[[int], None]]


def _hidden_and_slope(activation: str, pre: torch.Tensor):
    """φ(pre) and φ'(pre); φ' written out for the experiments' activations, by autograd for the
    others."""
    if activation == "tanh":
        hidden = torch.tanh(pre)
        return hidden, 1 - hidden * hidden
    if activation == "sigmoid":
        hidden = torch.sigmoid(pre)
        return hidden, hidden * (1 - hidden)
    with torch.enable_grad():  # φ' of the model's own φ, by autograd
        pre = pre.detach().requires_grad_(True)
        hidden = mlp.ACTIVATION_FUNCTIONS[activation](pre)
        (slope,) = torch.autograd.grad(hidden.sum(), pre, allow_unused=True)
    # A linear φ has no graph to its input's slope: ones. The caller scales the slope in place.
    slope = torch.ones_like(pre) if slope is None else slope
    return hidden.detach(), slope.detach().contiguous()


def pre_activations(x, w1, b1) -> torch.Tensor:
    """x W1_bᵀ + b1_b for every model b: (B, N, H)."""
    return torch.baddbmm(b1.unsqueeze(1), x.expand(w1.shape[0], -1, -1), w1.transpose(1, 2))


def logits_of_hidden(hidden, w2, b2) -> torch.Tensor:
    """φ(A_b) w2_bᵀ + b2_b for every model b: (B, N)."""
    return torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2)).squeeze(2)


def batched_logits(x, params, activation: str) -> torch.Tensor:
    """The B models' logits on x: (B, N)."""
    w1, b1, w2, b2 = params
    hidden = mlp.ACTIVATION_FUNCTIONS[activation](pre_activations(x, w1, b1))
    return logits_of_hidden(hidden, w2, b2)


def loss_and_gradients(x, y, params, activation: str):
    """Each model's mean binary cross-entropy (B,) and its gradients with respect to w1, b1, w2,
    b2 (the model dimension first), by backpropagation written out: at these sizes autograd's
    bookkeeping costs more than the arithmetic."""
    w1, b1, w2, b2 = params
    num_models, num_samples = w1.shape[0], x.shape[0]
    hidden, slope = _hidden_and_slope(activation, pre_activations(x, w1, b1))  # (B, N, H)
    z = logits_of_hidden(hidden, w2, b2)                                      # (B, N)
    loss = (F.softplus(z) - y * z).mean(1)
    e = (torch.sigmoid(z) - y) / num_samples                                   # ∂L/∂z
    delta = slope.mul_(e.unsqueeze(2)).mul_(w2)                                # ∂L/∂pre
    grads = [torch.bmm(delta.transpose(1, 2), x.expand(num_models, -1, -1)), delta.sum(1),
             torch.bmm(e.unsqueeze(1), hidden), e.sum(1, keepdim=True)]
    return loss, grads


def stack_initializations(dim: int, width: int, std: float, seeds) -> list[torch.Tensor]:
    """w1, b1, w2, b2 with a leading model dimension: model b is ``init_params`` of seed b."""
    per_model = [init_params(dim, width, std, torch.Generator().manual_seed(int(s))) for s in seeds]
    return [torch.stack(parts) for parts in zip(*per_model)]


def explicit_hessians(data: Dataset, params, activation: str) -> torch.Tensor:
    """The B loss Hessians (B, n, n) in :func:`torch_ws.model.flatten_params`' order (W1
    row-major, b1, w2, b2): :func:`torch_ws.explicit_hessian` of each model (the C++ assembly,
    docs/math.md §3)."""
    x, y = data.x_train, data.y_train
    return torch.stack([
        ops.explicit_hessian(x, y, *(p[b] for p in params), activation, "mean")
        for b in range(params[0].shape[0])])


def extreme_eigenvalues(data: Dataset, params, activation: str, chunk: int = 256):
    """(λ_max, λ_min) of every model's explicit Hessian, (B,) each, in chunks of models."""
    highest, lowest = [], []
    for start in range(0, params[0].shape[0], chunk):
        part = [p[start:start + chunk] for p in params]
        eig = torch.linalg.eigvalsh(explicit_hessians(data, part, activation))
        highest.append(eig[:, -1])
        lowest.append(eig[:, 0])
    return torch.cat(highest), torch.cat(lowest)


def train_batch(data: Dataset, width: int, activation: str, seeds, lrs, hsr: bool, rho: float,
                init_std: float, max_steps: int, grad_tol: float, record_points: int,
                progress: Progress = None) -> list[Run]:
    """Gradient descent on each model's L (or L + rho·λ_sup with HSR) from the initialization of
    its seed with its learning rate, until its ‖∇‖ < grad_tol, divergence, or ``max_steps``.
    Returns one :class:`Run` per seed, as :func:`training.train_run` would."""
    x, y = data.x_train, data.y_train
    params = stack_initializations(data.dim, width, init_std, seeds)
    final = [p.clone() for p in params]
    num_models = len(seeds)
    lr_all = torch.tensor([float(v) for v in lrs], dtype=torch.float64)
    steps = torch.zeros(num_models, dtype=torch.long)
    grad_norms = torch.full((num_models,), math.inf, dtype=torch.float64)
    converged = torch.zeros(num_models, dtype=torch.bool)
    diverged = torch.zeros(num_models, dtype=torch.bool)
    record_every = max(1, max_steps // max(1, record_points))
    trajectories = [{"step": [], "loss": [], "bound": [], "lambda_max": []} for _ in seeds]
    active = torch.arange(num_models)      # model ids of the rows in `params`
    lr = lr_all.clone()

    def record(rows: torch.Tensor, step: int, loss_rows: torch.Tensor, bound_rows):
        # rows index `params`; the trajectory point of each of those models at `step`.
        if len(rows) == 0:
            return
        part = [p[rows].detach() for p in params]
        if bound_rows is None:
            with torch.no_grad():
                bound_rows = ops.ws_bound_batched(x, y, *part, activation, "mean")
        lam_max, _ = extreme_eigenvalues(data, part, activation)
        for r, model in enumerate(active[rows].tolist()):
            t = trajectories[model]
            t["step"].append(step)
            t["loss"].append(float(loss_rows[r]))
            t["bound"].append(float(bound_rows[r]))
            t["lambda_max"].append(float(lam_max[r]))

    for step in range(max_steps + 1):
        loss_value, grads = loss_and_gradients(x, y, params, activation)
        bound = None
        if hsr:
            leaves = [p.detach().requires_grad_(True) for p in params]
            bound = ops.ws_bound_batched(x, y, *leaves, activation, "mean")
            bound_grads = torch.autograd.grad(bound.sum(), leaves)
            grads = [g + rho * gb for g, gb in zip(grads, bound_grads)]
        with torch.no_grad():
            norm = torch.sqrt(sum(g.reshape(g.shape[0], -1).square().sum(1) for g in grads))
            bad = ~torch.isfinite(norm) | ~torch.isfinite(loss_value)
            done = norm < grad_tol
            keep_going = ~(bad | done)
            if step == max_steps:
                keep_going = torch.zeros_like(keep_going)
            rows_to_record = torch.nonzero(~bad & (done | (step % record_every == 0))).squeeze(1)
        record(rows_to_record, step, loss_value[rows_to_record],
               None if bound is None else bound.detach()[rows_to_record])
        with torch.no_grad():
            finished = torch.nonzero(~keep_going).squeeze(1)
            if len(finished):
                ids = active[finished]
                for f, p in zip(final, params):
                    f[ids] = p[finished]
                steps[ids] = step
                grad_norms[ids] = norm[finished]
                converged[ids] = done[finished] & ~bad[finished]
                diverged[ids] = bad[finished]
                if progress is not None:
                    progress(len(finished))
            go = torch.nonzero(keep_going).squeeze(1)
            if len(go) == 0:
                break
            # A step for the models still running (a model stops where it met its criterion).
            params = [p[go] - lr[go].view(-1, *([1] * (p.dim() - 1))) * g[go]
                      for p, g in zip(params, grads)]
            active, lr = active[go], lr[go]

    return [
        Run(width, activation, int(seeds[b]), float(lr_all[b]), hsr, bool(converged[b]),
            bool(diverged[b]), int(steps[b]), float(grad_norms[b]), [f[b].clone() for f in final],
            trajectories[b])
        for b in range(num_models)
    ]


def spectral_bounds(data: Dataset, runs: list[Run]) -> list[float]:
    """The spectral bound (λ_max(GGN) + λ_max(R), or WS if smaller; docs/math.md §9) at each
    run's end point: one :func:`torch_ws.spectral_bound` call per model (about 2 ms at the
    papers' scale; there is no batched form)."""
    with torch.no_grad():
        return [float(ops.spectral_bound(data.x_train, data.y_train, *r.params, r.activation,
                                         "mean").upper) for r in runs]


def measure_batch(data: Dataset, runs: list[Run]) -> list[dict]:
    """:func:`training.measure` for runs of one width and activation, batched: the closed-form
    bounds in one call, the exact spectra by batched ``eigvalsh``."""
    if not runs:
        return []
    activation = runs[0].activation
    params = [torch.stack(parts) for parts in zip(*(r.params for r in runs))]
    x, y = data.x_train, data.y_train
    with torch.no_grad():
        trace, trace_sq, _, _ = torch.ops.torch_ws._batched_traces(
            x, y, *params, activation, "mean", False, False, "bce")
        n = ops.num_params(*(p[0] for p in params))
        upper, lower, min_lower, _, _ = torch.ops.torch_ws._ws_bounds_from_traces(
            trace, trace_sq, n)
        lam_max, lam_min = extreme_eigenvalues(data, params, activation)
        w1, b1 = params[0], params[1]
        hidden = mlp.ACTIVATION_FUNCTIONS[activation](pre_activations(x, w1, b1))
        gram_norm = torch.linalg.matrix_norm(torch.bmm(hidden, hidden.transpose(1, 2)))
        test_logits = batched_logits(data.x_test, params, activation)
        f1 = macro_f1((test_logits > 0).double(), data.y_test)
        train_loss = loss_and_gradients(x, y, params, activation)[0]
    return [{
        "width": r.width, "activation": activation, "seed": r.seed, "lr": r.lr, "hsr": r.hsr,
        "converged": r.converged, "steps": r.steps, "grad_norm": r.grad_norm,
        "bound": float(upper[b]), "bound_lower": float(lower[b]),
        "lambda_min_lower": float(min_lower[b]), "lambda_max": float(lam_max[b]),
        "lambda_min": float(lam_min[b]), "trace": float(trace[b]),
        "w2_norm": float(r.params[2].norm()), "w1_norm": float(r.params[0].norm()),
        "hidden_gram_norm": float(gram_norm[b]), "train_loss": float(train_loss[b]),
        "test_f1": float(f1[b]), "spectral_bound": spectral,
    } for (b, r), spectral in zip(enumerate(runs), spectral_bounds(data, runs))]
