"""The certified eigenvalue interval and the closed-form Hessian-vector products (docs/math.md
§11) against independent truths: autograd's double-backward HVP of the loss as PyTorch computes
it, and eigvalsh of the explicit Hessian from torch.func.hessian (float64, tests/reference.py)."""
import itertools

import pytest
import torch
from torch import nn
from testing import (
    ACTIVATIONS, BIAS_CONFIGS, REDUCTIONS, bce_dual_rows, explicit_ends, make_head_problem,
    residual_majorant_by_formula,
)

import reference
import torch_ws

# (loss, C, kind of target): every head and target form.
HEADS = (("bce", 1, "probabilities"), ("cross_entropy", 3, "indices"),
         ("cross_entropy", 3, "probabilities"), ("mse", 2, "values"), ("mse", 1, "values"))


def head_problem(loss, c, kind, **kwargs):
    x, target, w1, b1, w2, b2 = make_head_problem(loss, c, kind, **kwargs)
    if loss == "bce":  # make_head_problem draws (N, C) probabilities: one column, as (N,)
        target = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64).to(x.dtype)
    if loss == "mse" and c == 1:
        target = target.reshape(-1)
    return x, target, w1, b1, w2, b2


def autograd_hvp(args, vectors, activation, reduction, loss):
    """H·v by autograd's double backward through the loss as PyTorch computes it (float64)."""
    x, target, w1, b1, w2, b2 = args
    theta = reference.flatten_params(w1, b1, w2, b2).detach().requires_grad_(True)
    value = reference.mlp_loss(x, target, *reference.unflatten_params(theta, w1, b1, w2, b2),
                               activation, reduction, loss)
    (gradient,) = torch.autograd.grad(value, theta, create_graph=True)
    return torch.stack([torch.autograd.grad(gradient @ v, theta, retain_graph=True)[0]
                        for v in vectors])


def spectrum(args, activation, reduction, loss):
    x, target = args[0].double(), args[1].double() if args[1].is_floating_point() else args[1]
    params = [p.double() if p is not None else None for p in args[2:]]
    return torch.linalg.eigvalsh(
        reference.explicit_hessian(x, target, *params, activation, reduction, loss).detach())


# Every activation with every head; the bias setting and reduction rotate through the cases.
CASES = [(head, activation, BIAS_CONFIGS[i % 4], REDUCTIONS[i % 2])
         for i, (head, activation) in enumerate(itertools.product(HEADS, ACTIVATIONS))]


