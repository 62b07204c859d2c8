"""Forward-mode AD and the torch.func transforms (jvp, jacfwd, grad, vjp, jacrev, vmap): a right
answer or a clear error, never a silent zero. The truth is the same transform applied to the explicit float64 Hessian (reference.py),
which shares no code with the ops."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import torch_ws
from testing import BIAS_CONFIGS, rel_err
import reference

# (loss, C, target maker)
HEADS = [
    ("bce", 1, lambda n, c, gen: (torch.rand(n, generator=gen) > 0.5).double()),
    ("cross_entropy", 3, lambda n, c, gen: torch.randint(0, c, (n,), generator=gen)),
    ("mse", 2, lambda n, c, gen: torch.randn(n, c, generator=gen, dtype=torch.float64)),
]


def head_id(head):
    return f"{head[0]}-C{head[1]}"


def problem(head, bias=(True, True), n=7, d=3, h=4, seed=0):
    loss, c, make_target = head
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    x, w1, w2 = randn(n, d), randn(h, d), randn(c, h)
    b1 = randn(h) if bias[0] else None
    b2 = randn(c) if bias[1] else None
    target = make_target(n, c, gen)
    tangents = [randn(*t.shape) if t is not None else None for t in (x, w1, b1, w2, b2)]
    return (x, target, w1, b1, w2, b2), tangents, loss


def with_tangents(args, tangents):
    """The differentiable inputs as dual tensors (inside a dual level)."""
    x, target, w1, b1, w2, b2 = args
    dual = [fwAD.make_dual(p, t) if p is not None else None
            for p, t in zip((x, w1, b1, w2, b2), tangents)]
    return dual[0], target, dual[1], dual[2], dual[3], dual[4]


def reference_outputs(x, target, w1, b1, w2, b2, act, red, loss):
    hess = reference.explicit_hessian(x, target, w1, b1, w2, b2, act, red, loss)
    trace, trace_sq = hess.diagonal().sum(), (hess * hess).sum()
    return trace, trace_sq, reference.ws_upper_from_traces(trace, trace_sq, hess.shape[0])


@pytest.mark.parametrize("red", ["mean", "sum"])
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_forward_ad_tangents_match_the_explicit_hessian(head, red):
    """torch.autograd.forward_ad with a tangent on every input (x included), every bias setting:
    the tangents of tr H, tr H² and the bound equal those of the explicit Hessian's."""
    for bias in BIAS_CONFIGS:
        args, tangents, loss = problem(head, bias)
        diffs = [i for i, p in enumerate((args[0], *args[2:])) if p is not None]
        primals = [p for p in (args[0], *args[2:]) if p is not None]
        given = [tangents[i] for i in diffs]

        def ref(*ps):
            full = dict(zip(diffs, ps))
            x, w1, b1, w2, b2 = (full.get(i) for i in range(5))
            return reference_outputs(x, args[1], w1, b1, w2, b2, "tanh", red, loss)

        _, expected = torch.func.jvp(ref, tuple(primals), tuple(given))
        with fwAD.dual_level():
            dual = with_tangents(args, tangents)
            trace, trace_sq = torch_ws.hessian_traces(*dual, "tanh", red, loss)
            bound = torch_ws.ws_bound(*dual, "tanh", red, loss)
            actual = [fwAD.unpack_dual(t).tangent for t in (trace, trace_sq, bound)]
        for a, e in zip(actual, expected):
            assert a is not None and a.dtype == torch.float64
            assert rel_err(a, e) <= 1e-9, (bias, a, e)


@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_torch_func_jvp_and_jacfwd(head):
    """torch.func.jvp in one argument, and jacfwd (a vmap over tangents) of the bound in w1 and
    x: equal to the reverse-mode gradient of the explicit-Hessian bound."""
    (x, target, w1, b1, w2, b2), tangents, loss = problem(head)

    def ours(w1_, x_):
        return torch_ws.ws_bound(x_, target, w1_, b1, w2, b2, "silu", "mean", loss)

    def ref(w1_, x_):
        return reference_outputs(x_, target, w1_, b1, w2, b2, "silu", "mean", loss)[2]

    value, tangent = torch.func.jvp(lambda w: ours(w, x), (w1,), (tangents[1],))
    ref_value, ref_tangent = torch.func.jvp(lambda w: ref(w, x), (w1,), (tangents[1],))
    assert rel_err(value, ref_value) <= 1e-10
    assert rel_err(tangent, ref_tangent) <= 1e-9
    jacobians = torch.func.jacfwd(ours, argnums=(0, 1))(w1, x)
    w1_r, x_r = w1.clone().requires_grad_(), x.clone().requires_grad_()
    expected = torch.autograd.grad(ref(w1_r, x_r), (w1_r, x_r))
    for j, e in zip(jacobians, expected):
        assert j.shape == e.shape
        assert rel_err(j, e) <= 1e-9


