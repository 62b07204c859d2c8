"""torch_ws.deep_hessian_traces / deep_ws_bounds / DeepMlpSpec (docs/math.md §12) against
torch.func.hessian of the real nn.Sequential in float64: values, gradients (every layer and x),
bounds, errors."""
import itertools

import pytest
import torch

import torch_ws
from deep_testing import ACTIVATION_MODULES, BIASES, HEADS, explicit_hessian, make_problem

CASES = list(itertools.product(ACTIVATION_MODULES, range(len(HEADS))))


@pytest.fixture(params=["sample", "parameter"])
def engine(request, monkeypatch):
    """Each test against the explicit Hessian runs on both engines of the deep family
    (csrc/ops/deep/engines.h): the Gram forms and the assembled Hessian."""
    monkeypatch.setenv("TORCH_WS_ENGINE", request.param)
    return request.param


@pytest.mark.parametrize("activation,head_index", CASES,
                         ids=[f"{a}-{HEADS[h][0]}-{HEADS[h][2]}" for a, h in CASES])
def test_traces_match_the_explicit_hessian(activation, head_index, engine):
    head = HEADS[head_index]
    case = CASES.index((activation, head_index))
    widths = [[4, 3], [3, 4, 2]][case % 2]  # L = 2 and 3
    bias = BIASES[case % 3]
    reduction = ["mean", "sum"][(case // 2) % 2]
    x, target, weights, biases = make_problem(widths, head, bias, seed=case)
    H = explicit_hessian(x, target, weights, biases, activation, reduction, head[0])
    trace, trace_sq = torch_ws.deep_hessian_traces(x, target, weights, biases, activation,
                                                   reduction, head[0])
    assert abs(float(trace) - float(H.trace())) <= 1e-10 * float(H.diagonal().abs().sum())
    assert float(trace_sq) == pytest.approx(float((H * H).sum()), rel=1e-10)


@pytest.mark.parametrize("head", HEADS, ids=[f"{h[0]}-{h[2]}" for h in HEADS])
@pytest.mark.parametrize("bias", ["all", "none"])
def test_one_hidden_layer_agrees_with_hessian_traces(head, bias):
    """L = 1 is the existing ops' problem: a second, independent route to the same numbers."""
    x, target, (w1, w2), (b1, b2) = make_problem([6], head, bias, seed=3)
    deep = torch_ws.deep_hessian_traces(x, target, [w1, w2], [b1, b2], "tanh", "mean", head[0])
    one = torch_ws.hessian_traces(x, target, w1, b1, w2, b2, "tanh", "mean", head[0])
    for a, b in zip(deep, one):
        assert float(a) == pytest.approx(float(b), rel=1e-12)


@pytest.mark.parametrize("head", HEADS[:2] + HEADS[3:], ids=lambda h: h[0])
def test_gradients_match_third_order_autograd(head, engine):
    """d tr H and d tr(H²) in every weight, bias and x, against autograd through the explicit
    Hessian of the real network (third order)."""
    x, target, weights, biases = make_problem([3, 4], head, "mixed", seed=11)
    leaves = [x] + weights + [b for b in biases if b is not None]
    for t in leaves:
        t.requires_grad_(True)
    trace, trace_sq = torch_ws.deep_hessian_traces(x, target, weights, biases, "tanh", "mean",
                                                   head[0])
    H = explicit_hessian(x, target, weights, biases, "tanh", "mean", head[0])
    for ours, truth in ((trace, H.trace()), (trace_sq, (H * H).sum())):
        got = torch.autograd.grad(ours, leaves, retain_graph=True)
        expected = torch.autograd.grad(truth, leaves, retain_graph=True)
        for a, b in zip(got, expected):
            assert (a - b).abs().max() <= 1e-8 * max(1.0, float(b.abs().max()))


def test_gradcheck(engine):
    x, target, weights, biases = make_problem([2, 3], HEADS[1], "all", seed=5, n=3, d=2)
    leaves = [x] + weights + biases
    for t in leaves:
        t.requires_grad_(True)

    def traces(x, *params):
        ws, bs = params[:3], params[3:]
        return torch_ws.deep_hessian_traces(x, target, ws, bs, "softplus", "mean", "cross_entropy")

    assert torch.autograd.gradcheck(traces, tuple(leaves))


def test_forward_mode_gives_the_directional_derivative(engine):
    """torch.func.jvp of the traces and of deep_ws_bounds' λ_max bound (forward-mode AD through
    the op's ATen kernel) along a random tangent of x and every layer: the reverse gradient's
    inner product with it, and the explicit Hessian's for the traces."""
    x, target, weights, biases = make_problem([3, 4], HEADS[1], "mixed", seed=2)
    primals = tuple([x] + weights)
    g = torch.Generator().manual_seed(4)
    tangents = tuple(torch.randn(t.shape, dtype=t.dtype, generator=g) for t in primals)

    def traces(x, *ws):
        return torch.stack(torch_ws.deep_hessian_traces(x, target, list(ws), biases, "tanh",
                                                        "mean", "cross_entropy"))

    def bound(x, *ws):
        return torch_ws.deep_ws_bounds(x, target, list(ws), biases, "tanh", "mean",
                                       "cross_entropy").lambda_max_upper

    def explicit(x, *ws):
        H = explicit_hessian(x, target, list(ws), biases, "tanh", "mean", "cross_entropy")
        return torch.stack([H.trace(), (H * H).sum()])

    _, ours = torch.func.jvp(traces, primals, tangents)
    _, truth = torch.func.jvp(explicit, primals, tangents)
    torch.testing.assert_close(ours, truth, rtol=1e-8, atol=1e-12)
    _, derivative = torch.func.jvp(bound, primals, tangents)
    leaves = [t.detach().requires_grad_(True) for t in primals]
    reverse = torch.autograd.grad(bound(*leaves), leaves)
    torch.testing.assert_close(derivative, sum((r * t).sum() for r, t in zip(reverse, tangents)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("head", HEADS, ids=[f"{h[0]}-{h[2]}" for h in HEADS])
def test_bounds_hold(head, dtype):
    for seed in range(3):
        x, target, weights, biases = make_problem([4, 3], head, "all", seed=20 + seed, dtype=dtype)
        wide = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
        H = explicit_hessian(wide(x), wide(target), [wide(w) for w in weights],
                             [wide(b) for b in biases], "gelu", "mean", head[0])
        eigenvalues = torch.linalg.eigvalsh(H)
        bounds = torch_ws.deep_ws_bounds(x, target, weights, biases, "gelu", "mean", head[0])
        assert bounds.num_params == H.shape[0]
        assert float(bounds.lambda_max_lower) <= float(eigenvalues[-1]) <= float(bounds.lambda_max_upper)
        assert float(bounds.lambda_min_lower) <= float(eigenvalues[0]) <= float(bounds.lambda_min_upper)
        assert float(eigenvalues[-1] - eigenvalues[0]) <= float(bounds.spread_upper)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head", [HEADS[0], HEADS[1]], ids=["bce", "cross_entropy"])
def test_low_precision_inputs_are_computed_on_their_exact_values(head, dtype):
    """bfloat16/float16 inputs (all of one dtype), as the one-hidden-layer ops take them: the
    traces, bounds, interval and products of their exact values, returned in their dtype, bounds
    rounded outward (so they hold for the explicit Hessian of the upcast values), under
    inference_mode too; gradients in their dtype. Before, the deep ops refused them."""
    x, target, weights, biases = make_problem([4, 3], head, "mixed", seed=5, dtype=dtype, n=8)
    wide = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
    exact = (wide(x), wide(target), [wide(w) for w in weights], [wide(b) for b in biases])
    H = explicit_hessian(*exact, "tanh", "mean", head[0])
    eigenvalues = torch.linalg.eigvalsh(H)
    args = (x, target, weights, biases, "tanh", "mean", head[0])
    trace, trace_sq = torch_ws.deep_hessian_traces(*args)
    assert trace.dtype == dtype and trace_sq.dtype == dtype
    torch.testing.assert_close(trace.double(), H.trace(), rtol=1e-2, atol=0)
    torch.testing.assert_close(trace_sq.double(), (H * H).sum(), rtol=1e-2, atol=0)
    bounds = torch_ws.deep_ws_bounds(*args)
    assert bounds.lambda_max_upper.dtype == dtype
    assert float(bounds.lambda_max_lower) <= float(eigenvalues[-1]) <= float(bounds.lambda_max_upper)
    assert float(bounds.lambda_min_lower) <= float(eigenvalues[0]) <= float(bounds.lambda_min_upper)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            top = torch_ws.deep_lambda_max_interval(*args)
            bottom = torch_ws.deep_lambda_min_interval(*args)
        assert top.lower.dtype == dtype and bottom.upper.dtype == dtype
        assert float(top.lower) <= float(eigenvalues[-1]) <= float(top.upper)
        assert float(bottom.lower) <= float(eigenvalues[0]) <= float(bottom.upper)
    leaves = [t.detach().requires_grad_(True) for t in [x] + weights]
    upper = torch_ws.deep_lambda_max_interval(leaves[0], target, leaves[1:], biases, "tanh",
                                              "mean", head[0]).upper
    bound = torch_ws.deep_ws_bounds(leaves[0], target, leaves[1:], biases, "tanh", "mean",
                                    head[0]).lambda_max_upper
    for grads in (torch.autograd.grad(upper, leaves), torch.autograd.grad(bound, leaves)):
        assert all(g.dtype == dtype and torch.isfinite(g.float()).all() for g in grads)
    V = torch.randn(2, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    products = torch_ws.deep_hessian_vector_products(x, target, weights, biases, V.to(dtype),
                                                     "tanh", "mean", head[0])
    assert products.dtype == dtype
    torch.testing.assert_close(products.double(), V.to(dtype).double() @ H, rtol=0.05, atol=0.05)


def test_spec_reads_a_sequential_and_the_bounds_train():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5),
                              torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    spec = torch_ws.DeepMlpSpec.from_module(net, loss=torch.nn.CrossEntropyLoss(reduction="sum"))
    assert (spec.activation, spec.loss, spec.reduction) == ("tanh", "cross_entropy", "sum")
    assert spec.num_params == sum(p.numel() for p in net.parameters())
    bounds = torch_ws.deep_ws_bounds(*spec.op_args(x, y))
    bounds.lambda_max_upper.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    H = explicit_hessian(x, y, [m.weight for m in net[::2]], [m.bias for m in net[::2]],
                         "tanh", "sum", "cross_entropy")
    assert float(torch.linalg.eigvalsh(H.detach())[-1]) <= float(bounds.lambda_max_upper)


def test_refusals_say_what_was_expected():
    mixed = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                                torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="same activation.*1: tanh, 3: relu"):
        torch_ws.DeepMlpSpec.from_module(mixed)
    with pytest.raises(ValueError, match="expects nn.Sequential"):
        torch_ws.DeepMlpSpec.from_module(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()))
    three = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                                torch.nn.Tanh(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="one output for loss 'bce'.*loss='cross_entropy'"):
        torch_ws.DeepMlpSpec.from_module(three)
    deep = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                               torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match="with 5 modules; for several hidden layers, "
                       "torch_ws.deep_ws_bounds"):
        torch_ws.MlpSpec.from_module(deep)
    x, target, weights, biases = make_problem([4, 3], HEADS[0], "all", seed=0)
    with pytest.raises(RuntimeError, match=r"weights\[1\] has 4 input columns.*gives 5 features|"
                       r"weights\[1\] has"):
        torch_ws.deep_hessian_traces(x, target, [weights[0], torch.randn(3, 5, dtype=x.dtype),
                                                 weights[2]], None, "tanh", "mean", "bce")
    with pytest.raises(RuntimeError, match="at least two nn.Linear layers"):
        torch_ws.deep_hessian_traces(x, target, [weights[0]], None, "tanh", "mean", "bce")
    with pytest.raises(RuntimeError, match="torch_ws.deep_ws_bounds: expected the weights of at"):
        torch_ws.deep_ws_bounds(x, target, [weights[0]], None, "tanh", "mean", "bce")
    with pytest.raises(RuntimeError, match="one bias entry per layer"):
        torch_ws.deep_hessian_traces(x, target, weights, biases[:2], "tanh", "mean", "bce")
    with pytest.raises(RuntimeError, match="exactly one output"):
        torch_ws.deep_hessian_traces(x, target, weights[:2] + [torch.randn(2, 3, dtype=x.dtype)],
                                     None, "tanh", "mean", "bce")


MISFITS = [
    ([torch.nn.Flatten(), torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)],
     r"module 0 is Flatten where nn.Linear was expected: flatten x before the call"),
    ([torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(4, 4),
      torch.nn.Tanh(), torch.nn.Linear(4, 1)], r"module 2 is Dropout .*without it"),
    ([torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1), torch.nn.Sigmoid()],
     r"module 3 is Sigmoid: the losses take logits: drop the final Sigmoid and pass loss='bce'"),
    ([torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 4), torch.nn.Tanh(),
      torch.nn.Linear(4, 1)], r"module 1 is BatchNorm1d: normalization layers"),
    ([torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)],
     r"module 1 is nn.Linear where an activation was expected"),
]


