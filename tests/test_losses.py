"""The softmax cross-entropy and squared-error heads (docs/math.md §8) against independent truths:
the explicit float64 Hessian of the loss of the real nn.Module by torch.func.hessian (F.cross_entropy,
F.mse_loss), third-order autograd through it for gradients, gradcheck, opcheck and torch.compile;
and the HSRRegularizer taking the loss modules users already have."""
import pytest
import torch
import torch.nn.functional as F
from testing import (
    assert_float32_bound,
    ACTIVATIONS, BIAS_CONFIGS, DEVICES, REDUCTIONS, assert_compiled_step_matches_eager,
    make_head_problem, rel_err,
)
from torch import nn

import torch_ws
import reference

# (loss, C, target kind): every width the issue names, where the loss allows it.
HEADS = [
    ("cross_entropy", 2, "indices"),
    ("cross_entropy", 3, "indices"),
    ("cross_entropy", 7, "indices"),
    ("cross_entropy", 2, "probabilities"),
    ("cross_entropy", 3, "probabilities"),
    ("cross_entropy", 7, "probabilities"),
    ("mse", 1, "values"),
    ("mse", 2, "values"),
    ("mse", 3, "values"),
    ("mse", 7, "values"),
]


def head_id(head):
    loss, c, kind = head
    return f"{loss}-C{c}-{kind}"


def differentiable(args):
    x, _, w1, b1, w2, b2 = args
    return [t for t in (x, w1, b1, w2, b2) if t is not None]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_values_and_gradients_match_the_explicit_hessian(head, act):
    """Every loss × activation × reduction × bias setting × target kind: tr H, tr H² ≤ 1e-8,
    λ_max ≤ bound, the gradients of tr H, tr H² and the bound (x included) ≤ 1e-6."""
    loss, c, kind = head
    for red in REDUCTIONS:
        for bias in BIAS_CONFIGS:
            args = make_head_problem(loss, c, kind, bias=bias, seed=c, requires_grad=True)
            hess = reference.explicit_hessian(*args, act, red, loss)
            trace, trace_sq = torch_ws.hessian_traces(*args, act, red, loss)
            assert hess.shape[0] == torch_ws.num_params(*args[2:])
            assert rel_err(trace, hess.trace()) <= 1e-8, (red, bias)
            assert rel_err(trace_sq, (hess * hess).sum()) <= 1e-8, (red, bias)
            bound = torch_ws.ws_bound(*args, act, red, loss)
            assert torch.linalg.eigvalsh(hess.detach()).max() <= bound + 1e-12 * bound.abs()

            # One gradient of a combination of all three checks each (weights keep them apart).
            n = hess.shape[0]
            expected = torch.autograd.grad(
                hess.trace() + 0.3 * (hess * hess).sum()
                + 0.7 * reference.ws_upper_from_traces(hess.trace(), (hess * hess).sum(), n),
                differentiable(args),
            )
            actual = torch.autograd.grad(trace + 0.3 * trace_sq + 0.7 * bound, differentiable(args))
            for a, e in zip(actual, expected):
                assert a.shape == e.shape
                assert rel_err(a, e) <= 1e-6, (red, bias, rel_err(a, e))


@pytest.mark.parametrize("engine", ["sample", "parameter"])
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_blocks_smaller_than_the_batch_agree_with_whole_matrices(head, engine, monkeypatch):
    """The block loop (a last block of one sample, mirrored pairs; the parameter engine's chunks
    of Jacobians for C ≥ 2) and one block of all samples."""
    loss, c, kind = head
    args = make_head_problem(loss, c, kind, n=10, seed=5, requires_grad=True)
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)

    def values_and_grads():
        trace, trace_sq = torch_ws.hessian_traces(*args, "silu", "sum", loss)
        return [trace, trace_sq, *torch.autograd.grad(trace + trace_sq, differentiable(args))]

    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "whole")
    whole = values_and_grads()
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "3")
    tiled = values_and_grads()
    for a, b in zip(tiled, whole):
        assert rel_err(a, b) <= 1e-10


