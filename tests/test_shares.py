"""The op families the distributed path and the reproduction build on, against the slow
reference (torch.func.hessian of the loss, autograd through the closed form):

- ``_hessian`` / ``_hessian_backward``: the explicit n×n Hessian of samples [begin, end) and the
  gradient of ⟨H̄, it⟩, for every head, activation, bias setting and dtype;
- ``_traces_share``: shares of the sample-space sums that add up to the whole traces and to the
  whole gradient of α·tr H + β·tr(H²), on every path (CPU tiles, whole matrices, the C-logit
  blocks).
"""
import pytest
import torch

import torch_ws
import reference
from testing import ACTIVATIONS, BIAS_CONFIGS, DTYPES, make_head_problem, rel_err

# (loss, C, target kind)
HEADS = [("bce", 1, "binary"), ("cross_entropy", 3, "indices"),
         ("cross_entropy", 3, "probabilities"), ("mse", 2, "real"), ("mse", 1, "real")]


def head_problem(loss, c, kind, **kwargs):
    x, target, w1, b1, w2, b2 = make_head_problem(loss, c, "real" if kind == "binary" else kind,
                                                  **kwargs)
    if kind == "binary":
        target = torch.rand(target.shape[0], generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64).to(x.dtype)
    elif c == 1:
        target = target[:, 0]
    return x, target, w1, b1, w2, b2


@pytest.mark.parametrize("loss, c, kind", HEADS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", BIAS_CONFIGS)
def test_explicit_hessian_is_torch_func_hessian(loss, c, kind, activation, bias):
    args = head_problem(loss, c, kind, n=9, bias=bias)
    for reduction in ("mean", "sum"):
        expected = reference.explicit_hessian(*args, activation, reduction, loss)
        got = torch_ws.explicit_hessian(*args, activation, reduction, loss)
        assert got.dtype == torch.float64 and got.shape == expected.shape
        assert rel_err(got, expected) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss, c, kind", HEADS)
def test_sample_ranges_add_up_and_backward_is_autograd(dtype, loss, c, kind):
    """H over [0, 4) plus H over [4, N) is H over all N (the loss scaled over all N), and the
    backward of ⟨H̄, H_[4, N)⟩ for a non-symmetric H̄ is autograd's through the reference."""
    args = head_problem(loss, c, kind, n=11, dtype=dtype)
    opts = ("tanh", "mean", loss)
    whole = torch.ops.torch_ws._hessian(*args, *opts)
    first = torch.ops.torch_ws._hessian(*args, *opts, 0, 4)
    rest = torch.ops.torch_ws._hessian(*args, *opts, 4, None)
    torch.testing.assert_close(first + rest, whole, rtol=1e-12, atol=1e-14)
    assert float(torch.ops.torch_ws._hessian(*args, *opts, 5, 5).abs().max()) == 0

    x, target, *params = (t.double() if t is not None and t.is_floating_point() else t
                          for t in args)
    hessian_bar = torch.randn(whole.shape, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(3))
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, *params)]
    share = reference.explicit_hessian(leaves[0][4:], target[4:], *leaves[1:], "tanh", "sum",
                                       loss) / (11 * (c if loss == "mse" else 1))
    expected = torch.autograd.grad((hessian_bar * share).sum(), [t for t in leaves if t is not None])
    got = torch.ops.torch_ws._hessian_backward(hessian_bar, *args, *opts, 4, None, True)
    got = [g for g in got if g.numel()]
    got[0] = got[0][4:]  # x's rows outside the range get no gradient
    expected = list(expected)
    expected[0] = expected[0][4:]
    assert torch.ops.torch_ws._hessian_backward(
        hessian_bar, *args, *opts, 4, None, True)[0][:4].abs().max() == 0
    tolerance = 1e-11 if dtype == torch.float64 else 1e-5
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        assert rel_err(g, e) < tolerance


# (TORCH_WS_ENGINE is not read by _traces_share; TORCH_WS_TILE_SIZE picks the path): tiles of 3
# samples on the CPU, whole matrices (the path of other devices), the automatic tile.
TILE_SETTINGS = ["3", "whole", "auto"]


