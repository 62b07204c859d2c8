// What the Autograd kernels of every op family share (ops/<family>/autograd.cpp): the saved traces
// and gradients, the forward redispatch below autograd to _traces_with_gradients, the Error node
// that refuses double backward, forward-mode tangents, and the not-differentiable marking of
// internal ops. A family's autograd file holds its torch::autograd::Functions (at global scope,
// so that grad_fn prints as <CppNode<…Backward>>), its Autograd kernels and their registration.
//
// The bound is differentiable once: a gradient computed with create_graph=True carries an Error
// node that raises if it is differentiated again. Forward mode (torch.autograd.forward_ad,
// torch.func.jvp and jacfwd) is served by the same kernels where an op supports it: every output
// is a scalar, so its tangent is the inner product of its gradient with the inputs' tangents,
// from one evaluation with gradients (docs/math.md §6).
#pragma once

#include "core/problem.h"
#include "ops/schemas.h"

#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace torch_ws {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

inline constexpr char kDoubleBackward[] =
    ": double backward is not supported; torch_ws differentiates the bound once (first-order "
    "training with it as a regularizer), not its gradient";

// What a Function keeps for its backward, by name: the float64 traces and the gradients of tr H
// and tr(H²) with respect to (x, w1, b1, w2, b2), plus the differentiable inputs themselves
// (only to connect a create_graph gradient to them, see attach_double_backward_error).
struct SavedTraces {
  at::Tensor trace, trace_sq;
  std::vector<at::Tensor> trace_grads, trace_sq_grads, inputs;

  static constexpr size_t kGradients = 5;  // x, w1, b1, w2, b2

  void save(AutogradContext* ctx) const {
    variable_list all = {trace, trace_sq};
    for (const auto* list : {&trace_grads, &trace_sq_grads, &inputs}) {
      all.insert(all.end(), list->begin(), list->end());
    }
    ctx->save_for_backward(all);
  }

  static SavedTraces load(AutogradContext* ctx) {
    const variable_list all = ctx->get_saved_variables();
    auto slice = [&](size_t index) {
      const auto begin = all.begin() + 2 + index * kGradients;
      return std::vector<at::Tensor>(begin, begin + kGradients);
    };
    return {all[0], all[1], slice(0), slice(1), slice(2)};
  }
};

// n from the layers' shapes. It does not depend on the batch: tracing with dynamic shapes
// specializes the layer widths only.
int64_t param_count(const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                    const at::Tensor& w2, const std::optional<at::Tensor>& b2);

struct ForwardResult {
  SavedTraces saved;
  int64_t num_params;
};

ForwardResult forward_traces(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                             const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                             const std::optional<at::Tensor>& b2, c10::string_view activation,
                             c10::string_view reduction, c10::string_view loss,
                             const char* caller, bool need_grad_x);

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

// Under create_graph=True (grad mode on in the backward), the gradients get an Error node whose
// inputs are the op's differentiable inputs: differentiating them again raises `message`. Nothing
// happens where no input requires grad.
void attach_double_backward_error(std::vector<at::Tensor>& grads,
                                  const std::vector<at::Tensor>& inputs, const std::string& message);

// Gradients (x, w1, b1, w2, b2) as the gradients of the forward's nine arguments, with the
// double-backward Error node under create_graph.
variable_list op_input_grads(std::vector<at::Tensor> grads,
                             const std::vector<at::Tensor>& inputs, const char* caller);

// grad_trace·∇tr H + grad_trace_sq·∇tr(H²) as the gradients of the forward's nine arguments.
variable_list input_grads(const SavedTraces& saved, const at::Tensor& grad_trace,
                          const at::Tensor& grad_trace_sq, const char* caller);

at::Tensor grad_or_zero(const at::Tensor& grad, const at::Tensor& like);

// The forward-mode tangents (level 0, the level forward_ad and torch.func.jvp use) of x, w1, b1,
// w2, b2, in SavedTraces' order; undefined where an input has none.
struct Tangents {
  std::vector<at::Tensor> of_inputs;
  bool any = false;
};

Tangents forward_tangents(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                          const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                          const std::optional<at::Tensor>& b2, const char* caller);

// Σ_k ⟨gradient_k, tangent_k⟩ in float64: the directional derivative of a scalar output. Out of
// place: under torch.func.jacfwd the tangents are batched (vmap over a basis), and so is the sum.
at::Tensor directional_derivative(const std::vector<at::Tensor>& gradients,
                                  const Tangents& tangents);

// Sets `output`'s tangent (level 0) to `tangent` in the output's dtype.
void set_tangent(at::Tensor& output, const at::Tensor& tangent);

// Tangents on inputs that also require grad: forward-over-reverse (a Hessian-vector product of the
// bound) or reverse-over-forward would need the bound's second derivative, which is not provided.
void refuse_both_modes(bool reverse, const char* caller);

// The internal ops return derivatives already: a tangent on their inputs is refused.
void refuse_tangents(const std::vector<at::Tensor>& inputs, const char* op);

// Whether autograd will record this call; if not, the plain kernels skip the gradient work.
bool records_grad(const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                  const at::Tensor& w2, const std::optional<at::Tensor>& b2);

// The internal ops called directly with inputs that require grad: their results are not
// differentiable (they are derivatives already), so they carry the same Error node.
using TracesAndGradients =
    std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The trace ops' internal forms return derivatives already: every result (the traces, then each
// gradient list) carries an Error node (with `message`) on the differentiable inputs.
template <typename... Lists>
void not_differentiable(at::Tensor& trace, at::Tensor& trace_sq,
                        const std::vector<at::Tensor>& inputs, const std::string& message,
                        Lists&... gradient_lists) {
  std::vector<at::Tensor> traces = {trace, trace_sq};
  attach_double_backward_error(traces, inputs, message);
  (attach_double_backward_error(gradient_lists, inputs, message), ...);
  trace = traces[0];
  trace_sq = traces[1];
}

inline TracesAndGradients not_differentiable(TracesAndGradients out,
                                             const std::vector<at::Tensor>& inputs,
                                             const std::string& message) {
  auto& [trace, trace_sq, trace_grads, trace_sq_grads] = out;
  not_differentiable(trace, trace_sq, inputs, message, trace_grads, trace_sq_grads);
  return out;
}

}  // namespace torch_ws