def engine_results(args, act, red, loss, engine, monkeypatch):
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    trace, trace_sq = torch_ws.hessian_traces(*args, act, red, loss)
    return [trace, trace_sq, *torch.autograd.grad(trace + 0.3 * trace_sq, differentiable(args))]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_both_engines_agree(head, act, monkeypatch):
    """Sample space (pairwise sums) and parameter space (the assembled n×n Hessian): two
    evaluation orders, values and gradients (x included) to 1e-10, every reduction and bias
    setting. C = 1 runs the one-logit engines (docs/math.md §4), C ≥ 2 those of §8."""
    loss, c, kind = head
    for red in REDUCTIONS:
        for bias in BIAS_CONFIGS:
            args = make_head_problem(loss, c, kind, n=9, bias=bias, seed=6, requires_grad=True)
            sample = engine_results(args, act, red, loss, "sample", monkeypatch)
            parameter = engine_results(args, act, red, loss, "parameter", monkeypatch)
            for a, b in zip(sample, parameter):
                assert rel_err(a, b) <= 1e-10, (red, bias)


@pytest.mark.parametrize("head", [HEADS[1], HEADS[4], HEADS[8]], ids=head_id)
def test_parameter_engine_matches_the_explicit_hessian(head):
    """The parameter-space engine on its own against the explicit Hessian (the automatic choice
    picks it for these small networks; the test makes sure), float32 inputs included."""
    loss, c, kind = head
    args = make_head_problem(loss, c, kind, n=40, seed=8, requires_grad=True)
    assert torch.ops.torch_ws._engine(args[0], args[2], True, True, c) == "parameter"
    hess = reference.explicit_hessian(*args, "tanh", "mean", loss)
    trace, trace_sq = torch_ws.hessian_traces(*args, "tanh", "mean", loss)
    assert rel_err(trace, hess.trace()) <= 1e-10
    assert rel_err(trace_sq, (hess * hess).sum()) <= 1e-10
    expected = torch.autograd.grad(hess.trace() + 0.3 * (hess * hess).sum(), differentiable(args))
    actual = torch.autograd.grad(trace + 0.3 * trace_sq, differentiable(args))
    for a, e in zip(actual, expected):
        assert rel_err(a, e) <= 1e-8
    args32 = [t if t is None or not t.is_floating_point()
              else t.detach().float().requires_grad_(t.requires_grad) for t in args]
    trace32, trace_sq32 = torch_ws.hessian_traces(*args32, "tanh", "mean", loss)
    grads32 = torch.autograd.grad(trace32 + 0.3 * trace_sq32, differentiable(args32))
    assert rel_err(trace32, trace) <= 1e-5 and rel_err(trace_sq32, trace_sq) <= 1e-5
    for a32, a in zip(grads32, actual):
        assert a32.dtype == torch.float32
        assert rel_err(a32, a) <= 1e-5


def test_automatic_engine_choice_for_several_outputs(monkeypatch):
    """Fitted on 2 cores (float32, value and gradients): the n×n Hessian for small networks and
    many samples, the pairwise sums for n ≫ N."""
    monkeypatch.delenv("TORCH_WS_ENGINE", raising=False)

    def engine(n, d, h, c):
        return torch.ops.torch_ws._engine(torch.empty(n, d), torch.empty(h, d), True, True, c)

    # n = 162, N = 1000, C = 10: measured 62 ms against 214 ms.
    assert engine(1000, 8, 8, 10) == "parameter"
    # n = 1002, N = 500, C = 10 (the benchmark's shape): 437 ms against 84 ms.
    assert engine(500, 20, 32, 10) == "sample"
    # n = 442, N = 256: 44 ms against 17 ms.
    assert engine(256, 16, 16, 10) == "sample"
    # Beyond the parameter-space limit (n = 8,522).
    assert engine(100_000, 64, 128, 10) == "sample"
    monkeypatch.setenv("TORCH_WS_ENGINE", "parameter")
    assert engine(256, 16, 16, 10) == "parameter"


