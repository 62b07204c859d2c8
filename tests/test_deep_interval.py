"""Deep MLPs' closed-form Hessian-vector products and certified eigenvalue interval
(torch_ws.deep_hessian_vector_products, deep_lambda_max_interval, deep_lambda_min_interval,
sharpness on a deep nn.Sequential; docs/math.md §12.6) against torch.func.hessian of the real
network in float64 and eigvalsh of it; the interval's gradients (§11.4 with the basis held fixed)
against autograd through that explicit Hessian."""
import itertools

import pytest
import torch

import torch_ws
from deep_testing import ACTIVATION_MODULES, BIASES, HEADS, explicit_hessian, make_problem
from testing import explicit_ends

CASES = list(itertools.product(["tanh", "softplus", "gelu", "sigmoid", "relu"], range(len(HEADS))))


@pytest.mark.parametrize("activation,head_index", CASES,
                         ids=[f"{a}-{HEADS[h][0]}-{HEADS[h][2]}" for a, h in CASES])
def test_products_match_the_explicit_hessian(activation, head_index):
    head = HEADS[head_index]
    case = CASES.index((activation, head_index))
    widths = [[4, 3], [3, 4, 2]][case % 2]  # L = 2 and 3
    bias = BIASES[case % 3]
    reduction = ["mean", "sum"][case % 2]
    x, target, weights, biases = make_problem(widths, head, bias, seed=case)
    H = explicit_hessian(x, target, weights, biases, activation, reduction, head[0])
    V = torch.randn(3, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    products = torch_ws.deep_hessian_vector_products(x, target, weights, biases, V, activation,
                                                     reduction, head[0])
    expected = V @ H
    assert (products - expected).abs().max() <= 1e-12 * expected.abs().max()
    one = torch_ws.deep_hessian_vector_products(x, target, weights, biases, V[0], activation,
                                                reduction, head[0])
    assert one.shape == V[0].shape
    assert (one - products[0]).abs().max() <= 1e-13 * expected.abs().max()


def test_products_in_runs_match_autograd():
    """N·width large enough that the directions go through in runs of one (core/
    ritz_certificate.cpp, in_runs): against autograd's double-backward HVP of the real loss."""
    g = torch.Generator().manual_seed(11)
    net = torch.nn.Sequential(torch.nn.Linear(3, 40), torch.nn.Tanh(), torch.nn.Linear(40, 30),
                              torch.nn.Tanh(), torch.nn.Linear(30, 2)).double()
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    params = list(net.parameters())
    V = torch.randn(3, sum(p.numel() for p in params), generator=g, dtype=torch.float64)
    products = torch_ws.deep_hessian_vector_products(
        x, y, [m.weight for m in net[::2]], [m.bias for m in net[::2]], V, "tanh", "mean", "mse")
    gradient = torch.autograd.grad(torch.nn.functional.mse_loss(net(x), y), params,
                                   create_graph=True)
    flat = torch.cat([t.reshape(-1) for t in gradient])
    for v, got in zip(V, products):
        expected = torch.cat([t.reshape(-1) for t in torch.autograd.grad(flat, params, v,
                                                                         retain_graph=True)])
        assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_products_in_float32_and_of_one_hidden_layer():
    """float32 inputs give float32 products close to float64's; with one hidden layer the deep
    products equal the one-hidden-layer op's (the same θ order)."""
    x, target, weights, biases = make_problem([5, 4], HEADS[1], "all", seed=3)
    V = torch.randn(4, torch_ws.deep_num_params(weights, biases), dtype=torch.float64)
    exact = torch_ws.deep_hessian_vector_products(x, target, weights, biases, V, "tanh", "mean",
                                                  "cross_entropy")
    f32 = torch_ws.deep_hessian_vector_products(x.float(), target, [w.float() for w in weights],
                                                [b.float() for b in biases], V.float(), "tanh",
                                                "mean", "cross_entropy")
    assert f32.dtype == torch.float32
    assert (f32.double() - exact).abs().max() <= 1e-5 * exact.abs().max()
    x, target, weights, biases = make_problem([5], HEADS[0], "mixed", seed=4)
    V = torch.randn(3, torch_ws.deep_num_params(weights, biases), dtype=torch.float64)
    deep = torch_ws.deep_hessian_vector_products(x, target, weights, biases, V, "gelu", "mean", "bce")
    one = torch_ws.hessian_vector_products(x, target, weights[0], biases[0], weights[1], biases[1],
                                           V, "gelu", "mean", "bce")
    assert torch.allclose(deep, one, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("head_index", range(len(HEADS)), ids=[f"{h[0]}-{h[2]}" for h in HEADS])
def test_interval_brackets_the_extreme_eigenvalues(head_index, dtype):
    """Both intervals hold against eigvalsh of the explicit Hessian, with fewer steps than n (so
    the basis does not span the space and the cap and WS bounds are what certify)."""
    head = HEADS[head_index]
    x, target, weights, biases = make_problem([6, 5], head, BIASES[head_index % 3],
                                              seed=10 + head_index, n=8, d=4)
    H = explicit_hessian(x, target, weights, biases, "tanh", "mean", head[0])
    eigenvalues = torch.linalg.eigvalsh(H)
    cast = lambda t: t.to(dtype) if t is not None and t.is_floating_point() else t  # noqa: E731
    args = (cast(x), cast(target), [cast(w) for w in weights], [cast(b) for b in biases], "tanh",
            "mean", head[0])
    # The float32 network is not the float64 one: its own exact eigenvalues are the truth.
    if dtype == torch.float32:
        wide = [t.double() if t is not None and t.is_floating_point() else t for t in args[:2]]
        H = explicit_hessian(*wide, [w.double() for w in args[2]], [b.double() if b is not None
                             else None for b in args[3]], "tanh", "mean", head[0])
        eigenvalues = torch.linalg.eigvalsh(H)
    n = H.shape[0]
    for steps in (6, 40):
        top = torch_ws.deep_lambda_max_interval(*args, steps=steps)
        bottom = torch_ws.deep_lambda_min_interval(*args, steps=steps)
        assert top.lower.dtype == dtype and top.ritz_vectors.shape == (min(steps, n), n)
        assert float(top.lower) <= float(eigenvalues[-1]) <= float(top.upper)
        assert float(bottom.lower) <= float(eigenvalues[0]) <= float(bottom.upper)
        assert top.source in torch_ws.INTERVAL_SOURCES and top.products == min(steps, n) + 1
    # 40 steps on n ≈ 60: the top Ritz pair converges and Kato-Temple closes the interval.
    assert float(top.upper - top.lower) <= 1e-6 * float(eigenvalues.abs().max())


def trained_network(seed=0, steps=400):
    """A [16, 16] tanh network trained by full-batch gradient descent on two Gaussian blobs:
    a few outliers over a light bulk, where the interval closes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(40, 5, generator=g) + 1.5, torch.randn(40, 5, generator=g) - 1.5])
    y = torch.cat([torch.zeros(40), torch.ones(40)])
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                              torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    x, y = x.double(), y.double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), y).backward()
        opt.step()
    return net, x, y


def test_sharpness_of_a_trained_deep_network():
    """sharpness(deep net) gives the deep interval and traces; on a trained network 32 steps
    close it to a relative width below 1e-8, around eigvalsh's λ_max."""
    net, x, y = trained_network()
    s = torch_ws.sharpness(net, x, y, loss="bce")
    weights, biases = [m.weight for m in net[::2]], [m.bias for m in net[::2]]
    H = explicit_hessian(x, y, [w.detach() for w in weights], [b.detach() for b in biases],
                         "tanh", "mean", "bce")
    top = float(torch.linalg.eigvalsh(H)[-1])
    assert float(s.lambda_max.lower) <= top <= float(s.lambda_max.upper)
    assert float(s.lambda_max.upper) <= float(s.lambda_max.lower) * (1 + 1e-8)
    assert s.lambda_max.source == "kato_temple"
    assert float(s.trace) == pytest.approx(float(H.trace()), rel=1e-10)
    assert float(s.trace_sq) == pytest.approx(float((H * H).sum()), rel=1e-10)
    # The warm start: the previous call's Ritz vectors as the first basis vectors.
    again = torch_ws.sharpness(net, x, y, loss="bce", steps=4, start=s.lambda_max.ritz_vectors[:2])
    assert float(again.lambda_max.lower) <= top <= float(again.lambda_max.upper)
    assert float(again.lambda_max.lower) == pytest.approx(top, rel=1e-8)


def test_bad_input_names_the_function():
    x, target, weights, biases = make_problem([4, 3], HEADS[1], "all", seed=5)
    n = torch_ws.deep_num_params(weights, biases)
    args = (x, target, weights, biases, "tanh", "mean", "cross_entropy")
    with pytest.raises(RuntimeError, match=rf"deep_hessian_vector_products: expected vectors of "
                       rf"shape \(n,\) or \(k, n\) with n = {n}"):
        torch_ws.deep_hessian_vector_products(x, target, weights, biases, torch.ones(2, n - 1,
                                              dtype=x.dtype), "tanh", "mean", "cross_entropy")
    with pytest.raises(RuntimeError, match="deep_eigenvalue_interval: expected steps >= 1 .*, "
                       "or 0 for the automatic count, got -1"):
        torch_ws.deep_lambda_max_interval(*args, steps=-1)
    with pytest.raises(RuntimeError, match=rf"deep_eigenvalue_interval: expected start of shape"):
        torch_ws.deep_lambda_max_interval(*args, start=torch.ones(n + 1, dtype=x.dtype))
    with pytest.raises(RuntimeError, match="deep_eigenvalue_interval: .*layer"):
        torch_ws.deep_lambda_max_interval(x, target, [weights[0], weights[2]], None, "tanh",
                                          "mean", "cross_entropy")
    with pytest.raises(ValueError, match="sharpness: every hidden layer must have the same"):
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                                  torch.nn.ReLU(), torch.nn.Linear(4, 1))
        torch_ws.sharpness(net, x.float(), torch.rand(5))


def meta_problem(samples, in_dim, widths, outputs):
    """A deep problem on the meta device: shapes without numbers, to read what a call would take."""
    x = torch.empty(samples, in_dim, device="meta")
    target = torch.empty(samples, *([outputs] if outputs > 1 else []), device="meta")
    weights = [torch.empty(w, v, device="meta")
               for v, w in zip([in_dim, *widths], [*widths, outputs])]
    biases = [torch.empty(w, device="meta") for w in [*widths, outputs]]
    return x, target, weights, biases


def test_automatic_steps():
    """steps=None (0 for the op): 32 Lanczos steps where the assembled Hessian closes the interval
    anyway, as before; beyond it more, as the exact traces' cost allows (docs/math.md §12.6), never
    more than 128 nor Q beyond 2²⁴ numbers; the Meta kernels say the same count (their shapes), and
    the derivatives op's layout follows it."""
    def steps_of(samples, in_dim, widths, outputs):
        x, target, weights, biases = meta_problem(samples, in_dim, widths, outputs)
        loss = "bce" if outputs == 1 else "mse"
        out = torch.ops.torch_ws.deep_eigenvalue_interval(x, target, weights, biases, "tanh",
                                                          "mean", loss)
        described = torch.ops.torch_ws._deep_eigenvalue_interval_derivatives(
            x, target, weights, biases, "tanh", "mean", loss)
        n = torch_ws.deep_num_params(weights, biases)
        assert out[4].shape == (out[3].shape[0], n) and described[10].shape == (2, out[3].shape[0] + 4)
        return out[3].shape[0], n

    assert steps_of(100, 20, [32, 32], 1)[0] == 32        # n = 1,761: the assembly closes it
    k, n = steps_of(1000, 64, [200, 200], 1)              # the Gram forms' traces: ~10⁴ products
    assert k == 128
    k, n = steps_of(200, 784, [256, 256], 10)             # n = 269,322: Q's memory caps it
    assert 32 < k < 128 and k * n <= 2**24
    k, n = steps_of(20, 2, [3, 3], 1)                     # k ≤ n: all n = 25 directions
    assert k == n == 25


def automatic_steps_problem():
    # n = 4,513 > 4,096: beyond the assembled certificate; the Gram forms' traces, 47 steps.
    return make_problem([64, 48], HEADS[0], "all", seed=11, n=200, d=20)


def test_automatic_steps_match_the_explicit_count():
    """Beyond the assembled certificate, the default call is the call with its count of steps
    given: the same basis and interval, for both ends and through sharpness()."""
    x, target, weights, biases = automatic_steps_problem()
    defaults = []
    for function in (torch_ws.deep_lambda_max_interval, torch_ws.deep_lambda_min_interval):
        default = function(x, target, weights, biases)
        defaults.append(default)
        k = default.ritz_values.shape[0]
        assert 32 < k <= 128 and default.products == k + 1
        given = function(x, target, weights, biases, steps=k)
        assert torch.equal(default.ritz_vectors, given.ritz_vectors)
        assert (float(default.lower), float(default.upper)) == (float(given.lower),
                                                                float(given.upper))
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 48),
                              torch.nn.Tanh(), torch.nn.Linear(48, 1)).double()
    with torch.no_grad():
        for layer, w, b in zip(net[::2], weights, biases):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    s = torch_ws.sharpness(net, x, target, loss="bce")
    assert torch.equal(s.lambda_max.ritz_vectors, defaults[0].ritz_vectors)


