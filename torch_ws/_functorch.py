"""The public ops under torch.func's reverse-mode transforms (``grad``, ``vjp``, ``jacrev``, and
``vmap`` around them).

The ops' autograd is a C++ ``torch::autograd::Function`` (so LibTorch users have it too), and
functorch cannot run those: it raises "cannot use C++ torch::autograd::Function with functorch
transforms". Inside such a transform the Python entry points route through the Python
``autograd.Function``s below instead. Each is the same computation as the C++ one, its forward
returning the gradients with the values: ``_Traces`` the internal op ``_traces_with_gradients``
(the traces and the gradients of tr H and tr H² from the C++ engines, docs/math.md §6),
``_Interval`` ``_eigenvalue_interval_with_gradients`` (both ends' gradients with the basis held
fixed, §11.4), ``_Spectral`` ``_spectral_parts`` and one ``_spectral_backward`` per
differentiable field (§9.4). The backward combines them with the upstream gradients in plain
tensor operations, so that functorch can batch it (``jacrev`` vmaps the backward).
Differentiable once, as everywhere: a second reverse pass over the gradients is not supported.
The deep ops (torch_ws/deep.py) need none of this: their autograd under torch.func is ATen's.
"""
from __future__ import annotations

import torch
from torch._C._functorch import TransformType, get_interpreter_stack

#: The differentiable arguments of the ops, in the order of _traces_with_gradients' gradients.
_DIFFERENTIABLE = ("x", "w1", "b1", "w2", "b2")


_SECOND_ORDER = (
    "torch_ws: second derivatives of the traces and the bound (torch.func.hessian, grad of grad, "
    "jacfwd of jacrev) are not supported: they are differentiable once"
)


def _levels(*kinds) -> int:
    """How many torch.func transforms of these kinds are active at this call."""
    # torch.compile traces the C++ op itself (its fake kernel); Dynamo cannot trace the
    # interpreter-stack query, so compiled code takes the C++ route.
    if torch.compiler.is_compiling():
        return 0
    return sum(level.key() in kinds for level in get_interpreter_stack() or ())


def _reverse_levels() -> int:
    return _levels(TransformType.Grad)


def differentiation_levels() -> int:
    """The torch.func transforms active at this call that differentiate (grad, vjp, jacrev, jvp,
    jacfwd; vmap does not): two or more ask for a second derivative."""
    return _levels(TransformType.Grad, TransformType.Jvp)


def in_reverse_mode_transform() -> bool:
    """Whether a torch.func reverse-mode transform (grad, vjp, jacrev) is active at this call."""
    return _reverse_levels() > 0


def _one_call_per_entry(forward, info, in_dims, args):
    """A Function's vmap rule: its forward once per batch entry, the results stacked along
    dimension 0 (the internal ops return lists of tensors, which PyTorch's generic batching cannot
    loop over). ``args``: the six tensors (x, target, w1, b1, w2, b2), then the options."""
    tensors, options = args[:6], args[6:]

    def entry(t, dim, i):
        return t if t is None or dim is None else t.select(dim, i)

    per_entry = [forward(*(entry(t, d, i) for t, d in zip(tensors, in_dims[:6])), *options)
                 for i in range(info.batch_size)]
    stacked = tuple(torch.stack(parts) for parts in zip(*per_entry))
    return stacked, (0,) * len(stacked)


def _combine(grad_outputs, gradient_lists, present):
    """Σ_o grad_o · (gradient list o), entry by entry, in each gradient's dtype: the vector-Jacobian
    product of outputs whose gradients were computed in the forward, in plain tensor operations
    (functorch batches them: jacrev vmaps the backward). None for absent inputs."""
    out = []
    for i, here in enumerate(present):
        if not here:
            out.append(None)
            continue
        total = None
        for grad, grads in zip(grad_outputs, gradient_lists):
            if grad is None:
                continue
            term = grad.double() * grads[i].double()
            total = term if total is None else total + term
        out.append(None if total is None else total.to(gradient_lists[0][i].dtype))
    return out


def _keep_gradients(ctx, inputs, output, differentiable, gradients_from):
    """setup_context of the Functions below, whose forward returns the gradients with the values:
    the outputs from `differentiable` on are constants, those from `gradients_from` on the
    gradient lists (x, w1, b1, w2, b2) the backward combines; which inputs are present."""
    x, _, w1, b1, w2, b2 = inputs[:6]
    ctx.mark_non_differentiable(*output[differentiable:])
    ctx.save_for_backward(*output[gradients_from:])
    ctx.present = [t is not None for t in (x, w1, b1, w2, b2)]


