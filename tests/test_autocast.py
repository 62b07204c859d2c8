"""torch.autocast: the ops run in float32 (lower-precision inputs cast up, float64 left alone), so
a mixed-precision training step gets the same bound as a float32 one, and gradients reach
bfloat16/float16 parameters in their own dtype."""
import copy

import pytest
import torch
from torch import nn

import torch_ws

LOW = [torch.bfloat16, torch.float16]


def model_and_data(seed=0, loss="bce", c=1):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, c))
    x = torch.randn(9, 3)
    target = (torch.rand(9) > 0.5).float() if loss == "bce" else torch.randint(0, c, (9,))
    return model, x, target


def params(model):
    return model[0].weight, model[0].bias, model[2].weight, model[2].bias


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("loss, c", [("bce", 1), ("cross_entropy", 3)])
def test_float32_model_under_autocast_matches_float32(dtype, loss, c):
    model, x, target = model_and_data(loss=loss, c=c)
    expected = torch_ws.ws_bound(x, target, *params(model), loss=loss)
    expected_grads = torch.autograd.grad(expected, params(model))
    with torch.autocast("cpu", dtype=dtype):
        bound = torch_ws.ws_bound(x, target, *params(model), loss=loss)
        traces = torch_ws.hessian_traces(x, target, *params(model), loss=loss)
    assert bound.dtype == torch.float32 and all(t.dtype == torch.float32 for t in traces)
    assert torch.equal(bound, expected)
    for g, e in zip(torch.autograd.grad(bound, params(model)), expected_grads):
        assert torch.equal(g, e)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_parameters_under_autocast(dtype):
    """Parameters stored in bfloat16/float16: the op computes in float32 on their exact values,
    and their gradients arrive in their dtype (the float32 gradient, rounded)."""
    model, x, target = model_and_data()
    low = model.to(dtype)
    x = x.to(dtype)
    up = [p.detach().float().requires_grad_() for p in params(low)]
    expected = torch_ws.ws_bound(x.float(), target, *up)
    expected_grads = torch.autograd.grad(expected, up)
    with torch.autocast("cpu", dtype=dtype):
        bound = torch_ws.ws_bound(x, target, *params(low))
    assert bound.dtype == torch.float32
    assert torch.equal(bound, expected)
    grads = torch.autograd.grad(bound, params(low))
    for g, e in zip(grads, expected_grads):
        assert g.dtype == dtype
        assert torch.equal(g, e.to(dtype))


def test_float64_stays_float64_under_autocast():
    model, x, target = model_and_data()
    model = model.double()
    expected = torch_ws.ws_bound(x.double(), target.double(), *params(model))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bound = torch_ws.ws_bound(x.double(), target.double(), *params(model))
    assert bound.dtype == torch.float64 and torch.equal(bound, expected)


def test_regularizer_in_a_mixed_precision_step():
    """The failure the issue reports: HSRRegularizer under autocast raised "addmv input tensors
    must have the same dtype"."""
    model, x, target = model_and_data()
    reg = torch_ws.HSRRegularizer(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), target)
        total = loss + 0.1 * reg(x, target)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_inputs_without_autocast(dtype):
    """bfloat16/float16 inputs (no autocast) are computed in float32 on their exact values and
    returned in their dtype: the float32 bound rounded up (a bound stays a bound), within the
    dtype's precision of the float64 truth, with gradients in the input dtype."""
    model, x, target = model_and_data()
    low = model.to(dtype)
    x, target = x.to(dtype), target.to(dtype)
    up = [p.detach().float().requires_grad_() for p in params(low)]
    expected = torch_ws.ws_bound(x.float(), target.float(), *up)
    truth = torch_ws.ws_bound(x.double(), target.double(), *[p.detach().double() for p in up])
    bound = torch_ws.ws_bound(x, target, *params(low))
    assert bound.dtype == dtype
    below = torch.nextafter(bound.detach(), torch.tensor(-float("inf"), dtype=dtype))
    assert float(below) < float(expected) <= float(bound)  # the next value up
    assert abs(float(bound) - float(truth)) <= 2 * torch.finfo(dtype).eps * abs(float(truth))
    traces = torch_ws.hessian_traces(x, target, *params(low))
    assert all(t.dtype == dtype for t in traces)
    grads = torch.autograd.grad(bound, params(low))
    for g, e in zip(grads, torch.autograd.grad(expected, up)):
        assert g.dtype == dtype
        assert torch.equal(g, e.to(dtype))


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_inputs_under_torch_func(dtype):
    """Under torch.func.grad the traces and the WS bound take bfloat16/float16 inputs as the
    eager call does (they used to be refused there): the same value, rounded up for the bound,
    and the same gradient, in the inputs' dtype."""
    model, x, target = model_and_data()
    x, target, weights = x.to(dtype), target.to(dtype), params(model.to(dtype))

    def bound(*w):
        return torch_ws.ws_bound(x, target, *w)

    def trace_sq(*w):
        return torch_ws.hessian_traces(x, target, *w)[1]

    for f in (bound, trace_sq):
        leaves = [w.detach().requires_grad_() for w in weights]
        eager = f(*leaves)
        eager_grads = torch.autograd.grad(eager, leaves)
        grads, value = torch.func.grad_and_value(f, argnums=tuple(range(len(weights))))(
            *[w.detach() for w in weights])
        assert value.dtype == dtype and torch.equal(value, eager.detach())
        for g, e in zip(grads, eager_grads):
            assert g.dtype == dtype and torch.equal(g, e)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_inputs_under_inference_mode(dtype):
    """torch.inference_mode() skips the Autograd key, where the policy above first applies: the
    backend kernels apply it too, so every public op gives the same numbers as without it."""
    model, x, target = model_and_data()
    low = model.to(dtype)
    x, target = x.to(dtype), target.to(dtype)
    p = [t.detach() for t in params(low)]
    batched = [t.unsqueeze(0) for t in p]
    calls = [lambda: torch_ws.ws_bound(x, target, *p),
             lambda: torch_ws.hessian_traces(x, target, *p),
             lambda: torch_ws.spectral_bound(x, target, *p),
             lambda: torch_ws.ws_bound_batched(x, target, *batched)]
    for call in calls:
        expected = call()
        with torch.inference_mode():
            got = call()
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and torch.equal(g, e)
        assert got[0].dtype == dtype


