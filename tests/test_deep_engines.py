"""The deep family's two engines (csrc/ops/deep/engines.h) give the same traces, gradients and
certified errors: the Gram forms in N × N feature kernels (sample space) and the n × n Hessian
assembled by blocks (parameter space), over every head × activation × reduction × bias setting
at L = 2 and 3. Also the automatic choice, TORCH_WS_ENGINE's refusals and _deep_engines. Each
engine is checked against the explicit Hessian in tests/test_deep.py."""
import itertools

import pytest
import torch

import torch_ws
from deep_testing import ACTIVATION_MODULES, BIASES, HEADS, make_problem

CASES = list(itertools.product(HEADS, ACTIVATION_MODULES, ["mean", "sum"], BIASES))


def traces_and_gradients(x, target, weights, biases, activation, reduction, loss):
    """tr H, tr(H²), their certified errors, and the gradient of 0.3·tr H − 0.7·tr(H²) in x and
    every weight and bias."""
    leaves = [t.detach().requires_grad_(True) for t in [x] + weights]
    bias_leaves = [b.detach().requires_grad_(True) if b is not None else None for b in biases]
    x, weights = leaves[0], leaves[1:]
    trace, trace_sq = torch_ws.deep_hessian_traces(x, target, weights, bias_leaves, activation,
                                                   reduction, loss)
    grads = torch.autograd.grad(0.3 * trace - 0.7 * trace_sq,
                                leaves + [b for b in bias_leaves if b is not None])
    errors = torch.ops.torch_ws._deep_trace_errors(x, target, weights, bias_leaves, activation,
                                                  reduction, loss)
    return [trace.detach(), trace_sq.detach()], list(grads), list(errors)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}-{c[0][2]}-{c[1]}-{c[2]}-{c[3]}")
def test_both_engines_agree(monkeypatch, case):
    head, activation, reduction, bias = case
    index = CASES.index(case)
    widths = [[4, 3], [3, 4, 2]][index % 2]  # L = 2 and 3
    problem = make_problem(widths, head, bias, seed=index, n=6)
    out = {}
    for engine in ("sample", "parameter"):
        monkeypatch.setenv("TORCH_WS_ENGINE", engine)
        out[engine] = traces_and_gradients(*problem, activation, reduction, head[0])
    (values_s, grads_s, errors_s), (values_p, grads_p, errors_p) = out["sample"], out["parameter"]
    for a, b in zip(values_s, values_p):
        assert abs(float(a) - float(b)) <= 1e-10 * max(abs(float(a)), 1e-30)
    for a, b in zip(grads_s, grads_p):
        assert (a - b).abs().max() <= 1e-10 * max(float(a.abs().max()), 1e-30)
    # Each engine certifies its own arithmetic (docs/math.md §12.5, §12.7): the two errors are of
    # one size, both far below the values, and both cover the engines' difference.
    for value, e_s, e_p in zip(values_s, errors_s, errors_p):
        assert 0 <= float(e_s) <= 1e-8 * abs(float(value)) + 1e-300
        assert 0 <= float(e_p) <= 1e-8 * abs(float(value)) + 1e-300
    for a, b, e_s, e_p in zip(values_s, values_p, errors_s, errors_p):
        assert abs(float(a) - float(b)) <= float(e_s) + float(e_p)