def _backward_of_saved_gradients(ctx, grad_outputs):
    """The backward of the Functions below: each differentiable output's saved gradient list
    (x, w1, b1, w2, b2, saved in output order) weighed by its incoming gradient (_combine).
    functorch runs every backward with create_graph; a second reverse-mode level around this one
    (grad of grad) would differentiate the saved gradients, which are constants here: refused
    rather than a silent zero."""
    _refuse_nested_reverse_mode()
    saved = ctx.saved_tensors
    lists = [saved[5 * i:5 * i + 5] for i in range(len(grad_outputs))]
    return _combine(grad_outputs, lists, ctx.present)


class _Traces(torch.autograd.Function):
    """(tr H, tr H²) in float64, with the gradients of each as non-differentiable outputs (a
    functorch-compatible Function keeps what its backward needs among its outputs)."""

    @staticmethod
    def forward(x, target, w1, b1, w2, b2, activation, reduction, loss, caller):
        trace, trace_sq, trace_grads, trace_sq_grads = torch.ops.torch_ws._traces_with_gradients(
            x, target, w1, b1, w2, b2, activation, reduction, True, caller, loss
        )
        return (trace, trace_sq, *trace_grads, *trace_sq_grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_gradients(ctx, inputs, output, differentiable=2, gradients_from=2)

    @staticmethod
    def vmap(info, in_dims, *args):
        """vmap over models or data sets (e.g. ``vmap(grad(f))``): one call per batch entry."""
        return _one_call_per_entry(_Traces.forward, info, in_dims, args)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_SECOND_ORDER)

    @staticmethod
    def backward(ctx, grad_trace, grad_trace_sq, *_):
        x, w1, b1, w2, b2 = _backward_of_saved_gradients(ctx, (grad_trace, grad_trace_sq))
        return x, None, w1, b1, w2, b2, None, None, None, None


def _refuse_nested_reverse_mode():
    # Evaluated under two reverse-mode levels (grad of grad, jacrev of jacrev), the outer one
    # will differentiate the inner derivative: second order, which the saved first-order
    # gradients cannot give.
    if _reverse_levels() >= 2:
        raise RuntimeError(_SECOND_ORDER)


def hessian_traces(x, target, w1, b1, w2, b2, activation, reduction, loss):
    """hessian_traces through the Python Function: the traces in x's dtype (bfloat16/float16
    inputs computed in float32, as the C++ op computes them)."""
    _refuse_nested_reverse_mode()
    out = _Traces.apply(*_in_float32_if_low_precision(x, target, w1, b1, w2, b2), activation,
                        reduction, loss, "torch_ws.hessian_traces")
    return out[0].to(x.dtype), out[1].to(x.dtype)


def ws_bound(x, target, w1, b1, w2, b2, activation, reduction, loss, num_params):
    """ws_bound through the Python Function: the bound from the float64 traces, as the C++ op
    computes it (_ws_bounds_from_traces, whose gradient at zero spread is the mean's). bfloat16/
    float16 inputs are computed in float32 and the float32 bound rounded up to their dtype, as
    the C++ op does (ops/low_precision.cpp)."""
    _refuse_nested_reverse_mode()
    computed = _in_float32_if_low_precision(x, target, w1, b1, w2, b2)
    out = _Traces.apply(*computed, activation, reduction, loss, "torch_ws.ws_bound")
    bound = torch.ops.torch_ws._ws_bounds_from_traces(out[0], out[1], num_params,
                                                      computed[0].dtype)[0]
    return _rounded_up(bound, x.dtype)


def _rounded_up(bound, dtype):
    """A bound in a narrower ``dtype``, rounded up (to the next representable number where the
    conversion rounded down); its gradient is the wider bound's."""
    if bound.dtype == dtype:
        return bound
    near = bound.to(dtype)
    value = near.detach()
    step = torch.nextafter(value, torch.full_like(value, float("inf"))) - value
    return near + torch.where(value.to(bound.dtype) < bound.detach(), step, torch.zeros_like(step))


def in_transform() -> bool:
    """Whether any torch.func transform (grad, vjp, jacrev, jvp, jacfwd, vmap) is active here."""
    return _levels(TransformType.Grad, TransformType.Jvp, TransformType.Vmap) > 0


def refuse_vmap(op: str, instead: str = "call it once per entry") -> None:
    """A clear error for ``op`` under torch.func.vmap, in place of PyTorch's "Batching rule not
    implemented" (the deep ops take lists of tensors, which its generic batching cannot loop
    over) or of a failure further on (the interval's source and product count are per entry)."""
    if _levels(TransformType.Vmap) > 0:
        raise NotImplementedError(f"{op}: torch.func.vmap is not supported; {instead}")


