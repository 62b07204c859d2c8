"""Shared test helpers: the dtype/config lists and problem builders every test module imports."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import reference
import torch_ws

DTYPES = (torch.float32, torch.float64)
#: Devices every device-parametrized test runs on; CUDA cases skip cleanly without a GPU.
DEVICES = (
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
)
ACTIVATIONS = torch_ws.ACTIVATIONS
REDUCTIONS = torch_ws.REDUCTIONS
# (b1 present, b2 present)
BIAS_CONFIGS = ((True, True), (False, False), (True, False), (False, True))


@dataclass
class Problem:
    """One MLP + data set, the six positional arguments of every op."""

    x: torch.Tensor
    target: torch.Tensor
    w1: torch.Tensor
    b1: Optional[torch.Tensor]
    w2: torch.Tensor
    b2: Optional[torch.Tensor]

    def args(self):
        return (self.x, self.target, self.w1, self.b1, self.w2, self.b2)

    def differentiable(self):
        """The tensors a gradient is taken with respect to (x and the present parameters)."""
        return [t for t in (self.x, self.w1, self.b1, self.w2, self.b2) if t is not None]


def make_problem(
    n=7,
    d=3,
    h=4,
    *,
    bias=(True, True),
    soft_targets=False,
    dtype=torch.float64,
    seed=0,
    requires_grad=False,
    scale=1.0,
    device="cpu",
) -> Problem:
    """A random problem; weights scaled by ``scale`` (large values saturate the network). The
    values are drawn on the CPU, so a problem is the same on every device."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    x = randn(n, d)
    if soft_targets:
        target = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    else:
        target = torch.randint(0, 2, (n,), generator=gen).to(dtype=dtype, device=device)
    return Problem(
        x,
        target,
        randn(h, d),
        randn(h) if bias[0] else None,
        randn(1, h),
        randn(1) if bias[1] else None,
    )