@pytest.mark.parametrize("head", [HEADS[1], HEADS[4], HEADS[8]], ids=head_id)
def test_gradcheck(head):
    loss, c, kind = head
    x, target, w1, b1, w2, b2 = make_head_problem(loss, c, kind, n=5, d=2, h=3, seed=7,
                                                  requires_grad=True)

    def traces(x, w1, b1, w2, b2):
        return torch_ws.hessian_traces(x, target, w1, b1, w2, b2, "gelu", "mean", loss)

    def bound(x, w1, b1, w2, b2):
        return torch_ws.ws_bound(x, target, w1, b1, w2, b2, "tanh", "sum", loss)

    assert torch.autograd.gradcheck(traces, (x, w1, b1, w2, b2))
    assert torch.autograd.gradcheck(bound, (x, w1, b1, w2, b2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("head", [HEADS[1], HEADS[4], HEADS[6], HEADS[8]], ids=head_id)
def test_opcheck(head, requires_grad, device):
    loss, c, kind = head
    for op in (torch.ops.torch_ws.hessian_traces.default, torch.ops.torch_ws.ws_bound.default):
        for dtype in (torch.float32, torch.float64):
            args = make_head_problem(loss, c, kind, dtype=dtype, requires_grad=requires_grad,
                                     device=device)
            torch.library.opcheck(op, args, {"activation": "silu", "reduction": "sum", "loss": loss})


@pytest.mark.parametrize("head", [HEADS[1], HEADS[8]], ids=head_id)
def test_meta_kernels_give_the_output_shapes(head):
    loss, c, kind = head
    args = [t.to("meta") if t is not None else None
            for t in make_head_problem(loss, c, kind, dtype=torch.float32)]
    trace, trace_sq = torch.ops.torch_ws.hessian_traces(*args, loss=loss)
    bound = torch.ops.torch_ws.ws_bound(*args, loss=loss)
    for t in (trace, trace_sq, bound):
        assert t.device.type == "meta" and t.shape == () and t.dtype == torch.float32


@pytest.mark.parametrize("head", [HEADS[1], HEADS[4], HEADS[8]], ids=head_id)
def test_float32_matches_float64(head):
    loss, c, kind = head
    a64 = make_head_problem(loss, c, kind, n=40, d=5, h=8, seed=8)
    a32 = make_head_problem(loss, c, kind, n=40, d=5, h=8, seed=8, dtype=torch.float32)
    for fn in (torch_ws.ws_bound, lambda *a: torch_ws.hessian_traces(*a)[1]):
        v64, v32 = fn(*a64, "tanh", "mean", loss), fn(*a32, "tanh", "mean", loss)
        assert v32.dtype == torch.float32
        if fn is torch_ws.ws_bound:
            assert_float32_bound(v32, v64)
        else:
            assert rel_err(v32, v64) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_softmax_stays_finite_and_right(dtype):
    """Logits in the hundreds: a naive softmax overflows, and 1 − p_c computed from a rounded
    p_c ≈ 1 is 0 in float32. softplus keeps the hidden layer itself free of cancellation (φ' = σ),
    so what is tested is the softmax: tr H² is ~1e-17 and must still be right to float32 accuracy."""
    x, target, w1, b1, w2, b2 = make_head_problem("cross_entropy", 4, "indices", n=12, dtype=dtype,
                                                  seed=9, requires_grad=True, scale=30.0)
    trace, trace_sq = torch_ws.hessian_traces(x, target, w1, b1, w2, b2, "softplus", "mean",
                                              "cross_entropy")
    grads = torch.autograd.grad(trace + trace_sq, [x, w1, b1, w2, b2], retain_graph=True)
    assert torch.isfinite(trace) and torch.isfinite(trace_sq)
    assert all(torch.isfinite(g).all() for g in grads)
    ref64 = [t.detach().double().requires_grad_() if t is not None else None
             for t in (x, w1, b1, w2, b2)]
    hess = reference.explicit_hessian(ref64[0], target, *ref64[1:], "softplus", "mean",
                                      "cross_entropy")
    probs = torch.softmax(reference.mlp_logits(*ref64[:1], *ref64[1:], "softplus").double(), 1)
    assert (probs.max(1).values > 1 - 1e-7).double().mean() >= 0.5  # saturated indeed
    assert rel_err(trace_sq, (hess * hess).sum()) <= (1e-4 if dtype == torch.float32 else 1e-8)
    # The gradient too: the backward through the softmax (and the factor of S, §8.4) is written
    # without cancellation as well.
    expected = torch.autograd.grad((hess * hess).sum(), [t for t in ref64 if t is not None])
    actual = torch.autograd.grad(trace_sq, [x, w1, b1, w2, b2])
    for a, e in zip(actual, expected):
        assert rel_err(a, e) <= (1e-3 if dtype == torch.float32 else 1e-7)


def test_cross_entropy_with_class_probabilities_equals_class_indices():
    """One-hot probabilities and class indices are the same loss."""
    x, target, *params = make_head_problem("cross_entropy", 5, "indices", n=11, seed=10)
    one_hot = F.one_hot(target, 5).double()
    for a, b in zip(torch_ws.hessian_traces(x, target, *params, "tanh", "mean", "cross_entropy"),
                    torch_ws.hessian_traces(x, one_hot, *params, "tanh", "mean", "cross_entropy")):
        assert rel_err(a, b) <= 1e-14


def test_torch_compile_fullgraph_traces_a_training_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    reg = torch_ws.HSRRegularizer(model, loss=criterion)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def objective(x, y):
        return criterion(model(x), y) + 0.1 * reg(x, y)

    assert_compiled_step_matches_eager(objective, model, x, y)


# ---- HSRRegularizer(loss=...) ----


def explicit_bound_of(model, x, loss_of_logits):
    """The WS bound of the Hessian of loss_of_logits(model(x)) in the model's parameters."""
    params = dict(model.named_parameters())
    names = list(params)
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def loss_of(theta):
        out, offset = {}, 0
        for name in names:
            p = params[name]
            out[name] = theta[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        return loss_of_logits(torch.func.functional_call(model, out, (x,)))

    hess = torch.func.hessian(loss_of)(flat)
    return reference.ws_upper_from_traces(hess.trace(), (hess * hess).sum(), hess.shape[0])


@pytest.mark.parametrize("criterion", [
    nn.BCEWithLogitsLoss(),
    nn.BCEWithLogitsLoss(reduction="sum"),
    nn.CrossEntropyLoss(),
    nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum"),
    nn.MSELoss(),
    nn.MSELoss(reduction="sum"),
], ids=repr)
def test_regularizer_takes_the_loss_module_and_matches_it(criterion):
    torch.manual_seed(1)
    width = 1 if isinstance(criterion, nn.BCEWithLogitsLoss) else 3
    model = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, width)).double()
    x = torch.randn(9, 3, dtype=torch.float64)
    if isinstance(criterion, nn.CrossEntropyLoss):
        y = torch.randint(0, width, (9,))
    elif isinstance(criterion, nn.BCEWithLogitsLoss):
        y = torch.randint(0, 2, (9,)).double()
    else:
        y = torch.randn(9, width, dtype=torch.float64)
    reg = torch_ws.HSRRegularizer(model, loss=criterion)
    assert reg.reduction == criterion.reduction
    logits_loss = (lambda z: criterion(z.squeeze(-1), y)) if width == 1 else (lambda z: criterion(z, y))
    assert rel_err(reg(x, y), explicit_bound_of(model, x, logits_loss)) <= 1e-10


def test_regularizer_takes_loss_names():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    reg = torch_ws.HSRRegularizer(model, loss="cross_entropy", reduction="sum")
    assert "loss='cross_entropy'" in repr(reg) and "outputs=5" in repr(reg)
    x, y = torch.randn(8, 3), torch.randint(0, 5, (8,))
    expected = torch_ws.ws_bound(x, y, model[0].weight, model[0].bias, model[2].weight,
                                 model[2].bias, "tanh", "sum", "cross_entropy")
    assert torch.equal(reg(x, y), expected)


@pytest.mark.parametrize("loss, message", [
    (nn.CrossEntropyLoss(weight=torch.ones(3)), r"CrossEntropyLoss with a class weight cannot be honoured exactly"),
    (nn.CrossEntropyLoss(ignore_index=0), r"CrossEntropyLoss\(ignore_index=0\) cannot be honoured exactly"),
    (nn.BCEWithLogitsLoss(pos_weight=torch.ones(1)), r"BCEWithLogitsLoss with pos_weight cannot be honoured exactly"),
    (nn.BCEWithLogitsLoss(weight=torch.ones(1)), r"BCEWithLogitsLoss with a class weight"),
    (nn.MSELoss(reduction="none"), r"MSELoss\(reduction='none'\) has no scalar loss to bound"),
    (nn.L1Loss(), r"loss must be one of \('bce', 'cross_entropy', 'mse'\) or an instance of .*got L1Loss"),
    ("hinge", r"loss must be one of \('bce', 'cross_entropy', 'mse'\).*got 'hinge'"),
])
def test_regularizer_refuses_what_it_cannot_honour(loss, message):
    width = 1 if isinstance(loss, nn.BCEWithLogitsLoss) else 3
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, width))
    with pytest.raises(ValueError, match=message):
        torch_ws.HSRRegularizer(model, loss=loss)


