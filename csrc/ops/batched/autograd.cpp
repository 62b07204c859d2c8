// Autograd of the batched family (ws_bound_batched, B models on one data set, docs/math.md §10),
// registered at the Autograd key: the forward redispatches to _batched_traces, the batched form
// of _traces_with_gradients, and the backward combines each model's gradients with its own
// coefficients. Forward mode is refused with an error. The kernels follow the skeletons of
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

// ws_bound_batched: _batched_traces gives every model's traces and their gradients; the backward
// weighs model b's gradients by its own ∂λ_sup/∂tr H and ∂λ_sup/∂tr(H²) (docs/math.md §7). The
// data set is shared, so x's gradient is the sum over the models.
class WsBoundBatchedBackward : public torch::autograd::Function<WsBoundBatchedBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const ws::ProblemArgs& p,
                               at::TensorList /*p.tensors()*/) {
    static auto op = ws::find_op<ws::BatchedTracesSignature>("torch_ws::_batched_traces");
    auto [trace, trace_sq, trace_grads, trace_sq_grads] = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(p.x, p.target, p.w1(), p.b1(), p.w2(), p.b2(), p.activation, p.reduction,
                     /*with_gradients=*/true, p.x.requires_grad(), p.loss);
    }();
    // The weights are (B, out, in): n of one model.
    const int64_t n = ws::count_params(p.w1().size(1), p.w1().size(2), p.w2().size(1),
                                       p.b1().has_value(), p.b2().has_value());
    const ws::SavedTraces saved{trace, trace_sq, std::move(trace_grads),
                                std::move(trace_sq_grads), p.inputs()};
    saved.save(ctx);
    ctx->saved_data["num_params"] = n;
    ctx->saved_data["need_grad_x"] = p.x.requires_grad();
    return {ws::ws_upper_bound_batched(trace, trace_sq, n, p.x.scalar_type())};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const ws::SavedTraces saved = ws::SavedTraces::load(ctx);
    const Tensor upstream = grad_outputs[0].defined() ? grad_outputs[0].to(at::kDouble)
                                                      : at::zeros_like(saved.trace);
    const auto [d_trace, d_trace_sq] = ws::bound_trace_grads(
        upstream, saved.trace, saved.trace_sq, ctx->saved_data["num_params"].toInt());
    const bool need_grad_x = ctx->saved_data["need_grad_x"].toBool();
    std::vector<Tensor> grads(ws::SavedTraces::kGradients);
    for (size_t k = 0; k < grads.size(); ++k) {
      const Tensor& of_trace = saved.trace_grads[k];
      if (of_trace.numel() == 0 || (k == 0 && !need_grad_x)) continue;
      // Each model's coefficients broadcast over its gradient's own dimensions.
      std::vector<int64_t> shape(of_trace.dim(), 1);
      shape[0] = of_trace.size(0);
      const Tensor combined = of_trace.to(at::kDouble) * d_trace.view(shape) +
                              saved.trace_sq_grads[k].to(at::kDouble) * d_trace_sq.view(shape);
      grads[k] = (k == 0 ? combined.sum(0) : combined).to(of_trace.scalar_type());
    }
    return ws::op_input_grads(std::move(grads), saved.inputs, ws::kWsBoundBatchedName);
  }
};

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

Tensor ws_bound_batched_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                                 const optional<Tensor>& b1, const Tensor& w2,
                                 const optional<Tensor>& b2, c10::string_view activation,
                                 c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<WsBoundBatchedSignature>("torch_ws::ws_bound_batched");
  return public_op_autograd<WsBoundBatchedBackward>(
      op, kWsBoundBatchedName, {x, target, w1, b1, w2, b2, activation, reduction, loss},
      &low_precision::ws_bound_batched,
      NoForwardMode{": forward-mode AD (torch.func.jvp, jacfwd, forward_ad) is not supported; "
                    "differentiate the bounds in reverse mode (backward, torch.autograd.grad), "
                    "or use torch_ws.ws_bound per model"});
}

// The internal op, not differentiable itself (autograd/skeleton.h).
std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> batched_traces_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool with_gradients, bool need_grad_x, c10::string_view loss) {
  static auto op = find_op<BatchedTracesSignature>("torch_ws::_batched_traces");
  const ProblemArgs p(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return internal_op_autograd(
      "torch_ws._batched_traces", p.tensors(), p.inputs(),
      "torch_ws._batched_traces is not differentiable; call torch_ws.ws_bound_batched to "
      "differentiate the bounds",
      [&] {
        return op.call(x, target, w1, b1, w2, b2, activation, reduction, with_gradients,
                       need_grad_x, loss);
      });
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  m.impl("ws_bound_batched", &torch_ws::ws_bound_batched_autograd);
  m.impl("_batched_traces", &torch_ws::batched_traces_autograd);
}