def test_mixed_low_and_full_precision_is_still_refused():
    model, x, target = model_and_data()
    w1, b1, w2, b2 = params(model)
    with pytest.raises(RuntimeError, match=r"expected x to be float32 or float64 \(bfloat16 and "
                                           r"float16 inputs are computed in float32 when every "
                                           r"floating input has that one dtype\), got BFloat16"):
        torch_ws.ws_bound(x.bfloat16(), target, w1, b1, w2, b2)


def deep_model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    return model, torch.randn(9, 3), torch.randint(0, 3, (9,))


@pytest.mark.parametrize("dtype", LOW)
def test_hessian_vector_products_under_autocast_are_the_float32_ones(dtype):
    """Every matrix product inside an op would be autocast to the lower precision: the products
    came back float32 with bfloat16's error (0.4% of the largest entry) before every public op
    ran below the autocast key. One and several hidden layers."""
    model, x, target = model_and_data(loss="cross_entropy", c=3)
    args = (x, target, *params(model))
    vectors = torch.randn(2, torch_ws.num_params(*params(model)))
    expected = torch_ws.hessian_vector_products(*args, vectors, loss="cross_entropy")
    with torch.autocast("cpu", dtype=dtype):
        products = torch_ws.hessian_vector_products(*args, vectors, loss="cross_entropy")
    assert products.dtype == torch.float32 and torch.equal(products, expected)
    deep, x, target = deep_model_and_data()
    spec = torch_ws.DeepMlpSpec.from_module(deep, loss="cross_entropy")
    x, target, weights, biases, *options = spec.op_args(x, target)
    vectors = torch.randn(2, spec.num_params)
    expected = torch_ws.deep_hessian_vector_products(x, target, weights, biases, vectors, *options)
    with torch.autocast("cpu", dtype=dtype):
        products = torch_ws.deep_hessian_vector_products(x, target, weights, biases, vectors,
                                                         *options)
    assert products.dtype == torch.float32 and torch.equal(products, expected)


@pytest.mark.parametrize("dtype", LOW)
def test_deep_low_precision_parameters_under_autocast(dtype):
    """As the one-hidden-layer ops: a float32 result on the exact values (not the low-precision
    policy's result in the parameters' dtype), gradients in the parameters' dtype."""
    deep, x, target = deep_model_and_data()
    low = deep.to(dtype)
    up = torch_ws.DeepMlpSpec.from_module(copy.deepcopy(low).float(), loss="cross_entropy")
    expected = torch_ws.deep_ws_bounds(*up.op_args(x.to(dtype).float(), target))
    spec = torch_ws.DeepMlpSpec.from_module(low, loss="cross_entropy")
    with torch.autocast("cpu", dtype=dtype):
        bounds = torch_ws.deep_ws_bounds(*spec.op_args(x.to(dtype), target))
        interval = torch_ws.deep_lambda_max_interval(*spec.op_args(x.to(dtype), target))
    assert bounds.lambda_max_upper.dtype == torch.float32 and interval.upper.dtype == torch.float32
    torch.testing.assert_close(bounds.lambda_max_upper, expected.lambda_max_upper, rtol=1e-6,
                               atol=0)
    grads = torch.autograd.grad(bounds.lambda_max_upper + interval.upper, spec.leaves)
    assert all(g.dtype == dtype and torch.isfinite(g.float()).all() for g in grads)
