"""Findings of the robustness fuzz (issue 30), each a test that failed before its fix: one
behaviour for NaN/Inf input across the ops, bounds that stay bounds when float32 traces
overflow, and errors that say what arrived."""
import pytest
import torch
from testing import make_head_problem, make_problem

import reference
import torch_ws


@pytest.mark.parametrize("where", ["x", "w1", "b2"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_spectral_bound_of_nan_or_inf_input_is_nan_like_every_op(where, value):
    p = make_problem(n=6, d=2, h=3, seed=9)
    getattr(p, where).view(-1)[0] = value
    bound = torch_ws.spectral_bound(*p.args())  # raised torch's LinAlgError before
    assert torch.isnan(bound.upper) and torch.isnan(bound.lambda_min_lower)
    assert torch.isnan(torch_ws.ws_bound(*p.args()))
    interval = torch_ws.lambda_max_interval(*p.args())
    assert torch.isnan(interval.lower) and torch.isnan(interval.upper)


def test_float32_spectral_bound_survives_overflowing_traces():
    """x·10³⁰ in float32: the traces overflow float32, so WS is no bound (∞ or NaN); the
    spectral parts run in float64 and still bound λ_max (upper was NaN before)."""
    p = make_problem(n=6, d=2, h=3, seed=3, dtype=torch.float32)
    x = p.x * 1e30
    bound = torch_ws.spectral_bound(x, *p.args()[1:])
    assert torch.isfinite(bound.ggn_lambda_max) and torch.isfinite(bound.residual_lambda_max)
    assert not torch.isnan(bound.upper)
    args64 = [t.double() if t is not None else None for t in (x, *p.args()[1:])]
    top = float(torch.linalg.eigvalsh(reference.explicit_hessian(*args64))[-1])
    assert float(bound.upper) >= top


def test_float_class_indices_get_an_error_naming_the_dtype():
    x, target, w1, b1, w2, b2 = make_head_problem("cross_entropy", 3, "indices", n=5)
    with pytest.raises(RuntimeError, match=r"got a Double target of shape \[5\]: class indices "
                                           r"must be int64 \(pass target.long\(\)\)"):
        torch_ws.ws_bound(x, target.double(), w1, b1, w2, b2, loss="cross_entropy")


def test_interval_of_nan_input_with_gradients_gives_nan_gradients():
    p = make_problem(n=6, d=2, h=3, seed=9, requires_grad=True)
    with torch.no_grad():
        p.x[1, 0] = float("nan")
    interval = torch_ws.lambda_max_interval(*p.args())
    grads = torch.autograd.grad(interval.upper, [p.w1, p.w2])
    assert all(torch.isnan(g).all() for g in grads)


def saturated_float32_problems():
    """Cross-entropy, N = 1, weights scaled until the softmax saturates: λ_max from 4·10⁻¹² down
    to 2·10⁻⁵⁵, below float32's range (the fuzz's finding)."""
    torch.manual_seed(0)
    out = []
    for scale in (30.0, 60.0, 120.0):
        x = torch.randn(1, 3, dtype=torch.float64)
        w1, b1 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
        w2, b2 = torch.randn(3, 4, dtype=torch.float64) * scale, torch.randn(3, dtype=torch.float64)
        y = torch.tensor([int((torch.tanh(x @ w1.T + b1) @ w2.T + b2).argmax())])
        out.append(tuple(t.float() if t.is_floating_point() else t for t in (x, y, w1, b1, w2, b2)))
    return out


@pytest.mark.parametrize("engine", ["sample", "parameter"])
def test_float32_bounds_stay_bounds_below_float32_range(engine, monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    for args in saturated_float32_problems():
        wide = [t.double() if t.is_floating_point() else t for t in args]
        eigenvalues = torch.linalg.eigvalsh(
            reference.explicit_hessian(*wide, "tanh", "mean", "cross_entropy"))
        top, bottom = float(eigenvalues[-1]), float(eigenvalues[0])
        bound = torch_ws.ws_bound(*args, "tanh", "mean", "cross_entropy")
        bounds = torch_ws.ws_bounds(*args, "tanh", "mean", "cross_entropy")
        assert float(bound) >= top > 0  # was 0.0 on the sample engine at λ_max = 1.8e-55
        assert float(bounds.lambda_max_upper) == float(bound)  # ws_bounds gave 0.0
        assert float(bounds.lambda_min_lower) <= bottom
        assert float(bounds.spread_upper) >= top - bottom
