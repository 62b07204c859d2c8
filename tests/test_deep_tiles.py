"""The deep Gram forms in tiles of rows and in shares of rows (csrc/ops/deep/gram_forms.cpp,
docs/math.md §12.4): tiles smaller than N, and the shares [begin, end) that the ranks of
dataset_bounds evaluate, give the explicit Hessian's tr H and ‖H‖²_F (torch.func.hessian of the
real network), and so do their gradients, which GramFormsBackward takes by the tiles'
hand-derived adjoints (with create_graph: each tile recorded again, for an exact double
backward); forward mode and torch.func take the recorded path."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import torch_ws
from deep_testing import BIASES, HEADS, explicit_hessian, make_problem

CASES = [(head, activation, bias) for head in HEADS for activation in ("tanh", "softplus")
         for bias in BIASES]


def gram_traces(problem, activation, loss, begin=0, end=None, tile_rows=0):
    """The private op's (tr H, tr(H²), their certified errors) of a share, in tiles."""
    x, target, weights, biases = problem
    return torch.ops.torch_ws._deep_gram_form_traces(x, target, weights, biases, activation,
                                                     "mean", loss, begin, end, tile_rows)


def leaves_of(problem):
    x, target, weights, biases = problem
    x = x.detach().requires_grad_(True)
    weights = [w.detach().requires_grad_(True) for w in weights]
    biases = [b.detach().requires_grad_(True) if b is not None else None for b in biases]
    return (x, target, weights, biases), [x] + weights + [b for b in biases if b is not None]


def assert_close(got, expected, rtol):
    scale = max(float(expected.abs().max()), 1e-30)
    assert float((got - expected).abs().max()) <= rtol * scale


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}-{c[0][2]}-{c[1]}-{c[2]}")
def test_tiles_and_shares_give_the_explicit_traces(case):
    head, activation, bias = case
    index = CASES.index(case)
    problem = make_problem([[4, 3], [3, 4, 2]][index % 2], head, bias, seed=index, n=11)
    hessian = explicit_hessian(*problem, activation, "mean", head[0])
    expected = torch.stack([hessian.diagonal().sum(), hessian.pow(2).sum()])
    whole = gram_traces(problem, activation, head[0])
    for tile_rows in (1, 4):
        tiled = gram_traces(problem, activation, head[0], tile_rows=tile_rows)
        assert_close(torch.stack(tiled[:2]), expected, 1e-12)
    shares = [gram_traces(problem, activation, head[0], begin, end, 3)
              for begin, end in ((0, 5), (5, 5), (5, 11))]
    assert_close(sum(torch.stack(s[:2]) for s in shares), expected, 1e-12)
    # Each share's certified errors are those of its own sums: together no more than the
    # whole's (a subset of its terms), and they cover the sum's distance to the truth.
    share_errors = sum(torch.stack(s[2:]) for s in shares)
    assert bool((share_errors <= torch.stack(whole[2:]) * (1 + 1e-12)).all())
    assert bool(((sum(torch.stack(s[:2]) for s in shares) - expected).abs()
                 <= share_errors + 1e-13 * expected.abs()).all())
    assert shares[1][0] == 0 and shares[1][1] == 0  # an empty share (a rank without samples)


@pytest.mark.parametrize("case", CASES[::2], ids=lambda c: f"{c[0][0]}-{c[0][2]}-{c[1]}-{c[2]}")
def test_checkpointed_gradients_match_the_explicit_hessian(case):
    """Tiles of 3 rows of N = 8: the checkpointed backward (its node is GramFormsBackward), in x
    and every layer, against autograd through the explicit Hessian; and double backward (the
    gradient of the gradient's squared norm) against the same."""
    head, activation, bias = case
    index = CASES.index(case)
    problem, leaves = leaves_of(make_problem([[3, 3], [2, 3, 2]][index % 2], head, bias,
                                             seed=10 + index, n=8))

    def ours():
        trace, trace_sq, _, _ = gram_traces(problem, activation, head[0], tile_rows=3)
        return 0.3 * trace - 0.7 * trace_sq, trace_sq

    def truth():
        h = explicit_hessian(*problem, activation, "mean", head[0])
        return 0.3 * h.diagonal().sum() - 0.7 * h.pow(2).sum()

    value, trace_sq = ours()
    assert "GramFormsBackward" in trace_sq.grad_fn.name()
    for got, expected in zip(torch.autograd.grad(value, leaves),
                             torch.autograd.grad(truth(), leaves)):
        assert_close(got, expected, 1e-10)

    def gradient_norm(objective):
        return sum(g.pow(2).sum() for g in torch.autograd.grad(objective, leaves,
                                                               create_graph=True))

    for got, expected in zip(torch.autograd.grad(gradient_norm(ours()[0]), leaves),
                             torch.autograd.grad(gradient_norm(truth()), leaves)):
        assert_close(got, expected, 1e-9)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}-{c[0][2]}-{c[1]}-{c[2]}")