@pytest.mark.slow
def test_automatic_steps_hold_against_the_explicit_hessian():
    """The default call's interval beyond the assembled certificate holds λ_max and λ_min of the
    dense float64 Hessian (torch.func.hessian of the real network; ~15 s), from float64 inputs and
    from the same network rounded to float32 (whose own Hessian's eigenvalues, in float64)."""
    problem = automatic_steps_problem()
    for dtype in (torch.float64, torch.float32):
        x, target, weights, biases = [
            [t.to(dtype) for t in v] if isinstance(v, list) else v.to(dtype) for v in problem]
        exact = [[t.double() for t in v] if isinstance(v, list) else v.double()
                 for v in (x, target, weights, biases)]
        eigenvalues = torch.linalg.eigvalsh(explicit_hessian(*exact, "tanh", "mean", "bce"))
        top = torch_ws.deep_lambda_max_interval(x, target, weights, biases)
        bottom = torch_ws.deep_lambda_min_interval(x, target, weights, biases)
        assert top.ritz_values.shape[0] > 32 and top.lower.dtype == dtype
        assert float(top.lower) <= float(eigenvalues[-1]) <= float(top.upper)
        assert float(bottom.lower) <= float(eigenvalues[0]) <= float(bottom.upper)


def test_non_finite_input_gives_nan():
    x, target, weights, biases = make_problem([4, 3], HEADS[0], "all", seed=6)
    x[1, 2] = float("nan")
    interval = torch_ws.deep_lambda_max_interval(x, target, weights, biases)
    assert torch.isnan(interval.lower) and torch.isnan(interval.upper)


