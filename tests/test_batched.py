"""ws_bound_batched (B models of one shape in one call) against a loop over single models: values,
gradients (and gradcheck), every head, biases on and off, bad input, the entry points that
refuse; and the batched training of `torch-ws reproduce` against the single-model trainer."""
import pytest
import torch
from testing import ACTIVATIONS, BIAS_CONFIGS, DEVICES, make_head_problem, rel_err

import torch_ws
import reference

# (loss, C, target kind)
HEADS = [("bce", 1, "soft"), ("mse", 3, "values"), ("cross_entropy", 3, "indices")]


def batched_problem(head=HEADS[0], *, models=4, bias=(True, True), dtype=torch.float64, seed=0,
                    requires_grad=False, device="cpu", n=9, d=3, h=4):
    """x, target shared; w1 (B, H, D), b1 (B, H), w2 (B, C, H), b2 (B, C)."""
    loss, c, kind = head
    if loss == "bce":
        x, _, *_ = make_head_problem("mse", 1, "values", n=n, d=d, h=h, seed=seed, dtype=dtype)
        target = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        target = target.to(dtype)
    else:
        x, target, *_ = make_head_problem(loss, c, kind, n=n, d=d, h=h, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    params = [randn(models, h, d), randn(models, h) if bias[0] else None, randn(models, c, h),
              randn(models, c) if bias[1] else None]
    params = [p.to(device).requires_grad_(requires_grad) if p is not None else None
              for p in params]
    return (x.to(device), target.to(device), *params)


def model(args, b):
    x, target, *params = args
    return (x, target, *(p[b] if p is not None else None for p in params))


def looped(args, loss, activation="tanh", reduction="mean"):
    return torch.stack([torch_ws.ws_bound(*model(args, b), activation, reduction, loss)
                        for b in range(args[2].shape[0])])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: h[0])
