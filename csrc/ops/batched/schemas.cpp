// The batched family's schemas: ws_bound_batched (B models of one shape on one data set,
// docs/math.md §10) and its internal _batched_traces. Kernels in kernels.cpp, autograd in
// autograd.cpp; C++ signatures in ops/schemas.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  // ws_bound of B networks of one shape on one data set: w1 (B, H, D), b1 (B, H), w2 (B, C, H),
  // b2 (B, C) -> (B,). Kernels in ops/batched/.
  m.def(
      "ws_bound_batched(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> Tensor");
  // The (B,) float64 traces of those models and, with `with_gradients`, the gradients of each
  // model's tr H and tr(H²) in _traces_with_gradients' order, each with the model dimension
  // first (x's (B, N, D), empty unless need_grad_x).
  m.def(
      "_batched_traces(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, bool with_gradients, bool need_grad_x, str loss) "
      "-> (Tensor trace, Tensor trace_sq, Tensor[] trace_grads, Tensor[] trace_sq_grads)");
}