def test_hand_derived_gradients_on_wider_layers(case):
    """The hand-derived reverse pass (gram_forms_gradients: the tiles and tr H's diagonal terms;
    the chain and the forward pass below them), in x and every layer, against autograd through
    the explicit Hessian, on three hidden layers [5, 6, 8] (both forms of the paired products
    occur: §12.3's Q2/T2 for hidden m = 3 as paired_values, for the logits as a Gram where
    C·8 ≤ 2(C + 8), else paired), every head and bias setting, tiles of 3 rows."""
    head, activation, bias = case
    index = CASES.index(case)
    problem, leaves = leaves_of(make_problem([5, 6, 8], head, bias, seed=40 + index, n=7))

    trace, trace_sq, _, _ = gram_traces(problem, activation, head[0], tile_rows=3)
    assert "GramFormsBackward" in trace_sq.grad_fn.name()
    assert "GramFormsBackward" in trace.grad_fn.name()  # tr H's diagonal terms: the same node
    h = explicit_hessian(*problem, activation, "mean", head[0])
    for got, expected in zip(torch.autograd.grad(0.3 * trace - 0.7 * trace_sq, leaves),
                             torch.autograd.grad(0.3 * h.diagonal().sum() - 0.7 * h.pow(2).sum(),
                                                 leaves)):
        assert_close(got, expected, 1e-10)


def test_forward_mode_and_torch_func_take_the_recorded_path():
    """With tiles that would be checkpointed: a forward-mode tangent, torch.func.grad and
    torch.func.jvp (a C++ Function serves none of them) give the explicit Hessian's derivative."""
    problem = make_problem([3, 4], HEADS[1], "all", seed=3, n=9)
    x, target, weights, biases = problem

    def ours(w1):
        return gram_traces((x, target, [w1] + weights[1:], biases), "tanh", "cross_entropy",
                           tile_rows=2)[1]

    def truth(w1):
        return explicit_hessian(x, target, [w1] + weights[1:], biases, "tanh", "mean",
                                "cross_entropy").pow(2).sum()

    w1 = weights[0]
    direction = torch.randn_like(w1)
    expected_grad = torch.func.grad(truth)(w1)
    assert_close(torch.func.grad(ours)(w1), expected_grad, 1e-10)
    _, tangent = torch.func.jvp(ours, (w1,), (direction,))
    assert float(tangent) == pytest.approx(float((expected_grad * direction).sum()), rel=1e-10)
    with fwAD.dual_level():
        value = ours(fwAD.make_dual(w1, direction))
        assert float(fwAD.unpack_dual(value).tangent) == pytest.approx(float(tangent), rel=1e-12)


def test_gauss_newton_grams_beyond_the_dual_matrix(monkeypatch):
    """N·C = 8400 > 8192 dual rows: tr(G²) from the Grams of the per-sample E blocks (not the dual
    matrix), in the default tiles (N = 2800: two of the value's, eight of the checkpointed
    gradient's), against the assembled Hessian's traces and gradients (tests/test_deep.py checks
    that engine against the explicit Hessian)."""
    problem, leaves = leaves_of(make_problem([3, 2], HEADS[3], "all", seed=5, n=2800))
    trace, trace_sq, _, _ = gram_traces(problem, "tanh", "mse")
    assert "GramFormsBackward" in trace_sq.grad_fn.name()
    grads = torch.autograd.grad(0.3 * trace - 0.7 * trace_sq, leaves)
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    expected = torch_ws.deep_hessian_traces(*problem, "tanh", "mean", "mse")
    assert_close(torch.stack([trace, trace_sq]), torch.stack(expected), 1e-11)
    for got, want in zip(grads, torch.autograd.grad(0.3 * expected[0] - 0.7 * expected[1],
                                                    leaves)):
        assert_close(got, want, 1e-10)


