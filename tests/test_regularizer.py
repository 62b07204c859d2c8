"""HSRRegularizer: equals the op on the model's parameters, bounds the real model's Hessian,
reaches every parameter, refuses what it cannot handle, and lowers sharpness in training."""
import statistics

import pytest
import torch
from torch import nn

import torch_ws
import reference

SMOOTH_MODULES = [
    (nn.Identity(), "linear"),
    (nn.Sigmoid(), "sigmoid"),
    (nn.Tanh(), "tanh"),
    (nn.Softplus(), "softplus"),
    (nn.GELU(), "gelu"),
    (nn.GELU(approximate="tanh"), "gelu_tanh"),
    (nn.SiLU(), "silu"),
]


def mlp(act, d=3, h=5, bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, h, bias=bias), act, nn.Linear(h, 1, bias=bias)).double()


def data(n=12, d=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=gen, dtype=torch.float64), torch.randint(0, 2, (n,), generator=gen).double()


@pytest.mark.parametrize("module,name", SMOOTH_MODULES, ids=[n for _, n in SMOOTH_MODULES])
def test_regularizer_bounds_the_real_models_hessian(module, name):
    model = mlp(module)
    reg = torch_ws.HSRRegularizer(model)
    assert reg.activation == name
    x, y = data()
    # Independent truth: the explicit Hessian of the nn.Module's own loss.
    params = dict(model.named_parameters())
    names = list(params)
    shapes = [p.shape for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss_of(flat):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        new = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(model, new, (x,)).squeeze(-1)
        return nn.functional.binary_cross_entropy_with_logits(out, y)

    hess = torch.func.hessian(loss_of)(theta)
    expected = reference.ws_upper_from_traces(hess.trace(), (hess * hess).sum(), hess.shape[0])
    value = reg(x, y)
    assert torch.allclose(value, expected, rtol=1e-9)
    assert torch.linalg.eigvalsh(hess).max() <= value * (1 + 1e-12)
    direct = torch_ws.ws_bound(x, y, model[0].weight, model[0].bias, model[2].weight, model[2].bias, name)
    assert torch.equal(value, direct)


def test_gradients_reach_every_parameter_and_x():
    model = mlp(nn.Tanh())
    reg = torch_ws.HSRRegularizer(model)
    x, y = data()
    x.requires_grad_(True)
    reg(x, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    # No parameters of its own: it must not duplicate the model's in an optimizer.
    assert list(reg.parameters()) == []


def test_three_modules_separately_and_no_bias_and_sum_reduction():
    model = mlp(nn.SiLU(), bias=False)
    reg = torch_ws.HSRRegularizer(model[0], model[1], model[2], reduction="sum")
    x, y = data()
    expected = torch_ws.ws_bound(x, y, model[0].weight, None, model[2].weight, None, "silu", "sum")
    assert torch.equal(reg(x, y), expected)
    assert "num_params=20" in repr(reg) and "'silu'" in repr(reg) and "'sum'" in repr(reg)


def test_integer_labels_and_column_targets_are_accepted():
    model = mlp(nn.Tanh())
    reg = torch_ws.HSRRegularizer(model)
    x, y = data()
    assert torch.equal(reg(x, y.long()), reg(x, y.unsqueeze(1)))


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: mlp(nn.ReLU6()), r"ReLU6 is not supported \(the activation table has no entry for it\)"),
        (lambda: mlp(nn.ELU()), r"ELU is not supported"),
        (lambda: mlp(nn.LeakyReLU(0.2)), r"LeakyReLU only with negative_slope=0.01 \(the default\), got negative_slope=0.2"),
        (lambda: mlp(nn.Softplus(beta=2.0)), r"Softplus only with beta=1"),
        (lambda: mlp(nn.Softsign()), r"unsupported activation Softsign; expected one of: nn.Identity"),
        (lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), r"nn.Linear\(H, 1\).*out_features=2"),
        (lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh()), r"with 2 modules"),
        (lambda: nn.Sequential(nn.Conv1d(3, 5, 1), nn.Tanh(), nn.Linear(5, 1)), r"first layer must be nn.Linear, got Conv1d"),
        (lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(4, 1)), r"hidden layer has 5 units but the output layer expects 4"),
    ],
)
def test_unsupported_models_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        torch_ws.HSRRegularizer(build())


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\), got 'max'"):
        torch_ws.HSRRegularizer(mlp(nn.Tanh()), reduction="max")


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_works_with_optimizers(optimizer):
    model = mlp(nn.Tanh())
    reg = torch_ws.HSRRegularizer(model)
    opt = optimizer(model.parameters(), lr=1e-2)
    x, y = data()
    before = reg(x, y).item()
    for _ in range(5):
        opt.zero_grad()
        reg(x, y).backward()
        opt.step()
    assert reg(x, y).item() < before