def test_float32_tangents_follow_float64():
    args, tangents, loss = problem(HEADS[0])
    results = {}
    for dtype in (torch.float64, torch.float32):
        cast = [t.to(dtype) if t is not None and t.is_floating_point() else t for t in args]
        cast_tangents = [t.to(dtype) if t is not None else None for t in tangents]
        with fwAD.dual_level():
            bound = torch_ws.ws_bound(*with_tangents(cast, cast_tangents), "tanh", "mean", loss)
            results[dtype] = fwAD.unpack_dual(bound).tangent
    assert results[torch.float32].dtype == torch.float32
    assert rel_err(results[torch.float32], results[torch.float64]) <= 1e-4


def test_a_tangent_on_the_target_is_refused():
    (x, target, w1, b1, w2, b2), _, loss = problem(HEADS[0])
    with fwAD.dual_level():
        dual_target = fwAD.make_dual(target, torch.ones_like(target))
        with pytest.raises(RuntimeError, match="torch_ws.ws_bound: target has a forward-mode "
                                               "tangent, but the bound is not differentiable"):
            torch_ws.ws_bound(x, dual_target, w1, b1, w2, b2)


def test_forward_over_reverse_is_refused():
    """A Hessian-vector product of the bound needs its second derivative: a clear error."""
    (x, target, w1, b1, w2, b2), tangents, loss = problem(HEADS[0])
    with fwAD.dual_level():
        w1_dual = fwAD.make_dual(w1.clone().requires_grad_(), tangents[1])
        for op in (torch_ws.ws_bound, torch_ws.hessian_traces):
            with pytest.raises(RuntimeError, match="forward-mode AD on inputs that also require "
                                                   "grad .* is not supported"):
                op(x, target, w1_dual, b1, w2, b2)


def test_internal_ops_refuse_tangents():
    (x, target, w1, b1, w2, b2), tangents, loss = problem(HEADS[0])
    with fwAD.dual_level():
        w1_dual = fwAD.make_dual(w1, tangents[1])
        with pytest.raises(RuntimeError, match="torch_ws._traces_with_gradients is not "
                                               "differentiable in forward mode"):
            torch.ops.torch_ws._traces_with_gradients(x, target, w1_dual, b1, w2, b2, "tanh",
                                                      "mean", False, "test", "bce")
        with pytest.raises(RuntimeError, match="torch_ws._ws_bound_with_gradient is not "
                                               "differentiable in forward mode"):
            torch.ops.torch_ws._ws_bound_with_gradient(x, target, w1_dual, b1, w2, b2, "tanh",
                                                       "mean", False, "test", "bce")
        g = torch.zeros(())
        with pytest.raises(RuntimeError, match="torch_ws._traces_backward is not differentiable "
                                               "in forward mode"):
            torch.ops.torch_ws._traces_backward(fwAD.make_dual(g, torch.ones(())), g,
                                                [g] * 5, [g] * 5)


def assert_reverse_transforms_match(ours, ref, w1, x, tolerance):
    """torch.func.grad, jacrev and vjp of ours(w1, x) against grad of the reference, entry by
    entry within `tolerance` (relative)."""
    expected = torch.func.grad(ref, argnums=(0, 1))(w1, x)
    for actual in (torch.func.grad(ours, argnums=(0, 1))(w1, x),
                   torch.func.jacrev(ours, argnums=(0, 1))(w1, x),
                   torch.func.vjp(ours, w1, x)[1](torch.tensor(1.0, dtype=torch.float64))):
        for a, e in zip(actual, expected):
            assert rel_err(a, e) <= tolerance


@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_reverse_mode_transforms(head):
    """torch.func.grad, vjp and jacrev (through the Python route of torch_ws/_functorch.py, as a
    C++ autograd Function cannot run under them) against the same transforms of the explicit
    Hessian's bound and traces, x included."""
    (x, target, w1, b1, w2, b2), _, loss = problem(head)

    def ours(w1_, x_):
        return torch_ws.ws_bound(x_, target, w1_, b1, w2, b2, "tanh", "sum", loss)

    def ref(w1_, x_):
        return reference_outputs(x_, target, w1_, b1, w2, b2, "tanh", "sum", loss)[2]

    assert_reverse_transforms_match(ours, ref, w1, x, 1e-9)
    traces = torch.func.jacrev(
        lambda w: torch_ws.hessian_traces(x, target, w, b1, w2, b2, "tanh", "sum", loss))(w1)
    ref_traces = torch.func.jacrev(
        lambda w: reference_outputs(x, target, w, b1, w2, b2, "tanh", "sum", loss)[:2])(w1)
    for a, e in zip(traces, ref_traces):
        assert rel_err(a, e) <= 1e-9


