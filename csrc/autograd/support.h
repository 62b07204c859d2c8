// What the Autograd kernels of every op family share (ops/<family>/autograd.cpp): the saved traces
// and gradients, the forward redispatch below autograd to _traces_with_gradients, the Error node
// that refuses double backward, and forward-mode tangents. The kernels' skeletons, built on these,
// are in skeleton.h. A family's autograd file holds its torch::autograd::Functions (at global
// scope, so that grad_fn prints as <CppNode<…Backward>>), its Autograd kernels and their
// registration.
//
// The bound is differentiable once: a gradient computed with create_graph=True carries an Error
// node that raises if it is differentiated again. Forward mode (torch.autograd.forward_ad,
// torch.func.jvp and jacfwd) is served by the same kernels where an op supports it: every output
// is a scalar, so its tangent is the inner product of its gradient with the inputs' tangents,
// from one evaluation with gradients (docs/math.md §6).
#pragma once

#include "ops/problem_args.h"
#include "ops/schemas.h"

#include <torch/autograd.h>

#include <string>
#include <tuple>
#include <vector>

namespace torch_ws {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

inline constexpr char kDoubleBackward[] =
    ": double backward is not supported; torch_ws differentiates the bound once (first-order "
    "training with it as a regularizer), not its gradient";

// What a Function keeps for its backward, by name: the float64 traces and the gradients of tr H
// and tr(H²) with respect to (x, w1, b1, w2, b2), plus the differentiable inputs themselves
// (ProblemArgs::inputs(), only to connect a create_graph gradient to them, see
// attach_double_backward_error).
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

// The traces and their gradients from _traces_with_gradients, called below autograd.
SavedTraces forward_traces(const ProblemArgs& p, const char* caller, bool need_grad_x);

// Calls f on every tensor among an op's results: a tensor, a list of them, or a tuple of both.
template <typename F>
void for_each_tensor(at::Tensor& result, const F& f) {
  f(result);
}
template <typename F>
void for_each_tensor(std::vector<at::Tensor>& results, const F& f) {
  for (at::Tensor& t : results) f(t);
}
template <typename F, typename... Parts>
void for_each_tensor(std::tuple<Parts...>& results, const F& f) {
  std::apply([&](Parts&... parts) { (for_each_tensor(parts, f), ...); }, results);
}

// Gives `results` one Error node, whose inputs are the op's differentiable inputs: differentiating
// a result raises `message`. Nothing happens where grad mode is off or no input requires grad.
void attach_error_node(const std::vector<at::Tensor*>& results,
                       const std::vector<at::Tensor>& inputs, const std::string& message);

// Under create_graph=True (grad mode on in the backward), the floating tensors among `results`
// (gradients, or an internal op's results, see for_each_tensor) get the Error node of
// attach_error_node.
template <typename Results>
void attach_double_backward_error(Results& results, const std::vector<at::Tensor>& inputs,
                                  const std::string& message) {
  std::vector<at::Tensor*> floating;
  for_each_tensor(results, [&](at::Tensor& t) {
    if (t.defined() && t.is_floating_point()) floating.push_back(&t);
  });
  attach_error_node(floating, inputs, message);
}

// Gradients (x, w1, b1, w2, b2) as a Function's backward returns them: one per argument of its
// apply (skeleton.h), that is none for the ProblemArgs, then one per tensor of
// ProblemArgs::tensors(). With the double-backward Error node under create_graph.
variable_list op_input_grads(std::vector<at::Tensor> grads,
                             const std::vector<at::Tensor>& inputs, const char* caller);

// grad_trace·∇tr H + grad_trace_sq·∇tr(H²) as a Function's backward returns them (op_input_grads).
variable_list input_grads(const SavedTraces& saved, const at::Tensor& grad_trace,
                          const at::Tensor& grad_trace_sq, const char* caller);

at::Tensor grad_or_zero(const at::Tensor& grad, const at::Tensor& like);

// The forward-mode tangents (level 0, the level forward_ad and torch.func.jvp use) of x, w1, b1,
// w2, b2, in SavedTraces' order; undefined where an input has none.
struct Tangents {
  std::vector<at::Tensor> of_inputs;
  bool any = false;
};

Tangents forward_tangents(const ProblemArgs& p, const char* caller);

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

// Whether a torch.func transform is active: its thread-local state then refuses C++ Functions (the
// check that Function::apply makes, asked beforehand), so a kernel that would checkpoint through
// one takes its recorded path instead.
bool functorch_transform_active();

// What autograd would record through `inputs` (undefined ones skipped): reverse mode (one
// requires grad, with grad mode on), forward-mode tangents, a torch.func transform.
struct Recording {
  bool reverse, forward, transform;
  // Reverse mode alone: what a C++ Function with a backward of its own serves (neither of the
  // others); the deep family's nodes take the ATen operations otherwise.
  bool reverse_only() const { return reverse && !forward && !transform; }
  bool any() const { return reverse || forward || transform; }
};
Recording recording_of(at::TensorList inputs);

}  // namespace torch_ws
