"""Fake (meta) kernels: output shapes and dtypes only, for torch.compile and opcheck."""
import torch
from torch.library import register_fake


def _check_one_device(x, *others):
    # Mixed real/meta tensors dispatch here rather than to the C++ checks: refuse them too.
    for name, t in others:
        if t is not None and t.device != x.device:
            raise RuntimeError(
                f"torch_ws: all tensors must be on one device; x is on {x.device} but {name} is on {t.device}"
            )


def _scalar(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return x.new_empty((), dtype=dtype)


def _check_problem(x, target, w1, b1, w2, b2):
    _check_one_device(x, ("target", target), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))


@register_fake("torch_ws::hessian_traces")
def _hessian_traces_fake(x, target, w1, b1, w2, b2, activation="tanh", reduction="mean"):
    _check_problem(x, target, w1, b1, w2, b2)
    return _scalar(x), _scalar(x)


@register_fake("torch_ws::ws_bound")
def _ws_bound_fake(x, target, w1, b1, w2, b2, activation="tanh", reduction="mean"):
    _check_problem(x, target, w1, b1, w2, b2)
    return _scalar(x)


@register_fake("torch_ws::_forward_with_adjoints")
def _forward_with_adjoints_fake(x, target, w1, b1, w2, b2, activation, reduction):
    _check_problem(x, target, w1, b1, w2, b2)
    hidden, in_dim = w1.shape
    # The packed adjoints of tr(H²): (N, 4H + D + 2), see csrc/traces.h.
    adjoints = x.new_empty((x.shape[0], 4 * hidden + in_dim + 2))
    return _scalar(x), _scalar(x, torch.float64), _scalar(x, torch.float64), adjoints


@register_fake("torch_ws::_forward_with_hessian")
def _forward_with_hessian_fake(x, target, w1, b1, w2, b2, activation, reduction):
    _check_problem(x, target, w1, b1, w2, b2)
    hidden, in_dim = w1.shape
    n = hidden * in_dim + (hidden if b1 is not None else 0) + hidden + (1 if b2 is not None else 0)
    # The parameter-space engine saves the n×n Hessian itself, in float64.
    hessian = x.new_empty((n, n), dtype=torch.float64)
    return _scalar(x), _scalar(x, torch.float64), _scalar(x, torch.float64), hessian


def _grads_fake(x, w1, b1, w2, b2, need_grad_x):
    def like_or_empty(t, present):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if present else x.new_empty((0,))

    return (
        like_or_empty(x, need_grad_x),
        like_or_empty(w1, True),
        like_or_empty(b1, b1 is not None),
        torch.empty_like(w2, memory_format=torch.contiguous_format),
        like_or_empty(b2, b2 is not None),
    )


@register_fake("torch_ws::_hessian_traces_backward")
@register_fake("torch_ws::_hessian_traces_backward_from_hessian")
def _hessian_traces_backward_fake(
    grad_trace, grad_trace_sq, saved, x, target, w1, b1, w2, b2, activation,
    reduction, need_grad_x
):
    return _grads_fake(x, w1, b1, w2, b2, need_grad_x)


@register_fake("torch_ws::_ws_bound_backward")
@register_fake("torch_ws::_ws_bound_backward_from_hessian")
def _ws_bound_backward_fake(
    grad_bound, trace, trace_sq, saved, x, target, w1, b1, w2, b2, activation,
    reduction, need_grad_x
):
    return _grads_fake(x, w1, b1, w2, b2, need_grad_x)
