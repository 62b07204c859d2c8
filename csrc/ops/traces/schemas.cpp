// The traces family's schemas: the public hessian_traces and ws_bound, and the internal ops
// their autograd runs: _traces_with_gradients (the traces and the gradients of tr H and tr(H²)
// with respect to (x, w1, b1, w2, b2), from whichever engine the problem gets), _traces_backward
// (their combination with the upstream gradients, docs/math.md §6), _ws_bound_with_gradient (the
// traces and λ_sup's gradient alone, which ws_bound's autograd uses, §6.3). Kernels in
// kernels.cpp, autograd in autograd.cpp; C++ signatures in ops/schemas.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  m.def(
      "hessian_traces(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") "
      "-> (Tensor trace, Tensor trace_sq)");
  m.def(
      "ws_bound(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> Tensor");
  // The gradient lists hold (x, w1, b1, w2, b2); x's is empty unless need_grad_x, an absent
  // bias's is empty. `caller` is the public op the call serves: its name prefixes every error.
  m.def(
      "_traces_with_gradients(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction, bool need_grad_x, str caller, "
      "str loss=\"bce\") "
      "-> (Tensor trace, Tensor trace_sq, Tensor[] trace_grads, Tensor[] trace_sq_grads)");
  // The traces and the gradient of ws_bound's λ_sup (not widened: the derivative of the formula,
  // docs/math.md §7) in the same list layout, from one chain (§6.3): what ws_bound's backward
  // needs, at the cost of one gradient instead of two.
  m.def(
      "_ws_bound_with_gradient(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction, bool need_grad_x, str caller, "
      "str loss=\"bce\") -> (Tensor trace, Tensor trace_sq, Tensor[] bound_grads)");
  m.def(
      "_traces_backward(Tensor grad_trace, Tensor grad_trace_sq, Tensor[] trace_grads, "
      "Tensor[] trace_sq_grads) -> Tensor[]");
}
