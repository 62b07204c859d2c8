"""The spectral bound (docs/math.md §9) against independent truths: eigvalsh of the explicit float64
Hessian (torch.func.hessian) and of the explicit Gauss-Newton matrix (torch.func Jacobians and the
loss Hessian in the logits), autograd through those explicit matrices and finite differences
(gradcheck) for its gradient, opcheck for its fake kernel and registration."""
import pytest
import torch
from testing import (
    ACTIVATIONS, BIAS_CONFIGS, REDUCTIONS, make_head_problem, make_problem, rel_err,
    residual_majorant_by_formula,
)

import torch_ws
import reference

# (loss, C, target kind): one logit, and C logits for both losses that take them.
HEADS = [
    ("bce", 1, "soft"),
    ("mse", 1, "values"),
    ("mse", 3, "values"),
    ("cross_entropy", 3, "indices"),
    ("cross_entropy", 3, "probabilities"),
]


def head_id(head):
    return f"{head[0]}-C{head[1]}-{head[2]}"


def problem(head, **kwargs):
    """x, target, w1, b1, w2, b2 for a head (bce targets soft probabilities)."""
    loss, c, kind = head
    if loss == "bce":
        bias = kwargs.pop("bias", (True, True))
        return make_problem(soft_targets=True, bias=bias, **kwargs).args()
    return make_head_problem(loss, c, kind, **kwargs)


def differentiable(args):
    x, _, w1, b1, w2, b2 = args
    return [t for t in (x, w1, b1, w2, b2) if t is not None]


def explicit_spectra(args, act, red, loss):
    """Ascending eigenvalues of the explicit H, GGN and R = H − GGN (float64)."""
    hessian = reference.explicit_hessian(*args, act, red, loss)
    ggn = reference.explicit_gauss_newton(*args, act, red, loss)
    return (torch.linalg.eigvalsh(hessian), torch.linalg.eigvalsh(ggn),
            torch.linalg.eigvalsh(hessian - ggn))


def assert_parts_match(result, spectra, rtol=1e-8):
    h, ggn, residual = spectra
    scale = h.abs().max()
    assert abs(result.ggn_lambda_max.item() - ggn[-1].item()) <= rtol * scale
    assert abs(result.residual_lambda_max.item() - residual[-1].item()) <= rtol * scale
    assert result.upper >= h[-1]
    assert result.lambda_min_lower <= h[0]
    assert result.lambda_min_lower <= residual[0] + rtol * scale
    assert result.lambda_min_lower >= residual[0] - rtol * scale


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_parts_equal_the_explicit_spectra(head, act):
    loss = head[0]
    for red in REDUCTIONS:
        for bias in BIAS_CONFIGS:
            args = problem(head, n=6, d=3, h=4, bias=bias, seed=len(act))
            result = torch_ws.spectral_bound(*args, act, red, loss)
            assert_parts_match(result, explicit_spectra(args, act, red, loss))
            assert result.iterations == 0  # 6·C rows: the dense solver