def test_opcheck():
    x, target, weights, biases = make_problem([3, 2], HEADS[1], "mixed", seed=7, n=4)
    n = torch_ws.deep_num_params(weights, biases)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    torch.library.opcheck(torch.ops.torch_ws.deep_hessian_vector_products.default,
                          (x, target, weights, biases, torch.randn(2, n, dtype=x.dtype), "tanh",
                           "mean", "cross_entropy"), test_utils=utils)
    torch.library.opcheck(torch.ops.torch_ws._deep_eigenvalue_interval_derivatives.default,
                          (x, target, weights, biases, "tanh", "mean", "cross_entropy"),
                          {"steps": 5}, test_utils=utils)
    # With inputs that require grad: the Autograd kernel, traced with fake tensors too.
    leaves = [w.detach().requires_grad_(True) for w in weights]
    torch.library.opcheck(torch.ops.torch_ws.deep_eigenvalue_interval.default,
                          (x.detach().requires_grad_(True), target, leaves, biases, "tanh",
                           "mean", "cross_entropy"), {"steps": 5},
                          test_utils=utils + ("test_autograd_registration",))


GRADIENT_CASES = [(HEADS[0], "tanh", "all", [4, 3]), (HEADS[1], "gelu", "mixed", [3, 4, 2]),
                  (HEADS[2], "softplus", "none", [4, 3]), (HEADS[3], "sigmoid", "all", [3, 2, 3])]


