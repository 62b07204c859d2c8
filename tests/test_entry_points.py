"""Every entry point fails the same way on the same bad input, and the package works as installed:
the Meta kernels (what torch.compile and FakeTensor trace with) run the CPU kernels' checks, one
error prefix per public op whatever the grad mode, a second copy of the C++ library in the process
does not abort it, and the `torch-ws` console script runs."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from test_bad_input import CASES
from testing import make_head_problem, make_problem

import torch_ws

# Checks that read target values cannot run on meta tensors (there are none to read).
VALUE_CASES = {
    "target above 1",
    "target below 0",
    "class index out of range",
    "negative class index",
    "probabilities not summing to 1",
    "negative probabilities",
}


def on_meta(args):
    return {k: v.to("meta") if torch.is_tensor(v) and v.device.type == "cpu" else v for k, v in args.items()}


def message_of(fn, args):
    with pytest.raises(RuntimeError) as info:
        fn(**args)
    return str(info.value).split("\nException raised from")[0]


@pytest.mark.parametrize("case", sorted(set(CASES) - VALUE_CASES - {"mixed devices"}))
@pytest.mark.parametrize("op", ["ws_bound", "hessian_traces"])
def test_meta_kernels_refuse_what_the_cpu_kernels_refuse(case, op):
    make_args, _ = CASES[case]
    fn = getattr(torch.ops.torch_ws, op)
    assert message_of(fn, on_meta(make_args())) == message_of(fn, make_args())


def test_meta_kernels_give_the_output_shapes_and_dtypes():
    p = make_problem(n=6, d=3, h=4, dtype=torch.float32)
    args = [t.to("meta") if t is not None else None for t in p.args()]
    trace, trace_sq = torch.ops.torch_ws.hessian_traces(*args)
    bound = torch.ops.torch_ws.ws_bound(*args)
    for t in (trace, trace_sq, bound):
        assert t.device.type == "meta" and t.shape == () and t.dtype == torch.float32


@pytest.mark.parametrize("op", ["ws_bound", "hessian_traces"])
def test_one_error_prefix_with_and_without_grad(op):
    fn = getattr(torch_ws, op)
    for requires_grad in (False, True):
        p = make_problem(n=6, d=3, h=4, requires_grad=requires_grad)
        args = dict(x=p.x, target=p.target, w1=p.w1, b1=p.b1, w2=p.w2, b2=p.b2)
        with pytest.raises(RuntimeError, match=rf"^torch_ws\.{op}: unknown activation 'elu'"):
            fn(**args, activation="elu")
        bad = torch.tensor([0, 1, 2, 0, 1, 0], dtype=torch.float64)
        with pytest.raises(RuntimeError, match=rf"^torch_ws\.{op}: expected targets in \[0, 1\]"):
            fn(**{**args, "target": bad})


def run_python(code: str, tmp_path):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)


def test_a_second_copy_of_the_library_loaded_first_does_not_abort(tmp_path):
    """A LibTorch build of libtorch_ws.so loaded before `import torch_ws` (both register the
    torch_ws namespace; loading both used to abort the process)."""
    copy = tmp_path / "libtorch_ws_copy.so"
    shutil.copyfile(torch_ws._library.LIBRARY, copy)  # another file: dlopen cannot dedupe it
    out = run_python(f"""
        import torch
        torch.ops.load_library({str(copy)!r})
        import torch_ws
        x, t = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0., 1, 1, 0, 1], dtype=torch.float64)
        w1, w2 = torch.randn(3, 2, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
        print(float(torch_ws.ws_bound(x, t, w1, None, w2, None)))
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) > 0