def test_vmap_of_grad_over_models_and_over_data_sets():
    """Ensembles trained functionally: vmap(grad(f)) over B sets of weights with the same data,
    and over B data sets with the same weights, equal a Python loop of reverse-mode gradients."""
    (x, target, w1, b1, w2, b2), _, loss = problem(HEADS[1])
    gen = torch.Generator().manual_seed(4)
    w1s = torch.randn(3, *w1.shape, generator=gen, dtype=torch.float64)
    xs = torch.randn(3, *x.shape, generator=gen, dtype=torch.float64)

    def bound(w, x_):
        return torch_ws.ws_bound(x_, target, w, b1, w2, b2, loss=loss)

    def loop_grad(w, x_):
        w = w.clone().requires_grad_()
        return torch.autograd.grad(bound(w, x_), w)[0]

    batched = torch.func.vmap(torch.func.grad(bound), in_dims=(0, None))(w1s, x)
    assert rel_err(batched, torch.stack([loop_grad(w, x) for w in w1s])) <= 1e-12
    batched = torch.func.vmap(torch.func.grad(bound), in_dims=(None, 0))(w1, xs)
    assert rel_err(batched, torch.stack([loop_grad(w1, x_) for x_ in xs])) <= 1e-12


@pytest.mark.parametrize("second_order", [
    lambda f, w: torch.func.hessian(f)(w),
    lambda f, w: torch.func.grad(lambda v: torch.func.grad(f)(v).sum())(w),
    lambda f, w: torch.func.jacrev(torch.func.jacrev(f))(w),
    lambda f, w: torch.func.jacfwd(torch.func.jacrev(f))(w),
], ids=["hessian", "grad-of-grad", "jacrev-of-jacrev", "jacfwd-of-jacrev"])
@pytest.mark.parametrize("bound", ["ws", "spectral", "interval"])
def test_second_order_transforms_raise(bound, second_order):
    """The traces and the bounds are differentiable once: a second derivative through torch.func
    is a clear error, never the zero that constant saved gradients would give."""
    (x, target, w1, b1, w2, b2), _, loss = problem(HEADS[0])
    of = {"ws": lambda w: torch_ws.ws_bound(x, target, w, b1, w2, b2),
          "spectral": lambda w: torch_ws.spectral_bound(x, target, w, b1, w2, b2).upper,
          "interval": lambda w: torch_ws.lambda_max_interval(x, target, w, b1, w2, b2).upper}
    with pytest.raises(RuntimeError, match="second derivatives of the traces and the bound"):
        second_order(of[bound], w1)


def test_vmap_over_models_matches_a_loop():
    """vmap over a leading batch of weights (PyTorch's per-sample fallback loop): values equal a
    Python loop over the models."""
    (x, target, w1, b1, w2, b2), _, loss = problem(HEADS[1])
    gen = torch.Generator().manual_seed(3)
    w1s = torch.randn(4, *w1.shape, generator=gen, dtype=torch.float64)
    batched = torch.func.vmap(lambda w: torch_ws.ws_bound(x, target, w, b1, w2, b2,
                                                          loss="cross_entropy"))(w1s)
    looped = torch.stack([torch_ws.ws_bound(x, target, w, b1, w2, b2, loss="cross_entropy")
                          for w in w1s])
    assert torch.equal(batched, looped)


@pytest.mark.parametrize("largest", [True, False], ids=["lambda_max", "lambda_min"])
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_reverse_mode_transforms_of_the_interval(head, largest):
    """torch.func.grad, vjp and jacrev of the interval's ends (a Python Function over the op that
    returns both ends' gradients, torch_ws/_functorch.py): with as many Lanczos steps as
    parameters the basis spans everything, both ends are the extreme eigenvalue, and their
    gradient is the eigenvalue's (Hellmann-Feynman) from eigvalsh of the explicit Hessian, x
    included."""
    (x, target, w1, b1, w2, b2), _, loss = problem(head)
    n = torch_ws.num_params(w1, b1, w2, b2)
    interval = torch_ws.lambda_max_interval if largest else torch_ws.lambda_min_interval

    def ours(w1_, x_):
        ends = interval(x_, target, w1_, b1, w2, b2, "tanh", "sum", loss, steps=n)
        return ends.lower + 2 * ends.upper

    def ref(w1_, x_):
        values = torch.linalg.eigvalsh(
            reference.explicit_hessian(x_, target, w1_, b1, w2, b2, "tanh", "sum", loss))
        return 3 * (values[-1] if largest else values[0])

    assert_reverse_transforms_match(ours, ref, w1, x, 1e-6)



