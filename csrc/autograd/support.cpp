// The shared pieces of the ops' autograd (support.h).
#include "autograd/support.h"

#include <ATen/FuncTorchTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <algorithm>
#include <type_traits>

namespace torch_ws {

using at::Tensor;

namespace {

// An autograd node in the pointer its torch holds nodes in: c10::intrusive_ptr from torch 2.13 on,
// std::shared_ptr before (torch 2.11).
template <typename NodeType, typename... Args>
auto make_node(Args&&... args) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, torch::autograd::Node>) {
    return c10::make_intrusive<NodeType>(std::forward<Args>(args)...);
  } else {
    return std::make_shared<NodeType>(std::forward<Args>(args)...);
  }
}

}  // namespace

SavedTraces forward_traces(const ProblemArgs& p, const char* caller, bool need_grad_x) {
  at::AutoDispatchBelowADInplaceOrView guard;
  static auto op = find_op<TracesWithGradientsSignature>("torch_ws::_traces_with_gradients");
  auto [trace, trace_sq, trace_grads, trace_sq_grads] =
      op.call(p.x, p.target, p.w1(), p.b1(), p.w2(), p.b2(), p.activation, p.reduction,
              need_grad_x, caller, p.loss);
  return {trace, trace_sq, std::move(trace_grads), std::move(trace_sq_grads), p.inputs()};
}

void attach_error_node(const std::vector<Tensor*>& results, const std::vector<Tensor>& inputs,
                       const std::string& message) {
  const bool any_requires_grad = std::any_of(inputs.begin(), inputs.end(), [](const Tensor& t) {
    return t.defined() && t.requires_grad();
  });
  if (!torch::autograd::GradMode::is_enabled() || !any_requires_grad) return;
  auto node = make_node<torch::autograd::Error>(
      message, torch::autograd::collect_next_edges(inputs));
  for (Tensor* result : results) {
    *result = result->detach();
    torch::autograd::create_gradient_edge(*result, node);
  }
}

variable_list op_input_grads(std::vector<Tensor> grads, const std::vector<Tensor>& inputs,
                             const char* caller) {
  attach_double_backward_error(grads, inputs, std::string(caller) + kDoubleBackward);
  // x's gradient is computed only where x requires grad; target has none.
  variable_list out = {Tensor() /* the ProblemArgs */,
                       inputs[0].requires_grad() ? grads[0] : Tensor(), Tensor() /* target */};
  // The layers' weights and biases, an absent bias (undefined among inputs) not being one of
  // ProblemArgs::tensors().
  for (size_t k = 1; k < inputs.size(); ++k) {
    if (inputs[k].defined()) out.push_back(grads[k]);
  }
  return out;
}

variable_list input_grads(const SavedTraces& saved, const Tensor& grad_trace,
                          const Tensor& grad_trace_sq, const char* caller) {
  static auto op = find_op<TracesBackwardSignature>("torch_ws::_traces_backward");
  std::vector<Tensor> grads;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    grads = op.call(grad_trace, grad_trace_sq, saved.trace_grads, saved.trace_sq_grads);
  }
  return op_input_grads(std::move(grads), saved.inputs, caller);
}

Tensor grad_or_zero(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad : at::zeros({}, like.options());
}

Tangents forward_tangents(const ProblemArgs& p, const char* caller) {
  auto tangent = [](const Tensor& t) { return t.defined() ? t._fw_grad(/*level=*/0) : Tensor(); };
  TORCH_CHECK(!tangent(p.target).defined(), caller, ": target has a forward-mode tangent, but the "
              "bound is not differentiable in the labels; pass target without one");
  Tangents out;
  for (const Tensor& input : p.inputs()) out.of_inputs.push_back(tangent(input));
  out.any = std::any_of(out.of_inputs.begin(), out.of_inputs.end(),
                        [](const Tensor& t) { return t.defined(); });
  return out;
}

Tensor directional_derivative(const std::vector<Tensor>& gradients, const Tangents& tangents) {
  Tensor sum = at::zeros({}, gradients[1].options().dtype(at::kDouble));
  for (size_t k = 0; k < gradients.size(); ++k) {
    const Tensor& t = tangents.of_inputs[k];
    if (t.defined() && gradients[k].defined()) {
      sum = sum + (gradients[k].to(at::kDouble) * t.to(at::kDouble)).sum();
    }
  }
  return sum;
}

void set_tangent(Tensor& output, const Tensor& tangent) {
  output._set_fw_grad(tangent.to(output.scalar_type()), /*level=*/0, /*is_inplace_op=*/false);
}

void refuse_both_modes(bool reverse, const char* caller) {
  TORCH_CHECK(!reverse, caller, ": forward-mode AD on inputs that also require grad (e.g. a "
              "Hessian-vector product of the bound) is not supported: the bound is "
              "differentiable once; use forward mode (torch.func.jvp, jacfwd, forward_ad) or "
              "reverse mode (backward, torch.autograd.grad) alone");
}

void refuse_tangents(const std::vector<Tensor>& inputs, const char* op) {
  for (const Tensor& t : inputs) {
    TORCH_CHECK(!t.defined() || !t._fw_grad(/*level=*/0).defined(), op, " is not differentiable "
                "in forward mode; call torch_ws.hessian_traces or torch_ws.ws_bound instead");
  }
}

Recording recording_of(at::TensorList inputs) {
  bool reverse = false, forward = false;
  for (const Tensor& t : inputs) {
    if (!t.defined()) continue;
    reverse = reverse || t.requires_grad();
    forward = forward || t._fw_grad(/*level=*/0).defined();
  }
  return {at::GradMode::is_enabled() && reverse, forward, functorch_transform_active()};
}

bool functorch_transform_active() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
    return false;
  } catch (const c10::Error&) {
    return true;
  }
}

}  // namespace torch_ws
