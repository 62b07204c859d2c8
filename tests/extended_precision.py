"""An extended-precision oracle for saturated networks (never imported by the torch_ws package).

`torch.func.hessian` in float64 is no truth where the softmax or a sigmoid saturates: its
autograd forms p − 1 and 1 − tanh² by subtraction and loses every digit of a 10⁻¹⁶ residual.
Here the loss is evaluated in mpmath at 100 significant digits, written so that it keeps its
relative accuracy (log1p of the other classes' exp(z_c − z_y)), and the Hessian is its central
second differences with step h = 10⁻³⁰: the truncation error is O(h²) = 10⁻⁶⁰ relative and the
rounding error at most about 10⁻¹⁰⁰·ℓ/h² = 10⁻⁴⁰·ℓ (ℓ the loss, itself tiny where the net
saturates). At 80 digits and h = 10⁻²⁵ that was 10⁻³⁰·ℓ, and a 10⁻³⁷ entry (a class with
p = 10⁻³⁶ beside a loss of 10⁻¹⁶) came out 3·10⁻¹¹ off.
"""
from __future__ import annotations

import mpmath as mp
import torch
from torch import Tensor

DIGITS = 100
STEP_EXPONENT = -30

ACTIVATIONS = {
    "tanh": mp.tanh,
    "sigmoid": lambda a: 1 / (1 + mp.exp(-a)),
    # nn.Softplus (beta 1, threshold 20) is the identity above its threshold
    "softplus": lambda a: a if a > 20 else mp.log1p(mp.exp(a)),
    "silu": lambda a: a / (1 + mp.exp(-a)),
    "gelu": lambda a: a * (1 + mp.erf(a / mp.sqrt(2))) / 2,
    "linear": lambda a: a,
}


def _numbers(t: Tensor):
    return [mp.mpf(float(v)) for v in t.double().reshape(-1).tolist()]


def _sample_loss(z, target_row, loss: str):
    if loss == "cross_entropy":
        if isinstance(target_row, int):  # class index: log1p keeps the saturated loss's digits
            y = target_row
            return mp.log1p(mp.fsum(mp.exp(v - z[y]) for c, v in enumerate(z) if c != y))
        top = max(z)
        lse = top + mp.log(mp.fsum(mp.exp(v - top) for v in z))
        return mp.fsum(t * (lse - v) for t, v in zip(target_row, z))
    if loss == "bce":
        (v,), t = z, target_row
        softplus = mp.log1p(mp.exp(-abs(v))) + max(v, 0)
        return softplus - t * v
    if loss == "mse":
        return mp.fsum((v - t) ** 2 for v, t in zip(z, target_row))
    raise ValueError(loss)


class Problem:
    """One problem (x, target, the layers' weights and biases) with its loss as a function of the
    flat parameter vector (w_1, b_1, w_2, b_2, … in that order, as torch_ws.explicit_hessian
    orders them; a None bias has no entries)."""

    def __init__(self, x, target, weights, biases, activation: str, reduction: str, loss: str):
        self.shapes = [(tuple(w.shape), b is not None) for w, b in zip(weights, biases)]
        self.theta = [v for w, b in zip(weights, biases)
                      for t in (w, b) if t is not None for v in _numbers(t)]
        self.x = [_numbers(row) for row in x]
        if loss == "cross_entropy" and not target.is_floating_point():
            self.targets = [int(v) for v in target.tolist()]
        elif loss == "bce":
            self.targets = _numbers(target)
        else:
            self.targets = [_numbers(row) for row in target.reshape(len(x), -1)]
        self.phi = ACTIVATIONS[activation]
        self.loss = loss
        outputs = weights[-1].shape[0]
        count = len(x) * (outputs if loss == "mse" else 1)
        self.scale = mp.mpf(1) / count if reduction == "mean" else mp.mpf(1)

    def value(self, theta) -> mp.mpf:
        layers, offset = [], 0
        for (rows, cols), has_bias in self.shapes:
            w = [theta[offset + r * cols:offset + (r + 1) * cols] for r in range(rows)]
            offset += rows * cols
            b = theta[offset:offset + rows] if has_bias else [mp.mpf(0)] * rows
            offset += rows if has_bias else 0
            layers.append((w, b))
        total = mp.mpf(0)
        for xi, ti in zip(self.x, self.targets):
            h = xi
            for index, (w, b) in enumerate(layers):
                h = [mp.fsum(a * v for a, v in zip(row, h)) + c for row, c in zip(w, b)]
                if index < len(layers) - 1:
                    h = [self.phi(a) for a in h]
            total += _sample_loss(h, ti, self.loss)
        return self.scale * total

    def hessian(self) -> list[list[mp.mpf]]:
        """The n × n Hessian by central (mixed) second differences."""
        with mp.workdps(DIGITS):
            h = mp.mpf(10) ** STEP_EXPONENT
            n = len(self.theta)

            def at(steps):
                theta = list(self.theta)
                for index, sign in steps:
                    theta[index] += sign * h
                return self.value(theta)

            centre = at([])
            out = [[mp.mpf(0)] * n for _ in range(n)]
            for i in range(n):
                out[i][i] = (at([(i, 1)]) - 2 * centre + at([(i, -1)])) / h ** 2
                for j in range(i):
                    out[i][j] = out[j][i] = (
                        at([(i, 1), (j, 1)]) - at([(i, 1), (j, -1)])
                        - at([(i, -1), (j, 1)]) + at([(i, -1), (j, -1)])) / (4 * h ** 2)
            return out


def hessian(x, target, w1, b1, w2, b2, activation: str, reduction: str, loss: str) -> Tensor:
    """The loss Hessian at 100 digits, rounded to float64 at the end (n × n)."""
    return deep_hessian(x, target, [w1, w2], [b1, b2], activation, reduction, loss)


def deep_hessian(x, target, weights, biases, activation: str, reduction: str, loss: str) -> Tensor:
    """The same for Linear → φ → … → Linear: `weights` of every layer, `biases` (None where absent)."""
    rows = Problem(x, target, weights, biases, activation, reduction, loss).hessian()
    return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