@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
@pytest.mark.parametrize("steps", [1, 3, 40])
@pytest.mark.parametrize("head,activation,bias,widths", GRADIENT_CASES,
                         ids=[f"{c[0][0]}-{c[0][2]}-{c[1]}-L{len(c[3])}" for c in GRADIENT_CASES])
def test_gradients_match_autograd_through_explicit_hessian(head, activation, bias, widths, steps,
                                                           largest):
    """Both ends' gradients (every layer and x) are those of the ends as functions of the
    explicit Hessian with the returned basis held fixed (docs/math.md §11.4), whichever guarantee
    gave `upper` (1 step: the trace cap or WS; 40: Kato-Temple)."""
    x, target, weights, biases = make_problem(widths, head, bias, seed=len(widths) + steps)
    x = x.requires_grad_(True)
    weights = [w.requires_grad_(True) for w in weights]
    biases = [b.requires_grad_(True) if b is not None else None for b in biases]
    leaves = [x] + weights + [b for b in biases if b is not None]
    function = torch_ws.deep_lambda_max_interval if largest else torch_ws.deep_lambda_min_interval
    interval = function(x, target, weights, biases, activation, "mean", head[0], steps=steps)
    assert interval.lower.grad_fn is not None and interval.upper.grad_fn is not None
    actual = torch.autograd.grad(interval.lower + 2 * interval.upper, leaves)
    H = explicit_hessian(x, target, weights, biases, activation, "mean", head[0])
    lower, upper = explicit_ends(interval, H, largest)
    # The certified values are the smooth functions' up to the rounding allowances.
    assert abs(float(interval.lower.detach()) - float(lower)) <= 1e-8 * abs(float(lower)) + 1e-12
    expected = torch.autograd.grad(lower + 2 * upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_gradients_in_float32_forward_mode_and_nan():
    """float32 inputs get float32 gradients close to float64's; forward mode (torch.func.jvp)
    gives the reverse gradient's directional derivative; NaN input gives NaN gradients."""
    x, target, weights, biases = make_problem([4, 3], HEADS[1], "all", seed=5)

    def upper(x, *weights):
        return torch_ws.deep_lambda_max_interval(x, target, list(weights), biases, "tanh", "mean",
                                                 "cross_entropy").upper

    leaves = [t.detach().requires_grad_(True) for t in [x] + weights]
    recorded = upper(*leaves)
    exact = torch.autograd.grad(recorded, leaves)
    # The Autograd kernel hands the certificate the traces it evaluated itself: the same interval.
    assert float(recorded) == float(upper(*(t.detach() for t in leaves)))
    low = [t.detach().float().requires_grad_(True) for t in [x] + weights]
    biases32 = [b.float() for b in biases]
    value = torch_ws.deep_lambda_max_interval(low[0], target, low[1:], biases32, "tanh", "mean",
                                              "cross_entropy").upper
    assert value.dtype == torch.float32
    for a, e in zip(torch.autograd.grad(value, low), exact):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-3, atol=1e-5)
    tangents = [torch.randn_like(t) for t in [x] + weights]
    _, derivative = torch.func.jvp(upper, tuple(t.detach() for t in [x] + weights),
                                   tuple(tangents))
    torch.testing.assert_close(derivative, sum((g * t).sum() for g, t in zip(exact, tangents)))
    broken = leaves[0].detach().clone()
    broken[0, 0] = float("nan")
    broken.requires_grad_(True)
    value = upper(broken, *leaves[1:])
    assert torch.isnan(value)
    assert all(torch.isnan(g).all() for g in torch.autograd.grad(value, [broken] + leaves[1:]))