def test_float32_inputs_agree():
    problem = make_problem([5, 4], HEADS[0], "all", seed=3, dtype=torch.float32, n=12)
    out = {}
    for engine in ("sample", "parameter"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("TORCH_WS_ENGINE", engine)
            out[engine] = torch_ws.deep_ws_bounds(*problem, "tanh", "mean", "bce")
    for a, b in zip(out["sample"], out["parameter"]):
        if isinstance(a, torch.Tensor):
            assert a.dtype == torch.float32
            assert float(a) == pytest.approx(float(b), rel=1e-6)


@pytest.mark.parametrize("engine", ["parameter", "sample"])
def test_factorised_magnitudes_bound_each_engines_evaluation_on_magnitudes(monkeypatch, engine):
    """The certified errors scale §12.5's M_tr and an upper bound on M_sq that neither engine
    evaluates pair by pair: the Gram forms factorise their pair sums (§12.5), the assembly bounds
    ‖M‖²_F by the triangle inequality over the samples (§12.7). Each must be at least the engine's
    own evaluation run on magnitudes (Σ|terms| of every sum) and not much more (else the bounds
    widen for nothing), over every head, bias setting, three activations, L = 2 and 3."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    ratios = []
    for widths, (head, bias), activation in itertools.product(
            [[4, 3], [2, 5, 3]], [(h, b) for h in HEADS for b in BIASES], ["tanh", "gelu", "relu"]):
        x, target, weights, biases = make_problem(widths, head, bias, seed=len(widths), n=13)
        bound, evaluated = [torch.ops.torch_ws._deep_trace_magnitudes(
            x, target, weights, biases, activation, "mean", head[0], factorised)
            for factorised in (True, False)]
        assert 0 <= float(bound[0]) - float(evaluated[0]) <= 1e-12 * float(evaluated[0])
        ratios.append(float(bound[1]) / float(evaluated[1]))
    assert min(ratios) >= 1 and max(ratios) <= 10, (min(ratios), max(ratios))


def shapes(widths, n, d=20, outputs=1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    dims = [d] + widths + [outputs]
    weights = [torch.randn(o, i, generator=g, dtype=torch.float64) for i, o in zip(dims, dims[1:])]
    return x, torch.zeros(n, dtype=torch.float64), weights, [None] * len(weights)


def chosen(problem):
    """The engine _deep_engine names, and the one _deep_engines marks chosen (they agree)."""
    lines = torch.ops.torch_ws._deep_engines(*problem, "tanh", "mean", "bce")
    marked = [line.split(":")[0] for line in lines if line.endswith("(chosen)")]
    assert marked == [torch.ops.torch_ws._deep_engine(*problem, "tanh", "mean", "bce")]
    return marked


def test_automatic_choice_follows_the_work(monkeypatch):
    monkeypatch.delenv("TORCH_WS_ENGINE", raising=False)
    # [32, 32], n = 1,696: the Gram forms at N = 50 (N² small), the assembly at N = 500
    # (measured 0.52 s vs 0.21 s with the gradient, docs/engines.md).
    assert chosen(shapes([32, 32], 50)) == ["sample"]
    assert chosen(shapes([32, 32], 500)) == ["parameter"]
    # n = 44,200 > the limit: only the Gram forms take it, whatever N.
    lines = torch.ops.torch_ws._deep_engines(*shapes([200, 200], 5000), "tanh", "mean", "bce")
    assert lines[0].startswith("parameter:") and "refuses it: holds the n×n Hessian's blocks" in lines[0]
    assert lines[1].startswith("sample:") and lines[1].endswith("(chosen)")


def test_forcing_a_refusing_engine_says_why(monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    with pytest.raises(RuntimeError, match=r"TORCH_WS_ENGINE=parameter holds the n×n Hessian's blocks, "
                                           r"and n = 44200 exceeds the limit"):
        torch_ws.deep_hessian_traces(*shapes([200, 200], 3))
    monkeypatch.setenv("TORCH_WS_ENGINE", "fast")
    with pytest.raises(RuntimeError, match="TORCH_WS_ENGINE must be 'auto', 'sample' or "
                                           "'parameter', got 'fast'"):
        torch_ws.deep_hessian_traces(*shapes([3, 3], 3))


def test_the_choice_reads_shapes_only():
    """Fake tensors carry no values: the choice (and so the op) traces with them."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        problem = shapes([32, 32], 500)
        trace, trace_sq = torch_ws.deep_hessian_traces(*problem)
    assert trace.shape == () and trace_sq.shape == ()


@pytest.mark.parametrize("widths", [[5], [4, 3], [3, 4, 2]], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("bias", BIASES)
@pytest.mark.parametrize("head", HEADS, ids=[f"{h[0]}-{h[2]}" for h in HEADS])
def test_the_assembled_hessian_is_the_explicit_one(head, bias, widths):
    """The n × n matrix the intervals certify on (math.md §11.6, §12.7): torch.func.hessian's of
    the real network, entry for entry and in nn.Sequential.parameters() order, within its
    certified forming error (which is tiny next to it)."""
    from deep_testing import explicit_hessian
    x, target, weights, biases = make_problem(widths, head, bias, seed=len(widths), n=7)
    H = explicit_hessian(x, target, weights, biases, "softplus", "sum", head[0])
    ours, forming_error = torch.ops.torch_ws._deep_assembled_hessian(
        x, target, weights, biases, "softplus", "sum", head[0])
    assert torch.equal(ours, ours.T)
    assert float((ours - H).norm()) <= 1e-12 * float(H.norm())
    assert 0 < float(forming_error) <= 1e-9 * float(H.norm())


def test_shares_of_the_assembled_hessian_add_up():
    """What the ranks of dataset_bounds sum (docs/distributed.md): the shares [0, k) and [k, N)
    of the samples, each with the whole set's loss scale, add up to the whole Hessian; an empty
    share is zero; the traces read off the sum are deep_hessian_traces', within the certified
    errors _assembled_hessian_traces returns; bad shares and matrices are refused."""
    problem = make_problem([4, 3], HEADS[3], "mixed", seed=5, n=11)
    args = (*problem, "gelu", "mean", "mse")
    whole, whole_error = torch.ops.torch_ws._deep_assembled_hessian(*args)
    first, first_error = torch.ops.torch_ws._deep_assembled_hessian(*args, 0, 4)
    second, second_error = torch.ops.torch_ws._deep_assembled_hessian(*args, 4, 11)
    empty, empty_error = torch.ops.torch_ws._deep_assembled_hessian(*args, 4, 4)
    assert float((first + second - whole).norm()) <= 1e-13 * float(whole.norm())
    assert float(empty.abs().max()) == 0 and float(empty_error) == 0
    trace, trace_sq, trace_error, trace_sq_error = torch.ops.torch_ws._assembled_hessian_traces(
        first + second, float(first_error + second_error))
    exact_trace, exact_trace_sq = torch_ws.deep_hessian_traces(*args)
    assert abs(float(trace) - float(exact_trace)) <= float(trace_error) + 1e-13
    assert abs(float(trace_sq) - float(exact_trace_sq)) <= float(trace_sq_error) + 1e-13
    assert 0 < float(trace_sq_error) <= 1e-9 * float(trace_sq)
    with pytest.raises(RuntimeError, match=r"expected 0 <= begin <= end <= N = 11, got begin = 5, "
                                           r"end = 3"):
        torch.ops.torch_ws._deep_assembled_hessian(*args, 5, 3)
    with pytest.raises(RuntimeError, match="expected a square float64 matrix"):
        torch.ops.torch_ws._assembled_hessian_traces(whole.float(), 0.0)
