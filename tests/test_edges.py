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