@pytest.mark.parametrize("widths", [[3, 2], [4, 3, 2], [2, 5, 3]])
def test_factorised_magnitudes_bound_the_evaluation_on_magnitudes(widths):
    """§12.5's M_sq, which the certified errors scale, comes from the pairs' sums factorised by
    Cauchy–Schwarz on the feature kernels (O(N·H²)); it must be at least the evaluation itself run
    on magnitudes (Σ|terms| of every sum), and not much more (else the error is needlessly wide),
    for every head, bias setting, share, and the Gauss-Newton Grams beyond the dual matrix."""
    ratios = []
    for (head, bias), share in zip([(h, b) for h in HEADS for b in BIASES],
                                   [(0, None), (2, 7), (5, 5), (0, 4)] * 3):
        for activation in ("tanh", "gelu"):
            x, target, weights, biases = make_problem(widths, head, bias, seed=len(widths), n=9)
            m = [torch.ops.torch_ws._deep_gram_form_magnitudes(
                x, target, weights, biases, activation, "mean", head[0], *share, factorised)
                for factorised in (True, False)]
            # M_tr is the evaluation's own, widened by its own rounding (a few 10⁻¹⁴ here)
            assert 0 <= float(m[0][0]) - float(m[1][0]) <= 1e-12 * float(m[1][0])
            if share[0] == share[1]:
                assert float(m[0][1]) == float(m[1][1]) == 0
                continue
            ratios.append(float(m[0][1]) / float(m[1][1]))
    assert min(ratios) >= 1 - 1e-12 and max(ratios) <= 10, (min(ratios), max(ratios))
    x, target, weights, biases = make_problem([3, 2], HEADS[3], "all", seed=5, n=2800)  # N·C > 8192
    m = [torch.ops.torch_ws._deep_gram_form_magnitudes(x, target, weights, biases, "tanh", "mean",
                                                       "mse", 100, 2000, factorised)
         for factorised in (True, False)]
    assert float(m[1][1]) <= float(m[0][1]) <= 10 * float(m[1][1])


def test_bad_shares_and_tiles_are_refused():
    """A share outside [0, N] or a negative tile size: an error saying what was expected."""
    problem = make_problem([3, 2], HEADS[0], "all", seed=1, n=6)
    with pytest.raises(RuntimeError, match=r"expected 0 <= begin <= end <= N = 6, got begin = 4, "
                                           r"end = 7"):
        gram_traces(problem, "tanh", "bce", 4, 7)
    with pytest.raises(RuntimeError, match=r"expected 0 <= begin <= end <= N = 6, got begin = 5, "
                                           r"end = 2"):
        gram_traces(problem, "tanh", "bce", 5, 2)
    with pytest.raises(RuntimeError, match=r"expected tile_rows >= 0 \(0: the default\), got -1"):
        gram_traces(problem, "tanh", "bce", tile_rows=-1)


def test_opcheck():
    """The share op traces with static and dynamic shapes (its certified errors come from their
    own op, which answers fake tensors by a Meta kernel, so nothing it reads is data-dependent),
    and its errors op has a schema and a Meta kernel of its own."""
    x, target, weights, biases = make_problem([3, 2], HEADS[1], "mixed", seed=1, n=6)
    torch.library.opcheck(torch.ops.torch_ws._deep_gram_form_traces.default,
                          (x, target, weights, biases, "tanh", "mean", "cross_entropy", 1, 5, 2),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor", "test_aot_dispatch_static",
                                      "test_aot_dispatch_dynamic"))
    detached = ([w.detach() for w in weights], [b.detach() if b is not None else None
                                                for b in biases])
    torch.library.opcheck(torch.ops.torch_ws._deep_gram_form_errors.default,
                          (x, target, *detached, "tanh", "mean", "cross_entropy", 1, 5, 2),
                          test_utils=("test_schema", "test_faketensor"))
