// Autograd of the traces family (hessian_traces, ws_bound and their internal ops), registered at
// the Autograd key. hessian_traces' forward redispatches below autograd to _traces_with_gradients,
// which returns the traces and the gradients of tr H and tr(H²) from whichever engine the problem
// gets (so every backend's and the Meta kernel serve, and no engine choice happens here); its
// backward combines those saved gradients with the upstream ones through _traces_backward
// (docs/math.md §6). ws_bound's forward asks _ws_bound_with_gradient for λ_sup's gradient alone
// (one chain, §6.3) and its backward scales it by the upstream gradient. Forward mode is served
// from the same evaluation (autograd/support.h). The kernels follow the skeletons of
// autograd/skeleton.h (bfloat16/float16 inputs go through the low-precision policy first).
#include "autograd/skeleton.h"
#include "core/ws_bound.h"
#include "ops/low_precision.h"
#include "ops/problem_args.h"
#include "ops/schemas.h"

#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

// The Functions live at global scope for their grad_fn's name (autograd/skeleton.h says why).
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace ws = torch_ws;

class HessianTracesBackward : public torch::autograd::Function<HessianTracesBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const ws::ProblemArgs& p,
                               at::TensorList /*p.tensors()*/) {
    const ws::SavedTraces saved =
        ws::forward_traces(p, ws::kHessianTracesName, p.x.requires_grad());
    saved.save(ctx);
    // A Function's outputs must be its own tensors: copy even where the dtype is already right.
    return {saved.trace.to(p.x.scalar_type(), false, true),
            saved.trace_sq.to(p.x.scalar_type(), false, true)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const ws::SavedTraces saved = ws::SavedTraces::load(ctx);
    return ws::input_grads(saved, ws::grad_or_zero(grad_outputs[0], saved.trace),
                           ws::grad_or_zero(grad_outputs[1], saved.trace),
                           ws::kHessianTracesName);
  }
};

// ws_bound's forward computes λ_sup's gradient itself (_ws_bound_with_gradient: the traces'
// gradients weighed before the chain, docs/math.md §6.3), so the backward only scales it.
class WsBoundBackward : public torch::autograd::Function<WsBoundBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const ws::ProblemArgs& p,
                               at::TensorList /*p.tensors()*/) {
    static auto op =
        ws::find_op<ws::WsBoundWithGradientSignature>("torch_ws::_ws_bound_with_gradient");
    auto [trace, trace_sq, bound_grads] = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(p.x, p.target, p.w1(), p.b1(), p.w2(), p.b2(), p.activation, p.reduction,
                     p.x.requires_grad(), ws::kWsBoundName, p.loss);
    }();
    // The gradients, then the differentiable inputs (for the double-backward Error node).
    variable_list saved = bound_grads;
    const variable_list inputs = p.inputs();
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    return {ws::ws_upper_bound_tensor(trace, trace_sq, p.num_params(), p.x.scalar_type())};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& upstream = grad_outputs[0];
    std::vector<Tensor> grads(saved.begin(), saved.begin() + ws::SavedTraces::kGradients);
    const std::vector<Tensor> inputs(saved.begin() + ws::SavedTraces::kGradients, saved.end());
    // (Entries not computed are empty here, and left out by op_input_grads.)
    for (Tensor& grad : grads) {
      grad = upstream.defined() ? grad * upstream.to(grad.scalar_type()) : at::zeros_like(grad);
    }
    return ws::op_input_grads(std::move(grads), inputs, ws::kWsBoundName);
  }
};

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

// ---- Forward mode (docs/math.md §6): each output is a scalar, so its tangent is the inner
// product of its gradient with the inputs' tangents, from one evaluation with gradients. ----

std::tuple<Tensor, Tensor> hessian_traces_with_tangents(const ProblemArgs& p,
                                                        const Tangents& tangents) {
  const SavedTraces r = forward_traces(p, kHessianTracesName, tangents.of_inputs[0].defined());
  Tensor trace = r.trace.to(p.x.scalar_type(), false, true);
  Tensor trace_sq = r.trace_sq.to(p.x.scalar_type(), false, true);
  set_tangent(trace, directional_derivative(r.trace_grads, tangents));
  set_tangent(trace_sq, directional_derivative(r.trace_sq_grads, tangents));
  return {trace, trace_sq};
}