def test_regularizer_refuses_a_head_that_does_not_fit_the_loss():
    with pytest.raises(ValueError, match=r"must be nn.Linear\(H, 1\) for loss 'bce'.*pass loss='cross_entropy'"):
        torch_ws.HSRRegularizer(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=r"'cross_entropy' needs nn.Linear\(H, C\) with C >= 2"):
        torch_ws.HSRRegularizer(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)),
                                loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match=r"reduction='sum' contradicts the loss module's reduction='mean'"):
        torch_ws.HSRRegularizer(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)),
                                reduction="sum", loss=nn.MSELoss())


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("head", [("bce", 1, "values"), HEADS[1], HEADS[8]], ids=head_id)
def test_piecewise_linear_activations_give_the_almost_everywhere_hessian(head, act):
    """Away from the kinks (every |pre-activation| well above 0) the loss is twice differentiable
    and its Hessian, the one torch.func.hessian computes, is what the closed form gives."""
    loss, c, kind = head
    if loss == "bce":
        x, _, w1, b1, w2, b2 = make_head_problem("mse", 1, "values", seed=11, requires_grad=True)
        target = torch.rand(7, dtype=torch.float64)
    else:
        x, target, w1, b1, w2, b2 = make_head_problem(loss, c, kind, seed=11, requires_grad=True)
    assert F.linear(x, w1, b1).abs().min() > 1e-3  # no sample sits on a kink
    args = (x, target, w1, b1, w2, b2)
    hess = reference.explicit_hessian(*args, act, "mean", loss)
    trace, trace_sq = torch_ws.hessian_traces(*args, act, "mean", loss)
    assert rel_err(trace, hess.trace()) <= 1e-8 and rel_err(trace_sq, (hess * hess).sum()) <= 1e-8
    grads = torch.autograd.grad(trace_sq, differentiable(args))
    expected = torch.autograd.grad((hess * hess).sum(), differentiable(args))
    for a, e in zip(grads, expected):
        assert rel_err(a, e) <= 1e-6


