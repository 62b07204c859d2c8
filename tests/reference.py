"""Slow references for the tests and benchmarks (never imported by the torch_ws package):

- :func:`explicit_hessian`: the n×n loss Hessian by ``torch.func.hessian`` (the ground truth).
- :func:`ws_bound_explicit`: the WS bound from that Hessian (differentiable by third-order
  autograd: the "double-backprop" baseline).
- :func:`hessian_traces_closed_form` / :func:`ws_bound_closed_form`: docs/math.md §4–§5 in plain
  PyTorch ops, differentiated by autograd (the "plain-PyTorch" baseline and second opinion).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: φ for each activation name, as the equivalent PyTorch function.
ACTIVATION_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda a: a,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "gelu": F.gelu,
    "silu": F.silu,
    "gelu_tanh": lambda a: F.gelu(a, approximate="tanh"),
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
}


def mlp_logits(x, w1, b1, w2, b2, activation: str) -> Tensor:
    """z = Linear(H,C)(φ(Linear(D,H)(x))), shape (N, C); (N,) when C = 1."""
    hidden = ACTIVATION_FUNCTIONS[activation](F.linear(x, w1, b1))
    z = F.linear(hidden, w2, b2)
    return z.squeeze(-1) if z.shape[-1] == 1 else z


def mlp_loss(x, target, w1, b1, w2, b2, activation: str, reduction: str, loss: str = "bce") -> Tensor:
    """The loss whose Hessian torch_ws bounds, as PyTorch computes it: ``F.binary_cross_entropy_with_logits``
    ("bce"), ``F.cross_entropy`` ("cross_entropy": class indices or probabilities) or
    ``F.mse_loss`` ("mse")."""
    return loss_of_logits(mlp_logits(x, w1, b1, w2, b2, activation), target, reduction, loss)


def loss_of_logits(z: Tensor, target: Tensor, reduction: str, loss: str = "bce") -> Tensor:
    """The loss of :func:`mlp_loss` as a function of the logits z ((N,) or (N, C))."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(z, target.reshape(-1), reduction=reduction)
    if loss == "cross_entropy":
        return F.cross_entropy(z, target, reduction=reduction)
    if loss == "mse":
        return F.mse_loss(z, target.reshape(z.shape), reduction=reduction)
    raise ValueError(f"unknown loss {loss!r}")


def flatten_params(w1, b1, w2, b2) -> Tensor:
    """θ = (W1 row-major, b1, w2, b2), the order of the rows and columns of the Hessian."""
    return torch.cat([p.reshape(-1) for p in (w1, b1, w2, b2) if p is not None])


