// The op catalogue of the first op families, in one TORCH_LIBRARY (later families define their
// schemas with TORCH_LIBRARY_FRAGMENT in their own folder, csrc/ops/<family>/). Kernels are
// registered where they are implemented: ops/<family>/ (every backend, Meta),
// ops/<family>/autograd.cpp (Autograd, on the shared pieces of autograd/support.h).
//
// Public: hessian_traces, ws_bound, ws_bound_batched, spectral_bound. Internal, run by autograd:
// _traces_with_gradients (the traces and the gradients of tr H and tr(H²) with respect to
// (x, w1, b1, w2, b2), from whichever engine the problem gets), _traces_backward (their
// combination with the upstream gradients, docs/math.md §6), _ws_bound_with_gradient (the traces
// and λ_sup's gradient alone, which ws_bound's autograd uses), spectral_bound's _spectral_parts
// and _spectral_backward (math.md §9; kernels in ops/spectral/), and ws_bound_batched's
// _batched_traces (kernels in ops/batched/).
// The rest are small helpers shared with the Python package, so that facts
// (supported names, the parameter count, the bounds from the traces) live in C++ only.
#include "ops/schemas.h"

#include <torch/library.h>

TORCH_LIBRARY(torch_ws, m) {
  m.def(
      "hessian_traces(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") "
      "-> (Tensor trace, Tensor trace_sq)");
  m.def(
      "ws_bound(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> Tensor");
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
  // λ_max(H) ≤ λ_max(GGN) + λ_max(R) (docs/math.md §9); `upper` is the smaller of that and the
  // Wolkowicz-Styan bound, `lambda_min_lower` = λ_min(R) ≤ λ_min(H), `residual` the GGN
  // eigenpair's ‖Mv − λv‖, `iterations` its Lanczos steps (int64; 0: dense solver).
  m.def(
      "spectral_bound(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\") -> (Tensor upper, "
      "Tensor ggn_lambda_max, Tensor residual_lambda_max, Tensor lambda_min_lower, "
      "Tensor residual, Tensor iterations)");
  // spectral_bound's outputs, whether the Wolkowicz-Styan bound gave `upper` (bool), and the
  // eigenvectors its gradient needs (float64; the units int64), which _spectral_backward takes.
  m.def(
      "_spectral_parts(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, str loss) -> (Tensor upper, Tensor ggn_lambda_max, "
      "Tensor residual_lambda_max, Tensor lambda_min_lower, Tensor residual, Tensor iterations, "
      "Tensor ws_wins, Tensor ggn_vector, Tensor residual_max_vector, Tensor residual_max_unit, "
      "Tensor residual_min_vector, Tensor residual_min_unit)");
  // The gradients (x, w1, b1, w2, b2) of grad_upper·upper + grad_ggn·λ_max(GGN) +
  // grad_residual_max·λ_max(R) + grad_lambda_min·λ_min(R); x's empty unless need_grad_x.
  m.def(
      "_spectral_backward(Tensor grad_upper, Tensor grad_ggn, Tensor grad_residual_max, "
      "Tensor grad_lambda_min, Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction, str loss, Tensor ws_wins, Tensor ggn_vector, "
      "Tensor residual_max_vector, Tensor residual_max_unit, Tensor residual_min_vector, "
      "Tensor residual_min_unit, bool need_grad_x) -> Tensor[]");
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
  // The five Wolkowicz-Styan bounds from the traces (core/ws_bound.h), differentiable through
  // their ATen decomposition, widened by the rounding allowance of `dtype` (the precision the
  // traces were computed in, and the results' dtype; default: the traces' dtype).
  m.def(
      "_ws_bounds_from_traces(Tensor trace, Tensor trace_sq, int num_params, "
      "ScalarType? dtype=None) -> (Tensor lambda_max_upper, Tensor lambda_max_lower, "
      "Tensor lambda_min_lower, Tensor lambda_min_upper, Tensor spread_upper)");
  // n = H·D + H·[b1] + C·H + C·[b2].
  m.def("_num_params(int in_dim, int hidden, int num_outputs, bool has_b1, bool has_b2) -> int");
  // The names an option accepts: "activation", "reduction" or "loss".
  m.def("_supported(str option) -> str[]");
  // The activation of an activation module, by class name (the HSRRegularizers' one mapping).
  m.def(
      "_activation_for_module(str caller, str class_name, str module_prefix, "
      "str approximate=\"none\", float beta=1, float threshold=20, float negative_slope=0.01) "
      "-> str");
  // Introspection for tests and benchmarks: the engine a problem of these shapes gets, the tile
  // size of the CPU pairwise stage for N samples, and how many threads its lanes really run on.
  m.def("_engine(Tensor x, Tensor w1, bool has_b1, bool has_b2, int num_outputs=1) -> str");
  // Every engine of the problem's head from the engine table: its cost, whether it takes the
  // problem (or why not), the automatic choice marked.
  m.def("_engines(Tensor x, Tensor w1, bool has_b1, bool has_b2, int num_outputs=1) -> str[]");
  m.def("_tile_size(int num_samples) -> int");
  m.def("_parallel_threads() -> int");
}
