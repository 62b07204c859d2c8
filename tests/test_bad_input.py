"""Every bad input raises an exception whose message says what was expected and what arrived,
through the Python wrapper and through torch.ops directly (the checks live in C++)."""
import pytest
import torch
from testing import make_problem

import torch_ws


def good():
    p = make_problem(n=6, d=3, h=4)
    return dict(x=p.x, target=p.target, w1=p.w1, b1=p.b1, w2=p.w2, b2=p.b2,
                activation="tanh", reduction="mean")


def with_(**changes):
    args = good()
    args.update(changes)
    return args


f64 = torch.float64
CASES = {
    "x rank": (lambda: with_(x=torch.randn(6, 3, 1, dtype=f64)), r"expected x of shape \(N, D\), got a 3-d tensor"),
    "w1 rank": (lambda: with_(w1=torch.randn(12, dtype=f64)), r"expected w1 of shape \(H, D\).*got a 1-d"),
    "w2 rank": (lambda: with_(w2=torch.randn(4, dtype=f64)), r"expected w2 of shape \(C, H\).*got a 1-d"),
    "x/w1 width": (lambda: with_(w1=torch.randn(4, 5, dtype=f64)), r"w1 has 5 input columns but x has D = 3"),
    "b1 width": (lambda: with_(b1=torch.randn(5, dtype=f64)), r"expected b1 of shape \(H,\) = \[4\], got shape \[5\]"),
    "w2 width": (lambda: with_(w2=torch.randn(1, 5, dtype=f64)), r"w2 has 5 columns but w1 has H = 4"),
    "b2 width": (lambda: with_(b2=torch.randn(2, dtype=f64)), r"expected b2 of shape \(C,\) with C the rows of w2 = \[1\], got shape \[2\]"),
    "target length": (lambda: with_(target=torch.zeros(5, dtype=f64)), r"bce \(BCEWithLogitsLoss\) expects targets probabilities in \[0, 1\] of shape \(N,\) or \(N, 1\) with N = 6; got target of shape \[5\]"),
    "target rank": (lambda: with_(target=torch.zeros(6, 2, dtype=f64)), r"expects targets .* of shape \(N,\) or \(N, 1\) .* got target of shape \[6, 2\]"),
    "two output rows": (lambda: with_(w2=torch.randn(2, 4, dtype=f64)), r"loss 'bce' \(BCEWithLogitsLoss\) expects w2 with exactly one output row .* got w2 of shape \[2, 4\]"),
    "unknown activation": (lambda: with_(activation="elu"), r"unknown activation 'elu'; expected one of: linear, sigmoid, tanh, softplus, gelu, silu, gelu_tanh, relu, leaky_relu"),
    "unknown reduction": (lambda: with_(reduction="max"), r"unknown reduction 'max'; expected one of: mean, sum"),
    "mixed dtypes": (lambda: with_(w2=torch.randn(1, 4, dtype=torch.float32)), r"one dtype; x is Double but w2 is Float"),
    "integer x": (lambda: with_(x=torch.ones(6, 3, dtype=torch.int64)), r"expected x to be float32 or float64 .*, got Long"),
    "integer target": (lambda: with_(target=torch.ones(6, dtype=torch.int64)), r"got target of dtype Long where x is Double"),
    # float16 x with float64 weights: mixed precisions (uniform float16 inputs are computed in
    # float32, tests/test_autocast.py).
    "half": (lambda: with_(x=torch.ones(6, 3, dtype=torch.float16)), r"expected x to be float32 or float64 \(bfloat16 and float16 inputs are computed in float32 when every floating input has that one dtype\), got Half"),
    "empty batch": (lambda: with_(x=torch.zeros(0, 3, dtype=f64), target=torch.zeros(0, dtype=f64)), r"non-empty batch \(N >= 1\), got x of shape \[0, 3\]"),
    "zero hidden": (lambda: with_(w1=torch.zeros(0, 3, dtype=f64), b1=None, w2=torch.zeros(1, 0, dtype=f64)), r"at least one hidden unit"),
    "target above 1": (lambda: with_(target=torch.tensor([0, 1, 2, 0, 1, 0], dtype=f64)), r"targets in \[0, 1\].*got values in \[0, 2\]"),
    "target below 0": (lambda: with_(target=torch.tensor([0, 1, -1, 0, 1, 0], dtype=f64)), r"targets in \[0, 1\].*got values in \[-1, 1\]"),
    "target requires grad": (lambda: with_(target=torch.zeros(6, dtype=f64, requires_grad=True)), r"target requires grad"),
    # The other losses (docs/math.md §8): targets, widths and names that do not fit them.
    "unknown loss": (lambda: with_(loss="hinge"), r"unknown loss 'hinge'; expected one of: bce, cross_entropy, mse"),
    "cross-entropy on one logit": (lambda: with_(loss="cross_entropy", target=torch.zeros(6, dtype=torch.int64)), r"loss 'cross_entropy' \(CrossEntropyLoss\) expects w2 with at least 2 output rows .* got w2 of shape \[1, 4\]"),
    "class index out of range": (lambda: with_(loss="cross_entropy", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(3, dtype=f64), target=torch.tensor([0, 1, 2, 3, 0, 1])), r"expected targets to be class indices in \[0, 3\) for C = 3 outputs, got indices in \[0, 3\]"),
    "negative class index": (lambda: with_(loss="cross_entropy", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(3, dtype=f64), target=torch.tensor([0, -1, 2, 1, 0, 1])), r"class indices in \[0, 3\).*got indices in \[-1, 2\]"),
    "class indices of the wrong shape": (lambda: with_(loss="cross_entropy", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(3, dtype=f64), target=torch.zeros(6, 1, dtype=torch.int64)), r"cross_entropy \(CrossEntropyLoss\) expects targets class indices \(N,\) int64 .* N = 6, C = 3; got int64 target of shape \[6, 1\]"),
    "negative probabilities": (lambda: with_(loss="cross_entropy", w2=torch.randn(2, 4, dtype=f64), b2=torch.randn(2, dtype=f64), target=torch.tensor([[1.5, -0.5]] * 6, dtype=f64)), r"expected targets in \[0, 1\] \(probabilities\), got values in \[-0.5, 1.5\]"),
    "probabilities of the wrong width": (lambda: with_(loss="cross_entropy", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(3, dtype=f64), target=torch.full((6, 2), 0.5, dtype=f64)), r"N = 6, C = 3; got target of shape \[6, 2\]"),
    "integer probabilities": (lambda: with_(loss="cross_entropy", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(3, dtype=f64), target=torch.zeros(6, 3, dtype=torch.int32)), r"got target of dtype Int where x is Double \(class indices are int64\)"),
    "C mismatch between w2 and b2": (lambda: with_(loss="cross_entropy", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(2, dtype=f64), target=torch.zeros(6, dtype=torch.int64)), r"expected b2 of shape \(C,\) with C the rows of w2 = \[3\], got shape \[2\]"),
    "mse target of the wrong width": (lambda: with_(loss="mse", w2=torch.randn(3, 4, dtype=f64), b2=torch.randn(3, dtype=f64), target=torch.zeros(6, dtype=f64)), r"mse \(MSELoss\) expects targets real values \(N, C\) \(or \(N,\) when C = 1\) with N = 6, C = 3; got target of shape \[6\]"),
    "mse integer target": (lambda: with_(loss="mse", target=torch.zeros(6, dtype=torch.int64)), r"got target of dtype Long where x is Double"),
    "mixed devices": (lambda: with_(w1=torch.randn(4, 3, dtype=f64, device="meta")), r"one device; x is on cpu but w1 is on meta"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", ["python", "torch.ops"])
def test_bad_input_raises_a_clear_error(case, entry):
    make_args, message = CASES[case]
    args = make_args()
    fn = torch_ws.ws_bound if entry == "python" else torch.ops.torch_ws.ws_bound
    with pytest.raises(RuntimeError, match=message):
        fn(**args)
    # The traces op shares the checks.
    fn = torch_ws.hessian_traces if entry == "python" else torch.ops.torch_ws.hessian_traces
    with pytest.raises(RuntimeError, match=message):
        fn(**args)


@pytest.mark.parametrize("option", ["activation", "reduction", "loss"])
@pytest.mark.parametrize("fn", [torch_ws.hessian_traces, torch_ws.ws_bound, torch_ws.ws_bounds])
def test_string_options_must_be_str(fn, option):
    """bytes were decoded silently by PyTorch's argument parser: b"tanh" worked as "tanh"."""
    args = good()
    args[option] = {"activation": b"tanh", "reduction": b"mean", "loss": b"bce"}[option]
    with pytest.raises(TypeError, match=f"{option} must be a str, got bytes b'"):
        fn(**args)


@pytest.mark.parametrize("num_samples", [0, -5])
def test_tile_size_op_refuses_a_nonpositive_batch(num_samples):
    with pytest.raises(RuntimeError, match=f"torch_ws._tile_size: expected a number of samples "
                                           f">= 1, got {num_samples}"):
        torch.ops.torch_ws._tile_size(num_samples)


def test_regularizer_refuses_a_target_that_requires_grad():
    """As the op does, rather than detaching it silently."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    reg = torch_ws.HSRRegularizer(model)
    target = torch.rand(6, requires_grad=True)
    with pytest.raises(ValueError, match="target requires grad, but the bound is not "
                                         "differentiable in the labels; pass target.detach()"):
        reg(torch.randn(6, 3), target)
    assert torch.isfinite(reg(torch.randn(6, 3), target.detach()))


def test_engine_op_refuses_a_missing_tensor():
    """_engine read None as an empty tensor and answered with its shape ([0])."""
    with pytest.raises(RuntimeError, match="_engine: expected tensors x \\(N, D\\) and w1 \\(H, D\\), "
                                           "got a tensor and None"):
        torch.ops.torch_ws._engine(torch.randn(6, 3), None, True, True)


def _backward_buffers():
    shapes = [(6, 3), (4, 3), (4,), (1, 4), (1,)]  # x, w1, b1, w2, b2
    return [torch.randn(s, dtype=f64) for s in shapes], [torch.randn(s, dtype=f64) for s in shapes]


@pytest.mark.parametrize("case", ["broadcast row", "dtype", "four gradients", "upstream shape"])
def test_internal_backward_op_validates_its_buffers(case):
    """_traces_backward is reachable through torch.ops: a buffer of one row where the other list
    has six (which broadcasting would accept), a dtype that differs between the lists, a list
    of the wrong length or a non-scalar upstream gradient each raise, naming what arrived."""
    first, second = _backward_buffers()
    upstream = [torch.tensor(1.0, dtype=f64), torch.tensor(2.0, dtype=f64)]
    if case == "broadcast row":
        second[0] = torch.randn(1, 3, dtype=f64)
        message = r"gradient 0 has shape \[6, 3\] \(Double\) in one list and \[1, 3\] \(Double\)"
    elif case == "dtype":
        second[1] = second[1].float()
        message = r"gradient 1 has shape \[4, 3\] \(Double\) in one list and \[4, 3\] \(Float\)"
    elif case == "four gradients":
        first = first[:4]
        message = r"expected 5 gradients \(x, w1, b1, w2, b2\) in each list, got 4 and 5"
    else:
        upstream[0] = torch.ones(2, dtype=f64)
        message = r"expected 0-dim upstream gradients, got shapes \[2\] and \[\]"
    with pytest.raises(RuntimeError, match=message):
        torch.ops.torch_ws._traces_backward(*upstream, first, second)