def _train(seed, rho, steps=400, lr=0.5):
    """Full-batch GD on two Gaussian classes (2-10-1 tanh); returns the exact λ_max at the end."""
    gen = torch.Generator().manual_seed(seed)
    n = 60
    x = torch.cat([torch.randn(n // 2, 2, generator=gen) * 1.4 - 1, torch.randn(n // 2, 2, generator=gen) * 1.4 + 1]).double()
    y = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).double()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 10), nn.Tanh(), nn.Linear(10, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)
    reg = torch_ws.HSRRegularizer(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        (loss + rho * reg(x, y) if rho else loss).backward()
        opt.step()
    params = (model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    with torch.no_grad():
        hess = reference.explicit_hessian(x, y, *[p.detach() for p in params], "tanh")
    return float(torch.linalg.eigvalsh(hess).max())


def test_hsr_lowers_the_exact_lambda_max_of_training():
    seeds = range(6)
    plain = [_train(s, rho=0.0) for s in seeds]
    hsr = [_train(s, rho=0.2) for s in seeds]
    assert statistics.median(hsr) < 0.8 * statistics.median(plain), (plain, hsr)


@pytest.mark.parametrize("wrap", [torch.nn.DataParallel, torch.compile], ids=["DataParallel", "compile"])
def test_regularizer_unwraps_training_wrappers(wrap):
    """A wrapped model (DataParallel, DistributedDataParallel, torch.compile) used to be refused
    as "not nn.Sequential"; the wrapper shares the parameters, so the bound is the inner model's."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x, y = torch.randn(8, 3), (torch.rand(8) > 0.5).float()
    expected = torch_ws.HSRRegularizer(model)(x, y)
    wrapped = torch_ws.HSRRegularizer(wrap(model))
    bound = wrapped(x, y)
    assert torch.equal(bound, expected)
    bound.backward()
    assert model[0].weight.grad is not None


def _ten_class_regularizer():
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 3))
    return model, torch_ws.HSRRegularizer(model, loss=nn.CrossEntropyLoss(label_smoothing=0.1))


def test_regularizer_saves_and_loads_with_torch_load_defaults(tmp_path):
    """torch.load's default (weights_only=True) refused a saved regularizer: the default pickle
    of a Module names nn.Linear and the activation class."""
    model, reg = _ten_class_regularizer()
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    torch.save(reg, tmp_path / "reg.pt")
    loaded = torch.load(tmp_path / "reg.pt")
    assert repr(loaded) == repr(reg)
    assert torch.equal(loaded(x, y), reg(x, y))
    # Saved with the model, it keeps bounding that model's parameters.
    torch.save({"model": model, "reg": reg}, tmp_path / "both.pt")
    both = torch.load(tmp_path / "both.pt", weights_only=False)
    with torch.no_grad():
        both["model"][0].weight.mul_(2)
    assert torch.equal(both["reg"](x, y), torch_ws.HSRRegularizer(
        both["model"], loss=nn.CrossEntropyLoss(label_smoothing=0.1))(x, y))


def test_regularizer_follows_dtype_and_device_conversions():
    """reg.double() did nothing (the layers are references, not submodules); it converts them,
    as it would a submodule's parameters."""
    model, reg = _ten_class_regularizer()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    assert reg.double() is reg
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert reg(x, y).dtype == torch.float64
    reg.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert list(reg.parameters()) == []  # still not listing the model's parameters twice



def test_compiled_step_with_backward_inside():
    """torch.compile(fullgraph=True) of a whole step that calls .backward() inside: PyTorch
    2.13's Dynamo refuses Tensor.backward() unless torch._dynamo.config.trace_autograd_ops is on
    (a PyTorch limit, documented in the README); with it on, the step compiles as one graph and
    its gradients are eager's. Compiling the objective and calling .backward() outside needs no
    flag (tests/test_ops.py)."""
    import torch._dynamo

    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    reg = torch_ws.HSRRegularizer(model)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,)).float()

    def step(x, y):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss = loss + 0.1 * reg(x, y)
        loss.backward()
        return loss.detach()

    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="trace_autograd_ops"):
        torch.compile(step, backend="aot_eager", fullgraph=True)(x, y)
    model.zero_grad()
    expected = step(x, y)
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        loss = torch.compile(step, backend="aot_eager", fullgraph=True)(x, y)
    assert torch.equal(loss, expected)
    for p, g in zip(model.parameters(), expected_grads):
        assert torch.allclose(p.grad, g, rtol=1e-6, atol=1e-8)


