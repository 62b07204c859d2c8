// The kernels of the torch_ws ops below autograd. The public ops and _traces_with_gradients run
// the engines (engines/dispatch.h) on tensors of any backend (one CompositeExplicitAutograd
// kernel: the engine table picks each device's path); on the Meta key they run the same
// validation (check_problem) and return empty outputs of the right shapes, which is what
// torch.compile and FakeTensor trace with. Helpers are CompositeImplicitAutograd.
#include "engines/dispatch.h"
#include "core/threads.h"
#include "core/modules.h"
#include "core/weighted_sum.h"
#include "core/ws_bound.h"
#include "ops/gradient_list.h"
#include "ops/low_precision.h"
#include "ops/schemas.h"
#include "engines/sample_space/sample_space.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <string>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

Tensor scalar_like(const Tensor& x, at::ScalarType dtype) {
  return at::empty({}, x.options().dtype(dtype));
}

std::tuple<Tensor, Tensor> hessian_traces_kernel(const Tensor& x, const Tensor& target,
                                                 const Tensor& w1, const optional<Tensor>& b1,
                                                 const Tensor& w2, const optional<Tensor>& b2,
                                                 c10::string_view activation,
                                                 c10::string_view reduction,
                                                 c10::string_view loss) {
  const ProblemArgs args(x, target, w1, b1, w2, b2, activation, reduction, loss);
  // Under torch.inference_mode(), which skips the Autograd key (ops/low_precision.h).
  if (low_precision::applies(args)) return low_precision::hessian_traces(args);
  const MlpProblem p =
      check_problem(kHessianTracesName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  const TracesResult t = evaluate_traces(p, Gradients::None);
  return {t.trace.to(x.scalar_type()), t.trace_sq.to(x.scalar_type())};
}

Tensor ws_bound_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                       const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                       c10::string_view activation, c10::string_view reduction,
                       c10::string_view loss) {
  const ProblemArgs args(x, target, w1, b1, w2, b2, activation, reduction, loss);
  // Under torch.inference_mode(), which skips the Autograd key (ops/low_precision.h).
  if (low_precision::applies(args)) return low_precision::ws_bound(args);
  const MlpProblem p =
      check_problem(kWsBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  const TracesResult t = evaluate_traces(p, Gradients::None);
  return ws_upper_bound_tensor(t.trace, t.trace_sq, p.num_params(), x.scalar_type());
}

std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> traces_with_gradients_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  const MlpProblem p = check_problem(caller, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  TracesResult t =
      evaluate_traces(p, need_grad_x ? Gradients::ParametersAndX : Gradients::Parameters);
  return {t.trace, t.trace_sq, gradient_list(*t.trace_grad, x), gradient_list(*t.trace_sq_grad, x)};
}

// λ_sup's weights on the traces' gradients: (∂λ_sup/∂tr H, ∂λ_sup/∂tr(H²)).
std::tuple<Tensor, Tensor, std::vector<Tensor>> ws_bound_with_gradient_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  const MlpProblem p =
      check_problem(caller, x, target, w1, b1, w2, b2, activation, reduction, loss);
  const CallThreads threads(x.device());
  const int64_t num_params = p.num_params();
  WeightedTraces t = evaluate_weighted_gradient(
      p, need_grad_x, [num_params](const Tensor& trace, const Tensor& trace_sq) {
        return bound_trace_grads_tensor(at::ones({}, trace.options()), trace, trace_sq,
                                        num_params);
      });
  return {t.trace, t.trace_sq, gradient_list(t.grad, x)};
}

// ---- Meta: the same checks, outputs of the right shapes. ----

