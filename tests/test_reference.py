"""The plain-PyTorch closed form (torch_ws/reference.py, the benchmarks' baseline and the tests'
second opinion) agrees with the C++ op in values and gradients."""
import pytest
import torch
from testing import ACTIVATIONS, BIAS_CONFIGS, make_problem, rel_err

import torch_ws
import reference


@pytest.mark.parametrize("bias", BIAS_CONFIGS)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("red", ["mean", "sum"])
def test_closed_form_reference_matches_the_op(act, red, bias):
    p = make_problem(n=20, d=4, h=6, bias=bias, soft_targets=True, seed=5, requires_grad=True)
    ref = reference.ws_bound_closed_form(*p.args(), act, red)
    op = torch_ws.ws_bound(*p.args(), act, red)
    assert rel_err(ref, op) <= 1e-10
    for a, b in zip(torch.autograd.grad(ref, p.differentiable()), torch.autograd.grad(op, p.differentiable())):
        assert rel_err(a, b) <= 1e-8
    ref_traces = reference.hessian_traces_closed_form(*p.args(), act, red)
    op_traces = torch_ws.hessian_traces(*p.args(), act, red)
    for a, b in zip(ref_traces, op_traces):
        assert rel_err(a, b) <= 1e-10


def test_closed_form_reference_matches_the_explicit_hessian():
    p = make_problem(n=9, d=3, h=4, seed=6)
    hess = reference.explicit_hessian(*p.args(), "gelu", "mean")
    trace, trace_sq = reference.hessian_traces_closed_form(*p.args(), "gelu", "mean")
    assert rel_err(trace, hess.trace()) <= 1e-10
    assert rel_err(trace_sq, (hess * hess).sum()) <= 1e-10
