"""The tiled CPU engine (T×T tiles, i ≤ j, reduced on the fly) equals the untiled evaluation
(one tile) and the whole-matrix ATen path to float64 rounding, for any tile size and thread
count, N not a multiple of T included."""
import pytest
import torch
from testing import assert_float32_bound, make_problem, rel_err

import torch_ws


@pytest.fixture(autouse=True)
def sample_space_engine(monkeypatch):
    """Tiles belong to the sample-space engine; small problems would otherwise go to the
    parameter-space one."""
    monkeypatch.setenv("TORCH_WS_ENGINE", "sample")


def value_and_grads(p, act="tanh", red="mean"):
    bound = torch_ws.ws_bound(*p.args(), act, red)
    grads = torch.autograd.grad(bound, p.differentiable())
    trace, trace_sq = torch_ws.hessian_traces(*[t.detach() if t is not None else None for t in p.args()], act, red)
    return [bound, trace, trace_sq, *grads]


@pytest.mark.parametrize(
    "n,d,h,tiles",
    [(37, 3, 5, [5, 16, 36]), (64, 2, 4, [8, 32, 63]), (50, 7, 3, [1, 7, 49]), (130, 4, 6, [64, 100])],
)
@pytest.mark.parametrize("bias", [(True, True), (False, False)])
def test_tiled_equals_untiled(monkeypatch, n, d, h, tiles, bias):
    p = make_problem(n=n, d=d, h=h, bias=bias, soft_targets=True, seed=n, requires_grad=True)
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", str(n))  # one tile: the untiled evaluation
    untiled = value_and_grads(p, "silu", "sum")
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "whole")  # whole N×N matrices (the CUDA path)
    whole = value_and_grads(p, "silu", "sum")
    for a, b in zip(whole, untiled):
        assert rel_err(a, b) <= 1e-12
    for tile in tiles:
        assert tile < n
        monkeypatch.setenv("TORCH_WS_TILE_SIZE", str(tile))
        tiled = value_and_grads(p, "silu", "sum")
        for a, b in zip(tiled, untiled):
            assert rel_err(a, b) <= 1e-12, f"tile {tile}"


def test_result_does_not_depend_on_thread_count(monkeypatch):
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "16")
    p = make_problem(n=100, d=3, h=8, seed=3, requires_grad=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = value_and_grads(p)
        torch.set_num_threads(2)
        two = value_and_grads(p)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert rel_err(a, b) <= 1e-13


def test_tiles_really_run_in_parallel():
    """at::parallel_for is compiled into the extension: built without OpenMP it runs the lanes
    one after the other on one thread, and the test above would pass all the same."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.torch_ws._parallel_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_float32_tiled_matches_float64(monkeypatch):
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "32")
    p64 = make_problem(n=200, d=5, h=16, seed=4, requires_grad=True)
    p32 = make_problem(n=200, d=5, h=16, seed=4, dtype=torch.float32, requires_grad=True)
    (bound32, *rest32), (bound64, *rest64) = value_and_grads(p32), value_and_grads(p64)
    assert_float32_bound(bound32, bound64)
    for a, b in zip(rest32, rest64):
        assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("value", ["-3", "abc"])
def test_bad_tile_size_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", value)
    p = make_problem(n=10, d=2, h=3)
    with pytest.raises(RuntimeError, match="TORCH_WS_TILE_SIZE must be a positive integer"):
        torch_ws.ws_bound(*p.args())


def test_tile_size_op_reports_the_setting(monkeypatch):
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "16")
    assert torch.ops.torch_ws._tile_size(1000) == 16
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "auto")
    assert 1 <= torch.ops.torch_ws._tile_size(1000) <= 1000
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "x")
    with pytest.raises(RuntimeError, match="TORCH_WS_TILE_SIZE must be a positive integer"):
        torch.ops.torch_ws._tile_size(10)