def test_regularizer_penalizes_the_deep_interval(tmp_path):
    """HSRRegularizer(deep net, bound="interval") is the interval's upper end with its gradient,
    warm-started from the previous call's top Ritz vector, and pickles with its bound."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5),
                              torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 3, (20,))
    reg = torch_ws.HSRRegularizer(net, loss="cross_entropy", bound="interval")
    value = reg(x, y)
    weights, biases = [m.weight for m in net[::2]], [m.bias for m in net[::2]]
    expected = torch_ws.deep_lambda_max_interval(x, y, weights, biases, "tanh", "mean",
                                                 "cross_entropy")
    torch.testing.assert_close(value, expected.upper)
    actual = torch.autograd.grad(value, list(net.parameters()))
    for a, e in zip(actual, torch.autograd.grad(expected.upper, list(net.parameters()))):
        torch.testing.assert_close(a, e)
    H = explicit_hessian(x, y, [w.detach() for w in weights], [b.detach() for b in biases],
                         "tanh", "mean", "cross_entropy")
    top = float(torch.linalg.eigvalsh(H)[-1])
    again = reg(x, y)  # warm-started: the same guarantee
    assert top <= float(again)
    torch.save(reg, tmp_path / "reg.pt")
    loaded = torch.load(tmp_path / "reg.pt")
    assert loaded.bound == "interval" and top <= float(loaded(x, y))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
@pytest.mark.parametrize("head", HEADS, ids=[f"{h[0]}-{h[2]}" for h in HEADS])
def test_the_assembled_hessian_closes_the_interval(head, largest, dtype):
    """Few Lanczos steps leave the interval wide; with n small the Hessian assembled by blocks
    (docs/math.md §11.6, §12.7) gives both ends, a Cholesky certificate the upper one: source
    "assembled_hessian", both ends around eigvalsh's and (float64) within 1e-8 of it."""
    x, target, weights, biases = make_problem([6, 5], head, "mixed", seed=9, n=30, dtype=dtype)
    wide = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
    H = explicit_hessian(wide(x), wide(target), [wide(w) for w in weights],
                         [wide(b) for b in biases], "tanh", "mean", head[0])
    eigenvalues = torch.linalg.eigvalsh(H)
    value = float(eigenvalues[-1] if largest else eigenvalues[0])
    function = torch_ws.deep_lambda_max_interval if largest else torch_ws.deep_lambda_min_interval
    interval = function(x, target, weights, biases, "tanh", "mean", head[0], steps=3)
    assert float(interval.lower) <= value <= float(interval.upper)
    if dtype == torch.float64:
        assert interval.source == "assembled_hessian"
        assert float(interval.upper - interval.lower) <= 1e-8 * abs(value)


