"""The public ops under torch.func's reverse-mode transforms (``grad``, ``vjp``, ``jacrev``, and
``vmap`` around them).

The ops' autograd is a C++ ``torch::autograd::Function`` (so LibTorch users have it too), and
functorch cannot run those: it raises "cannot use C++ torch::autograd::Function with functorch
transforms". Inside such a transform the Python entry points route through the Python
``autograd.Function`` below instead. It is the same computation: the forward is the internal op
``_traces_with_gradients`` (the traces and the gradients of tr H and tr H² from the C++ engines),
and the backward is their combination with the upstream gradients (docs/math.md §6), written in
plain tensor operations so that functorch can batch it (``jacrev`` vmaps the backward).
Differentiable once, as everywhere: a second reverse pass over the gradients is not supported.
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


def _reverse_levels() -> int:
    # torch.compile traces the C++ op itself (its fake kernel); Dynamo cannot trace the
    # interpreter-stack query, so compiled code takes the C++ route.
    if torch.compiler.is_compiling():
        return 0
    return sum(level.key() == TransformType.Grad for level in get_interpreter_stack() or ())


def differentiation_levels() -> int:
    """The torch.func transforms active at this call that differentiate (grad, vjp, jacrev, jvp,
    jacfwd; vmap does not): two or more ask for a second derivative."""
    if torch.compiler.is_compiling():
        return 0
    return sum(level.key() in (TransformType.Grad, TransformType.Jvp)
               for level in get_interpreter_stack() or ())


def in_reverse_mode_transform() -> bool:
    """Whether a torch.func reverse-mode transform (grad, vjp, jacrev) is active at this call."""
    return _reverse_levels() > 0


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
        x, _, w1, b1, w2, b2 = inputs[:6]
        grads = output[2:]
        ctx.mark_non_differentiable(*grads)
        ctx.save_for_backward(*grads)
        ctx.present = [t is not None for t in (x, w1, b1, w2, b2)]

    @staticmethod
    def vmap(info, in_dims, *args):
        """vmap over models or data sets (e.g. ``vmap(grad(f))``): one call per batch entry (the
        internal op returns lists of tensors, which PyTorch's generic batching cannot loop over),
        results stacked along dimension 0."""
        tensors, options = args[:6], args[6:]

        def entry(t, dim, i):
            return t if t is None or dim is None else t.select(dim, i)

        per_entry = [
            _Traces.forward(*(entry(t, d, i) for t, d in zip(tensors, in_dims[:6])), *options)
            for i in range(info.batch_size)
        ]
        stacked = tuple(torch.stack(parts) for parts in zip(*per_entry))
        return stacked, (0,) * len(stacked)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_SECOND_ORDER)

    @staticmethod
    def backward(ctx, grad_trace, grad_trace_sq, *_):
        # functorch runs every backward with create_graph; a second reverse-mode level around
        # this one (grad of grad) would differentiate the saved gradients, which are constants
        # here: refuse rather than return a silent zero.
        if _reverse_levels() >= 2:
            raise RuntimeError(_SECOND_ORDER)
        saved = ctx.saved_tensors
        trace_grads, trace_sq_grads = saved[:5], saved[5:]
        grads = [
            (grad_trace * g.double() + grad_trace_sq * q.double()).to(g.dtype) if present else None
            for g, q, present in zip(trace_grads, trace_sq_grads, ctx.present)
        ]
        x, w1, b1, w2, b2 = grads
        return x, None, w1, b1, w2, b2, None, None, None, None


def _refuse_nested_reverse_mode():
    # Evaluated under two reverse-mode levels (grad of grad, jacrev of jacrev), the outer one
    # will differentiate the inner derivative: second order, which the saved first-order
    # gradients cannot give.
    if _reverse_levels() >= 2:
        raise RuntimeError(_SECOND_ORDER)


def hessian_traces(x, target, w1, b1, w2, b2, activation, reduction, loss):
    """hessian_traces through the Python Function: the traces in x's dtype."""
    _refuse_nested_reverse_mode()
    out = _Traces.apply(x, target, w1, b1, w2, b2, activation, reduction, loss,
                        "torch_ws.hessian_traces")
    return out[0].to(x.dtype), out[1].to(x.dtype)


def ws_bound(x, target, w1, b1, w2, b2, activation, reduction, loss, num_params):
    """ws_bound through the Python Function: the bound from the float64 traces, as the C++ op
    computes it (_ws_bounds_from_traces, whose gradient at zero spread is the mean's)."""
    _refuse_nested_reverse_mode()
    out = _Traces.apply(x, target, w1, b1, w2, b2, activation, reduction, loss,
                        "torch_ws.ws_bound")
    return torch.ops.torch_ws._ws_bounds_from_traces(out[0], out[1], num_params, x.dtype)[0]
