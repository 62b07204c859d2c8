// The shared pieces of the ops' autograd (support.h).
#include "autograd/support.h"

#include <algorithm>

namespace torch_ws {

using at::Tensor;
using std::optional;

// n from the layers' shapes. It does not depend on the batch: tracing with dynamic shapes
// specializes the layer widths only.
int64_t param_count(const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                    const optional<Tensor>& b2) {
  auto width = [](const Tensor& t, int64_t dim) {
    return t.sym_size(dim).guard_int(__FILE__, __LINE__);
  };
  return count_params(width(w1, 0), width(w1, 1), width(w2, 0), b1.has_value(), b2.has_value());
}

ForwardResult forward_traces(const Tensor& x, const Tensor& target, const Tensor& w1,
                             const optional<Tensor>& b1, const Tensor& w2,
                             const optional<Tensor>& b2, c10::string_view activation,
                             c10::string_view reduction, c10::string_view loss,
                             const char* caller, bool need_grad_x) {
  at::AutoDispatchBelowADInplaceOrView guard;
  static auto op = find_op<TracesWithGradientsSignature>("torch_ws::_traces_with_gradients");
  auto [trace, trace_sq, trace_grads, trace_sq_grads] = op.call(
      x, target, w1, b1, w2, b2, activation, reduction, need_grad_x, caller, loss);
  SavedTraces saved{trace, trace_sq, std::move(trace_grads), std::move(trace_sq_grads),
                    {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())}};
  return {std::move(saved), param_count(w1, b1, w2, b2)};
}

// Under create_graph=True (grad mode on in the backward), the gradients get an Error node whose
// inputs are the op's differentiable inputs: differentiating them again raises `message`. Nothing
// happens where no input requires grad.
void attach_double_backward_error(std::vector<Tensor>& grads, const std::vector<Tensor>& inputs,
                                  const std::string& message) {
  const bool any_requires_grad = std::any_of(inputs.begin(), inputs.end(), [](const Tensor& t) {
    return t.defined() && t.requires_grad();
  });
  if (!torch::autograd::GradMode::is_enabled() || !any_requires_grad) return;
  auto node = make_node<torch::autograd::Error>(
      message, torch::autograd::collect_next_edges(inputs));
  for (Tensor& grad : grads) {
    if (grad.defined()) {
      grad = grad.detach();
      torch::autograd::create_gradient_edge(grad, node);
    }
  }
}

// Gradients (x, w1, b1, w2, b2) as the gradients of the forward's nine arguments, with the
// double-backward Error node under create_graph.
variable_list op_input_grads(std::vector<Tensor> grads, const std::vector<Tensor>& inputs,
                             const char* caller) {
  attach_double_backward_error(grads, inputs, std::string(caller) + kDoubleBackward);
  // Entries that were not computed (x without requires_grad, absent biases) are empty.
  auto present = [&](size_t k, bool computed) { return computed ? grads[k] : Tensor(); };
  return {present(0, inputs[0].requires_grad()), Tensor(), grads[1],
          present(2, inputs[2].defined()), grads[3], present(4, inputs[4].defined()),
          Tensor(), Tensor(), Tensor()};
}

// grad_trace·∇tr H + grad_trace_sq·∇tr(H²) as the gradients of the forward's nine arguments.
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

Tangents forward_tangents(const Tensor& x, const Tensor& target, const Tensor& w1,
                          const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                          const char* caller) {
  auto tangent = [](const Tensor& t) { return t.defined() ? t._fw_grad(/*level=*/0) : Tensor(); };
  TORCH_CHECK(!tangent(target).defined(), caller, ": target has a forward-mode tangent, but the "
              "bound is not differentiable in the labels; pass target without one");
  Tangents out;
  out.of_inputs = {tangent(x), tangent(w1), tangent(b1.value_or(Tensor())), tangent(w2),
                   tangent(b2.value_or(Tensor()))};
  out.any = std::any_of(out.of_inputs.begin(), out.of_inputs.end(),
                        [](const Tensor& t) { return t.defined(); });
  return out;
}

// Σ_k ⟨gradient_k, tangent_k⟩ in float64: the directional derivative of a scalar output. Out of
// place: under torch.func.jacfwd the tangents are batched (vmap over a basis), and so is the sum.
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

// Sets `output`'s tangent (level 0) to `tangent` in the output's dtype.
void set_tangent(Tensor& output, const Tensor& tangent) {
  output._set_fw_grad(tangent.to(output.scalar_type()), /*level=*/0, /*is_inplace_op=*/false);
}

// Tangents on inputs that also require grad: forward-over-reverse (a Hessian-vector product of the
// bound) or reverse-over-forward would need the bound's second derivative, which is not provided.
void refuse_both_modes(bool reverse, const char* caller) {
  TORCH_CHECK(!reverse, caller, ": forward-mode AD on inputs that also require grad (e.g. a "
              "Hessian-vector product of the bound) is not supported: the bound is "
              "differentiable once; use forward mode (torch.func.jvp, jacfwd, forward_ad) or "
              "reverse mode (backward, torch.autograd.grad) alone");
}

// The internal ops return derivatives already: a tangent on their inputs is refused.
void refuse_tangents(const std::vector<Tensor>& inputs, const char* op) {
  for (const Tensor& t : inputs) {
    TORCH_CHECK(!t.defined() || !t._fw_grad(/*level=*/0).defined(), op, " is not differentiable "
                "in forward mode; call torch_ws.hessian_traces or torch_ws.ws_bound instead");
  }
}

// Whether autograd will record this call; if not, the plain kernels skip the gradient work.
bool records_grad(const Tensor& x, const Tensor& w1, const optional<Tensor>& b1,
                  const Tensor& w2, const optional<Tensor>& b2) {
  return torch::autograd::GradMode::is_enabled() &&
         (x.requires_grad() || w1.requires_grad() || w2.requires_grad() ||
          (b1 && b1->requires_grad()) || (b2 && b2->requires_grad()));
}

}  // namespace torch_ws