@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_lanczos_with_certificate_equals_the_explicit_spectra(head):
    # N·C > 512 rows: Lanczos, then the Cholesky certificate.
    loss, c, _ = head
    args = problem(head, n=600 // c + 1, d=3, h=5, seed=3)
    result = torch_ws.spectral_bound(*args, "tanh", "mean", loss)
    assert result.iterations > 0
    assert result.residual <= 1e-8 * result.ggn_lambda_max
    assert_parts_match(result, explicit_spectra(args, "tanh", "mean", loss))


def test_the_bound_beats_wolkowicz_styan_where_the_spectrum_is_wide():
    # The point: WS drifts toward √tr(H²) as n grows; the spectral bound does not.
    args = make_problem(n=200, d=8, h=16, soft_targets=True, seed=1).args()
    h = torch.linalg.eigvalsh(reference.explicit_hessian(*args, "tanh", "mean"))
    result = torch_ws.spectral_bound(*args, "tanh", "mean")
    ws = torch_ws.ws_bound(*args, "tanh", "mean")
    assert h[-1] <= result.upper <= 1.5 * h[-1] < ws


def test_repeated_top_eigenvalues_stay_bounded():
    # Every hidden unit twice: each of R's blocks appears twice, so λ_max(R) is repeated.
    x, target, w1, b1, w2, b2 = make_problem(n=8, d=3, h=3, soft_targets=True, seed=2).args()
    w1 = torch.cat([w1, w1])
    b1 = torch.cat([b1, b1])
    w2 = torch.cat([w2, w2], 1)
    args = (x, target, w1, b1, w2, b2)
    spectra = explicit_spectra(args, "sigmoid", "sum", "bce")
    assert (spectra[2][-1] - spectra[2][-2]).abs() < 1e-12  # repeated, as built
    result = torch_ws.spectral_bound(*args, "sigmoid", "sum")
    assert_parts_match(result, spectra)
    # The gradient is a valid one of the two equal blocks': finite.
    params = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
    torch_ws.spectral_bound(x, target, *params, "sigmoid", "sum").upper.backward()
    assert all(torch.isfinite(p.grad).all() for p in params)


def explicit_parts(args, act, red, loss):
    """λ_max(GGN), λ_max(R), λ_min(R) by eigvalsh of the explicit matrices: differentiable."""
    hessian = reference.explicit_hessian(*args, act, red, loss)
    ggn = reference.explicit_gauss_newton(*args, act, red, loss)
    residual = torch.linalg.eigvalsh(hessian - ggn)
    return torch.linalg.eigvalsh(ggn)[-1], residual[-1], residual[0]


@pytest.mark.parametrize("head", HEADS, ids=head_id)
@pytest.mark.parametrize("act", ["tanh", "softplus", "gelu"])
def test_gradients_match_autograd_through_the_explicit_matrices(head, act):
    loss = head[0]
    args = problem(head, n=7, d=3, h=4, seed=11, requires_grad=True)
    inputs = differentiable(args)
    result = torch_ws.spectral_bound(*args, act, "mean", loss)
    expected = explicit_parts(args, act, "mean", loss)
    for ours, theirs in zip((result.ggn_lambda_max, result.residual_lambda_max,
                             result.lambda_min_lower), expected):
        g_ours = torch.autograd.grad(ours, inputs, retain_graph=True)
        g_theirs = torch.autograd.grad(theirs, inputs, retain_graph=True)
        for a, b in zip(g_ours, g_theirs):
            assert rel_err(a, b) < 1e-8


@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_gradcheck(head):
    loss = head[0]
    x, target, w1, b1, w2, b2 = problem(head, n=5, d=2, h=3, seed=7, requires_grad=True)

    def parts(x, w1, b1, w2, b2):
        r = torch_ws.spectral_bound(x, target, w1, b1, w2, b2, "silu", "sum", loss)
        return r.upper, r.ggn_lambda_max, r.residual_lambda_max, r.lambda_min_lower

    assert torch.autograd.gradcheck(parts, (x, w1, b1, w2, b2))


def test_gradcheck_through_lanczos():
    x, target, w1, b1, w2, b2 = make_problem(n=520, d=2, h=3, soft_targets=True, seed=4,
                                             requires_grad=True).args()

    def parts(w1, b1, w2, b2):
        r = torch_ws.spectral_bound(x, target, w1, b1, w2, b2, "tanh", "mean")
        return r.upper, r.ggn_lambda_max

    assert torch.autograd.gradcheck(parts, (w1, b1, w2, b2), atol=1e-7)


def test_upper_takes_the_wolkowicz_styan_bound_and_its_gradient_where_that_is_smaller():
    # n = 3 parameters with a single hidden unit and no biases: WS is the tighter of the two.
    found = False
    for seed in range(40):
        p = make_problem(n=4, d=2, h=1, bias=(False, False), soft_targets=True, seed=seed,
                         requires_grad=True)
        result = torch_ws.spectral_bound(*p.args(), "tanh", "sum")
        ws = torch_ws.ws_bound(*p.args(), "tanh", "sum")
        if ws < result.ggn_lambda_max + result.residual_lambda_max:
            found = True
            assert result.upper == ws
            for a, b in zip(torch.autograd.grad(result.upper, p.differentiable()),
                            torch.autograd.grad(ws, p.differentiable())):
                assert rel_err(a, b) < 1e-12
            break
    assert found


def test_zero_residual_gives_the_exact_top_eigenvalue():
    # e = 0 (targets equal to the outputs): R = 0, H = GGN, so the bound is λ_max itself.
    x, _, w1, b1, w2, b2 = make_head_problem("mse", 2, "values", n=9, seed=5)
    target = reference.mlp_logits(x, w1, b1, w2, b2, "tanh").detach()
    args = (x, target, w1, b1, w2, b2)
    h = torch.linalg.eigvalsh(reference.explicit_hessian(*args, "tanh", "mean", "mse"))
    result = torch_ws.spectral_bound(*args, "tanh", "mean", "mse")
    assert result.residual_lambda_max.abs() < 1e-15
    assert h[-1] <= result.upper <= h[-1] * (1 + 1e-10)


def test_saturated_sigmoid_curvature_stays_finite():
    # s = σ(z)σ(−z) underflows to 0 in float64 (|z| > 745): no NaN in the bound or its gradient.
    p = make_problem(n=6, d=3, h=4, scale=300.0, seed=6, requires_grad=True)
    result = torch_ws.spectral_bound(*p.args(), "tanh", "mean")
    assert all(torch.isfinite(t) for t in result[:5])
    result.upper.backward()
    assert all(torch.isfinite(t.grad).all() for t in p.differentiable())


def test_one_sample():
    args = make_problem(n=1, d=3, h=4, soft_targets=True, seed=8).args()
    assert_parts_match(torch_ws.spectral_bound(*args, "gelu", "mean"),
                       explicit_spectra(args, "gelu", "mean", "bce"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_keep_a_bound(dtype):
    p = make_problem(n=40, d=4, h=6, soft_targets=True, seed=9)
    args64 = p.args()
    args = [t.to(dtype) if t is not None else None for t in args64]
    # The bound of the network the low-precision values describe, computed exactly.
    exact = [t.double() if t is not None else None for t in args]
    h = torch.linalg.eigvalsh(reference.explicit_hessian(*exact, "tanh", "mean"))
    result = torch_ws.spectral_bound(*args, "tanh", "mean")
    assert result.upper.dtype == dtype and result.upper >= h[-1]
    assert result.lambda_min_lower <= h[0]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("head", [HEADS[0], HEADS[3]], ids=head_id)
def test_opcheck(head, requires_grad):
    for dtype in (torch.float32, torch.float64):
        args = problem(head, dtype=dtype, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.torch_ws.spectral_bound.default, args,
                              {"activation": "tanh", "reduction": "sum", "loss": head[0]})
        if not requires_grad:  # the majorant has no autograd formula: a test hook, not an op to train
            torch.library.opcheck(torch.ops.torch_ws._residual_majorant.default,
                                  (*args, "tanh", "sum", head[0]))


def test_meta_kernel_gives_the_output_shapes():
    args = [t.to("meta") if t is not None else None
            for t in make_head_problem("cross_entropy", 3, "indices", dtype=torch.float32)]
    out = torch.ops.torch_ws.spectral_bound(*args, loss="cross_entropy")
    for t in out[:5]:
        assert t.device.type == "meta" and t.shape == () and t.dtype == torch.float32
    assert out[5].dtype == torch.int64


def test_compiled_training_step_matches_eager():
    p = make_problem(n=30, d=3, h=5, soft_targets=True, seed=10, requires_grad=True)

    def step(x, w1, b1, w2, b2):
        return torch_ws.spectral_bound(x, p.target, w1, b1, w2, b2, "tanh", "mean").upper

    eager = step(*p.differentiable())
    eager_grads = torch.autograd.grad(eager, p.differentiable())
    compiled = torch.compile(step, fullgraph=True)(*p.differentiable())
    compiled_grads = torch.autograd.grad(compiled, p.differentiable())
    assert compiled == eager
    for a, b in zip(compiled_grads, eager_grads):
        assert rel_err(a, b) < 1e-12


def test_unsupported_modes_raise():
    p = make_problem(requires_grad=True)
    result = torch_ws.spectral_bound(*p.args())
    (g,) = torch.autograd.grad(result.upper, p.w1, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()
    plain = make_problem()
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        torch.func.jvp(lambda w1: torch_ws.spectral_bound(
            plain.x, plain.target, w1, plain.b1, plain.w2, plain.b2).upper,
            (plain.w1,), (torch.ones_like(plain.w1),))


def test_bad_input_names_the_op():
    p = make_problem()
    with pytest.raises(RuntimeError, match="torch_ws.spectral_bound"):
        torch_ws.spectral_bound(p.x, p.target, p.w1.t(), p.b1, p.w2, p.b2)
    with pytest.raises(RuntimeError, match="torch_ws.spectral_bound"):
        torch_ws.spectral_bound(p.x, p.target, p.w1, p.b1, p.w2, p.b2, "nope")


def test_vmap_runs_one_call_per_entry():
    p = make_problem(n=6, soft_targets=True)
    w1s = torch.stack([p.w1, 2 * p.w1])
    batched = torch.vmap(lambda w1: torch_ws.spectral_bound(
        p.x, p.target, w1, p.b1, p.w2, p.b2).upper)(w1s)
    for k in range(2):
        single = torch_ws.spectral_bound(p.x, p.target, w1s[k], p.b1, p.w2, p.b2).upper
        assert batched[k] == single


def test_autocast_runs_in_float32_and_stays_a_bound():
    p = make_problem(n=20, d=3, h=4, soft_targets=True, seed=12, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = torch_ws.spectral_bound(*p.args())
    plain = torch_ws.spectral_bound(*p.args())
    assert result.upper.dtype == torch.float32
    assert torch.equal(result.upper, plain.upper)


@pytest.mark.parametrize("head", [HEADS[0], ("mse", 2, "values")], ids=["bce", "mse"])
def test_gradient_of_the_gauss_newton_form_in_any_fixed_vector(head):
    """The GGN term of the gradient is that of zᵀMz with z held fixed (§9.4), for any z, not
    only the top eigenvector (where Hellmann-Feynman makes the two agree): the eigenvalue
    interval differentiates its bound on λ_2(GGN) this way, with z the deflated dual matrix's
    vector (§11.2). Against autograd through zᵀMz = ‖Σ_i J_iᵀ L_i z_i‖², J by torch.func and
    S_i = L_i L_iᵀ from the explicit loss Hessian in the logits."""
    loss = head[0]
    args = problem(head, n=7, d=3, h=4, seed=5, requires_grad=True)
    inputs = differentiable(args)
    x, target, w1, b1, w2, b2 = args
    parts = torch.ops.torch_ws._spectral_parts(*args, "tanh", "mean", loss)
    z = torch.randn(parts[7].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    ours = torch.ops.torch_ws._spectral_backward(
        zero, one, zero, zero, *args, "tanh", "mean", loss, torch.tensor(False), z, *parts[8:],
        True)

    def form(x, w1, b1, w2, b2):
        theta = reference.flatten_params(w1, b1, w2, b2)
        logits = reference.mlp_logits(x, w1, b1, w2, b2, "tanh").reshape(len(x), -1)
        n, c = logits.shape

        def logits_of(theta_):
            return reference.mlp_logits(x, *reference.unflatten_params(theta_, w1, b1, w2, b2),
                                        "tanh").reshape(-1)

        jacobian = torch.func.jacrev(logits_of)(theta).view(n, c, -1)
        curvature = torch.func.hessian(
            lambda v: reference.loss_of_logits(v.view(n, c).squeeze(1) if loss == "bce"
                                               else v.view(n, c), target, "mean", loss)
        )(logits.reshape(-1)).view(n, c, n, c)
        blocks = torch.stack([curvature[i, :, i, :] for i in range(n)])   # S_i (C × C)
        values, vectors = torch.linalg.eigh(blocks)                         # S_i = L_i L_iᵀ,
        factor = vectors * values.clamp_min(0).sqrt().unsqueeze(1)          # L_i = V√Λ
        weights = torch.einsum("icd,id->ic", factor, z)                     # L_i z_i
        return (torch.einsum("icn,ic->n", jacobian, weights) ** 2).sum()

    expected = torch.autograd.grad(form(x, w1, b1, w2, b2), inputs)
    present = [g for g in ours if g.numel() > 0]
    for a, b in zip(present, expected):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("bias", BIAS_CONFIGS, ids=str)
@pytest.mark.parametrize("red", REDUCTIONS)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_residual_majorant_bounds_the_residual(head, act, red, bias):
    """λ_max(R) ≤ max_k (a_k + √(a_k² + 4σ_k²))/2 with a_k = c_k·λ_max(X̃ᵀdiag(w)X̃) (docs/math.md
    §11.2, "At scale", the interval's λ_2 bound above 2048 dual rows): against eigvalsh of the
    explicit H − GGN, every head, activation, reduction and bias setting, at 9 and 40 samples."""
    for n, seed in ((9, 2), (40, 7)):
        args = problem(head, n=n, d=3, h=4, seed=seed, bias=bias)
        _, _, residual = explicit_spectra(args, act, red, head[0])
        majorant = torch.ops.torch_ws._residual_majorant(*args, act, red, head[0])
        assert majorant.dtype == torch.float64 and majorant.shape == ()
        assert float(majorant) >= float(residual[-1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_residual_majorant_at_saturation_and_with_repeated_blocks(head, dtype):
    """The majorant stays a finite bound on λ_max(R) (eigvalsh of the explicit H − GGN of the
    inputs as given, in float64) with weights 30× larger (saturated tanh, large logits) and with
    two identical hidden units (R's blocks, and so its top eigenvalue, repeated: the maximizing
    unit is a tie)."""
    args = problem(head, n=12, d=3, h=4, seed=3)
    x, target, w1, b1, w2, b2 = args
    saturated = (x, target, 30 * w1, 30 * b1, 30 * w2, b2)
    w1, b1, w2 = w1.clone(), b1.clone(), w2.clone()
    w1[1], b1[1], w2[:, 1] = w1[0], b1[0], w2[:, 0]
    repeated = (x, target, w1, b1, w2, b2)
    for case in (saturated, repeated):
        cast = tuple(a.to(dtype) if a is not None and a.is_floating_point() else a for a in case)
        wide = tuple(a.double() if a is not None and a.is_floating_point() else a for a in cast)
        _, _, residual = explicit_spectra(wide, "tanh", "mean", head[0])
        majorant = torch.ops.torch_ws._residual_majorant(*cast, "tanh", "mean", head[0])
        assert torch.isfinite(majorant)
        assert float(majorant) >= float(residual[-1])


@pytest.mark.parametrize("bias", BIAS_CONFIGS, ids=str)
def test_residual_majorant_is_its_formula(bias):
    """The op's majorant is the formula's value (plus an allowance of order 10⁻¹² relative): a
    change to any of its terms shows here even where it stays above λ_max(R)."""
    for n, seed in ((9, 2), (60, 3)):
        args = problem(HEADS[0], n=n, d=5, h=6, seed=seed, bias=bias)
        ours = float(torch.ops.torch_ws._residual_majorant(*args, "tanh", "mean", "bce"))
        expected = float(residual_majorant_by_formula(*args))
        assert expected <= ours <= expected * (1 + 1e-9)


@pytest.fixture(scope="module")
def wide_input_problem():
    """N = 2100, D = 2100, H = 4 (soft BCE targets): R's blocks would cost H·N·D̃² = 3.7·10¹⁰
    multiply-adds, above kExactResidualWork, so spectral_bound takes R's ends from the majorants
    (with D̃ > N, λ_w from the N × N Gram); n = 8409 stays small enough for jacrev."""
    return make_problem(n=2100, d=2100, h=4, seed=1, soft_targets=True).args()


def residual_blocks_by_formula(x, target, w1, b1, w2, b2):
    """Ascending eigenvalues of R's H blocks [[X̃ᵀdiag(β_k)X̃, X̃ᵀγ_k], [γ_kᵀX̃, 0]] (§9.3) for the
    binary cross-entropy, tanh, mean reduction, in plain PyTorch: (H, D̃ + 1)."""
    n = len(x)
    t = torch.tanh(x @ w1.T + b1)
    e = (torch.sigmoid((t @ w2.T).squeeze(1) + b2) - target) / n
    beta = -2 * t * (1 - t ** 2) * (e.unsqueeze(1) * w2)
    x_tilde = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    coupling = x_tilde.T @ (e.unsqueeze(1) * (1 - t ** 2))
    blocks = []
    for k in range(w1.shape[0]):
        block = torch.zeros(x_tilde.shape[1] + 1, x_tilde.shape[1] + 1, dtype=x.dtype)
        block[:-1, :-1] = x_tilde.T @ (beta[:, k:k + 1] * x_tilde)
        block[:-1, -1] = block[-1, :-1] = coupling[:, k]
        blocks.append(torch.linalg.eigvalsh(block))
    return torch.stack(blocks)


def test_wide_inputs_take_the_residual_from_its_majorants(wide_input_problem):
    """Above kExactResidualWork (docs/math.md §9.3) `residual_lambda_max` is the majorant of R and
    `lambda_min_lower` minus that of −R (each equal to the plain-PyTorch formula, and around R's
    exact block eigenvalues); `upper` is λ_max(GGN) + the majorant."""
    args = wide_input_problem
    bound = torch_ws.spectral_bound(*args, "tanh", "mean", "bce")
    blocks = residual_blocks_by_formula(*args)
    above = residual_majorant_by_formula(*args)
    below = residual_majorant_by_formula(*args, sign=-1)
    assert float(blocks[:, -1].max()) <= float(above) <= float(bound.residual_lambda_max)
    assert float(bound.residual_lambda_max) <= float(above) * (1 + 1e-8)
    assert float(bound.lambda_min_lower) <= -float(below) <= float(blocks[:, 0].min())
    assert float(bound.lambda_min_lower) >= -float(below) * (1 + 1e-8)
    assert float(bound.upper) >= float(bound.ggn_lambda_max + bound.residual_lambda_max)


def test_wide_inputs_gradients_match_autograd(wide_input_problem):
    """The gradients of `residual_lambda_max` (the majorant of R) and of `lambda_min_lower` (minus
    that of −R), which the backward recomputes from the inputs, the weights held fixed: against
    autograd through the formula, x included. (The GGN part's gradient is the exact-block path's,
    checked above against the explicit matrices.)"""
    x, target, *weights = (a.clone() for a in wide_input_problem)
    leaves = [x.requires_grad_(True)] + [w.requires_grad_(True) for w in weights]
    bound = torch_ws.spectral_bound(x, target, *weights, "tanh", "mean", "bce")
    actual = torch.autograd.grad(bound.residual_lambda_max + 2 * bound.lambda_min_lower, leaves)
    expected = torch.autograd.grad(
        residual_majorant_by_formula(x, target, *weights)
        - 2 * residual_majorant_by_formula(x, target, *weights, sign=-1), leaves)
    for ours, truth in zip(actual, expected):
        torch.testing.assert_close(ours, truth, rtol=1e-6, atol=1e-10)


# Above 16,384 dual rows (N·C) M is never formed (docs/math.md §9.2 "Without the dual matrix"):
# λ_max(GGN) from G itself (n × n, from its closed-form products) where n ≤ 4096, else by Lanczos
# on those products, certified by G's own traces.
# (head, N, D, H): N·C just above 16,384 for each head; n = 21–430 parameters.
BEYOND_THE_DUAL = [
    (("bce", 1, "soft"), 16400, 3, 4),
    (("mse", 3, "values"), 5500, 3, 4),
    (("cross_entropy", 10, "indices"), 1700, 3, 4),
    (("cross_entropy", 10, "probabilities"), 1700, 10, 20),
]


def beyond_the_dual_id(case):
    head, n, d, h = case
    return f"{head_id(head)}-N{n}-D{d}-H{h}"


@pytest.mark.parametrize("case", BEYOND_THE_DUAL, ids=beyond_the_dual_id)
def test_ggn_part_without_the_dual_matrix(case):
    head, n, d, h = case
    loss = head[0]
    args = problem(head, n=n, d=d, h=h, seed=12)
    result = torch_ws.spectral_bound(*args, "tanh", "mean", loss)
    ggn = torch.linalg.eigvalsh(reference.explicit_gauss_newton_by_sample(*args, "tanh", "mean", loss))
    hessian = torch.linalg.eigvalsh(reference.explicit_hessian(*args, "tanh", "mean", loss))
    assert abs(result.ggn_lambda_max.item() - ggn[-1].item()) <= 1e-8 * ggn[-1].item()
    assert result.upper >= hessian[-1]
    # The certificate closed on the GGN part: `upper` is the Weyl sum, not Wolkowicz-Styan.
    weyl = float(result.ggn_lambda_max + result.residual_lambda_max)
    assert float(result.upper) <= weyl * (1 + 1e-6)
    assert float(result.upper) < float(torch_ws.ws_bound(*args, "tanh", "mean", loss))


@pytest.mark.parametrize("classes, n, h", [(10, 1700, 20), (20, 820, 170)],
                         ids=["formed-G-n290", "lanczos-n4100"])
def test_ggn_part_without_the_dual_matrix_with_a_repeated_top_eigenvalue(classes, n, h):
    """A zero output layer with the cross-entropy: every S_i = (I − 11ᵀ/C)/(C·N) and only W2's
    Jacobian is non-zero, so G = (I − 11ᵀ/C)/(C·N) ⊗ Φ̃ᵀΦ̃ (Φ̃ = [tanh(X W1ᵀ + b1), 1]), whose top
    eigenvalue λ_max(Φ̃ᵀΦ̃)/(C·N) has C − 1 copies (Kato-Temple has no gap). Beyond the dual matrix
    (N·C > 16,384), G formed (n ≤ 4096) gives it exactly; the Lanczos route (n > 4096) a Ritz
    value below it and a bound above it, and it stops (the width no longer halving) long before
    its steps span θ's space (it once ran on to n steps)."""
    x, target, w1, b1, w2, b2 = make_head_problem("cross_entropy", classes, "indices", n=n, d=3,
                                                  h=h, seed=12)
    w2, b2 = torch.zeros_like(w2), torch.zeros_like(b2)
    features = torch.cat([torch.tanh(x @ w1.T + b1), torch.ones(n, 1, dtype=x.dtype)], 1)
    top = float(torch.linalg.eigvalsh(features.T @ features)[-1]) / (classes * n)
    result = torch_ws.spectral_bound(x, target, w1, b1, w2, b2, "tanh", "mean", "cross_entropy")
    assert float(result.ggn_lambda_max) <= top * (1 + 1e-10)
    assert float(result.upper) >= top + float(result.residual_lambda_max)
    if torch_ws.num_params(w1, b1, w2, b2) <= 4096:
        assert abs(float(result.ggn_lambda_max) - top) <= 1e-8 * top
        assert int(result.iterations) == 0
    else:
        assert 64 < int(result.iterations) <= 4 * 64


def test_dual_matrix_by_block_rows():
    # Above 1024 dual rows (and with n > N·C, so that the dual matrix is the GGN's route) the
    # dual matrix is formed by block rows up to the diagonal and mirrored (spectral_bound.cpp
    # dual_matrix): its parts and the gradient of λ_max(GGN) against the explicit matrices, and
    # the tightness of its certificate, whose residual ‖Mv − λv‖ reads the mirrored half.
    head = ("cross_entropy", 10, "indices")  # N·C = 1200 rows: blocks of 102 and 18 samples
    args = problem(head, n=120, d=3, h=100, seed=21, requires_grad=True)
    result = torch_ws.spectral_bound(*args, "tanh", "mean", head[0])
    assert_parts_match(result, explicit_spectra([a.detach() if a is not None else None
                                                 for a in args], "tanh", "mean", head[0]))
    # Its certificate reads the whole matrix (M's products with vectors): a tight bound.
    weyl = float((result.ggn_lambda_max + result.residual_lambda_max).detach())
    assert float(result.upper.detach()) <= weyl * (1 + 1e-8)
    inputs = differentiable(args)
    theirs = torch.linalg.eigvalsh(reference.explicit_gauss_newton(*args, "tanh", "mean",
                                                                   head[0]))[-1]
    for a, b in zip(torch.autograd.grad(result.ggn_lambda_max, inputs),
                    torch.autograd.grad(theirs, inputs)):
        assert rel_err(a, b) < 1e-6


def test_ggn_part_without_the_dual_matrix_has_the_eigenvalue_gradient():
    # The dual image of the Ritz vector stands for M's eigenvector (§9.4): the gradient of
    # λ_max(GGN) against autograd through eigvalsh of the explicit matrix.
    args = problem(("cross_entropy", 10, "indices"), n=1700, d=3, h=4, seed=13, requires_grad=True)
    inputs = differentiable(args)
    ours = torch_ws.spectral_bound(*args, "softplus", "sum", "cross_entropy").ggn_lambda_max
    theirs = torch.linalg.eigvalsh(reference.explicit_gauss_newton_by_sample(
        *args, "softplus", "sum", "cross_entropy"))[-1]
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_the_per_sample_reference_equals_the_dense_one(head):
    # The truth of the tests above, against the one built from the Hessian in all logits.
    for red in REDUCTIONS:
        args = problem(head, n=7, d=3, h=4, seed=14)
        dense = reference.explicit_gauss_newton(*args, "tanh", red, head[0])
        by_sample = reference.explicit_gauss_newton_by_sample(*args, "tanh", red, head[0])
        assert rel_err(by_sample, dense) < 1e-13


@pytest.mark.slow
def test_ggn_part_by_lanczos_beyond_the_dual_matrix():
    # n = 4820 > 4096 and N·C = 16,400: Lanczos on G's products, certified by G's own traces
    # (the trace cap's λ_2 bound, then Kato-Temple), against eigvalsh of the explicit GGN.
    args = make_head_problem("cross_entropy", 20, "indices", n=820, d=3, h=200, seed=16)
    result = torch_ws.spectral_bound(*args, "tanh", "mean", "cross_entropy")
    ggn = torch.linalg.eigvalsh(reference.explicit_gauss_newton_by_sample(
        *args, "tanh", "mean", "cross_entropy"))
    assert result.iterations == 65  # 64 Lanczos steps and the top Ritz vector's product
    assert abs(result.ggn_lambda_max.item() - ggn[-1].item()) <= 1e-8 * ggn[-1].item()
    weyl = float(result.ggn_lambda_max + result.residual_lambda_max)
    assert float(result.upper) >= float(ggn[-1] + result.residual_lambda_max)
    assert float(result.upper) <= weyl * (1 + 1e-6)  # Kato-Temple closed it


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", [1.0, 300.0], ids=["ordinary", "saturated"])
def test_ggn_part_without_the_dual_matrix_is_a_bound_in_float32_and_at_saturation(dtype, scale):
    # N·C = 17,000: float32 inputs and saturated logits (S_i ≈ 0 for the cross-entropy, the Gauss-
    # Newton part near 0) still give a finite guaranteed bound, above λ_max of the explicit float64
    # Hessian, and a finite gradient.
    args64 = problem(("cross_entropy", 10, "indices"), n=1700, d=3, h=4, seed=17, scale=scale)
    args = tuple(t.to(dtype) if t.is_floating_point() else t for t in args64)
    args = tuple(t.requires_grad_() if t.is_floating_point() and i != 1 else t
                 for i, t in enumerate(args))
    result = torch_ws.spectral_bound(*args, "tanh", "mean", "cross_entropy")
    hessian = torch.linalg.eigvalsh(reference.explicit_hessian(*args64, "tanh", "mean", "cross_entropy"))
    assert result.upper.dtype == dtype
    assert all(torch.isfinite(t) for t in result[:5])
    assert float(result.upper) >= float(hessian[-1])
    result.upper.backward()
    assert all(torch.isfinite(t.grad).all() for t in args if t.requires_grad)
