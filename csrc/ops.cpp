// The op catalogue: every torch_ws schema in one place, and the CPU/CUDA kernel registrations.
// Autograd wiring lives in autograd.cpp, fake (meta) kernels in torch_ws/_fake.py.
#include "traces.h"

#include <torch/library.h>

TORCH_LIBRARY(torch_ws, m) {
  // Public ops.
  m.def(
      "hessian_traces(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\") -> (Tensor, Tensor)");
  m.def(
      "ws_bound(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation=\"tanh\", str reduction=\"mean\") -> Tensor");
  // Internal, run by autograd: the bound, the float64 traces, and the adjoints of tr(H²) with
  // respect to the per-sample arrays packed as (N, 4H + D + 2) (traces.h), so the backward never
  // recomputes a Gram matrix.
  m.def(
      "_forward_with_adjoints(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction) -> (Tensor, Tensor, Tensor, Tensor)");
  // The hand-derived backward ops (math.md §6). They return the gradients of
  // (x, w1, b1, w2, b2); grad_x is empty unless need_grad_x, absent biases get empty gradients.
  m.def(
      "_hessian_traces_backward(Tensor grad_trace, Tensor grad_trace_sq, "
      "Tensor trace_sq_adjoints, Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction, bool need_grad_x) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_ws_bound_backward(Tensor grad_bound, Tensor trace, Tensor trace_sq, "
      "Tensor trace_sq_adjoints, Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction, bool need_grad_x) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The parameter-space engine's forward and backward (CPU; parameter_space_cpu.cpp): the same
  // outputs and gradients, but the saved tensor is the (n, n) float64 Hessian.
  m.def(
      "_forward_with_hessian(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str reduction) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_hessian_traces_backward_from_hessian(Tensor grad_trace, Tensor grad_trace_sq, "
      "Tensor hessian, Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, bool need_grad_x) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_ws_bound_backward_from_hessian(Tensor grad_bound, Tensor trace, Tensor trace_sq, "
      "Tensor hessian, Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "str activation, str reduction, bool need_grad_x) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Introspection for benchmarks and tests: the tile size the CPU engine uses for N samples
  // (TORCH_WS_TILE_SIZE or the automatic choice).
  m.def("_tile_size(int num_samples) -> int", &torch_ws::tile_size_for);
  // How many threads the tiled engine's lanes really run on (tests: the build has OpenMP).
  m.def("_parallel_threads() -> int", &torch_ws::parallel_threads);
  // The engine ("sample" or "parameter") a problem of these shapes and device gets
  // (TORCH_WS_ENGINE or the automatic choice).
  m.def("_engine(Tensor x, Tensor w1, bool has_b1, bool has_b2) -> str",
        [](const at::Tensor& x, const at::Tensor& w1, bool has_b1, bool has_b2) -> std::string {
          return torch_ws::engine_for(x, w1, has_b1, has_b2) == torch_ws::Engine::ParameterSpace
                     ? "parameter"
                     : "sample";
        });
}

// The sample-space kernels are device-agnostic ATen, so one implementation serves both keys.
#define TORCH_WS_REGISTER_KERNELS(m)                                               \
  m.impl("hessian_traces", &torch_ws::hessian_traces_kernel);                     \
  m.impl("ws_bound", &torch_ws::ws_bound_kernel);                                 \
  m.impl("_forward_with_adjoints", &torch_ws::forward_with_adjoints_kernel);      \
  m.impl("_hessian_traces_backward", &torch_ws::hessian_traces_backward_kernel);  \
  m.impl("_ws_bound_backward", &torch_ws::ws_bound_backward_kernel)

TORCH_LIBRARY_IMPL(torch_ws, CPU, m) {
  TORCH_WS_REGISTER_KERNELS(m);
  m.impl("_forward_with_hessian", &torch_ws::forward_with_hessian_kernel);
  m.impl("_hessian_traces_backward_from_hessian",
         &torch_ws::hessian_traces_backward_from_hessian_kernel);
  m.impl("_ws_bound_backward_from_hessian", &torch_ws::ws_bound_backward_from_hessian_kernel);
}
TORCH_LIBRARY_IMPL(torch_ws, CUDA, m) { TORCH_WS_REGISTER_KERNELS(m); }
