"""Property-based and concurrency checks (issue 14): random problems of every shape, loss,
activation, bias setting, reduction, scale and engine against the explicit float64 Hessian, and
the same call from four Python threads at once."""
import os
import threading

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing import rel_err

import torch_ws
import reference

HEADS = st.one_of(
    st.just(("bce", 1)),
    st.tuples(st.just("cross_entropy"), st.integers(2, 4)),
    st.tuples(st.just("mse"), st.integers(1, 3)),
)


@st.composite
def problems(draw):
    loss, c = draw(HEADS)
    n, d, h = draw(st.integers(1, 12)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    bias = (draw(st.booleans()), draw(st.booleans()))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    if loss == "bce":
        target = torch.rand(n, generator=gen, dtype=torch.float64)
    elif loss == "cross_entropy":
        target = (torch.randint(0, c, (n,), generator=gen) if draw(st.booleans())
                  else torch.softmax(randn(n, c), 1))
    else:
        target = randn(n, c)
    args = (randn(n, d), target, scale * randn(h, d), scale * randn(h) if bias[0] else None,
            scale * randn(c, h), scale * randn(c) if bias[1] else None)
    return args, loss, draw(st.sampled_from(torch_ws.ACTIVATIONS)), draw(st.sampled_from(["mean", "sum"])), \
        draw(st.sampled_from(["auto", "sample", "parameter"]))


# derandomize: the same 300 examples on every run, so CI is reproducible.
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_problems_match_the_explicit_hessian(problem):
    args, loss, act, red, engine = problem
    previous = os.environ.get("TORCH_WS_ENGINE")
    os.environ["TORCH_WS_ENGINE"] = engine
    try:
        trace, trace_sq = torch_ws.hessian_traces(*args, act, red, loss)
        bound = torch_ws.ws_bound(*args, act, red, loss)
    finally:
        if previous is None:
            del os.environ["TORCH_WS_ENGINE"]
        else:
            os.environ["TORCH_WS_ENGINE"] = previous
    hess = reference.explicit_hessian(*args, act, red, loss)
    scale = (hess * hess).sum().sqrt() + 1e-300
    assert abs(float(trace - hess.trace())) <= 1e-9 * float(scale) * hess.shape[0] ** 0.5
    assert rel_err(trace_sq, (hess * hess).sum()) <= 1e-8
    assert float(torch.linalg.eigvalsh(hess).max()) <= float(bound) + 1e-9 * float(scale)


def test_four_threads_at_once_give_bitwise_the_serial_result():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    target = torch.randint(0, 3, (300,), generator=gen)
    params = [torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen),
              torch.randn(3, 16, generator=gen), torch.randn(3, generator=gen)]
    params = [p.requires_grad_() for p in params]

    def call():
        bound = torch_ws.ws_bound(x, target, *params, loss="cross_entropy")
        return [bound.detach(), *torch.autograd.grad(bound, params)]

    serial = call()
    results, errors = [None] * 4, []

    def worker(i):
        try:
            for _ in range(3):
                results[i] = call()
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for result in results:
        for a, b in zip(result, serial):
            assert torch.equal(a, b)


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_ten_thousand_calls_do_not_leak():
    """Value and gradient 10,000 times at the papers' size: resident memory after the first
    1,000 calls (allocator and caches warm) grows by less than 4 MiB over the next 10,000.
    Measured: 0.1 MiB; keeping each call's gradients alive (a leak of 41 numbers and their
    tensor overhead per call) adds 21 MiB."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 2, generator=gen), (torch.rand(200, generator=gen) > 0.5).float()
    params = [torch.randn(10, 2, generator=gen), torch.randn(10, generator=gen),
              torch.randn(1, 10, generator=gen), torch.randn(1, generator=gen)]
    params = [p.requires_grad_() for p in params]

    def step():
        torch.autograd.grad(torch_ws.ws_bound(x, y, *params), params)

    for _ in range(1000):
        step()
    before = _resident_bytes()
    for _ in range(10_000):
        step()
    assert _resident_bytes() - before < 4 << 20