@pytest.mark.parametrize("largest", [True, False], ids=["max", "min"])
def test_assembled_hessian_gradients_match_autograd_through_the_explicit_hessian(largest):
    """Source "assembled_hessian": both ends' gradients (every layer and x) are σ⟨z, dH z⟩ at
    the assembled Hessian's top eigenvector, eigvalsh's through the explicit Hessian."""
    x, target, weights, biases = make_problem([4, 3], HEADS[1], "all", seed=2, n=12)
    leaves = [t.requires_grad_(True) for t in [x] + weights + biases]
    function = torch_ws.deep_lambda_max_interval if largest else torch_ws.deep_lambda_min_interval
    interval = function(x, target, weights, biases, "gelu", "mean", "cross_entropy", steps=2)
    assert interval.source == "assembled_hessian"
    actual = torch.autograd.grad(interval.lower + 2 * interval.upper, leaves)
    H = explicit_hessian(x, target, weights, biases, "gelu", "mean", "cross_entropy")
    lower, upper = explicit_ends(interval, H, largest)
    expected = torch.autograd.grad(lower + 2 * upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-12)


def test_gradients_in_several_runs_of_the_checkpointed_forms():
    """With N·H_1 large enough that the k + 2 forms' backward takes them in several runs of rows
    (2²⁰ numbers per (N, rows, H) array: 27 rows here, 42 forms), both ends' gradients are still
    those through the explicit Hessian with the basis fixed; torch.func.grad (the recorded forms)
    gives the same."""
    x, target, weights, biases = make_problem([32, 2], HEADS[0], "all", seed=11, n=1200)
    leaves = [t.requires_grad_(True) for t in [x] + weights + biases]
    interval = torch_ws.deep_lambda_max_interval(x, target, weights, biases, "tanh", "mean", "bce",
                                                 steps=40)
    assert interval.ritz_values.numel() == 40
    actual = torch.autograd.grad(interval.lower + 2 * interval.upper, leaves, retain_graph=True)
    H = explicit_hessian(x, target, weights, biases, "tanh", "mean", "bce")
    lower, upper = explicit_ends(interval, H, True)
    expected = torch.autograd.grad(lower + 2 * upper, leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)

    def upper_of(w0):
        return torch_ws.deep_lambda_max_interval(x.detach(), target, [w0] + weights[1:], biases,
                                                 "tanh", "mean", "bce", steps=40).upper

    recorded = torch.func.grad(upper_of)(weights[0].detach())
    checkpointed = torch.autograd.grad(interval.upper, weights[0])[0]
    torch.testing.assert_close(recorded, checkpointed, rtol=1e-9, atol=1e-12)


