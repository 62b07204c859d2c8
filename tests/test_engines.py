"""The two CPU engines give the same values and gradients: the sample-space pairwise sums over
Gram-matrix entries and the parameter-space engine, which assembles the n×n Hessian from the
per-sample tangents (TORCH_WS_ENGINE). Also the automatic choice between them and the setting's
errors."""
import pytest
import torch
from testing import all_configs, assert_float32_bound, make_problem, rel_err

import torch_ws


def values_and_grads(p, act, red):
    """bound, tr H, tr H², then the gradients of the bound and of a mix of both traces."""
    bound = torch_ws.ws_bound(*p.args(), act, red)
    grads = torch.autograd.grad(bound, p.differentiable())
    trace, trace_sq = torch_ws.hessian_traces(*p.args(), act, red)
    mix = torch.autograd.grad(0.3 * trace - 0.7 * trace_sq, p.differentiable())
    return [bound, trace, trace_sq, *grads, *mix]


def with_engine(monkeypatch, engine, fn):
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    return fn()


@pytest.mark.parametrize("cfg", all_configs(), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_parameter_space_equals_sample_space(monkeypatch, cfg):
    act, red, bias, soft = cfg
    p = make_problem(n=23, d=3, h=5, bias=bias, soft_targets=soft, seed=7, requires_grad=True)
    sample = with_engine(monkeypatch, "sample", lambda: values_and_grads(p, act, red))
    parameter = with_engine(monkeypatch, "parameter", lambda: values_and_grads(p, act, red))
    for a, b in zip(parameter, sample):
        assert rel_err(a, b) <= 1e-10


# The parameter-space loops take samples in chunks of 8: batches shorter than, equal to and
# just past a chunk, and a single sample.
@pytest.mark.parametrize("n", [1, 7, 8, 9, 17])
def test_chunking_does_not_change_the_result(monkeypatch, n):
    p = make_problem(n=n, d=2, h=3, soft_targets=True, seed=n, requires_grad=True)
    sample = with_engine(monkeypatch, "sample", lambda: values_and_grads(p, "gelu", "sum"))
    parameter = with_engine(monkeypatch, "parameter", lambda: values_and_grads(p, "gelu", "sum"))
    for a, b in zip(parameter, sample):
        assert rel_err(a, b) <= 1e-10


def test_float32_inputs_on_the_parameter_space_engine(monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    p64 = make_problem(n=50, d=2, h=10, seed=2, requires_grad=True)
    p32 = make_problem(n=50, d=2, h=10, seed=2, dtype=torch.float32, requires_grad=True)
    (bound32, *out32), (bound64, *out64) = (values_and_grads(p32, "tanh", "mean"),
                                            values_and_grads(p64, "tanh", "mean"))
    assert_float32_bound(bound32, bound64)
    for a, b in zip(out32, out64):
        assert a.dtype == torch.float32
        assert rel_err(a, b) <= 1e-5


def engine_for(n, d, h, bias=(True, True)):
    x, w1 = torch.empty(n, d), torch.empty(h, d)
    return torch.ops.torch_ws._engine(x, w1, *bias)


def test_automatic_choice_follows_the_arithmetic(monkeypatch):
    monkeypatch.delenv("TORCH_WS_ENGINE", raising=False)
    # The papers' scale: n = 41 parameters, N = 200 samples: the 41×41 Hessian is the small side.
    assert engine_for(200, 2, 10) == "parameter"
    # Wide layers: n = 8449 is beyond the parameter-space limit; pairwise sums it is.
    assert engine_for(1024, 64, 128) == "sample"
    # Few samples, many parameters (n = 577 > N): the N×N Gram matrices are the small side.
    assert engine_for(20, 16, 32) == "sample"
    # Many samples, a tiny network: the n×n Hessian, whatever N.
    assert engine_for(50_000, 2, 10) == "parameter"
    # Mid-sized: n = 161 with N = 1000 (measured on 2 cores: 3.7 ms against 6.2 ms); n = 577 with
    # N = 2000 is the other way round (69 ms against 32 ms).
    assert engine_for(1000, 8, 16) == "parameter"
    assert engine_for(2000, 16, 32) == "sample"


def test_setting_forces_an_engine(monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", "sample")
    assert engine_for(200, 2, 10) == "sample"
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    assert engine_for(20, 16, 32) == "parameter"


def test_bad_engine_setting_is_refused(monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", "fastest")
    p = make_problem()
    with pytest.raises(RuntimeError, match="TORCH_WS_ENGINE must be 'auto', 'sample' or 'parameter', got 'fastest'"):
        torch_ws.ws_bound(*p.args())


def test_parameter_space_refuses_a_hessian_too_large(monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    p = make_problem(n=4, d=100, h=50)  # n = 5101
    with pytest.raises(RuntimeError, match="n = 5101 exceeds the limit of 4096"):
        torch_ws.ws_bound(*p.args())


def test_the_engine_table_says_what_each_engine_costs_and_why_it_refuses(monkeypatch):
    """_engines reads the same table as the automatic choice and TORCH_WS_ENGINE: every engine of
    the head with its cost, whether it takes the problem or why not, the choice marked."""
    monkeypatch.delenv("TORCH_WS_ENGINE", raising=False)
    rows = torch.ops.torch_ws._engines(torch.empty(200, 2), torch.empty(10, 2), True, True)
    assert [r.split(":")[0] for r in rows] == ["parameter", "sample"]
    assert rows[0].endswith("takes this problem (chosen)") and "O(N·n²)" in rows[0]
    assert rows[1].endswith("takes this problem")
    wide = torch.ops.torch_ws._engines(torch.empty(4, 100), torch.empty(50, 100), True, True)
    assert "refuses it: holds the n×n Hessian, and n = 5101 exceeds the limit of 4096" in wide[0]
    assert wide[1].endswith("(chosen)")
    heads = torch.ops.torch_ws._engines(torch.empty(500, 20), torch.empty(32, 20), True, True, 10)
    assert "per-sample Jacobians" in heads[0] and "O(N²(D + C²H))" in heads[1]
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    with pytest.raises(RuntimeError, match=r"_engines|TORCH_WS_ENGINE=parameter holds the n×n "
                                           r"Hessian, and n = 5101"):
        torch.ops.torch_ws._engines(torch.empty(4, 100), torch.empty(50, 100), True, True)
