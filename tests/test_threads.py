"""The per-call thread count (csrc/core/threads.h): at most the cores other processes do not keep
busy, never more than torch's count, the calling thread's count restored after the call,
TORCH_WS_THREADS=fixed keeping torch's count. (conftest.py sets TORCH_WS_THREADS=fixed for
the other tests, so that their small problems still run the parallel paths; here it is unset.)"""
import os
import subprocess
import sys
import time

import pytest
import torch
from testing import make_problem, rel_err

import torch_ws

@pytest.fixture(autouse=True)
def policy_on(monkeypatch):
    monkeypatch.delenv("TORCH_WS_THREADS", raising=False)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def call_threads():
    return torch.ops.torch_ws._call_threads()


def test_fixed_keeps_torchs_count(two_threads, monkeypatch):
    assert 1 <= call_threads() <= 2
    monkeypatch.setenv("TORCH_WS_THREADS", "fixed")
    assert call_threads() == 2


def test_never_more_than_torchs_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert call_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_callers_count_is_restored(two_threads):
    p = make_problem(n=20, d=3, h=4, seed=0)
    torch_ws.ws_bound(*p.args(), "tanh", "mean")
    torch_ws.lambda_max_interval(*p.args(), "tanh", "mean")
    assert torch.get_num_threads() == 2


def test_results_do_not_depend_on_the_policy(two_threads, monkeypatch):
    """The count changes how many threads run, not what is computed."""
    p = make_problem(n=2048, d=32, h=32, seed=1, requires_grad=True)
    policy = torch_ws.ws_bound(*p.args(), "tanh", "mean")
    policy_grads = torch.autograd.grad(policy, p.differentiable())
    monkeypatch.setenv("TORCH_WS_THREADS", "fixed")
    fixed = torch_ws.ws_bound(*p.args(), "tanh", "mean")
    fixed_grads = torch.autograd.grad(fixed, p.differentiable())
    assert rel_err(policy, fixed) <= 1e-13
    for a, b in zip(policy_grads, fixed_grads):
        assert rel_err(a, b) <= 1e-13


def _busy_cores_now():
    """Cores' worth of runnable tasks besides this test (/proc/loadavg's instantaneous count)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0]) - 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_machine_gets_fewer_threads(two_threads):
    """With as many CPU-bound processes as cores beside it, a call takes one thread (once a tenth
    of a second, the window of CPU time it reads, has passed with them running)."""
    cores = os.cpu_count()
    if len(os.sched_getaffinity(0)) < cores:
        pytest.skip("confined to a subset of the cores: the count stays torch's there")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        deadline = time.monotonic() + 10
        while _busy_cores_now() < cores and time.monotonic() < deadline:
            time.sleep(0.05)
        call_threads()  # closes the window that began before the busy processes
        time.sleep(0.3)
        assert call_threads() == 1
    finally:
        for process in busy:
            process.kill()
            process.wait()