@pytest.mark.parametrize("head,activation,bias,reduction", CASES)
def test_products_match_autograd(head, activation, bias, reduction):
    args = head_problem(*head, n=9, d=3, h=4, bias=bias, seed=3)
    n = torch_ws.num_params(*args[2:])
    vectors = torch.randn(3, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = autograd_hvp(args, vectors, activation, reduction, head[0])
    actual = torch_ws.hessian_vector_products(*args, vectors, activation, reduction, head[0])
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    one = torch_ws.hessian_vector_products(*args, vectors[1], activation, reduction, head[0])
    torch.testing.assert_close(one, expected[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", BIAS_CONFIGS)
def test_one_logit_products_in_blocks_of_samples(bias):
    """One logit on the CPU takes a fused pass over the samples in fixed blocks (N = 150: blocks of
    2 and 3 samples): against autograd in float64, float32 against float64, and bit-identical
    whatever the thread count."""
    args = head_problem("bce", 1, "probabilities", n=150, d=4, h=7, bias=bias, seed=5)
    n = torch_ws.num_params(*args[2:])
    vectors = torch.randn(5, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = autograd_hvp(args, vectors, "tanh", "sum", "bce")
    actual = torch_ws.hessian_vector_products(*args, vectors, "tanh", "sum", "bce")
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    args32 = tuple(a.float() if a is not None else None for a in args)
    single = torch_ws.hessian_vector_products(*args32, vectors.float(), "tanh", "sum", "bce")
    torch.testing.assert_close(single.double(), expected, rtol=1e-4, atol=1e-5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = torch_ws.hessian_vector_products(*args, vectors, "tanh", "sum", "bce")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, actual)


@pytest.mark.parametrize("head", [("bce", 1, "probabilities"), ("cross_entropy", 4, "indices")])
def test_products_in_runs_match_autograd(head):
    """N·H large enough that the directions go through in runs of one (core/ritz_certificate.cpp
    in_runs; 2¹⁸ numbers a run for one logit, 2¹⁹ for C logits): the fused one-logit pass and the
    in-place steps of C logits, against autograd's double-backward HVP."""
    args = head_problem(*head, n=3000, d=3, h=90, bias="both", seed=7)
    n = torch_ws.num_params(*args[2:])
    vectors = torch.randn(3, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = autograd_hvp(args, vectors, "tanh", "mean", head[0])
    actual = torch_ws.hessian_vector_products(*args, vectors, "tanh", "mean", head[0])
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_products_reuse_the_threads_scratch_across_calls():
    """The products' scratch arrays are kept by the thread across calls (hessian_products.cpp
    scratch_for): calls of another size, dtype and head in turn, then the first again, each against
    autograd's double-backward HVP (a stale or mistyped array would give wrong numbers or fail)."""
    calls = [(("bce", 1, "labels"), 40, torch.float64), (("cross_entropy", 4, "indices"), 300,
             torch.float64), (("bce", 1, "labels"), 200, torch.float32),
             (("bce", 1, "labels"), 40, torch.float64)]
    for head, n, dtype in calls:
        args = head_problem(*head, n=n, d=4, h=7, bias="both", seed=n)
        vectors = torch.randn(5, torch_ws.num_params(*args[2:]), dtype=torch.float64,
                              generator=torch.Generator().manual_seed(n))
        expected = autograd_hvp(args, vectors, "tanh", "mean", head[0])
        cast = tuple(a.to(dtype) if a is not None and a.is_floating_point() else a for a in args)
        actual = torch_ws.hessian_vector_products(*cast, vectors.to(dtype), "tanh", "mean", head[0])
        assert actual.dtype == dtype
        tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else \
            {"rtol": 1e-4, "atol": 1e-5}
        torch.testing.assert_close(actual.double(), expected, **tolerance)


def test_products_float32():
    args = head_problem("cross_entropy", 4, "indices", n=30, d=5, h=6, seed=1)
    args32 = tuple(a.float() if a is not None and a.is_floating_point() else a for a in args)
    vectors = torch.randn(2, torch_ws.num_params(*args[2:]), dtype=torch.float64)
    expected = torch_ws.hessian_vector_products(*args, vectors, "gelu", "mean", "cross_entropy")
    actual = torch_ws.hessian_vector_products(*args32, vectors.float(), "gelu", "mean",
                                              "cross_entropy")
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("head,activation,bias,reduction", CASES)
def test_interval_contains_extreme_eigenvalues(head, activation, bias, reduction, dtype):
    args = head_problem(*head, n=12, d=3, h=5, bias=bias, seed=5, dtype=dtype)
    eigenvalues = spectrum(args, activation, reduction, head[0])
    top = torch_ws.lambda_max_interval(*args, activation, reduction, head[0], steps=12)
    bottom = torch_ws.lambda_min_interval(*args, activation, reduction, head[0], steps=12)
    for interval in (top, bottom):
        assert interval.lower.dtype == dtype and interval.upper.dtype == dtype
        assert interval.source in torch_ws.INTERVAL_SOURCES
    # The float32 interval holds the float64 eigenvalue of the same float32 values.
    assert float(top.lower) <= float(eigenvalues[-1]) <= float(top.upper)
    assert float(bottom.lower) <= float(eigenvalues[0]) <= float(bottom.upper)
    # The Ritz value is a Rayleigh quotient: never more than rounding beyond λ_max.
    assert float(top.ritz_values[0]) <= float(eigenvalues[-1]) * (1 + 1e-12) + 1e-15


def test_full_basis_is_exact():
    """k ≥ n: the basis spans the space, every eigenvalue is a Ritz value, the interval closes."""
    args = head_problem("cross_entropy", 3, "indices", n=10, d=2, h=3, seed=2)
    n = torch_ws.num_params(*args[2:])
    eigenvalues = spectrum(args, "tanh", "mean", "cross_entropy")
    top = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy", steps=n + 10)
    assert top.products == n + 1 and top.ritz_values.shape == (n,)
    torch.testing.assert_close(top.ritz_values.flip(0), eigenvalues, rtol=1e-9, atol=1e-12)
    assert float(top.lower) <= float(eigenvalues[-1]) <= float(top.upper)
    assert float(top.upper - top.lower) <= 1e-9 * float(eigenvalues[-1])


@pytest.mark.parametrize("loss,c,kind", [("bce", 1, "probabilities"), ("mse", 2, "values")])
def test_one_sample(loss, c, kind):
    args = head_problem(loss, c, kind, n=1, d=3, h=4, seed=7)
    eigenvalues = spectrum(args, "tanh", "sum", loss)
    for interval, value in ((torch_ws.lambda_max_interval(*args, "tanh", "sum", loss), eigenvalues[-1]),
                            (torch_ws.lambda_min_interval(*args, "tanh", "sum", loss), eigenvalues[0])):
        assert float(interval.lower) <= float(value) <= float(interval.upper)


def test_zero_residual_and_repeated_eigenvalues():
    """e = 0 (targets equal to the outputs: H = GGN, rank ≤ N·C) and, at w = 0, an eigenvalue
    repeated H times (every hidden unit's residual block is the same)."""
    x, target, w1, b1, w2, b2 = head_problem("mse", 2, "values", n=6, d=3, h=4, seed=8)
    fitted = reference.mlp_logits(x, w1, b1, w2, b2, "tanh").detach()
    for args in ((x, fitted, w1, b1, w2, b2),
                 (x, target, torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2), b2)):
        eigenvalues = spectrum(args, "tanh", "mean", "mse")
        # eigvalsh's own rounding: the zero eigenvalues of the Gauss-Newton matrix come out ±1e-16.
        slack = 1e-12 * float(eigenvalues.abs().max())
        # 8 steps; and 2, where the assembled Hessian (docs/math.md §11.6) gives most ends.
        for steps in (8, 2):
            top = torch_ws.lambda_max_interval(*args, "tanh", "mean", "mse", steps=steps)
            bottom = torch_ws.lambda_min_interval(*args, "tanh", "mean", "mse", steps=steps)
            assert float(top.lower) - slack <= float(eigenvalues[-1]) <= float(top.upper) + slack
            assert (float(bottom.lower) - slack <= float(eigenvalues[0])
                    <= float(bottom.upper) + slack)


def trained_net():
    """A one-hidden-layer tanh net fit (loss 7e-4) to 3 Gaussian classes: its top eigenvalue
    stands out of a light bulk, the case the interval closes on (docs/math.md §11.4)."""
    gen = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(3, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (400,), generator=gen)
    x = centers[y] + torch.randn(400, 10, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def test_trained_net_interval_is_tight_and_warm_start_keeps_the_guarantee():
    model, x, y = trained_net()
    args = (x, y, model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    eigenvalues = spectrum(args, "tanh", "mean", "cross_entropy")
    cold = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy", steps=32)
    assert float(cold.lower) <= float(eigenvalues[-1]) <= float(cold.upper)
    assert float(cold.upper) <= 1.01 * float(eigenvalues[-1])
    assert float(cold.lower) >= 0.999 * float(eigenvalues[-1])
    warm = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy", steps=4,
                                        start=cold.ritz_vectors)
    assert warm.products == 5
    assert float(warm.lower) <= float(eigenvalues[-1]) <= float(warm.upper)
    assert float(warm.lower) >= 0.999 * float(eigenvalues[-1])


def test_sharpness_of_a_module():
    model, x, y = trained_net()
    result = torch_ws.sharpness(model, x, y, loss=nn.CrossEntropyLoss())
    args = (x, y, model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    expected = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy")
    assert float(result.lambda_max.lower) == float(expected.lower)
    assert float(result.lambda_max.upper) == float(expected.upper)
    trace, trace_sq = torch_ws.hessian_traces(*args, "tanh", "mean", "cross_entropy")
    torch.testing.assert_close(result.trace, trace.detach())
    torch.testing.assert_close(result.trace_sq, trace_sq.detach())
    with pytest.raises(ValueError, match="sharpness expects nn.Sequential"):
        torch_ws.sharpness(model[0], x, y, loss="cross_entropy")
    # Printed, the result shows the ends and summarizes the k × n Ritz vectors.
    text = repr(result)
    assert f"lower={result.lambda_max.lower!r}" in text and "source=" in text
    shape = tuple(result.lambda_max.ritz_vectors.shape)
    assert f"ritz_vectors=<{shape} torch.float64>" in text and len(text) < 600


def test_nan_input_gives_nan_interval():
    args = list(head_problem("bce", 1, "probabilities", n=5, d=2, h=3, seed=0))
    args[0] = args[0].clone()
    args[0][1, 1] = float("nan")
    interval = torch_ws.lambda_max_interval(*args)
    assert torch.isnan(interval.lower) and torch.isnan(interval.upper)


def test_bad_input():
    args = head_problem("bce", 1, "probabilities", n=5, d=2, h=3, seed=0)
    n = torch_ws.num_params(*args[2:])
    with pytest.raises(RuntimeError, match=r"eigenvalue_interval: expected steps >= 1"):
        torch_ws.lambda_max_interval(*args, steps=0)
    with pytest.raises(RuntimeError, match=rf"expected start of shape \(n,\) or \(r, n\) with n = {n}"):
        torch_ws.lambda_max_interval(*args, start=torch.ones(n + 1, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="expected a finite, non-zero start vector"):
        torch_ws.lambda_max_interval(*args, start=torch.zeros(n, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=rf"hessian_vector_products: expected vectors of shape"):
        torch_ws.hessian_vector_products(*args, torch.ones(2, n - 1, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    args = head_problem("cross_entropy", 3, "indices", n=6, d=2, h=3, seed=0, dtype=dtype)
    n = torch_ws.num_params(*args[2:])
    torch.library.opcheck(torch.ops.torch_ws.hessian_vector_products.default,
                          args + (torch.randn(2, n, dtype=dtype), "tanh", "mean", "cross_entropy"))
    torch.library.opcheck(torch.ops.torch_ws.eigenvalue_interval.default,
                          args + ("tanh", "mean", "cross_entropy"), {"steps": 5})


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("steps", [3, 30])
@pytest.mark.parametrize("head,activation,bias", [
    (HEADS[0], "tanh", (True, True)), (HEADS[1], "gelu", (False, True)),
    (HEADS[2], "softplus", (True, False)), (HEADS[3], "relu", (True, True)),
    (HEADS[4], "silu", (False, False))])
def test_gradients_match_autograd_through_explicit_hessian(head, activation, bias, steps, largest):
    args = head_problem(*head, n=9, d=3, h=4, bias=bias, seed=3)
    args = tuple(a.detach().requires_grad_(True) if a is not None and a.is_floating_point() and i != 1
                 else a for i, a in enumerate(args))
    leaves = [a for i, a in enumerate(args) if a is not None and i != 1]
    function = torch_ws.lambda_max_interval if largest else torch_ws.lambda_min_interval
    interval = function(*args, activation, "mean", head[0], steps=steps)
    assert interval.lower.grad_fn is not None and interval.upper.grad_fn is not None
    actual = torch.autograd.grad(interval.lower + 2 * interval.upper, leaves)
    H = reference.explicit_hessian(*args, activation, "mean", head[0])
    if interval.source == "weyl":
        # Weyl's end is spectral_bound's (whose gradients tests/test_spectral.py checks).
        bound = torch_ws.spectral_bound(*args, activation, "mean", head[0])
        sign = 1 if largest else -1
        u = interval.ritz_vectors[0]
        theta = u @ (sign * H) @ u / (u @ u)
        lower, upper = (theta, bound.upper) if largest else (bound.lambda_min_lower, -theta)
    else:
        lower, upper = explicit_ends(interval, H, largest)
    expected = torch.autograd.grad(lower + 2 * upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_gradient_of_the_wolkowicz_styan_end_is_ws_bounds():
    """On a spectrum where WS is the tightest guarantee (N = 1, n = 2... : one logit, D = H = 1
    without biases), upper and its gradient are those of ws_bound."""
    x = torch.tensor([[0.7]], dtype=torch.float64)
    w1 = torch.tensor([[1.3]], dtype=torch.float64, requires_grad=True)
    w2 = torch.tensor([[-0.4]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0], dtype=torch.float64)
    interval = torch_ws.lambda_max_interval(x, target, w1, None, w2, None, steps=1)
    if interval.source != "wolkowicz_styan":
        pytest.skip(f"upper came from {interval.source}")
    bound = torch_ws.ws_bound(x, target, w1, None, w2, None)
    torch.testing.assert_close(interval.upper, bound)
    for a, e in zip(torch.autograd.grad(interval.upper, [w1, w2]),
                    torch.autograd.grad(bound, [w1, w2])):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("largest,n,steps", [(True, 20, 11), (False, 5, 9)],
                         ids=["lambda_max", "lambda_min"])
def test_gradient_of_kato_temple_by_the_trace_cap(largest, n, steps):
    """Kato-Temple with λ_2 bounded by the trace cap: the end reads tr(H²) (ν² = tr(H²) − θ² −
    Σ_{i≥3} μ_i²), whose gradient the interval takes in one weighted chain after the certificate.
    Against autograd through the explicit Hessian with the basis held fixed, x included."""
    args = head_problem("bce", 1, "probabilities", n=n, d=3, h=4, seed=0)
    args = tuple(a.detach().requires_grad_(True) if a is not None and i != 1 else a
                 for i, a in enumerate(args))
    leaves = [a for i, a in enumerate(args) if a is not None and i != 1]
    function = torch_ws.lambda_max_interval if largest else torch_ws.lambda_min_interval
    interval = function(*args, "tanh", "mean", "bce", steps=steps)
    assert interval.source == "kato_temple"
    actual = torch.autograd.grad(interval.lower + 2 * interval.upper, leaves)
    lower, upper = explicit_ends(interval, reference.explicit_hessian(*args, "tanh", "mean", "bce"),
                                 largest)
    expected = torch.autograd.grad(lower + 2 * upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_forward_mode_is_refused():
    args = head_problem("bce", 1, "probabilities", n=5, d=2, h=3, seed=0)
    with torch.autograd.forward_ad.dual_level():
        w1 = torch.autograd.forward_ad.make_dual(args[2], torch.ones_like(args[2]))
        with pytest.raises(RuntimeError, match="forward-mode AD .* is not supported"):
            torch_ws.lambda_max_interval(args[0], args[1], w1, *args[3:])


def test_regularizer_penalizes_the_interval_upper_end():
    model, x, y = trained_net()
    reg = torch_ws.HSRRegularizer(model, loss="cross_entropy", bound="interval")
    value = reg(x, y)
    args = (x, y, model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    expected = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy")
    torch.testing.assert_close(value, expected.upper)
    grads = torch.autograd.grad(value, list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    again = reg(x, y)  # warm-started from the first call's Ritz vector: the same guarantee
    eigenvalues = spectrum(args, "tanh", "mean", "cross_entropy")
    assert float(eigenvalues[-1]) <= float(again) <= 1.0001 * float(eigenvalues[-1])


def test_block_warm_start_uses_every_start_row():
    """All of the previous call's Ritz vectors as `start`: they are the first basis vectors, so
    a few products recover the certified interval; duplicated or dependent rows are replaced by
    fresh directions and the guarantee holds."""
    model, x, y = trained_net()
    args = (x, y, model[0].weight, model[0].bias, model[2].weight, model[2].bias,
            "tanh", "mean", "cross_entropy")
    eigenvalues = spectrum(args[:6], *args[6:])
    cold = torch_ws.lambda_max_interval(*args, steps=32)
    warm = torch_ws.lambda_max_interval(*args, steps=32, start=cold.ritz_vectors)
    assert warm.products == 33
    assert float(warm.lower) <= float(eigenvalues[-1]) <= float(warm.upper)
    assert float(warm.upper) <= 1.0001 * float(eigenvalues[-1])
    repeated = torch.cat([cold.ritz_vectors[:3], cold.ritz_vectors[:3]])
    again = torch_ws.lambda_max_interval(*args, steps=10, start=repeated)
    assert float(again.lower) <= float(eigenvalues[-1]) <= float(again.upper)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    """bfloat16/float16 inputs (all of one dtype): the interval of their exact values, in their
    dtype rounded outward, under inference_mode too; gradients in their dtype; products too."""
    args = head_problem("bce", 1, "probabilities", n=12, d=3, h=4, seed=2, dtype=dtype)
    eigenvalues = spectrum(args, "tanh", "mean", "bce")
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            interval = torch_ws.lambda_max_interval(*args)
        assert interval.lower.dtype == dtype and interval.upper.dtype == dtype
        assert float(interval.lower) <= float(eigenvalues[-1]) <= float(interval.upper)
    leaves = [a.detach().requires_grad_(True) for a in args[2:]]
    upper = torch_ws.lambda_max_interval(args[0], args[1], *leaves).upper
    grads = torch.autograd.grad(upper, leaves)
    assert all(g.dtype == dtype and torch.isfinite(g.float()).all() for g in grads)
    n = torch_ws.num_params(*args[2:])
    vectors = torch.randn(2, n, dtype=torch.float64)
    wide = [a.double() if a.is_floating_point() else a for a in args]
    expected = torch_ws.hessian_vector_products(*wide, vectors)
    actual = torch_ws.hessian_vector_products(*args, vectors.to(dtype))
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected, rtol=0.05, atol=0.05)


def adam_trained(x, target, student, steps, loss="bce"):
    """(x, target, w1, b1, w2, b2): the two Linear layers of `student` (tanh between, mean
    reduction) after `steps` full-batch Adam steps at learning rate 10⁻² from their
    initialization."""
    params = [p.detach().requires_grad_() for layer in student for p in (layer.weight, layer.bias)]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        reference.mlp_loss(x, target, *params, "tanh", "mean", loss).backward()
        optimizer.step()
    return (x, target, *(p.detach() for p in params))


def teacher_net(n, d, h, seed):
    """A one-logit tanh net after 300 full-batch Adam steps on a random teacher's labels (the
    benchmarks' trained nets, smaller): λ_1 and λ_2 lie close (7% apart at the benchmark's
    N = 1000), over a bulk that holds most of tr(H²), so the trace cap cannot put λ_2 below the top
    Ritz value, and Weyl's λ_2(GGN) + λ_max(R) can."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    teacher = (nn.Linear(d, h).double(), nn.Linear(h, 1).double())
    with torch.no_grad():
        logits = teacher[1](torch.tanh(teacher[0](x))).squeeze(1)
        target = (logits > logits.median()).double()
    return adam_trained(x, target, (nn.Linear(d, h).double(), nn.Linear(h, 1).double()), 300)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("size,seed,steps", [((400, 16, 16), 0, 16), ((400, 16, 16), 0, 32),
                                             ((500, 16, 24), 1, 16), ((300, 8, 16), 0, 16)])
def test_kato_temple_with_a_weyl_bound_on_the_second_eigenvalue(size, seed, steps, dtype):
    """Where the cap leaves λ_2 unresolved, λ_2(H) ≤ λ_2(GGN) + λ_max(R) (docs/math.md §11.2)
    lets Kato-Temple close the interval: source "kato_temple_weyl", both ends within 1e-8 of
    eigvalsh's λ_max (float32: within float32's rounding) and around the float64 λ_max."""
    cast = tuple(a.to(dtype) for a in teacher_net(*size, seed))
    exact = float(spectrum(cast, "tanh", "mean", "bce")[-1])  # of the inputs as given, in float64
    interval = torch_ws.lambda_max_interval(*cast, "tanh", "mean", "bce", steps=steps)
    if dtype == torch.float64:
        assert interval.source == "kato_temple_weyl"
    assert float(interval.lower) <= exact <= float(interval.upper)
    slack = 1e-8 if dtype == torch.float64 else 1e-5
    assert float(interval.upper) <= (1 + slack) * exact
    assert float(interval.lower) >= (1 - slack) * exact


def test_kato_temple_weyl_gradient_matches_autograd_through_explicit_matrices():
    """With source "kato_temple_weyl" the upper end is θ + (‖Hû‖² − θ²)/(θ − ν) with the Ritz
    vector û held fixed and ν = λ_2(GGN) + λ_max(R) (their eigenvectors held fixed: Hellmann-
    Feynman, so eigvalsh's eigenvalues have the same gradient): against autograd through the
    explicit H, GGN and R = H − GGN. (ν's term carries the factor ρ²/(θ − ν)², small here; its
    mechanism, the GGN form's gradient in a fixed vector, is tests/test_spectral.py's
    test_gradient_of_the_gauss_newton_form_in_any_fixed_vector.)"""
    args = tuple(a.requires_grad_(True) if i != 1 else a
                 for i, a in enumerate(teacher_net(400, 16, 16, 0)))
    leaves = [a for i, a in enumerate(args) if i != 1]
    interval = torch_ws.lambda_max_interval(*args, "tanh", "mean", "bce", steps=16)
    assert interval.source == "kato_temple_weyl"
    actual = torch.autograd.grad(interval.upper, leaves)
    H = reference.explicit_hessian(*args, "tanh", "mean", "bce")
    G = reference.explicit_gauss_newton(*args, "tanh", "mean", "bce")
    nu = torch.linalg.eigvalsh(G)[-2] + torch.linalg.eigvalsh(H - G)[-1]
    u = interval.ritz_vectors[0]
    theta = u @ H @ u / (u @ u)
    image = (H @ u) @ (H @ u) / (u @ u)
    upper = theta + (image - theta ** 2) / (theta - nu)
    expected = torch.autograd.grad(upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-7, atol=1e-12)


def converged_teacher_net(seed=0):
    """A one-logit tanh net of 2,100 samples (N·C above the 2048 dual rows where the interval
    computes spectral_bound's parts) trained by 3,000 full-batch Adam steps to loss ~1e-4: a top
    eigenvalue well apart from the rest, and a small residual R."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2100, 32, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    teacher = (nn.Linear(32, 8).double(), nn.Linear(8, 1).double())
    with torch.no_grad():
        target = (teacher[1](torch.tanh(teacher[0](x))).squeeze(1) > 0).double()
    return adam_trained(x, target, (nn.Linear(32, 8).double(), nn.Linear(8, 1).double()), 3000)


@pytest.fixture(scope="module")
def converged_net():
    return converged_teacher_net()


def test_kato_temple_at_scale_with_two_logits():
    """The same λ_2 bound with the cross-entropy's C = 2 logits (2,200 dual rows; the majorant's
    weights sum e's magnitude over the logits): after 8 Lanczos steps Kato-Temple closes the
    interval around eigvalsh's λ_max."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1100, 32, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    teacher = (nn.Linear(32, 8).double(), nn.Linear(8, 2).double())
    with torch.no_grad():
        target = teacher[1](torch.tanh(teacher[0](x))).argmax(1)
    args = adam_trained(x, target, (nn.Linear(32, 8).double(), nn.Linear(8, 2).double()), 3000,
                        "cross_entropy")
    exact = float(spectrum(args, "tanh", "mean", "cross_entropy")[-1])
    interval = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy", steps=8)
    assert interval.source == "kato_temple_weyl"
    assert float(interval.lower) <= exact <= float(interval.upper) <= 1.003 * exact


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("steps", [4, 5, 6])
def test_kato_temple_with_the_second_eigenvalue_bound_at_scale(converged_net, steps, dtype):
    """Above 2048 dual rows the λ_2 bound is the residual's majorant plus one Cholesky
    certificate of the deflated dual matrix (docs/math.md §11.2, "At scale"): after a few
    Lanczos steps, where the cap still leaves the interval wide, Kato-Temple closes it; both ends
    around eigvalsh's λ_max of the explicit Hessian (float32: that of the inputs as given)."""
    cast = tuple(a.to(dtype) for a in converged_net)
    exact = float(spectrum(cast, "tanh", "mean", "bce")[-1])
    interval = torch_ws.lambda_max_interval(*cast, "tanh", "mean", "bce", steps=steps)
    assert float(interval.lower) <= exact <= float(interval.upper)
    if dtype == torch.float64:
        assert interval.source == "kato_temple_weyl"
        assert float(interval.upper) <= 1.003 * exact


def test_at_scale_gradient_matches_autograd_through_explicit_matrices(converged_net):
    """The upper end θ + (‖Hû‖² − θ²)/(θ − ν) with ν = λ_max(M − c·yyᵀ) + the residual's majorant
    max_k (a_k + √(a_k² + 4σ_k²))/2 (y, c, the majorant's weights w and û held fixed, §11.4):
    against autograd through the Jacobian of the logits (torch.func.jacrev), the explicit H and
    eigvalsh, x included. ν's share of the gradient (the factor ρ²/(θ − ν)², about 10⁻⁴ here) is
    checked on its own: the gradient less that with ν held constant."""
    x, target, *weights = (a.clone() for a in converged_net)
    x.requires_grad_(True)
    leaves = [x] + [w.requires_grad_(True) for w in weights]
    interval = torch_ws.lambda_max_interval(x, target, *weights, "tanh", "mean", "bce", steps=5)
    assert interval.source == "kato_temple_weyl"
    actual = torch.autograd.grad(interval.upper, leaves)
    dual_rows = bce_dual_rows(x, target, weights)
    M = dual_rows @ dual_rows.T
    u = interval.ritz_vectors[0].detach()
    y = (dual_rows @ u).detach()
    y = y / y.norm()
    c = (y @ M @ y).detach().clamp_min(0)
    nu_ggn = torch.linalg.eigvalsh(M - c * torch.outer(y, y))[-1]
    nu = nu_ggn + residual_majorant_by_formula(x, target, *weights)
    H = reference.explicit_hessian(x, target, *weights, "tanh", "mean", "bce")
    theta = u @ H @ u / (u @ u)
    image = (H @ u) @ (H @ u) / (u @ u)
    upper = theta + (image - theta ** 2) / (theta - nu)
    expected = torch.autograd.grad(upper, leaves, retain_graph=True)
    fixed = torch.autograd.grad(theta + (image - theta ** 2) / (theta - nu.detach()), leaves)
    for ours, truth, without in zip(actual, expected, fixed):
        torch.testing.assert_close(ours, truth, rtol=1e-7, atol=1e-12)
        share = truth - without
        assert share.norm() > 1e-8 * truth.norm()
        torch.testing.assert_close(ours - without, share, rtol=1e-4, atol=1e-4 * share.norm())


def default_init_net(seed=0, d=90, h=32):
    """A one-logit tanh net at PyTorch's default initialization on a random teacher's labels,
    N = 2100, by default D = 90, H = 32: N·C above the 2048 dual rows of the exact spectral parts
    at the interval's first check, and n = 2945 (2913 without b1) with N·n² above the assembly's
    2³⁴, so after the cap (loose: a heavy bulk) only Weyl at scale is left. R's blocks cost
    H·N·D̃² = 5.6·10⁸ multiply-adds there (exact); with d=1000, h=20 (n = 20,041) 4.2·10¹⁰, above
    kExactResidualWork, so R's ends come from the majorants."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2100, d, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    teacher = (nn.Linear(d, h).double(), nn.Linear(h, 1).double())
    with torch.no_grad():
        logits = teacher[1](torch.tanh(teacher[0](x))).squeeze(1)
        target = (logits > logits.median()).double()
    student = (nn.Linear(d, h).double(), nn.Linear(h, 1).double())
    return (x, target, *(p.detach() for layer in student for p in (layer.weight, layer.bias)))


@pytest.fixture(scope="module")
def default_net():
    return default_init_net()


@pytest.fixture(scope="module")
def wide_input_net():
    return default_init_net(d=1000, h=20)


def weyl_ends_and_gradient(net):
    """λ_max's and λ_min's intervals of `net` (both must come from Weyl at scale), the arguments
    (x and the weights as leaves requiring grad), the leaves, and the gradient of λ_max's upper +
    2·λ_min's lower."""
    x, target, *weights = (a.clone() for a in net)
    leaves = [x.requires_grad_(True)] + [w.requires_grad_(True) for w in weights]
    top = torch_ws.lambda_max_interval(x, target, *weights, "tanh", "mean", "bce")
    bottom = torch_ws.lambda_min_interval(x, target, *weights, "tanh", "mean", "bce")
    assert top.source == "weyl" and bottom.source == "weyl"
    gradient = torch.autograd.grad(top.upper + 2 * bottom.lower, leaves)
    return top, bottom, (x, target, *weights), leaves, gradient


def test_weyl_after_kato_temple_fails_certifies_the_deferred_top():
    """Between 512 and 2048 dual rows the interval certifies λ_max(GGN) (a Cholesky factorization)
    only where Kato-Temple with Weyl's λ_2 leaves the interval wide (docs/math.md §11.2). A random
    net where it does, n > 4096 (no assembled Hessian): the upper end is then spectral_bound's,
    value and gradient."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(40, 128), nn.Tanh(), nn.Linear(128, 1)).double()
    x = torch.randn(600, 40, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(600) > 0.5).double()
    weights = [p.detach().requires_grad_(True) for p in net.parameters()]
    top = torch_ws.lambda_max_interval(x, target, *weights, "tanh", "mean", "bce")
    assert top.source == "weyl"
    exact = torch_ws.spectral_bound(x, target, *weights, "tanh", "mean", "bce")
    assert float(top.upper) == pytest.approx(float(exact.upper), rel=1e-12)
    leaves = [x] + weights
    for ours, truth in zip(torch.autograd.grad(top.upper, leaves),
                           torch.autograd.grad(exact.upper, leaves)):
        torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-14)


def test_weyl_at_scale_is_the_spectral_bound(default_net):
    """Above 2048 dual rows, where R's blocks are cheap, the interval's Weyl candidate is
    spectral_bound's own: `upper` of λ_max and `lower` of λ_min are its `upper` and
    `lambda_min_lower`, values and gradients (x included; spectral_bound's gradients are checked
    against autograd through the explicit matrices in tests/test_spectral.py)."""
    top, bottom, args, leaves, actual = weyl_ends_and_gradient(default_net)
    exact = torch_ws.spectral_bound(*args, "tanh", "mean", "bce")
    assert float(top.upper) == pytest.approx(float(exact.upper), rel=1e-12)
    assert float(bottom.lower) == pytest.approx(float(exact.lambda_min_lower), rel=1e-12)
    expected = torch.autograd.grad(exact.upper + 2 * exact.lambda_min_lower, leaves)
    for ours, truth in zip(actual, expected):
        torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("bias", BIAS_CONFIGS, ids=str)
def test_weyl_at_scale_gives_both_ends(wide_input_net, bias):
    """Where R's blocks cost too much the Weyl bound's R part is the majorant (docs/math.md §11.2
    "At scale"): λ_max's `upper` is λ_max(GGN) (certified) + the majorant of R, λ_min's `lower`
    minus the majorant of −R; each equal to the formula's value up to the allowances and the
    certificate of λ_max(GGN), and λ_min's `lower` at most spectral_bound's (the same majorant).
    Every bias setting (the features' column of ones and the dual image's b2 term come and go)."""
    x, target, w1, b1, w2, b2 = wide_input_net
    args = (x, target, w1, b1 if bias[0] else None, w2, b2 if bias[1] else None)
    top = torch_ws.lambda_max_interval(*args, "tanh", "mean", "bce")
    bottom = torch_ws.lambda_min_interval(*args, "tanh", "mean", "bce")
    assert top.source == "weyl" and bottom.source == "weyl"
    bound = torch_ws.spectral_bound(*args, "tanh", "mean", "bce")
    expected = bound.ggn_lambda_max + residual_majorant_by_formula(*args)
    assert float(expected) <= float(top.upper) <= float(expected) * (1 + 1e-9)
    expected = -residual_majorant_by_formula(*args, sign=-1)
    assert abs(float(bottom.lower) - float(expected)) <= 1e-9 * abs(float(expected))
    assert float(bottom.lower) <= float(bound.lambda_min_lower) * (1 - 1e-12)
    assert float(top.lower) <= float(top.upper) and float(bottom.lower) <= float(bottom.upper)


def test_weyl_at_scale_gradients_are_the_spectral_bounds(wide_input_net):
    """With the majorants, the Weyl ends' gradients (x included) are spectral_bound's, whose
    majorant gradients tests/test_spectral.py checks against autograd through the formula; the
    slow test below checks these against autograd directly."""
    _, _, args, leaves, actual = weyl_ends_and_gradient(wide_input_net)
    exact = torch_ws.spectral_bound(*args, "tanh", "mean", "bce")
    expected = torch.autograd.grad(exact.upper + 2 * exact.lambda_min_lower, leaves)
    for ours, truth in zip(actual, expected):
        torch.testing.assert_close(ours, truth, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_weyl_at_scale_gradients_match_autograd(wide_input_net):
    """λ_max's `upper` = λ_max(GGN) + the majorant and λ_min's `lower` = −(the majorant of −R),
    differentiated with the majorant's weights held fixed: against autograd through eigvalsh of
    the dual matrix from torch.func.jacrev and the formula in plain PyTorch, x included (35 s)."""
    _, _, (x, target, *weights), leaves, actual = weyl_ends_and_gradient(wide_input_net)
    rows = bce_dual_rows(x, target, weights)
    ggn = torch.linalg.eigvalsh(rows @ rows.T)[-1]
    expected = torch.autograd.grad(
        ggn + residual_majorant_by_formula(x, target, *weights)
        - 2 * residual_majorant_by_formula(x, target, *weights, sign=-1), leaves)
    for ours, truth in zip(actual, expected):
        torch.testing.assert_close(ours, truth, rtol=1e-6, atol=1e-10)


def test_weyl_between_the_scale_limits_of_the_dual_matrix():
    """N·C = 8300, between the 8192 rows of the λ_2 bound at scale and the dual matrix's 16,384,
    n = 5890 (no assembled Hessian): with 2 Lanczos steps the interval stays wide, and Weyl (which
    once stopped at 8192 rows) gives spectral_bound's upper end (tests/test_spectral.py holds that
    above the explicit λ_max)."""
    args = make_head_problem("cross_entropy", 10, "probabilities", n=830, d=3, h=420, seed=17)
    wide = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy", steps=2)
    assert wide.source == "weyl"
    exact = torch_ws.spectral_bound(*args, "tanh", "mean", "cross_entropy")
    assert float(wide.upper) == pytest.approx(float(exact.upper), rel=1e-12)
    assert float(wide.lower) <= float(wide.upper)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_weyl_at_scale_contains_the_explicit_spectrum(default_net, dtype):
    """Both intervals around eigvalsh's λ_max and λ_min of the explicit 2945 × 2945 Hessian
    (torch.func.hessian, 15 s; the fast test above checks the same ends against spectral_bound's
    exact parts). float32 inputs: around the spectrum of the inputs as given."""
    cast = tuple(a.to(dtype) for a in default_net)
    exact = spectrum(cast, "tanh", "mean", "bce")
    top = torch_ws.lambda_max_interval(*cast, "tanh", "mean", "bce")
    bottom = torch_ws.lambda_min_interval(*cast, "tanh", "mean", "bce")
    assert float(top.lower) <= float(exact[-1]) <= float(top.upper)
    assert float(bottom.lower) <= float(exact[0]) <= float(bottom.upper)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
@pytest.mark.parametrize("head", HEADS, ids=[f"{h[0]}-{h[2]}" for h in HEADS])
def test_the_assembled_hessian_closes_random_networks(head, largest, dtype):
    """Random networks (a heavy bulk: the cap and Weyl leave the interval wide) with a small n:
    where the interval is still wider than 1%, the Hessian assembled by blocks (docs/math.md
    §11.6, §12.7) gives both ends, a Cholesky certificate the upper one: source
    "assembled_hessian", both ends around eigvalsh's and (float64) within 1e-8 of it; every case
    ends within 1%."""
    args = head_problem(*head, n=60, d=6, h=16, bias=(True, True), seed=11)
    args = tuple(a.to(dtype) if a is not None and a.is_floating_point() else a for a in args)
    exact = spectrum(args, "tanh", "mean", head[0])
    value = float(exact[-1] if largest else exact[0])
    function = torch_ws.lambda_max_interval if largest else torch_ws.lambda_min_interval
    interval = function(*args, "tanh", "mean", head[0], steps=8)
    assert float(interval.lower) <= value <= float(interval.upper)
    # Wider than 1% after the other guarantees, the interval closes on the assembled Hessian.
    assert float(interval.upper - interval.lower) <= 0.01 * abs(value)
    if dtype == torch.float64 and interval.source == "assembled_hessian":
        assert float(interval.upper - interval.lower) <= 1e-8 * abs(value)


@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
def test_assembled_hessian_gradients_match_autograd_through_the_explicit_hessian(largest):
    """With source "assembled_hessian" the upper end is λ_max(σH) itself and the lower the
    Rayleigh quotient of its computed eigenvector z held fixed, both with the derivative
    σ⟨z, dH z⟩ (Hellmann-Feynman): against autograd through eigvalsh of the explicit Hessian
    (testing.explicit_ends)."""
    args = head_problem(*HEADS[1], n=40, d=3, h=5, bias=(True, True), seed=4)
    args = tuple(a.detach().requires_grad_(True) if a is not None and a.is_floating_point() and i != 1
                 else a for i, a in enumerate(args))
    leaves = [a for i, a in enumerate(args) if a is not None and i != 1]
    function = torch_ws.lambda_max_interval if largest else torch_ws.lambda_min_interval
    interval = function(*args, "tanh", "mean", "cross_entropy", steps=4)
    assert interval.source == "assembled_hessian"
    actual = torch.autograd.grad(interval.lower + 2 * interval.upper, leaves)
    H = reference.explicit_hessian(*args, "tanh", "mean", "cross_entropy")
    lower, upper = explicit_ends(interval, H, largest)
    for ours, truth in ((interval.lower, lower), (interval.upper, upper)):
        assert abs(float(ours.detach()) - float(truth)) <= 1e-8 * abs(float(truth))
    expected = torch.autograd.grad(lower + 2 * upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_weyl_beyond_the_dual_matrix():
    # N·C = 16,400 > 16,384 and n = 4820 > 4096 (no assembled Hessian): with 2 Lanczos steps the
    # interval stays wide, and Weyl takes λ_max(GGN) without the dual matrix (docs/math.md §9.2
    # "Without the dual matrix", §11.2 "Weyl at scale"). It must hold above λ_max, which the
    # 32-step interval, closed by Kato-Temple, certifies from below.
    args = make_head_problem("cross_entropy", 20, "indices", n=820, d=3, h=200, seed=16)
    wide = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy", steps=2)
    closed = torch_ws.lambda_max_interval(*args, "tanh", "mean", "cross_entropy")
    assert wide.source == "weyl"
    assert closed.upper <= closed.lower * (1 + 1e-6)
    assert float(wide.upper) >= float(closed.lower)
    ggn = torch_ws.spectral_bound(*args, "tanh", "mean", "cross_entropy").ggn_lambda_max
    assert float(wide.upper) >= float(ggn)