def test_the_console_script_runs(tmp_path):
    script = shutil.which("torch-ws", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert script is not None, "the torch-ws console script is not installed"
    out = subprocess.run([script, "reproduce", "--runs", "1", "--max-steps", "20", "--widths", "3",
                          "--activations", "tanh", "--train-size", "20", "--test-size", "40",
                          "--jobs", "1", "--no-progress", "--out", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "report" / "report.md").exists()


def traces_backward_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (4, 3), (0,), (1, 4), (1,)]  # x, w1, no b1, w2, b2
    first = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    second = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    return first, second


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_traces_backward_cpu_kernel_matches_the_float64_combination(dtype):
    """The CPU kernel of _traces_backward (a fused loop) against the combination written out in
    float64 tensors, with coefficients far outside float32's range (1/s for a tiny spread s)."""
    first, second = traces_backward_inputs(dtype)
    for alpha, beta in [(0.3, -1.7), (1e40, -1e40), (0.0, 2.0)]:
        a = torch.tensor(alpha, dtype=torch.float64)
        b = torch.tensor(beta, dtype=torch.float64)
        out = torch.ops.torch_ws._traces_backward(a, b, first, second)
        for got, u, v in zip(out, first, second):
            expected = (alpha * u.double() + beta * v.double()).to(dtype)
            assert got.dtype == dtype and got.shape == u.shape
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_traces_backward_meta_and_opcheck():
    first, second = traces_backward_inputs(torch.float64)
    a, b = torch.tensor(0.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    meta = torch.ops.torch_ws._traces_backward(a.to("meta"), b.to("meta"), [t.to("meta") for t in first],
                                              [t.to("meta") for t in second])
    assert [t.shape for t in meta] == [t.shape for t in first]
    torch.library.opcheck(torch.ops.torch_ws._traces_backward.default, (a, b, first, second))
    with pytest.raises(RuntimeError, match="gradient 1 has shape"):
        torch.ops.torch_ws._traces_backward(a, b, first, [second[0], second[0]] + second[2:])


# (TORCH_WS_ENGINE, TORCH_WS_TILE_SIZE): the tiled CPU path (its fused chain), whole matrices (the
# ATen weighting, as on CUDA) and the parameter-space engine (weighted gradients).
ENGINE_PATHS = [("sample", "5"), ("sample", "whole"), ("parameter", "auto")]


def bound_weights(trace, trace_sq, n):
    """∂λ_sup/∂tr H and ∂λ_sup/∂tr(H²) for λ_sup = m + √(n−1)·s, written out in float64."""
    m = trace / n
    s = (trace_sq / n - m * m) ** 0.5
    return 1 / n - (n - 1) ** 0.5 * m / (n * s), (n - 1) ** 0.5 / (2 * n * s)


@pytest.mark.parametrize("engine,tile", ENGINE_PATHS)
@pytest.mark.parametrize("loss,c", [("bce", 1), ("mse", 3), ("cross_entropy", 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("need_grad_x", [False, True])
def test_ws_bound_with_gradient_weighs_the_traces_gradients(monkeypatch, engine, tile, loss, c,
                                                            dtype, need_grad_x):
    """_ws_bound_with_gradient (one chain of weighted adjoints) against the two gradients of
    _traces_with_gradients (two chains) weighted by the bound's derivatives in float64."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", tile)
    kind = "indices" if loss == "cross_entropy" else "values"
    if c == 1:
        p = make_problem(n=13, d=3, h=4, dtype=dtype, soft_targets=True, seed=4)
        args = p.args()
    else:
        args = make_head_problem(loss, c, kind, n=13, dtype=dtype, seed=4)
    rest = ("silu", "mean", need_grad_x, "test", loss)
    trace, trace_sq, bound_grads = torch.ops.torch_ws._ws_bound_with_gradient(*args, *rest)
    trace2, trace_sq2, trace_grads, trace_sq_grads = torch.ops.torch_ws._traces_with_gradients(
        *args, *rest)
    assert float(trace) == float(trace2) and float(trace_sq) == float(trace_sq2)
    n = torch_ws.num_params(args[2], args[3], args[4], args[5])
    alpha, beta = bound_weights(float(trace), float(trace_sq), n)
    # Relative to the terms' size: where they cancel, both orders keep the same absolute error.
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, a, b in zip(bound_grads, trace_grads, trace_sq_grads):
        assert got.dtype == a.dtype and got.shape == a.shape
        if a.numel():
            terms = (alpha * a.double(), beta * b.double())
            scale = float(terms[0].norm() + terms[1].norm())
            assert float((got.double() - terms[0] - terms[1]).norm()) <= tol * scale
    assert bound_grads[0].numel() == (args[0].numel() if need_grad_x else 0)


def test_ws_bound_with_gradient_meta_opcheck_and_not_differentiable():
    p = make_problem(n=6, d=3, h=4)
    rest = ("tanh", "mean", True, "test", "bce")
    meta = torch.ops.torch_ws._ws_bound_with_gradient(
        *[t.to("meta") if t is not None else None for t in p.args()], *rest)
    assert meta[0].shape == () and meta[0].dtype == torch.float64
    assert [t.shape for t in meta[2]] == [t.shape for t in p.differentiable()]
    torch.library.opcheck(torch.ops.torch_ws._ws_bound_with_gradient.default, (*p.args(), *rest))
    q = make_problem(n=6, d=3, h=4, requires_grad=True)
    _, _, grads = torch.ops.torch_ws._ws_bound_with_gradient(*q.args(), *rest)
    with pytest.raises(RuntimeError, match="_ws_bound_with_gradient is not differentiable; call "
                                           "torch_ws.ws_bound"):
        grads[1].sum().backward()


def test_grad_fn_names_the_op():
    """The grad_fn printed as <WsBoundFunction>> (PyTorch prints the last '::' segment of a C++
    Function's demangled type)."""
    p = make_problem(requires_grad=True)
    assert "grad_fn=<CppNode<WsBoundBackward>>" in repr(torch_ws.ws_bound(*p.args()))
    assert "grad_fn=<CppNode<HessianTracesBackward>>" in repr(torch_ws.hessian_traces(*p.args())[0])
