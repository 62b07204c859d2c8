"""Saturated networks against an extended-precision oracle (tests/extended_precision.py).

At saturation the float64 autograd reference is no truth (it forms p − 1 by subtraction), so
these problems are checked against the loss Hessian at 100 digits. Each case failed before the
evaluation was made cancellation-free: the cross-entropy residual of the non-target classes
(W1's Hessian entries 50% off at p_target = 1 − 10⁻¹⁶, the interval's lower end above λ_max),
softplus above nn.Softplus's threshold (derivatives of a function other than the module's) and
GELU's Φ in the lower tail.
"""
import functools
import os

import pytest
import torch

import extended_precision
import reference
import torch_ws
from test_edges import saturated_float32_problems

ACTIVATIONS = ["tanh", "sigmoid", "softplus", "silu", "gelu"]
# (loss, logits, hidden-weight scale, output-weight scale, soft targets): the softmax or the
# output sigmoid saturated (W2 × 30), or the hidden units (W1 × 8, pre-activations up to ~25).
SATURATIONS = [
    ("cross_entropy", 3, 1, 30, False),
    ("cross_entropy", 3, 1, 30, True),
    ("bce", 1, 1, 30, False),
    ("cross_entropy", 3, 8, 1, False),
    ("bce", 1, 8, 1, False),
    ("mse", 2, 8, 1, False),
]
CASES = [(a,) + s for a in ACTIVATIONS for s in SATURATIONS]
# One activation per saturation in the quick suite (each fixed cancellation among them: the
# softmax's non-target residual, softplus above its threshold, GELU's lower tail); every
# combination under -m slow. The oracle takes ~0.7 s a problem.
QUICK = {("tanh", "cross_entropy", 3, 1, 30, False), ("sigmoid", "cross_entropy", 3, 1, 30, True),
         ("silu", "bce", 1, 1, 30, False), ("gelu", "cross_entropy", 3, 8, 1, False),
         ("softplus", "cross_entropy", 3, 8, 1, False), ("tanh", "mse", 2, 8, 1, False)}
PARAMS = [pytest.param(c, id=None, marks=() if c in QUICK else pytest.mark.slow) for c in CASES]


def case_id(case):
    activation, loss, _, w1_scale, w2_scale, soft = case
    return f"{activation}-{loss}{'-soft' if soft else ''}-w1x{w1_scale}-w2x{w2_scale}"


@functools.lru_cache(maxsize=None)
def problem(case, dtype):
    """The case's tensors in `dtype` and the oracle's Hessian at their exact values."""
    activation, loss, outputs, w1_scale, w2_scale, soft = case
    g = torch.Generator().manual_seed(CASES.index(case))
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x, w1, b1, w2, b2 = draw(2, 3), draw(4, 3) * w1_scale, draw(4), draw(outputs, 4) * w2_scale, draw(outputs)
    z = reference.mlp_logits(x, w1, b1, w2, b2, activation).reshape(2, -1)
    if loss == "cross_entropy":
        target = torch.softmax(draw(2, outputs), 1) if soft else z.argmax(1)
    elif loss == "bce":
        target = (z[:, 0] > 0).double()
    else:
        target = draw(2, outputs)
    args = [t.to(dtype) if t.is_floating_point() else t for t in (x, target, w1, b1, w2, b2)]
    exact_values = [t.double() if t.is_floating_point() else t for t in args]
    hessian = extended_precision.hessian(*exact_values, activation, "mean", loss)
    return args, hessian


@pytest.mark.parametrize("case", PARAMS, ids=case_id)
def test_explicit_hessian_entries_at_saturation(case):
    args, truth = problem(case, torch.float64)
    activation, loss = case[0], case[1]
    ours = torch_ws.explicit_hessian(*args, activation, "mean", loss)
    # Entry by entry, relative to the entry: the failure was a 10⁻¹⁸ entry off by half while the
    # largest were 10⁻¹²; entries far below the largest may carry cancellation of their own.
    significant = truth.abs() > 1e-8 * truth.abs().max()
    relative = (ours - truth).abs()[significant] / truth.abs()[significant]
    assert relative.max() < 1e-11


@pytest.mark.parametrize("engine", ["sample", "parameter"])
@pytest.mark.parametrize("case", PARAMS, ids=case_id)
def test_traces_at_saturation(case, engine, monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    args, truth = problem(case, torch.float64)
    trace, trace_sq = torch_ws.hessian_traces(*args, case[0], "mean", case[1])
    assert abs(float(trace) - float(truth.trace())) <= 1e-12 * float(truth.diagonal().abs().sum())
    assert float(trace_sq) == pytest.approx(float((truth ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize("case", PARAMS, ids=case_id)
def test_hessian_vector_products_at_saturation(case):
    args, truth = problem(case, torch.float64)
    vectors = torch.randn(truth.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = torch_ws.hessian_vector_products(*args, vectors.T.contiguous(), case[0], "mean", case[1])
    expected = (truth @ vectors).T
    assert ((ours - expected).abs() / expected.abs().max(1, keepdim=True).values).max() < 1e-11


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", PARAMS, ids=case_id)
def test_bounds_hold_at_saturation(case, dtype):
    """Every bound against the oracle's eigenvalues of the Hessian at the inputs' exact values
    (eigvalsh of the oracle rounded to float64 is good to a few units of 10⁻¹⁶·‖H‖)."""
    args, truth = problem(case, dtype)
    activation, loss = case[0], case[1]
    eigenvalues = torch.linalg.eigvalsh(truth)
    top, bottom = float(eigenvalues[-1]), float(eigenvalues[0])
    slack = 1e-14 * float(eigenvalues.abs().max())
    interval = torch_ws.lambda_max_interval(*args, activation, "mean", loss)
    assert float(interval.lower) <= top + slack
    assert float(interval.upper) >= top - slack
    below = torch_ws.lambda_min_interval(*args, activation, "mean", loss)
    assert float(below.lower) <= bottom + slack
    assert float(below.upper) >= bottom - slack
    # With 2 steps the assembled Hessian (docs/math.md §11.6) gives the ends in most cases.
    for function, value in ((torch_ws.lambda_max_interval, top),
                            (torch_ws.lambda_min_interval, bottom)):
        few = function(*args, activation, "mean", loss, steps=2)
        assert float(few.lower) <= value + slack
        assert float(few.upper) >= value - slack
    assert float(torch_ws.ws_bound(*args, activation, "mean", loss)) >= top - slack
    assert float(torch_ws.spectral_bound(*args, activation, "mean", loss).upper) >= top - slack


def test_the_saturated_softmax_that_was_half_off():
    """The finding itself: C = 3, p_target = 1 − 10⁻¹⁶, λ_max = 3.7·10⁻¹²; W1's diagonal
    entries came out 0.50×, 0.95×, 1.007× and 0.998× of the truth, the interval's lower end
    3.716·10⁻¹² above λ_max = 3.713·10⁻¹²."""
    args = [t.double() if t.is_floating_point() else t for t in saturated_float32_problems()[0]]
    truth = extended_precision.hessian(*args, "tanh", "mean", "cross_entropy")
    ours = torch_ws.explicit_hessian(*args, "tanh", "mean", "cross_entropy")
    assert torch.allclose(ours.diagonal(), truth.diagonal(), rtol=1e-12, atol=0)
    top = float(torch.linalg.eigvalsh(truth)[-1])
    interval = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy")
    assert float(interval.lower) <= top * (1 + 1e-14) and float(interval.upper) >= top