def test_second_derivatives_are_refused():
    """The ends are differentiable once (their first-order description is exact, its own
    derivative is not the ends'): double backward, nested torch.func transforms and forward over
    reverse raise instead of returning a wrong second derivative; trace_sq, an exact smooth
    function, still has its second derivative."""
    x, target, weights, biases = make_problem([4, 3], HEADS[0], "all", seed=3)
    leaves = [t.requires_grad_(True) for t in [x] + weights]
    interval = torch_ws.deep_lambda_max_interval(x, target, weights, biases, "tanh", "mean", "bce",
                                                 steps=3)
    gradient = torch.autograd.grad(interval.upper, leaves, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(sum(g.sum() for g in gradient), leaves)

    def upper_of(w0):
        return torch_ws.deep_lambda_max_interval(x.detach(), target, [w0] + weights[1:], biases,
                                                 "tanh", "mean", "bce", steps=3).upper

    for second in (torch.func.hessian, lambda f: torch.func.jacrev(torch.func.jacrev(f))):
        with pytest.raises(RuntimeError, match="differentiable once"):
            second(upper_of)(weights[0].detach())
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = fwAD.make_dual(weights[0].detach().requires_grad_(True),
                              torch.randn_like(weights[0]))
        with pytest.raises(RuntimeError, match="forward-mode AD on inputs that also require grad"):
            torch_ws.deep_lambda_max_interval(x.detach(), target, [dual] + weights[1:], biases,
                                              "tanh", "mean", "bce", steps=3)
    # The traces are exact smooth functions: their second derivative stays.
    trace_sq = torch_ws.deep_hessian_traces(x, target, weights, biases, "tanh", "mean", "bce")[1]
    first = torch.autograd.grad(trace_sq, weights[0], create_graph=True)[0]
    assert torch.autograd.grad(first.sum(), weights[0])[0].abs().sum() > 0