def make_head_problem(loss, c, kind, *, n=7, d=3, h=4, bias=(True, True), dtype=torch.float64,
                      seed=0, requires_grad=False, scale=1.0, device="cpu"):
    """x, target, w1, b1, w2, b2 for a head of C outputs, drawn in float64 on the CPU."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

    x = randn(n, d)
    if kind == "indices":
        target = torch.randint(0, c, (n,), generator=gen).to(device)
    elif kind == "probabilities":
        target = torch.softmax(2 * torch.randn(n, c, generator=gen, dtype=torch.float64), 1)
        target = target.to(dtype=dtype, device=device)
    else:
        target = torch.randn(n, c, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    w1 = randn(h, d)
    b1 = randn(h) if bias[0] else None
    w2 = randn(c, h)
    b2 = randn(c) if bias[1] else None
    return x, target, w1, b1, w2, b2


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / max(‖expected‖, tiny), in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def all_configs():
    """Every (activation, reduction, bias, soft_targets) combination."""
    return list(itertools.product(ACTIVATIONS, REDUCTIONS, BIAS_CONFIGS, (False, True)))


def assert_compiled_step_matches_eager(objective, model, *inputs):
    """torch.compile(objective, fullgraph=True) of a training step traces without graph breaks
    (AOTAutograd builds the backward from the ops' registered autograd, which calls the backward
    op's fake kernel), and its value and the model's gradients equal eager mode's."""
    torch._dynamo.reset()
    compiled = torch.compile(objective, backend="aot_eager", fullgraph=True)
    out = compiled(*inputs)
    out.backward()
    grads = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    eager = objective(*inputs)
    eager.backward()
    assert torch.allclose(out, eager)
    for g, q in zip(grads, model.parameters()):
        assert torch.allclose(g, q.grad, rtol=1e-5, atol=1e-6)


#: How much wider than the float64 bound a float32 one may be: the rounding allowance widens
#: m by κ·u·q and s² by κ·u·q² (κ = 2¹³, u = 2⁻²⁴; csrc/core/ws_bound.h), about 5·10⁻⁴ of the
#: bound on the test problems, with room for the traces' own float32 error.
FLOAT32_BOUND_WIDENING = 2e-3


def assert_float32_bound(bound32: torch.Tensor, bound64: torch.Tensor) -> None:
    """A float32 bound stays a bound: not below the float64 one (to float64 rounding), and no
    wider than the allowance."""
    b32, b64 = float(bound32), float(bound64)
    assert bound32.dtype == torch.float32
    assert b32 >= b64 - 1e-12 * abs(b64), (b32, b64)
    assert b32 - b64 <= FLOAT32_BOUND_WIDENING * abs(b64), (b32, b64)


def explicit_ends(interval, H, largest):
    """lower and upper as functions of the explicit Hessian H with the returned basis held fixed
    (docs/math.md §11.5), differentiable by autograd: the truth for the closed-form gradients."""
    sign = 1 if largest else -1
    U = interval.ritz_vectors
    u = U[0]
    theta = u @ (sign * H) @ u / (u @ u)
    ritz = torch.linalg.eigvalsh(U @ (sign * H) @ U.T).flip(0)
    trace_sq = (H * H).sum()
    if interval.source == "kato_temple":
        nu = torch.sqrt(trace_sq - theta ** 2 - (ritz[2:] ** 2).sum())
        image = (H @ u) @ (H @ u) / (u @ u)
        top = theta + (image - theta ** 2) / (theta - nu)
    elif interval.source == "trace_cap":
        top = torch.sqrt(trace_sq - (ritz[1:] ** 2).sum())
    elif interval.source == "assembled_hessian":
        # λ_max(σH) itself (math.md §11.6): eigvalsh's top eigenvalue has its gradient.
        top = torch.linalg.eigvalsh(sign * H)[-1]
    else:
        assert interval.source == "wolkowicz_styan", interval.source
        top = reference.ws_upper_from_traces(sign * torch.trace(H), trace_sq, H.shape[0])
    # The lower end of σH is θ, or the assembled Hessian's Rayleigh quotient at its top
    # eigenvector where that is tighter (to first order, λ_max(σH)'s gradient): whichever
    # the interval's value is.
    lowest = interval.lower if largest else -interval.upper
    if interval.source == "assembled_hessian" or abs(float(lowest) - float(theta)) > 1e-9 * abs(float(theta)):
        assembled = torch.linalg.eigvalsh(sign * H)[-1]
        if abs(float(lowest) - float(assembled)) < abs(float(lowest) - float(theta)):
            theta = assembled
    return (theta, top) if largest else (-top, -theta)


def residual_majorant_by_formula(x, target, w1, b1, w2, b2, sign=1.0):
    """docs/math.md §11.2 "At scale": the majorant max_k (a_k + √(a_k² + 4σ_k²))/2 of λ_max(sign·R)
    for the binary cross-entropy, tanh, mean reduction, in plain PyTorch (differentiable): the
    weights w = e's magnitude ((1 − t)σ(z) + tσ(−z))/N held fixed (detached), c_k = max_i
    (sign·β_ik)₊/w_i, a_k = c_k·λ_max(X̃ᵀdiag(w)X̃), σ_k = ‖X̃ᵀ(e ∘ φ'(a_k))‖."""
    n = len(x)
    a = x @ w1.T + (b1 if b1 is not None else 0)
    t = torch.tanh(a)
    z = (t @ w2.T).squeeze(1) + (b2 if b2 is not None else 0)
    p = torch.sigmoid(z)
    e = (p - target) / n
    w = (((1 - target) * p + target * torch.sigmoid(-z)) / n).detach()
    beta = sign * -2 * t * (1 - t ** 2) * (e.unsqueeze(1) * w2)
    c = torch.where(w.unsqueeze(1) > 0, beta.clamp_min(0) / w.unsqueeze(1), 0.0).max(0).values
    x_tilde = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1) if b1 is not None else x
    gram = torch.linalg.eigvalsh(x_tilde.T @ (w.unsqueeze(1) * x_tilde))[-1]
    sigma = (x_tilde.T @ (e.unsqueeze(1) * (1 - t ** 2))).norm(dim=0)
    a_k = c * gram
    return ((a_k + (a_k ** 2 + 4 * sigma ** 2).sqrt()) / 2).max()


def bce_dual_rows(x, target, weights):
    """The rows √s_i·∂z_i/∂θ (N, n) of a one-logit tanh net with the binary cross-entropy (mean),
    by torch.func.jacrev and differentiable in x and the weights: M = (rows)(rows)ᵀ is the
    Gauss-Newton matrix's dual (docs/math.md §9.1), with GGN's non-zero eigenvalues."""
    shapes = [w.shape for w in weights]

    def logits(x_, flat):
        parts, offset = [], 0
        for shape in shapes:
            parts.append(flat[offset:offset + shape.numel()].view(shape))
            offset += shape.numel()
        return (torch.tanh(x_ @ parts[0].T + parts[1]) @ parts[2].T + parts[3]).squeeze(1)

    flat = torch.cat([w.reshape(-1) for w in weights])
    p = torch.sigmoid(logits(x, flat))
    s = p * (1 - p) / len(x)
    return s.sqrt().unsqueeze(1) * torch.func.jacrev(logits, argnums=1)(x, flat)