def _in_float32_if_low_precision(*tensors):
    """bfloat16/float16 tensors in float32, as the C++ ops compute them (the outputs then stay in
    float32, where the C++ ops round the bounds outward to the inputs' dtype)."""
    return tuple(t.float() if t is not None and t.dtype in (torch.bfloat16, torch.float16) else t
                 for t in tensors)


class _Interval(torch.autograd.Function):
    """The interval's six outputs, then the gradients of ``lower`` and of ``upper`` with respect
    to (x, w1, b1, w2, b2) as non-differentiable outputs (_eigenvalue_interval_with_gradients:
    the basis held fixed, docs/math.md §11.4)."""

    @staticmethod
    def forward(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start,
                seed):
        (lower, upper, source, values, vectors, products, lower_grads,
         upper_grads) = torch.ops.torch_ws._eigenvalue_interval_with_gradients(
            x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start, seed,
            True)
        return (lower, upper, source, values, vectors, products, *lower_grads, *upper_grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_gradients(ctx, inputs, output, differentiable=2, gradients_from=6)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_SECOND_ORDER)

    @staticmethod
    def backward(ctx, grad_lower, grad_upper, *_):
        x, w1, b1, w2, b2 = _backward_of_saved_gradients(ctx, (grad_lower, grad_upper))
        return (x, None, w1, b1, w2, b2) + (None,) * 7


def eigenvalue_interval(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps,
                        start, seed):
    """eigenvalue_interval's six outputs under torch.func: reverse-mode transforms through the
    Python Function; second derivatives, forward mode and vmap refused."""
    op = "torch_ws.lambda_max_interval" if largest else "torch_ws.lambda_min_interval"
    if differentiation_levels() >= 2:
        raise RuntimeError(_SECOND_ORDER)
    if _levels(TransformType.Jvp) > 0:  # forward mode: the C++ op's own error
        return torch.ops.torch_ws.eigenvalue_interval.default(
            x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start, seed)
    refuse_vmap(op, "each entry's certificate has its own source and product count, which a "
                "batched call cannot return: call it once per entry")
    x, target, w1, b1, w2, b2 = _in_float32_if_low_precision(x, target, w1, b1, w2, b2)
    out = _Interval.apply(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps,
                          start, seed)
    return out[:6]


class _Spectral(torch.autograd.Function):
    """spectral_bound's six outputs, then the gradients of upper, λ_max(GGN), λ_max(R) and λ_min(R)
    with respect to (x, w1, b1, w2, b2) as non-differentiable outputs: _spectral_backward with
    one unit weight each (the backward is linear in its weights and costs O(N·H·(D + C)), little
    beside the forward's eigenproblems)."""

    @staticmethod
    def forward(x, target, w1, b1, w2, b2, activation, reduction, loss):
        (upper, ggn, residual_max, lambda_min, residual, iterations, ws_wins,
         *vectors) = torch.ops.torch_ws._spectral_parts(x, target, w1, b1, w2, b2, activation,
                                                        reduction, loss)
        gradients = []
        for i in range(4):
            weights = [torch.tensor(float(i == j), dtype=upper.dtype) for j in range(4)]
            gradients += torch.ops.torch_ws._spectral_backward(
                *weights, x, target, w1, b1, w2, b2, activation, reduction, loss, ws_wins,
                *vectors, True)
        return (upper, ggn, residual_max, lambda_min, residual, iterations, *gradients)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_gradients(ctx, inputs, output, differentiable=4, gradients_from=6)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_SECOND_ORDER)

    @staticmethod
    def vmap(info, in_dims, *args):
        """vmap over models or data sets (``vmap(grad(f))``): one call per batch entry."""
        return _one_call_per_entry(_Spectral.forward, info, in_dims, args)

    @staticmethod
    def backward(ctx, grad_upper, grad_ggn, grad_residual_max, grad_lambda_min, *_):
        x, w1, b1, w2, b2 = _backward_of_saved_gradients(
            ctx, (grad_upper, grad_ggn, grad_residual_max, grad_lambda_min))
        return x, None, w1, b1, w2, b2, None, None, None


def spectral_bound(x, target, w1, b1, w2, b2, activation, reduction, loss):
    """spectral_bound's six outputs through the Python Function (reverse-mode transforms)."""
    _refuse_nested_reverse_mode()
    x, target, w1, b1, w2, b2 = _in_float32_if_low_precision(x, target, w1, b1, w2, b2)
    return _Spectral.apply(x, target, w1, b1, w2, b2, activation, reduction, loss)[:6]