@pytest.mark.parametrize("tile", TILE_SETTINGS)
@pytest.mark.parametrize("loss, c, kind", HEADS)
@pytest.mark.parametrize("num_shares", [1, 2, 5])
def test_traces_shares_add_up_to_the_whole(monkeypatch, tile, loss, c, kind, num_shares):
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", tile)
    args = head_problem(loss, c, kind, n=13, bias=(True, False))
    opts = ("silu", "mean", loss)
    trace, trace_sq = reference.hessian_traces_closed_form(*args, *opts)
    parts = [torch.ops.torch_ws._traces_share(*args, *opts, s, num_shares)
             for s in range(num_shares)]
    assert all(p[0].dtype == torch.float64 and p[2] == [] for p in parts)
    assert float(sum(p[0] for p in parts)) == pytest.approx(float(trace), rel=1e-12)
    assert float(sum(p[1] for p in parts)) == pytest.approx(float(trace_sq), rel=1e-12)
    if tile == "3" and num_shares == 2:
        assert all(float(p[1]) != 0 for p in parts)  # the work is split, not all on share 0

    alpha, beta = 0.7, -1.3
    leaves = [t.clone().requires_grad_(True) if t is not None and t.is_floating_point() and i != 1
              else t for i, t in enumerate(args)]
    t0, t1 = reference.hessian_traces_closed_form(*leaves, *opts)
    expected = torch.autograd.grad(alpha * t0 + beta * t1,
                                   [t for i, t in enumerate(leaves) if t is not None and i != 1])
    shares = [torch.ops.torch_ws._traces_share(*args, *opts, s, num_shares, [alpha, beta], True)[2]
              for s in range(num_shares)]
    total = [sum(share[k] for share in shares) for k in range(5)]
    for g, e in zip([g for g in total if g.numel()], expected):
        assert rel_err(g, e) < 1e-11


def test_opcheck_and_meta():
    args = head_problem("cross_entropy", 3, "indices", n=6)
    opts = ("tanh", "mean", "cross_entropy")
    n = torch_ws.num_params(*args[2:])
    torch.library.opcheck(torch.ops.torch_ws._hessian.default, (*args, *opts, 1, 5))
    torch.library.opcheck(torch.ops.torch_ws._hessian_backward.default,
                          (torch.eye(n, dtype=torch.float64), *args, *opts, 0, None, True))
    torch.library.opcheck(torch.ops.torch_ws._traces_share.default, (*args, *opts, 1, 2))
    torch.library.opcheck(torch.ops.torch_ws._traces_share.default,
                          (*args, *opts, 0, 2, [1.0, 2.0], False))
    meta = [t.to("meta") if t is not None else None for t in args]
    assert torch.ops.torch_ws._hessian(*meta, *opts).shape == (n, n)
    grads = torch.ops.torch_ws._traces_share(*meta, *opts, 0, 2, [1.0, 2.0], True)[2]
    assert [g.shape for g in grads] == [t.shape for t in (args[0], *args[2:])]


@pytest.mark.parametrize("call, message", [
    (lambda a, o: torch.ops.torch_ws._hessian(*a, *o, 3, 2),
     r"_hessian: expected 0 <= begin <= end <= N = 6 .*begin = 3 and end = 2"),
    (lambda a, o: torch.ops.torch_ws._hessian(*a, *o, 0, 7), r"N = 6"),
    (lambda a, o: torch.ops.torch_ws._hessian_backward(torch.eye(3, dtype=torch.float64), *a, *o),
     r"_hessian_backward: expected hessian_bar of shape \(31, 31\)"),
    (lambda a, o: torch.ops.torch_ws._traces_share(*a, *o, 2, 2),
     r"_traces_share: expected 0 <= share < num_shares, got share = 2 and num_shares = 2"),
    (lambda a, o: torch.ops.torch_ws._traces_share(*a, *o, 0, 2, [1.0]),
     r"expected weights = \[alpha, beta\]"),
    (lambda a, o: torch.ops.torch_ws._hessian(*a, "tanh", "mean", "bce"),
     r"torch_ws._hessian: "),
])
def test_bad_input_is_refused_clearly(call, message):
    args = head_problem("cross_entropy", 3, "indices", n=6)
    with pytest.raises(RuntimeError, match=message):
        call(args, ("tanh", "mean", "cross_entropy"))


def test_no_product_module_imports_the_reference():
    """The test oracle is test code: importing every torch_ws module (the reproduction too)
    never loads it."""
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, torch_ws\n"
            "for m in pkgutil.walk_packages(torch_ws.__path__, 'torch_ws.'):\n"
            "    if m.name != 'torch_ws.__main__': importlib.import_module(m.name)\n"
            "assert 'reference' not in sys.modules and 'torch_ws.reference' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_explicit_hessian_in_cache_sized_bands(monkeypatch):
    """n = 1101: the one-logit CPU assembly splits H's rows into bands that fit the caches
    (more bands than lanes); its trace and Frobenius norm are the sample-space engine's."""
    args = head_problem("bce", 1, "binary", n=30, d=20, h=50)
    hessian = torch_ws.explicit_hessian(*args, "tanh", "mean", "bce")
    assert hessian.shape == (1101, 1101)
    torch.testing.assert_close(hessian, hessian.T, rtol=0, atol=0)
    monkeypatch.setenv("TORCH_WS_ENGINE", "sample")
    trace, trace_sq = torch_ws.hessian_traces(*args, "tanh", "mean", "bce")
    assert float(hessian.trace()) == pytest.approx(float(trace), rel=1e-12)
    assert float((hessian ** 2).sum()) == pytest.approx(float(trace_sq), rel=1e-12)