def test_torch_func_gradient_of_each_end_of_a_wide_interval():
    """Four steps on the one-logit problem: Kato-Temple's interval, 1% wide, whose two ends have
    gradients 30% apart; torch.func.grad gives each end's as torch.autograd does through the C++
    Function (x included)."""
    (x, target, w1, b1, w2, b2), _, loss = problem(HEADS[0])

    def end(w1_, x_, which):
        interval = torch_ws.lambda_max_interval(x_, target, w1_, b1, w2, b2, "tanh", "sum", loss,
                                                steps=4)
        assert interval.source == "kato_temple"
        return getattr(interval, which)

    by_func = {which: torch.func.grad(end, argnums=(0, 1))(w1, x, which)
               for which in ("lower", "upper")}
    assert rel_err(by_func["lower"][0], by_func["upper"][0]) > 0.1
    for which, actual in by_func.items():
        leaves = [w1.clone().requires_grad_(), x.clone().requires_grad_()]
        expected = torch.autograd.grad(end(*leaves, which), leaves)
        for a, e in zip(actual, expected):
            assert rel_err(a, e) <= 1e-12


@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_reverse_mode_transforms_of_the_spectral_bound(head):
    """torch.func.grad and jacrev of every differentiable field of spectral_bound (a Python
    Function over _spectral_parts and _spectral_backward) equal torch.autograd's through the C++
    Function, which tests/test_spectral.py holds against the explicit matrices; vmap(grad(f))
    over models equals a loop. Without b1, so that an absent input's gradient is None."""
    (x, target, w1, _, w2, b2), _, loss = problem(head)

    def ours(w1_, x_):
        s = torch_ws.spectral_bound(x_, target, w1_, None, w2, b2, "tanh", "sum", loss)
        return s.upper + 2 * s.ggn_lambda_max + 3 * s.residual_lambda_max + 4 * s.lambda_min_lower

    leaves = [w1.clone().requires_grad_(), x.clone().requires_grad_()]
    expected = torch.autograd.grad(ours(*leaves), leaves)
    for actual in (torch.func.grad(ours, argnums=(0, 1))(w1, x),
                   torch.func.jacrev(ours, argnums=(0, 1))(w1, x)):
        for a, e in zip(actual, expected):
            assert rel_err(a, e) <= 1e-12
    w1s = torch.stack([w1, 0.5 * w1, -w1])
    batched = torch.func.vmap(torch.func.grad(ours), in_dims=(0, None))(w1s, x)
    for w, b in zip(w1s, batched):
        leaf = w.clone().requires_grad_()
        assert rel_err(b, torch.autograd.grad(ours(leaf, x), leaf)[0]) <= 1e-12


def test_vmap_of_the_interval_and_of_the_deep_ops_is_a_clear_error():
    """vmap cannot return an interval per entry (its source and product count are Python values),
    and the deep ops take lists of tensors, which PyTorch's generic batching cannot loop over:
    each names itself and says what to do instead, rather than PyTorch's "Batching rule not
    implemented" or a failure on .item()."""
    (x, target, w1, b1, w2, b2), _, loss = problem(HEADS[0])
    w1s = torch.stack([w1, 2 * w1])
    one_layer = lambda w: torch_ws.lambda_max_interval(x, target, w, b1, w2, b2).upper  # noqa: E731
    for transform in (torch.func.vmap(one_layer), torch.func.vmap(torch.func.grad(one_layer))):
        with pytest.raises(NotImplementedError, match="lambda_max_interval: torch.func.vmap"):
            transform(w1s)
    weights, biases = [w1, w1.new_ones(4, 4), w2], [b1, None, b2]
    calls = {
        "deep_hessian_traces": lambda w: torch_ws.deep_hessian_traces(
            x, target, [w, *weights[1:]], biases)[0],
        "deep_ws_bounds": lambda w: torch_ws.deep_ws_bounds(
            x, target, [w, *weights[1:]], biases).lambda_max_upper,
        "deep_lambda_min_interval": lambda w: torch_ws.deep_lambda_min_interval(
            x, target, [w, *weights[1:]], biases).lower,
    }
    for name, call in calls.items():
        with pytest.raises(NotImplementedError, match=f"{name}: torch.func.vmap is not supported"):
            torch.func.vmap(call)(w1s)
    n = torch_ws.deep_num_params(weights, biases)
    with pytest.raises(NotImplementedError, match="rows of one"):
        torch.func.vmap(lambda v: torch_ws.deep_hessian_vector_products(
            x, target, weights, biases, v))(torch.ones(2, n, dtype=torch.float64))