@pytest.mark.parametrize("modules,message", MISFITS,
                         ids=["flatten", "dropout", "final-sigmoid", "batchnorm", "two-linear"])
def test_a_sequential_that_is_not_an_mlp_is_refused_naming_the_module(modules, message):
    """Every entry point that reads a network says which module does not fit and what to do."""
    net = torch.nn.Sequential(*modules)
    x = torch.randn(6, 3)
    calls = [lambda: torch_ws.DeepMlpSpec.from_module(net), lambda: torch_ws.HSRRegularizer(net),
             lambda: torch_ws.sharpness(net, x, torch.rand(6, 1))]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_opcheck(engine):
    """Static and dynamic shapes (the kernels read the sizes to choose an engine, so a new size
    recompiles, but nothing they read is data-dependent: the certified errors of deep_ws_bounds
    stay tensors, their op answering fake tensors by its Meta kernel)."""
    x, target, weights, biases = make_problem([3, 2], HEADS[1], "mixed", seed=1, n=4)
    for op in (torch.ops.torch_ws.deep_hessian_traces.default,
               torch.ops.torch_ws.deep_ws_bounds.default):
        torch.library.opcheck(op, (x, target, weights, biases, "tanh", "mean", "cross_entropy"),
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor", "test_aot_dispatch_static",
                                          "test_aot_dispatch_dynamic"))
    torch.library.opcheck(torch.ops.torch_ws._deep_trace_errors.default,
                          (x, target, [w.detach() for w in weights],
                           [b.detach() if b is not None else None for b in biases],
                           "tanh", "mean", "cross_entropy"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.slow
def test_compile_with_dynamic_shapes():
    """deep_ws_bounds under torch.compile(dynamic=True, fullgraph=True) gives the eager bounds at
    three batch sizes (50 s of compiling; test_opcheck's aot_dispatch_dynamic covers the tracing
    in the quick run)."""
    def bound(x, target, weights, biases):
        return torch_ws.deep_ws_bounds(x, target, weights, biases, "tanh", "mean",
                                       "cross_entropy").lambda_max_upper

    compiled = torch.compile(bound, dynamic=True, fullgraph=True)
    for n in (6, 9, 13):
        x, target, weights, biases = make_problem([3, 2], HEADS[1], "mixed", seed=1, n=n)
        torch.testing.assert_close(compiled(x, target, weights, biases),
                                   bound(x, target, weights, biases), rtol=1e-12, atol=0)


def test_trace_errors_are_certified_and_small(engine):
    """The deep bounds widen by the traces' certified rounding errors (§12.5): small on an
    ordinary network, and covering the actual error where the Gram terms cancel (weights 0.1:
    the float32 evaluation of tr(H²) was 2.6% off before the op moved to float64)."""
    x, target, weights, biases = make_problem([5, 4], HEADS[1], "all", seed=2)
    errors = torch.ops.torch_ws._deep_trace_errors(x, target, weights, biases, "tanh", "mean",
                                                  "cross_entropy")
    trace, trace_sq = torch_ws.deep_hessian_traces(x, target, weights, biases, "tanh", "mean",
                                                   "cross_entropy")
    assert 0 < float(errors[0]) <= 1e-9 * abs(float(trace))
    assert 0 < float(errors[1]) <= 1e-9 * float(trace_sq)
    # cancellation: tiny weights, no biases, one input feature, squared error
    g = torch.Generator().manual_seed(0)
    x = torch.randn(19, 1, generator=g, dtype=torch.float64) * 0.1
    weights = [torch.randn(7, 1, generator=g, dtype=torch.float64) * 0.1,
               torch.randn(6, 7, generator=g, dtype=torch.float64) * 0.1 / 7 ** 0.5,
               torch.randn(1, 6, generator=g, dtype=torch.float64) * 0.1]
    target = torch.randn(19, 1, generator=g, dtype=torch.float64)
    H = explicit_hessian(x, target, weights, [None] * 3, "tanh", "mean", "mse")
    trace_sq = torch_ws.deep_hessian_traces(x, target, weights, None, "tanh", "mean", "mse")[1]
    error = torch.ops.torch_ws._deep_trace_errors(x, target, weights, [None] * 3, "tanh", "mean",
                                                 "mse")[1]
    assert abs(float(trace_sq) - float((H * H).sum())) <= float(error) + 1e-13 * float((H * H).sum())
    narrow = torch.ops.torch_ws._ws_bounds_from_traces(H.trace(), (H * H).sum(), H.shape[0])
    wide = torch.ops.torch_ws._ws_bounds_from_traces(H.trace(), (H * H).sum(), H.shape[0], None,
                                                    1e-6, 1e-6)
    for a, b, outward in zip(narrow, wide, (1, -1, -1, 1, 1)):
        assert outward * (float(b) - float(a)) > 0


def test_many_logits_take_the_gram_route_for_the_gauss_newton_part():
    """Above (N·C)² = 2²⁶ tr(G²) comes from Grams of per-sample B_k'ᵀ S B_k instead of the dual
    matrix (memory N·H², not (N·C)²); checked on one hidden layer against hessian_traces."""
    x, target, (w1, w2), (b1, b2) = make_problem([6], HEADS[1], "all", seed=3, n=2800)
    deep = torch_ws.deep_hessian_traces(x, target, [w1, w2], [b1, b2], "tanh", "mean",
                                        "cross_entropy")
    one = torch_ws.hessian_traces(x, target, w1, b1, w2, b2, "tanh", "mean", "cross_entropy")
    for a, b in zip(deep, one):
        assert float(a) == pytest.approx(float(b), rel=1e-11)


def test_hsr_regularizer_takes_a_deep_network(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5),
                              torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    reg = torch_ws.HSRRegularizer(net, loss="cross_entropy")
    assert "hidden=[6, 5]" in repr(reg)
    value = reg(x, y)
    expected = torch_ws.deep_ws_bounds(x, y, [m.weight for m in net[::2]],
                                       [m.bias for m in net[::2]], "tanh", "mean", "cross_entropy")
    assert float(value) == float(expected.lambda_max_upper)
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert len(list(reg.parameters())) == 0  # the model's layers are not re-registered
    torch.save(reg, tmp_path / "reg.pt")
    loaded = torch.load(tmp_path / "reg.pt")  # weights_only=True, the default
    assert float(loaded(x, y)) == float(value)
    with pytest.raises(ValueError, match=r"several hidden layers bound='ws' \(also with "
                                         r"global_batch\) or 'interval' is implemented, got "
                                         r"bound='spectral'"):
        torch_ws.HSRRegularizer(net, loss="cross_entropy", bound="spectral")
    with pytest.raises(ValueError, match="global_batch=True is implemented for bound='ws'"):
        torch_ws.HSRRegularizer(net, loss="cross_entropy", bound="interval", global_batch=True)
    # global_batch with the WS bound is built; calling it needs a process group
    # (tests/test_dataset.py runs it under DistributedDataParallel).
    with pytest.raises(RuntimeError, match="needs torch.distributed to be initialized"):
        torch_ws.HSRRegularizer(net, loss="cross_entropy", global_batch=True)(x, y)


def test_non_finite_input_gives_nan():
    x, target, weights, biases = make_problem([4, 3], HEADS[1], "all", seed=4)
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[0, 0] = bad
        traces = torch_ws.deep_hessian_traces(x_bad, target, weights, biases, "tanh", "mean",
                                              "cross_entropy")
        bounds = torch_ws.deep_ws_bounds(x_bad, target, weights, biases, "tanh", "mean",
                                         "cross_entropy")
        assert all(torch.isnan(t) for t in traces)
        assert torch.isnan(bounds.lambda_max_upper) and torch.isnan(bounds.lambda_min_lower)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("head", [HEADS[1], HEADS[0]], ids=["cross_entropy", "bce"])
def test_bounds_hold_at_saturation(head, dtype):
    """The WS bounds and the certified interval with a saturated softmax or output sigmoid
    (last layer × 30) and saturated hidden units (first layer × 8), against the 100-digit oracle (tests/extended_precision.py): torch.func.hessian
    in float64 is no truth there."""
    import extended_precision

    x, target, weights, biases = make_problem([4, 3], head, "all", seed=30, n=2)
    weights = [weights[0] * 8, weights[1], weights[2] * 30]
    x, target, weights, biases = [t.to(dtype) if t.is_floating_point() else t
                                  for t in [x, target]] + [[w.to(dtype) for w in weights],
                                                           [b.to(dtype) for b in biases]]
    wide = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    H = extended_precision.deep_hessian(wide(x), wide(target), [wide(w) for w in weights],
                                        [wide(b) for b in biases], "tanh", "mean", head[0])
    eigenvalues = torch.linalg.eigvalsh(H)
    slack = 1e-14 * float(eigenvalues.abs().max())
    bounds = torch_ws.deep_ws_bounds(x, target, weights, biases, "tanh", "mean", head[0])
    assert float(bounds.lambda_max_upper) >= float(eigenvalues[-1]) - slack
    assert float(bounds.lambda_max_lower) <= float(eigenvalues[-1]) + slack
    assert float(bounds.lambda_min_lower) <= float(eigenvalues[0]) + slack
    assert float(bounds.lambda_min_upper) >= float(eigenvalues[0]) - slack
    # The certified interval (docs/math.md §12.6), both ends, on the same oracle.
    top = torch_ws.deep_lambda_max_interval(x, target, weights, biases, "tanh", "mean", head[0])
    bottom = torch_ws.deep_lambda_min_interval(x, target, weights, biases, "tanh", "mean", head[0])
    assert float(top.lower) <= float(eigenvalues[-1]) + slack
    assert float(top.upper) >= float(eigenvalues[-1]) - slack
    assert float(bottom.lower) <= float(eigenvalues[0]) + slack
    assert float(bottom.upper) >= float(eigenvalues[0]) - slack
    # With 2 steps both ends come from the assembled Hessian (§11.6): on the same oracle.
    for function, value in ((torch_ws.deep_lambda_max_interval, eigenvalues[-1]),
                            (torch_ws.deep_lambda_min_interval, eigenvalues[0])):
        interval = function(x, target, weights, biases, "tanh", "mean", head[0], steps=2)
        assert interval.source == "assembled_hessian"
        assert float(interval.lower) <= float(value) + slack
        assert float(interval.upper) >= float(value) - slack
    if dtype == torch.float64:
        trace, trace_sq = torch_ws.deep_hessian_traces(x, target, weights, biases, "tanh",
                                                       "mean", head[0])
        assert abs(float(trace) - float(H.trace())) <= 1e-11 * float(H.diagonal().abs().sum())
        assert float(trace_sq) == pytest.approx(float((H * H).sum()), rel=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_bounds_hold_with_repeated_eigenvalues(dtype):
    """x = 0 makes every first-layer weight's row and column of H zero: 0 is an eigenvalue of
    multiplicity ≥ 12, and the bounds and the certified interval must still bracket the
    spectrum."""
    x, target, weights, biases = make_problem([4, 3], HEADS[3], "all", seed=31, dtype=dtype)
    x = torch.zeros_like(x)
    wide = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
    H = explicit_hessian(wide(x), wide(target), [wide(w) for w in weights],
                         [wide(b) for b in biases], "tanh", "mean", "mse")
    eigenvalues = torch.linalg.eigvalsh(H)
    assert int((eigenvalues.abs() < 1e-12).sum()) >= 12
    bounds = torch_ws.deep_ws_bounds(x, target, weights, biases, "tanh", "mean", "mse")
    assert float(bounds.lambda_max_lower) <= float(eigenvalues[-1]) <= float(bounds.lambda_max_upper)
    assert float(bounds.lambda_min_lower) <= float(eigenvalues[0]) <= float(bounds.lambda_min_upper)
    assert float(eigenvalues[-1] - eigenvalues[0]) <= float(bounds.spread_upper)
    # The certified interval (docs/math.md §12.6) with the repeated zero in its Krylov space;
    # with 2 steps both ends come from the assembled Hessian (§11.6).
    for steps in (2, 8, 40):
        top = torch_ws.deep_lambda_max_interval(x, target, weights, biases, "tanh", "mean", "mse",
                                                steps=steps)
        bottom = torch_ws.deep_lambda_min_interval(x, target, weights, biases, "tanh", "mean",
                                                   "mse", steps=steps)
        assert float(top.lower) <= float(eigenvalues[-1]) <= float(top.upper)
        assert float(bottom.lower) <= float(eigenvalues[0]) <= float(bottom.upper)
        if steps == 2:
            assert top.source == bottom.source == "assembled_hessian"