std::tuple<Tensor, Tensor> hessian_traces_meta(const Tensor& x, const Tensor& target,
                                               const Tensor& w1, const optional<Tensor>& b1,
                                               const Tensor& w2, const optional<Tensor>& b2,
                                               c10::string_view activation,
                                               c10::string_view reduction,
                                               c10::string_view loss) {
  check_problem(kHessianTracesName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return {scalar_like(x, x.scalar_type()), scalar_like(x, x.scalar_type())};
}

Tensor ws_bound_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                     const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                     c10::string_view activation, c10::string_view reduction,
                     c10::string_view loss) {
  check_problem(kWsBoundName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return scalar_like(x, x.scalar_type());
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> ws_bound_with_gradient_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  check_problem(caller, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return {scalar_like(x, at::kDouble), scalar_like(x, at::kDouble),
          empty_gradient_list(x, need_grad_x, w1, b1, w2, b2)};
}

// The same checks and outputs, and tr(H²)'s gradient list besides.
std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> traces_with_gradients_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  auto [trace, trace_sq, trace_grads] = ws_bound_with_gradient_meta(
      x, target, w1, b1, w2, b2, activation, reduction, need_grad_x, caller, loss);
  return {trace, trace_sq, std::move(trace_grads),
          empty_gradient_list(x, need_grad_x, w1, b1, w2, b2)};
}

// ---- _traces_backward (any device; a fused loop on the CPU) and the helpers. ----

// grad_trace·∇tr H + grad_trace_sq·∇tr(H²), entry by entry; empty entries stay empty. The
// combination runs in float64: the bound's coefficients (∂λ/∂tr ∝ 1/s) can exceed the float32
// range where the spread s is tiny, and inf·0 would be NaN.
void check_traces_backward(const Tensor& grad_trace, const Tensor& grad_trace_sq,
                           at::TensorList trace_grads, at::TensorList trace_sq_grads) {
  TORCH_CHECK(trace_grads.size() == 5 && trace_sq_grads.size() == 5,
              "torch_ws._traces_backward: expected 5 gradients (x, w1, b1, w2, b2) in each "
              "list, got ", trace_grads.size(), " and ", trace_sq_grads.size());
  TORCH_CHECK(grad_trace.dim() == 0 && grad_trace_sq.dim() == 0,
              "torch_ws._traces_backward: expected 0-dim upstream gradients, got shapes ",
              grad_trace.sym_sizes(), " and ", grad_trace_sq.sym_sizes());
  for (size_t k = 0; k < 5; ++k) {
    const Tensor& a = trace_grads[k];
    const Tensor& b = trace_sq_grads[k];
    TORCH_CHECK(a.sym_sizes() == b.sym_sizes() && a.scalar_type() == b.scalar_type(),
                "torch_ws._traces_backward: gradient ", k, " has shape ", a.sym_sizes(), " (",
                a.scalar_type(), ") in one list and ", b.sym_sizes(), " (", b.scalar_type(),
                ") in the other");
  }
}

// Any device: tensor operations, the coefficients stay tensors (no host sync).
std::vector<Tensor> traces_backward(const Tensor& grad_trace, const Tensor& grad_trace_sq,
                                    at::TensorList trace_grads, at::TensorList trace_sq_grads) {
  check_traces_backward(grad_trace, grad_trace_sq, trace_grads, trace_sq_grads);
  const Tensor alpha = grad_trace.to(at::kDouble), beta = grad_trace_sq.to(at::kDouble);
  std::vector<Tensor> out;
  for (size_t k = 0; k < 5; ++k) {
    out.push_back(weighted_sum(alpha, trace_grads[k], beta, trace_sq_grads[k]));
  }
  return out;
}

// The CPU: one fused pass per entry.
std::vector<Tensor> traces_backward_cpu(const Tensor& grad_trace, const Tensor& grad_trace_sq,
                                        at::TensorList trace_grads,
                                        at::TensorList trace_sq_grads) {
  check_traces_backward(grad_trace, grad_trace_sq, trace_grads, trace_sq_grads);
  const double alpha = grad_trace.item<double>(), beta = grad_trace_sq.item<double>();
  std::vector<Tensor> out;
  for (size_t k = 0; k < 5; ++k) {
    out.push_back(weighted_sum_cpu(alpha, trace_grads[k], beta, trace_sq_grads[k]));
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ws_bounds_from_traces_op(
    const Tensor& trace, const Tensor& trace_sq, int64_t num_params,
    std::optional<at::ScalarType> compute_dtype, double trace_error, double trace_sq_error) {
  TORCH_CHECK(num_params >= 2, "torch_ws: the Wolkowicz-Styan bounds need n >= 2 parameters, "
              "got n = ", num_params);
  // The allowance's u, and the results' dtype, each rounded in the direction that keeps it a
  // bound.
  const auto dtype = compute_dtype.value_or(trace.scalar_type());
  // NaN errors (of a non-finite input) pass, and make the bounds NaN as the traces do.
  TORCH_CHECK(!(trace_error < 0) && !(trace_sq_error < 0), "torch_ws: trace errors must be >= 0, "
              "got ", trace_error, " and ", trace_sq_error);
  return ws_bounds_rounded(trace, trace_sq, num_params, dtype, trace_error, trace_sq_error);
}

int64_t num_params_op(int64_t in_dim, int64_t hidden, int64_t num_outputs, bool has_b1,
                      bool has_b2) {
  return count_params(hidden, in_dim, num_outputs, has_b1, has_b2);
}

std::vector<std::string> supported_op(c10::string_view option) {
  std::vector<std::string> names;
  if (option == "activation") {
    for (const auto& entry : kActivations) names.emplace_back(entry.name);
  } else if (option == "loss") {
    for (const auto& entry : kLosses) names.emplace_back(entry.name);
  } else if (option == "reduction") {
    names = {"mean", "sum"};
  } else {
    TORCH_CHECK(false, "torch_ws._supported: unknown option '", std::string(option),
                "'; expected activation, reduction or loss");
  }
  return names;
}

std::string activation_for_module_op(c10::string_view caller, c10::string_view class_name,
                                     c10::string_view module_prefix, c10::string_view approximate,
                                     double beta, double threshold, double negative_slope) {
  return activation_for_module(caller, class_name,
                               {std::string(approximate), beta, threshold, negative_slope},
                               module_prefix);
}

// The shapes _engine and _engines describe, checked.
ProblemShape engine_query(const char* op, const Tensor& x, const Tensor& w1, bool has_b1,
                          bool has_b2, int64_t num_outputs) {
  TORCH_CHECK(x.defined() && w1.defined(), op, ": expected tensors x (N, D) and w1 (H, D), got ",
              x.defined() ? "a tensor" : "None", " and ", w1.defined() ? "a tensor" : "None");
  TORCH_CHECK(x.dim() == 2 && w1.dim() == 2, op, ": expected x (N, D) and w1 (H, D), got shapes ",
              x.sizes(), " and ", w1.sizes());
  TORCH_CHECK(num_outputs >= 1, op, ": expected num_outputs >= 1, got ", num_outputs);
  return {x.device(), x.size(0), x.size(1), w1.size(0), num_outputs, has_b1, has_b2};
}

std::string engine_op(const Tensor& x, const Tensor& w1, bool has_b1, bool has_b2,
                      int64_t num_outputs) {
  return engine_name(choose_engine(
      engine_query("torch_ws._engine", x, w1, has_b1, has_b2, num_outputs)));
}

std::vector<std::string> engines_op(const Tensor& x, const Tensor& w1, bool has_b1, bool has_b2,
                                    int64_t num_outputs) {
  return describe_engines(engine_query("torch_ws._engines", x, w1, has_b1, has_b2, num_outputs));
}

int64_t tile_size_op(int64_t num_samples) {
  TORCH_CHECK(num_samples >= 1, "torch_ws._tile_size: expected a number of samples >= 1, got ",
              num_samples);
  return tile_size_for(num_samples);
}

}  // namespace
}  // namespace torch_ws

#define TORCH_WS_REGISTER_ENGINE_KERNELS(m)                                 \
  m.impl("hessian_traces", &torch_ws::hessian_traces_kernel);              \
  m.impl("ws_bound", &torch_ws::ws_bound_kernel);                          \
  m.impl("_traces_with_gradients", &torch_ws::traces_with_gradients_kernel); \
  m.impl("_ws_bound_with_gradient", &torch_ws::ws_bound_with_gradient_kernel)

// The CPU's fused float64 weighting of the gradient lists; other backends take the generic one.
TORCH_LIBRARY_IMPL(torch_ws, CPU, m) {
  m.impl("_traces_backward", &torch_ws::traces_backward_cpu);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("hessian_traces", &torch_ws::hessian_traces_meta);
  m.impl("ws_bound", &torch_ws::ws_bound_meta);
  m.impl("_traces_with_gradients", &torch_ws::traces_with_gradients_meta);
  m.impl("_ws_bound_with_gradient", &torch_ws::ws_bound_with_gradient_meta);
}

// One kernel for every backend (CPU, CUDA, any other): the engines pick each device's path.
TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  TORCH_WS_REGISTER_ENGINE_KERNELS(m);
  m.impl("_traces_backward", &torch_ws::traces_backward);
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeImplicitAutograd, m) {
  m.impl("_ws_bounds_from_traces", &torch_ws::ws_bounds_from_traces_op);
  m.impl("_num_params", &torch_ws::num_params_op);
  m.impl("_supported", &torch_ws::supported_op);
  m.impl("_activation_for_module", &torch_ws::activation_for_module_op);
  m.impl("_engine", &torch_ws::engine_op);
  m.impl("_engines", &torch_ws::engines_op);
  m.impl("_tile_size", &torch_ws::tile_size_op);
  m.impl("_parallel_threads", &torch_ws::parallel_threads);
  m.impl("_call_threads", &torch_ws::call_threads);
}