@pytest.mark.parametrize("head", [HEADS[2], HEADS[5], HEADS[6], HEADS[9]], ids=head_id)
def test_plain_pytorch_closed_form_matches_the_op_and_the_explicit_hessian(head):
    """reference.hessian_traces_closed_form (the benchmarks' plain-PyTorch baseline) is the §8
    formula: it agrees with the explicit Hessian, and its autograd with the op's backward."""
    loss, c, kind = head
    args = make_head_problem(loss, c, kind, n=8, seed=12, requires_grad=True)
    closed = reference.hessian_traces_closed_form(*args, "gelu", "sum", loss)
    hess = reference.explicit_hessian(*args, "gelu", "sum", loss)
    assert rel_err(closed[0], hess.trace()) <= 1e-10
    assert rel_err(closed[1], (hess * hess).sum()) <= 1e-10
    bound = torch_ws.ws_bound(*args, "gelu", "sum", loss)
    reference_bound = reference.ws_bound_closed_form(*args, "gelu", "sum", loss)
    assert rel_err(bound, reference_bound) <= 1e-12
    for a, b in zip(torch.autograd.grad(bound, differentiable(args)),
                    torch.autograd.grad(reference_bound, differentiable(args))):
        assert rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("rows", ["float32_rows_in_float64", "sum_1.5", "sum_0.2"])
def test_class_probabilities_of_any_row_sum_are_exact(rows):
    """F.cross_entropy takes probability rows of any sum, and the closed form is exact for them
    (the logit Hessian is τ(diag p − ppᵀ), τ the row's sum): no tolerance refuses float32 rows
    cast to float64, whose sums miss 1 by float32's rounding."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    w1, b1 = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    w2, b2 = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    target = torch.softmax(torch.randn(7, 3, generator=gen), 1)
    if rows == "float32_rows_in_float64":
        target = target.float().double()
    elif rows == "sum_1.5":
        target = target.double() * 0.6 + 0.3  # entries ≤ 0.9, rows summing to 1.5
    else:
        target = target.double() * 0.2
    H = reference.explicit_hessian(x, target, w1, b1, w2, b2, "tanh", "mean", "cross_entropy")
    trace, trace_sq = torch_ws.hessian_traces(x, target, w1, b1, w2, b2, "tanh", "mean", "cross_entropy")
    torch.testing.assert_close(trace, torch.trace(H), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(trace_sq, (H * H).sum(), rtol=1e-10, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(H)
    bound = torch_ws.spectral_bound(x, target, w1, b1, w2, b2, "tanh", "mean", "cross_entropy")
    assert float(bound.upper) >= float(eigenvalues[-1])
