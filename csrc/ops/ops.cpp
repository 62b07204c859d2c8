// The torch_ws library: its TORCH_LIBRARY block, holding the small helpers shared with the
// Python package, so that facts (supported names, the parameter count, the bounds from the
// traces, the engine table) live in C++ only. Every op family defines its own schemas with
// TORCH_LIBRARY_FRAGMENT in its folder, csrc/ops/<family>/ (schemas, kernels for every backend
// and Meta, autograd on the shared pieces of autograd/support.h), so a new family adds files
// and edits none of these. Public ops: hessian_traces, ws_bound (traces/), spectral_bound
// (spectral/), ws_bound_batched (batched/); internal: _hessian, _hessian_backward
// (explicit_hessian/), _traces_share (traces_share/).
#include <torch/library.h>

TORCH_LIBRARY(torch_ws, m) {
  // The five Wolkowicz-Styan bounds from the traces (core/ws_bound.h), differentiable through
  // their ATen decomposition, widened by the rounding allowance of `dtype` (the precision the
  // traces were computed in, and the results' dtype; default: the traces' dtype), and by
  // certified absolute errors of the traces where a caller has them (the deep op's, §12.5).
  m.def(
      "_ws_bounds_from_traces(Tensor trace, Tensor trace_sq, int num_params, "
      "ScalarType? dtype=None, float trace_error=0., float trace_sq_error=0.) "
      "-> (Tensor lambda_max_upper, Tensor lambda_max_lower, "
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
  // The threads a call beginning now would run on (core/threads.h).
  m.def("_call_threads() -> int");
}