Tensor ws_bound_with_tangents(const ProblemArgs& p, const Tangents& tangents) {
  const SavedTraces r = forward_traces(p, kWsBoundName, tangents.of_inputs[0].defined());
  const int64_t n = p.num_params();
  Tensor bound = ws_upper_bound_tensor(r.trace, r.trace_sq, n, p.x.scalar_type());
  // d bound = (∂bound/∂tr H)·d tr H + (∂bound/∂tr H²)·d tr H² (docs/math.md §7).
  const auto [d_trace, d_trace_sq] =
      bound_trace_grads_tensor(at::ones({}, r.trace.options()), r.trace, r.trace_sq, n);
  set_tangent(bound, d_trace.to(at::kDouble) * directional_derivative(r.trace_grads, tangents) +
                         d_trace_sq.to(at::kDouble) *
                             directional_derivative(r.trace_sq_grads, tangents));
  return bound;
}

// ---- The public ops (autograd/skeleton.h). ----

std::tuple<Tensor, Tensor> hessian_traces_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<HessianTracesSignature>("torch_ws::hessian_traces");
  return public_op_autograd<HessianTracesBackward>(
      op, kHessianTracesName, {x, target, w1, b1, w2, b2, activation, reduction, loss},
      &low_precision::hessian_traces, &hessian_traces_with_tangents);
}

Tensor ws_bound_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                         const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                         c10::string_view activation, c10::string_view reduction,
                         c10::string_view loss) {
  static auto op = find_op<WsBoundSignature>("torch_ws::ws_bound");
  return public_op_autograd<WsBoundBackward>(
      op, kWsBoundName, {x, target, w1, b1, w2, b2, activation, reduction, loss},
      &low_precision::ws_bound, &ws_bound_with_tangents);
}

// ---- The internal ops, not differentiable themselves (autograd/skeleton.h). ----

std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> traces_with_gradients_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  static auto op = find_op<TracesWithGradientsSignature>("torch_ws::_traces_with_gradients");
  const ProblemArgs p(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return internal_op_autograd(
      "torch_ws._traces_with_gradients", p.tensors(), p.inputs(),
      "torch_ws._traces_with_gradients is not differentiable; call torch_ws.hessian_traces or "
      "torch_ws.ws_bound to differentiate the traces",
      [&] {
        return op.call(x, target, w1, b1, w2, b2, activation, reduction, need_grad_x, caller,
                       loss);
      });
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> ws_bound_with_gradient_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  static auto op = find_op<WsBoundWithGradientSignature>("torch_ws::_ws_bound_with_gradient");
  const ProblemArgs p(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return internal_op_autograd(
      "torch_ws._ws_bound_with_gradient", p.tensors(), p.inputs(),
      "torch_ws._ws_bound_with_gradient is not differentiable; call torch_ws.ws_bound to "
      "differentiate the bound",
      [&] {
        return op.call(x, target, w1, b1, w2, b2, activation, reduction, need_grad_x, caller,
                       loss);
      });
}

std::vector<Tensor> traces_backward_autograd(const Tensor& grad_trace, const Tensor& grad_trace_sq,
                                             at::TensorList trace_grads,
                                             at::TensorList trace_sq_grads) {
  static auto op = find_op<TracesBackwardSignature>("torch_ws::_traces_backward");
  std::vector<Tensor> inputs = {grad_trace, grad_trace_sq};
  inputs.insert(inputs.end(), trace_grads.begin(), trace_grads.end());
  inputs.insert(inputs.end(), trace_sq_grads.begin(), trace_sq_grads.end());
  return internal_op_autograd(
      "torch_ws._traces_backward", inputs, inputs,
      std::string("torch_ws._traces_backward") + kDoubleBackward,
      [&] { return op.call(grad_trace, grad_trace_sq, trace_grads, trace_sq_grads); });
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  m.impl("hessian_traces", &torch_ws::hessian_traces_autograd);
  m.impl("ws_bound", &torch_ws::ws_bound_autograd);
  m.impl("_traces_with_gradients", &torch_ws::traces_with_gradients_autograd);
  m.impl("_traces_backward", &torch_ws::traces_backward_autograd);
  m.impl("_ws_bound_with_gradient", &torch_ws::ws_bound_with_gradient_autograd);
}