def test_spectral_regularizer_bounds_the_real_models_hessian_and_trains():
    model = mlp(nn.Tanh())
    reg = torch_ws.HSRRegularizer(model, bound="spectral")
    x, y = data()
    params = (model[0].weight, model[0].bias, model[2].weight, model[2].bias)
    hess = reference.explicit_hessian(x, y, *[p.detach() for p in params], "tanh")
    value = reg(x, y)
    assert torch.linalg.eigvalsh(hess).max() <= value
    assert torch.equal(value, torch_ws.spectral_bound(x, y, *params, "tanh").upper)
    assert "bound='spectral'" in repr(reg)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        reg(x, y).backward()
        opt.step()
    assert reg(x, y).item() < value.item()


def test_spectral_regularizer_saves_and_loads(tmp_path):
    model = mlp(nn.Tanh())
    reg = torch_ws.HSRRegularizer(model, bound="spectral")
    torch.save(reg, tmp_path / "reg.pt")
    loaded = torch.load(tmp_path / "reg.pt")
    x, y = data()
    assert loaded.bound == "spectral" and torch.equal(loaded(x, y), reg(x, y))


def test_unknown_bound_is_refused():
    with pytest.raises(ValueError, match="bound must be one of"):
        torch_ws.HSRRegularizer(mlp(nn.Tanh()), bound="lanczos")


class _Tripled(nn.Linear):
    def forward(self, x):
        return 3 * super().forward(x)


class _Renamed(nn.Linear):
    """A subclass that keeps nn.Linear's forward: the same function, accepted."""


@pytest.mark.parametrize("first, message", [
    (lambda: _Tripled(3, 4), "the first layer is _Tripled, a subclass of nn.Linear with its own "
                             "forward"),
    (lambda: nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)),
     r"the first layer is parametrized \(torch.nn.utils.parametrize"),
    (lambda: nn.utils.parametrizations.spectral_norm(nn.Linear(3, 4)),
     r"the first layer is parametrized"),
    ("a forward hook that doubles the output", None),
])
def test_layers_whose_function_is_not_plain_linear_are_refused(first, message):
    """A Linear subclass computing 3·(Wx + b) was bounded as the plain layer (λ_max 3.10, "bound"
    0.877); parametrized layers train other tensors than W. Both are refused by every
    module-level entry point, naming it."""
    if message is None:
        layer = nn.Linear(3, 4)
        layer.register_forward_hook(lambda m, i, o: 2 * o)
        message = "the first layer has forward hooks or a computed weight"
    else:
        layer = first()
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(5, 3), torch.rand(5)
    with pytest.raises(ValueError, match="HSRRegularizer: " + message):
        torch_ws.HSRRegularizer(model)
    with pytest.raises(ValueError, match="dataset_bounds: " + message):
        torch_ws.dataset_bounds(model, [(x, y)])


def test_a_linear_subclass_with_linears_forward_is_accepted():
    model = nn.Sequential(_Renamed(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(5, 3), torch.rand(5)
    expected = torch_ws.ws_bound(x, y, model[0].weight, model[0].bias, model[2].weight,
                                 model[2].bias)
    assert torch.equal(torch_ws.HSRRegularizer(model)(x, y), expected)