def test_values_equal_a_loop_over_single_models(head, activation):
    args = batched_problem(head)
    out = torch_ws.ws_bound_batched(*args, activation, "mean", head[0])
    assert out.shape == (4,) and out.dtype == torch.float64
    # The same engine per model; inside the batch's parallel region ATen's reductions run on one
    # thread, so a sum may round differently in the last bit.
    torch.testing.assert_close(out, looped(args, head[0], activation), rtol=1e-13, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", BIAS_CONFIGS)
@pytest.mark.parametrize("head", HEADS, ids=lambda h: h[0])
def test_gradients_equal_a_loop_over_single_models(head, bias, dtype, device):
    args = batched_problem(head, bias=bias, dtype=dtype, requires_grad=True, device=device)
    args[0].requires_grad_(True)
    inputs = [t for t in (args[0], *args[2:]) if t is not None]
    weights = torch.linspace(0.5, 2.0, 4, dtype=dtype, device=device)  # a non-uniform upstream
    out = torch_ws.ws_bound_batched(*args, "silu", "sum", head[0])
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    expected = torch.autograd.grad((looped(args, head[0], "silu", "sum") * weights).sum(), inputs)
    for g, e in zip(grads, expected):
        assert g.dtype == dtype and g.shape == e.shape
        assert rel_err(g, e) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_gradcheck():
    args = batched_problem(models=3, n=6, h=3, requires_grad=True)
    args[0].requires_grad_(True)

    def f(x, w1, b1, w2, b2):
        return torch_ws.ws_bound_batched(x, args[1], w1, b1, w2, b2, "tanh", "mean")

    assert torch.autograd.gradcheck(f, (args[0], *args[2:]), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    for dtype in (torch.float32, torch.float64):
        args = batched_problem(HEADS[2], dtype=dtype, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.torch_ws.ws_bound_batched.default, args,
                              {"activation": "tanh", "reduction": "sum",
                               "loss": "cross_entropy"})


def test_meta_kernel_gives_the_output_shape():
    args = [t.to("meta") if t is not None else None
            for t in batched_problem(models=5, dtype=torch.float32)]
    out = torch.ops.torch_ws.ws_bound_batched(*args)
    assert out.device.type == "meta" and out.shape == (5,) and out.dtype == torch.float32


def test_low_precision_and_autocast_compute_in_float32():
    args64 = batched_problem()
    for dtype in (torch.bfloat16, torch.float16):
        args = [t.to(dtype) for t in args64]
        out = torch_ws.ws_bound_batched(*args)
        # A bound of the network the low-precision values describe, rounded up.
        exact = looped([t.double() for t in args], "bce")
        assert out.dtype == dtype and bool((out.double() >= exact).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch_ws.ws_bound_batched(*[t.float() for t in args64])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, looped([t.float() for t in args64], "bce"))


@pytest.mark.parametrize("change, message", [
    (lambda a: (a[0], a[1], a[2][0], a[3], a[4], a[5]), "expected w1 of shape (B, H, D)"),
    (lambda a: (a[0], a[1], a[2], a[3], a[4][0], a[5]), "expected w2 of shape (B, C, H)"),
    (lambda a: (a[0], a[1], a[2], a[3][:2], a[4], a[5]), "expected b1 of shape (B, H) with B = 4"),
    (lambda a: (a[0], a[1], a[2], a[3], a[4][:3], a[5]), "expected w2 of shape (B, C, H) with B = 4"),
    (lambda a: (a[0], a[1], a[2], a[3], a[4], a[5][:, None]), "expected b2 of shape (B, C)"),
    (lambda a: (a[0], a[1], a[2][:0], a[3][:0], a[4][:0], a[5][:0]), "at least one model"),
    (lambda a: (a[0], a[1], a[2], a[3][:, :2], a[4], a[5]), "torch_ws.ws_bound_batched: expected b1"),
    (lambda a: (a[0], a[1][:5], a[2], a[3], a[4], a[5]), "torch_ws.ws_bound_batched"),
    (lambda a: (a[0], a[1], a[2].float(), a[3], a[4], a[5]), "share one dtype"),
])
def test_bad_input_is_refused_with_a_message(change, message):
    args = change(batched_problem())
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        torch_ws.ws_bound_batched(*args)
    # The fake kernel runs the same checks.
    meta = [t.to("meta") for t in args]
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        torch.ops.torch_ws.ws_bound_batched(*meta)


def test_unsupported_autograd_modes_raise():
    args = batched_problem(requires_grad=True)
    out = torch_ws.ws_bound_batched(*args)
    (g,) = torch.autograd.grad(out.sum(), [args[2]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()
    plain = batched_problem()
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        torch.func.jvp(lambda w1: torch_ws.ws_bound_batched(plain[0], plain[1], w1, *plain[3:]),
                       (plain[2],), (torch.ones_like(plain[2]),))
    with pytest.raises(NotImplementedError, match="reverse-mode transforms"):
        torch.func.grad(lambda w1: torch_ws.ws_bound_batched(
            plain[0], plain[1], w1, *plain[3:]).sum())(plain[2])
    with pytest.raises(TypeError, match="activation must be a str"):
        torch_ws.ws_bound_batched(*plain, activation=b"tanh")


def test_internal_op_is_not_differentiable():
    args = batched_problem(requires_grad=True)
    trace, trace_sq, _, _ = torch.ops.torch_ws._batched_traces(*args, "tanh", "mean", False,
                                                                False, "bce")
    with pytest.raises(RuntimeError, match="_batched_traces is not differentiable"):
        trace.sum().backward()


# ---- The batched training of `torch-ws reproduce`. ----

from torch_ws.reproduce import batched, training  # noqa: E402
from torch_ws.reproduce.data import make_dataset  # noqa: E402


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
def test_closed_form_hessians_equal_torch_func_hessian(activation):
    data = make_dataset("gaussians", 40, 10, 0)
    params = batched.stack_initializations(2, 5, 1.0, [4, 5, 6])
    hessians = batched.explicit_hessians(data, params, activation)
    for b in range(3):
        expected = reference.explicit_hessian(data.x_train, data.y_train,
                                              *(p[b] for p in params), activation, "mean")
        assert rel_err(hessians[b], expected) < 1e-13


@pytest.mark.parametrize("hsr", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_batched_training_follows_the_single_model_trainer(activation, hsr):
    """Every model of a batch: the same stop (converged or out of steps, at the same step), end
    point, gradient norm and trajectory as training.train_run for its seed and learning rate."""
    data = make_dataset("gaussians", 50, 20, 1)
    # Moderate learning rates and few steps: GD near a saddle amplifies the last-bit rounding
    # differences of batched and single products exponentially, which longer runs would show.
    # The fourth model's small rate keeps it from stopping early.
    seeds, lrs = [3, 7, 11, 19, 23], [0.5, 1.0, 0.8, 0.05, 0.6]
    runs = batched.train_batch(data, 4, activation, seeds, lrs, hsr, rho=0.1, init_std=1.0,
                               max_steps=200, grad_tol=2e-2, record_points=4)
    stops = set()
    for seed, lr, run in zip(seeds, lrs, runs):
        ref = training.train_run(data, 4, activation, seed, lr, hsr, 0.1, 1.0, 200, 2e-2, 4)
        assert (run.converged, run.diverged, run.steps) == (ref.converged, ref.diverged, ref.steps)
        for p, q in zip(run.params, ref.params):
            assert p.shape == q.shape and rel_err(p, q) < 1e-10
        assert run.grad_norm == pytest.approx(ref.grad_norm, rel=1e-9)
        assert run.trajectory["step"] == ref.trajectory["step"]
        for key in ("loss", "bound", "lambda_max"):
            assert run.trajectory[key] == pytest.approx(ref.trajectory[key], rel=1e-9, abs=1e-14)
        stops.add(run.converged)
    assert stops == {True, False}  # the batch held models that stopped early and ones that ran on


def test_batched_training_freezes_diverged_models():
    data = make_dataset("gaussians", 30, 10, 0)
    runs = batched.train_batch(data, 3, "linear", [1, 2], [0.5, 1e3], False, 0.1, 1.0, 50, 1e-9,
                               2)
    ref = training.train_run(data, 3, "linear", 2, 1e3, False, 0.1, 1.0, 50, 1e-9, 2)
    assert runs[1].diverged and ref.diverged and runs[1].steps == ref.steps
    assert not runs[0].diverged and runs[0].steps == 50


def test_measure_batch_equals_measure():
    data = make_dataset("gaussians", 40, 200, 0)
    runs = batched.train_batch(data, 4, "sigmoid", [1, 2, 3], [0.5, 1, 2], True, 0.1, 1.0, 100,
                               5e-3, 2)
    for run, point in zip(runs, batched.measure_batch(data, runs)):
        expected = training.measure(data, run)
        assert point.keys() == expected.keys()
        for key, value in expected.items():
            assert point[key] == (pytest.approx(value, rel=1e-10, abs=1e-13)
                                  if isinstance(value, float) else value), key