def unflatten_params(theta: Tensor, w1, b1, w2, b2):
    """Inverse of :func:`flatten_params`, shaped like the given tensors (None stays None)."""
    out, offset = [], 0
    for p in (w1, b1, w2, b2):
        if p is None:
            out.append(None)
            continue
        out.append(theta[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


def explicit_hessian(
    x, target, w1, b1, w2, b2, activation="tanh", reduction="mean", loss="bce"
) -> Tensor:
    """The n×n Hessian of the loss in θ (see :func:`flatten_params`), by ``torch.func.hessian``.

    Differentiable in x and the parameters (the result keeps autograd history)."""
    theta = flatten_params(w1, b1, w2, b2)

    def loss_of(theta_):
        return mlp_loss(
            x, target, *unflatten_params(theta_, w1, b1, w2, b2), activation, reduction, loss
        )

    return torch.func.hessian(loss_of)(theta)


def explicit_gauss_newton(
    x, target, w1, b1, w2, b2, activation="tanh", reduction="mean", loss="bce"
) -> Tensor:
    """The n×n generalized Gauss-Newton matrix Jᵀ(∇²_z L)J of the loss, J the Jacobian of all
    N·C logits in θ (``torch.func.jacrev``) and ∇²_z L the loss Hessian in them
    (``torch.func.hessian``). The Hessian minus it is the residual Σ_i e_i·∇²z_i.

    Differentiable in x and the parameters."""
    theta = flatten_params(w1, b1, w2, b2)
    shape = mlp_logits(x, w1, b1, w2, b2, activation).shape

    def logits_of(theta_):
        return mlp_logits(x, *unflatten_params(theta_, w1, b1, w2, b2), activation).reshape(-1)

    jacobian = torch.func.jacrev(logits_of)(theta)
    curvature = torch.func.hessian(
        lambda z: loss_of_logits(z.view(shape), target, reduction, loss)
    )(logits_of(theta))
    return jacobian.T @ curvature @ jacobian


def explicit_gauss_newton_by_sample(
    x, target, w1, b1, w2, b2, activation="tanh", reduction="mean", loss="bce"
) -> Tensor:
    """The same Jᵀ(∇²_z L)J as :func:`explicit_gauss_newton`, taken sample by sample: each sample's
    loss reads its own logits only, so ∇²_z L is block-diagonal, and GGN = Σ_i J_iᵀ S_i J_i with
    J_i sample i's Jacobian (``torch.func.jacrev`` under ``vmap``: per-sample gradients) and S_i the
    Hessian of its loss in its logits, times the reduction's 1/N (1/(N·C) for "mse", whose mean is
    over every logit, as ``F.mse_loss`` takes it). For N·C beyond what one dense Hessian in all
    logits holds. Differentiable in x and the parameters."""
    theta = flatten_params(w1, b1, w2, b2)
    num_samples = x.shape[0]

    def sample_logits(theta_, x_i):
        return mlp_logits(x_i.unsqueeze(0), *unflatten_params(theta_, w1, b1, w2, b2),
                          activation).reshape(-1)

    def sample_loss(z, t):
        return loss_of_logits(z.unsqueeze(0), t.unsqueeze(0), "sum", loss)

    logits = mlp_logits(x, w1, b1, w2, b2, activation)
    outputs = logits[0].numel()
    blocks = torch.func.vmap(torch.func.hessian(sample_loss))(logits, target)
    blocks = blocks.reshape(num_samples, outputs, outputs)
    if reduction == "mean":
        blocks = blocks / (num_samples if loss == "cross_entropy" else logits.numel())
    jacobian = torch.func.vmap(torch.func.jacrev(sample_logits), in_dims=(None, 0))(theta, x)
    weighted = torch.einsum("icd,idq->icq", blocks, jacobian)  # S_i J_i
    return jacobian.reshape(-1, theta.numel()).T @ weighted.reshape(-1, theta.numel())


def mean_and_spread(trace: Tensor, trace_sq: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """m = tr/n and s = √(tr(H²)/n − m²) of an n×n spectrum (s = 0 where rounding makes s²
    ≤ 0, with the gradient of m there: sqrt's infinite slope at 0 is routed through a constant)."""
    mean = trace / n
    spread_sq = trace_sq / n - mean * mean
    positive = spread_sq > 0
    spread = torch.where(positive, torch.where(positive, spread_sq, 1.0).sqrt(), 0.0)
    return mean, spread


def ws_upper_from_traces(trace: Tensor, trace_sq: Tensor, n: int) -> Tensor:
    """λ_sup = m + s√(n−1) from traces, with the s = 0 gradient defined as m's."""
    mean, spread = mean_and_spread(trace, trace_sq, n)
    return mean + math.sqrt(n - 1) * spread


def ws_bound_explicit(
    x, target, w1, b1, w2, b2, activation="tanh", reduction="mean", loss="bce"
) -> Tensor:
    """The WS bound from the explicit Hessian (tr H and ‖H‖_F²): O(n²) memory, third-order
    autograd when differentiated."""
    hess = explicit_hessian(x, target, w1, b1, w2, b2, activation, reduction, loss)
    return ws_upper_from_traces(hess.diagonal().sum(), (hess * hess).sum(), hess.shape[0])


def _activation_derivatives(activation: str, pre: Tensor) -> list[Tensor]:
    """φ, φ', φ'' at ``pre``, by autograd of the PyTorch φ with create_graph, so the reference
    shares no derivative formula with the C++ table (and stays differentiable)."""
    with torch.enable_grad():
        a = pre if pre.requires_grad else pre.detach().requires_grad_(True)
        out = [ACTIVATION_FUNCTIONS[activation](a)]
        for _ in range(2):
            current = out[-1]
            if current.requires_grad:
                (current,) = torch.autograd.grad(current.sum(), a, create_graph=True)
            else:  # the previous derivative was constant (linear φ)
                current = torch.zeros_like(a)
            out.append(current)
    return out


def hessian_traces_closed_form(
    x, target, w1, b1, w2, b2, activation="tanh", reduction="mean", loss="bce"
) -> tuple[Tensor, Tensor]:
    """(tr H, tr H²) by docs/math.md §4 (one logit) or §8 (any C) written in plain PyTorch ops
    on whole N×N matrices (autograd differentiates it)."""
    if loss != "bce":
        return _multi_output_closed_form(x, target, w1, b1, w2, b2, activation, reduction, loss)
    n_samples = x.shape[0]
    target = target.reshape(-1)
    c = 1.0 / n_samples if reduction == "mean" else 1.0
    pre = F.linear(x, w1, b1)
    phi0, phi1, phi2 = _activation_derivatives(activation, pre)
    w = w2.reshape(-1)
    U, V = phi1 * w, phi2 * w
    z = phi0 @ w + (b2 if b2 is not None else 0.0)
    y = torch.sigmoid(z)
    s = c * y * torch.sigmoid(-z)
    e = c * (y - target)
    K = x @ x.T + (1.0 if b1 is not None else 0.0)
    R = phi0 @ phi0.T + (1.0 if b2 is not None else 0.0)
    Q = U @ U.T
    G = K * Q + R
    KK = K * K
    B = KK * ((U * U) @ V.T) + 2 * K * ((U * phi0) @ phi1.T)
    C = KK * (V @ V.T) + 2 * K * (phi1 @ phi1.T)
    trace = (s * G.diagonal() + e * K.diagonal() * V.sum(1)).sum(dtype=torch.float64)
    trace_sq = (s @ (G * G) @ s + 2 * s @ B @ e + e @ C @ e).to(torch.float64)
    return trace.to(x.dtype), trace_sq.to(x.dtype)


def _loss_in_logits(z: Tensor, target: Tensor, loss: str, scale: float) -> tuple[Tensor, Tensor]:
    """S_i = c·∇²_z ℓ (N, C, C) and e_i = c·∇_z ℓ (N, C) (docs/math.md §8.1), naive formulas."""
    if loss == "cross_entropy":
        if not target.is_floating_point():
            target = F.one_hot(target, z.shape[1]).to(z.dtype)
        p = torch.softmax(z, 1)
        tau = target.sum(1, keepdim=True)
        e = scale * (tau * p - target)
        S = scale * tau.unsqueeze(2) * (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1))
        return S, e
    if loss == "mse":
        e = 2 * scale * (z - target.reshape(z.shape))
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        return (2 * scale * eye).expand(z.shape[0], -1, -1), e
    raise ValueError(f"unknown loss {loss!r}")


def _multi_output_closed_form(x, target, w1, b1, w2, b2, activation, reduction, loss):
    n_samples, outputs = x.shape[0], w2.shape[0]
    count = n_samples * outputs if loss == "mse" else n_samples
    scale = 1.0 / count if reduction == "mean" else 1.0
    pre = F.linear(x, w1, b1)
    phi0, phi1, phi2 = _activation_derivatives(activation, pre)
    z = F.linear(phi0, w2, b2)
    S, e = _loss_in_logits(z, target, loss, scale)
    U = phi1.unsqueeze(1) * w2.unsqueeze(0)  # (N, C, H)
    SU = S @ U
    omega = (U * SU).sum(1)
    vt = (e @ w2) * phi2
    K = x @ x.T + (1.0 if b1 is not None else 0.0)
    R = phi0 @ phi0.T + (1.0 if b2 is not None else 0.0)
    M = torch.einsum("ich,jdh->icjd", SU, U)
    T4 = torch.einsum("icjd,jdic->ij", M, M)
    T2 = SU.flatten(1) @ SU.flatten(1).T
    T0 = S.flatten(1) @ S.flatten(1).T
    X1 = omega @ vt.T
    X2 = (phi0.unsqueeze(1) * SU).flatten(1) @ (e.unsqueeze(2) * phi1.unsqueeze(1)).flatten(1).T
    KK = K * K
    pairs = (KK * T4 + 2 * K * R * T2 + R * R * T0 + 2 * (KK * X1 + 2 * K * X2)
             + KK * (vt @ vt.T) + 2 * K * (e @ e.T) * (phi1 @ phi1.T))
    diag_k = K.diagonal()
    trace = diag_k * (omega.sum(1) + vt.sum(1)) + R.diagonal() * S.diagonal(0, 1, 2).sum(1)
    return trace.sum(dtype=torch.float64).to(x.dtype), pairs.sum(dtype=torch.float64).to(x.dtype)


def ws_bound_closed_form(
    x, target, w1, b1, w2, b2, activation="tanh", reduction="mean", loss="bce"
) -> Tensor:
    """λ_sup from :func:`hessian_traces_closed_form` (plain PyTorch + autograd)."""
    from torch_ws import num_params

    trace, trace_sq = hessian_traces_closed_form(
        x, target, w1, b1, w2, b2, activation, reduction, loss
    )
    n = num_params(w1, b1, w2, b2)
    return ws_upper_from_traces(trace.double(), trace_sq.double(), n).to(x.dtype)
