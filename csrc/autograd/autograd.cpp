// Autograd for the torch_ws ops: C++ torch::autograd::Functions registered at the Autograd key.
// hessian_traces' forward redispatches below autograd to _traces_with_gradients, which returns the
// traces and the gradients of tr H and tr(H²) from whichever engine the problem gets (so CPU, CUDA
// and Meta kernels all serve, and no engine choice happens here); its backward combines those
// saved gradients with the upstream ones through _traces_backward (docs/math.md §6). ws_bound's
// forward asks _ws_bound_with_gradient for λ_sup's gradient alone (one chain, §6.3) and its
// backward scales it by the upstream gradient. The bound is differentiable once: a gradient
// computed with create_graph=True carries an Error node that raises if it is differentiated
// again.
//
// bfloat16/float16 inputs are computed in float32 here, above the engines (which take float32
// and float64), and the results returned in the input dtype.
//
// Forward mode (torch.autograd.forward_ad, torch.func.jvp and jacfwd) is served by the same
// kernels: every output is a scalar, so its tangent is the inner product of its gradient with
// the inputs' tangents, from one evaluation with gradients (docs/math.md §6). Without this the
// C++ Function would drop the tangents silently (a tangent of zero). spectral_bound and
// ws_bound_batched refuse tangents with an error instead.
//
// ws_bound_batched (B models, docs/math.md §10) redispatches to _batched_traces, the batched
// form of _traces_with_gradients, and combines each model's gradients with its own coefficients.
#include "core/problem.h"
#include "core/ws_bound.h"
#include "ops/low_precision.h"
#include "ops/schemas.h"

#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr char kDoubleBackward[] =
    ": double backward is not supported; torch_ws differentiates the bound once (first-order "
    "training with it as a regularizer), not its gradient";

// What a Function keeps for its backward, by name: the float64 traces and the gradients of tr H
// and tr(H²) with respect to (x, w1, b1, w2, b2), plus the differentiable inputs themselves
// (only to connect a create_graph gradient to them, see attach_double_backward_error).
struct SavedTraces {
  Tensor trace, trace_sq;
  std::vector<Tensor> trace_grads, trace_sq_grads, inputs;

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
      return std::vector<Tensor>(begin, begin + kGradients);
    };
    return {all[0], all[1], slice(0), slice(1), slice(2)};
  }
};

// n from the layers' shapes. It does not depend on the batch: tracing with dynamic shapes
// specializes the layer widths only.
int64_t param_count(const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                    const optional<Tensor>& b2) {
  auto width = [](const Tensor& t, int64_t dim) {
    return t.sym_size(dim).guard_int(__FILE__, __LINE__);
  };
  return count_params(width(w1, 0), width(w1, 1), width(w2, 0), b1.has_value(), b2.has_value());
}

struct ForwardResult {
  SavedTraces saved;
  int64_t num_params;
};

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

}  // namespace
}  // namespace torch_ws

// The Functions live at global scope for their grad_fn's sake: Python prints a C++
// Function's node as the last "::" segment of its demangled type, torch::autograd::CppNode<T>,
// so a namespaced T read <WsBoundFunction>> (a stray bracket); a global one reads
// <CppNode<WsBoundBackward>>.
using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace ws = torch_ws;

class HessianTracesBackward : public torch::autograd::Function<HessianTracesBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& target,
                               const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, c10::string_view loss) {
    ws::ForwardResult r = ws::forward_traces(x, target, w1, b1, w2, b2, activation, reduction,
                                             loss, ws::kHessianTracesName, x.requires_grad());
    r.saved.save(ctx);
    // A Function's outputs must be its own tensors: copy even where the dtype is already right.
    return {r.saved.trace.to(x.scalar_type(), false, true),
            r.saved.trace_sq.to(x.scalar_type(), false, true)};
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
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& target,
                               const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, c10::string_view loss) {
    static auto op =
        ws::find_op<ws::WsBoundWithGradientSignature>("torch_ws::_ws_bound_with_gradient");
    auto [trace, trace_sq, bound_grads] = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(x, target, w1, b1, w2, b2, activation, reduction, x.requires_grad(),
                     ws::kWsBoundName, loss);
    }();
    // The gradients, then the differentiable inputs (for the double-backward Error node).
    variable_list saved = bound_grads;
    saved.insert(saved.end(), {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())});
    ctx->save_for_backward(saved);
    return {ws::ws_upper_bound_tensor(trace, trace_sq, ws::param_count(w1, b1, w2, b2),
                                      x.scalar_type())};
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

// spectral_bound (docs/math.md §9): the forward keeps the eigenvectors; the backward turns them
// into gradients through _spectral_backward, which costs O(N·H·(D + C)), far less than the
// forward's eigenproblems.
class SpectralBoundBackward : public torch::autograd::Function<SpectralBoundBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& target,
                               const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, c10::string_view loss) {
    static auto op = ws::find_op<ws::SpectralPartsSignature>("torch_ws::_spectral_parts");
    auto parts = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
    }();
    auto [upper, ggn, residual_max, lambda_min, residual, iterations, ws_wins, ggn_vector,
          max_vector, max_unit, min_vector, min_unit] = std::move(parts);
    ctx->save_for_backward({x, target, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor()),
                            ws_wins, ggn_vector, max_vector, max_unit, min_vector, min_unit});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["loss"] = std::string(loss);
    ctx->saved_data["has_b1"] = b1.has_value();
    ctx->saved_data["has_b2"] = b2.has_value();
    ctx->saved_data["need_grad_x"] = x.requires_grad();
    ctx->mark_non_differentiable({residual, iterations});
    return {upper, ggn, residual_max, lambda_min, residual, iterations};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    auto optional_input = [&](size_t k, const char* flag) {
      return ctx->saved_data[flag].toBool() ? optional<Tensor>(saved[k]) : std::nullopt;
    };
    const optional<Tensor> b1 = optional_input(3, "has_b1"), b2 = optional_input(5, "has_b2");
    const bool need_grad_x = ctx->saved_data["need_grad_x"].toBool();
    static auto op = ws::find_op<ws::SpectralBackwardSignature>("torch_ws::_spectral_backward");
    std::vector<Tensor> grads;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      grads = op.call(ws::grad_or_zero(grad_outputs[0], saved[0]),
                      ws::grad_or_zero(grad_outputs[1], saved[0]),
                      ws::grad_or_zero(grad_outputs[2], saved[0]),
                      ws::grad_or_zero(grad_outputs[3], saved[0]), saved[0], saved[1], saved[2],
                      b1, saved[4], b2, ctx->saved_data["activation"].toStringRef(),
                      ctx->saved_data["reduction"].toStringRef(),
                      ctx->saved_data["loss"].toStringRef(), saved[6], saved[7], saved[8],
                      saved[9], saved[10], saved[11], need_grad_x);
    }
    return ws::op_input_grads(std::move(grads),
                              {saved[0], saved[2], saved[3], saved[4], saved[5]},
                              ws::kSpectralBoundName);
  }
};

// ws_bound_batched: _batched_traces gives every model's traces and their gradients; the backward
// weighs model b's gradients by its own ∂λ_sup/∂tr H and ∂λ_sup/∂tr(H²) (docs/math.md §7). The
// data set is shared, so x's gradient is the sum over the models.
class WsBoundBatchedBackward : public torch::autograd::Function<WsBoundBatchedBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& target,
                               const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, c10::string_view loss) {
    static auto op = ws::find_op<ws::BatchedTracesSignature>("torch_ws::_batched_traces");
    auto [trace, trace_sq, trace_grads, trace_sq_grads] = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(x, target, w1, b1, w2, b2, activation, reduction, /*with_gradients=*/true,
                     x.requires_grad(), loss);
    }();
    const int64_t n = ws::count_params(w1.size(1), w1.size(2), w2.size(1), b1.has_value(),
                                       b2.has_value());
    const ws::SavedTraces saved{trace, trace_sq, std::move(trace_grads),
                                std::move(trace_sq_grads),
                                {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())}};
    saved.save(ctx);
    ctx->saved_data["num_params"] = n;
    ctx->saved_data["need_grad_x"] = x.requires_grad();
    return {ws::ws_upper_bound_batched(trace, trace_sq, n, x.scalar_type())};
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

// ---- Forward mode. ----

// The forward-mode tangents (level 0, the level forward_ad and torch.func.jvp use) of x, w1, b1,
// w2, b2, in SavedTraces' order; undefined where an input has none.
struct Tangents {
  std::vector<Tensor> of_inputs;
  bool any = false;
};

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

// ---- The public ops: the low-precision policy (ops/low_precision.h), then autograd. ----

// Whether autograd will record this call; if not, the plain kernels skip the gradient work.
bool records_grad(const Tensor& x, const Tensor& w1, const optional<Tensor>& b1,
                  const Tensor& w2, const optional<Tensor>& b2) {
  return torch::autograd::GradMode::is_enabled() &&
         (x.requires_grad() || w1.requires_grad() || w2.requires_grad() ||
          (b1 && b1->requires_grad()) || (b2 && b2->requires_grad()));
}

std::tuple<Tensor, Tensor> hessian_traces_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  if (low_precision::applies(x, target, w1, b1, w2, b2)) {
    return low_precision::hessian_traces(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  const Tangents tangents = forward_tangents(x, target, w1, b1, w2, b2, kHessianTracesName);
  const bool reverse = records_grad(x, w1, b1, w2, b2);
  if (tangents.any) {
    refuse_both_modes(reverse, kHessianTracesName);
    const ForwardResult r = forward_traces(x, target, w1, b1, w2, b2, activation, reduction, loss,
                                           kHessianTracesName, tangents.of_inputs[0].defined());
    Tensor trace = r.saved.trace.to(x.scalar_type(), false, true);
    Tensor trace_sq = r.saved.trace_sq.to(x.scalar_type(), false, true);
    set_tangent(trace, directional_derivative(r.saved.trace_grads, tangents));
    set_tangent(trace_sq, directional_derivative(r.saved.trace_sq_grads, tangents));
    return {trace, trace_sq};
  }
  if (!reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<HessianTracesSignature>("torch_ws::hessian_traces");
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  variable_list out = HessianTracesBackward::apply(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return {out[0], out[1]};
}

Tensor ws_bound_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                         const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                         c10::string_view activation, c10::string_view reduction,
                         c10::string_view loss) {
  if (low_precision::applies(x, target, w1, b1, w2, b2)) {
    return low_precision::ws_bound(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  const Tangents tangents = forward_tangents(x, target, w1, b1, w2, b2, kWsBoundName);
  const bool reverse = records_grad(x, w1, b1, w2, b2);
  if (tangents.any) {
    refuse_both_modes(reverse, kWsBoundName);
    const ForwardResult r = forward_traces(x, target, w1, b1, w2, b2, activation, reduction, loss,
                                           kWsBoundName, tangents.of_inputs[0].defined());
    Tensor bound =
        ws_upper_bound_tensor(r.saved.trace, r.saved.trace_sq, r.num_params, x.scalar_type());
    // d bound = (∂bound/∂tr H)·d tr H + (∂bound/∂tr H²)·d tr H² (docs/math.md §7).
    const auto [d_trace, d_trace_sq] = bound_trace_grads_tensor(
        at::ones({}, r.saved.trace.options()), r.saved.trace, r.saved.trace_sq, r.num_params);
    set_tangent(bound, d_trace.to(at::kDouble) * directional_derivative(r.saved.trace_grads, tangents) +
                           d_trace_sq.to(at::kDouble) *
                               directional_derivative(r.saved.trace_sq_grads, tangents));
    return bound;
  }
  if (!reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<WsBoundSignature>("torch_ws::ws_bound");
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  return WsBoundBackward::apply(x, target, w1, b1, w2, b2, activation, reduction, loss)[0];
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<SpectralBoundSignature>("torch_ws::spectral_bound");
  if (low_precision::applies(x, target, w1, b1, w2, b2)) {
    return low_precision::spectral_bound(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  const Tangents tangents = forward_tangents(x, target, w1, b1, w2, b2, kSpectralBoundName);
  TORCH_CHECK(!tangents.any, kSpectralBoundName, ": forward-mode AD (torch.func.jvp, jacfwd, "
              "forward_ad) is not supported; differentiate the bound in reverse mode "
              "(backward, torch.autograd.grad)");
  if (!records_grad(x, w1, b1, w2, b2)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  variable_list out =
      SpectralBoundBackward::apply(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

Tensor ws_bound_batched_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                                 const optional<Tensor>& b1, const Tensor& w2,
                                 const optional<Tensor>& b2, c10::string_view activation,
                                 c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<WsBoundBatchedSignature>("torch_ws::ws_bound_batched");
  if (low_precision::applies(x, target, w1, b1, w2, b2)) {
    return low_precision::ws_bound_batched(x, target, w1, b1, w2, b2, activation, reduction,
                                           loss);
  }
  const Tangents tangents = forward_tangents(x, target, w1, b1, w2, b2, kWsBoundBatchedName);
  TORCH_CHECK(!tangents.any, kWsBoundBatchedName, ": forward-mode AD (torch.func.jvp, jacfwd, "
              "forward_ad) is not supported; differentiate the bounds in reverse mode "
              "(backward, torch.autograd.grad), or use torch_ws.ws_bound per model");
  if (!records_grad(x, w1, b1, w2, b2)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }
  return WsBoundBatchedBackward::apply(x, target, w1, b1, w2, b2, activation, reduction,
                                       loss)[0];
}

// The internal ops called directly with inputs that require grad: their results are not
// differentiable (they are derivatives already), so they carry the same Error node.
using TracesAndGradients = std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>>;

// The trace ops' internal forms return derivatives already: every result (the traces, then each
// gradient list) carries an Error node (with `message`) on the differentiable inputs.
template <typename... Lists>
void not_differentiable(Tensor& trace, Tensor& trace_sq, const std::vector<Tensor>& inputs,
                        const std::string& message, Lists&... gradient_lists) {
  std::vector<Tensor> traces = {trace, trace_sq};
  attach_double_backward_error(traces, inputs, message);
  (attach_double_backward_error(gradient_lists, inputs, message), ...);
  trace = traces[0];
  trace_sq = traces[1];
}

TracesAndGradients not_differentiable(TracesAndGradients out, const std::vector<Tensor>& inputs,
                                      const std::string& message) {
  auto& [trace, trace_sq, trace_grads, trace_sq_grads] = out;
  not_differentiable(trace, trace_sq, inputs, message, trace_grads, trace_sq_grads);
  return out;
}

std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> traces_with_gradients_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  refuse_tangents({x, target, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())},
                  "torch_ws._traces_with_gradients");
  static auto op = find_op<TracesWithGradientsSignature>("torch_ws::_traces_with_gradients");
  auto out = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, need_grad_x, caller, loss);
  }();
  return not_differentiable(
      std::move(out), {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())},
      "torch_ws._traces_with_gradients is not differentiable; call torch_ws.hessian_traces or "
      "torch_ws.ws_bound to differentiate the traces");
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> ws_bound_with_gradient_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x, c10::string_view caller,
    c10::string_view loss) {
  refuse_tangents({x, target, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())},
                  "torch_ws._ws_bound_with_gradient");
  static auto op = find_op<WsBoundWithGradientSignature>("torch_ws::_ws_bound_with_gradient");
  auto [trace, trace_sq, bound_grads] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, need_grad_x, caller, loss);
  }();
  not_differentiable(trace, trace_sq, {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())},
                     "torch_ws._ws_bound_with_gradient is not differentiable; call "
                     "torch_ws.ws_bound to differentiate the bound",
                     bound_grads);
  return {trace, trace_sq, bound_grads};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> batched_traces_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool with_gradients, bool need_grad_x, c10::string_view loss) {
  refuse_tangents({x, target, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())},
                  "torch_ws._batched_traces");
  static auto op = find_op<BatchedTracesSignature>("torch_ws::_batched_traces");
  auto out = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, with_gradients,
                   need_grad_x, loss);
  }();
  return not_differentiable(
      std::move(out), {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())},
      "torch_ws._batched_traces is not differentiable; call torch_ws.ws_bound_batched to "
      "differentiate the bounds");
}

std::vector<Tensor> traces_backward_autograd(const Tensor& grad_trace, const Tensor& grad_trace_sq,
                                             at::TensorList trace_grads,
                                             at::TensorList trace_sq_grads) {
  static auto op = find_op<TracesBackwardSignature>("torch_ws::_traces_backward");
  std::vector<Tensor> inputs = {grad_trace, grad_trace_sq};
  inputs.insert(inputs.end(), trace_grads.begin(), trace_grads.end());
  inputs.insert(inputs.end(), trace_sq_grads.begin(), trace_sq_grads.end());
  refuse_tangents(inputs, "torch_ws._traces_backward");
  std::vector<Tensor> grads;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    grads = op.call(grad_trace, grad_trace_sq, trace_grads, trace_sq_grads);
  }
  attach_double_backward_error(grads, inputs, std::string("torch_ws._traces_backward") +
                                                  kDoubleBackward);
  return grads;
}

// _spectral_parts and _spectral_backward with inputs that require grad: results are not
// differentiable (eigenvectors and gradients), so they carry an Error node.
template <typename Result>
void mark_not_differentiable(Result& tensors, const std::vector<Tensor>& inputs, const char* op) {
  const std::string message = std::string(op) + " is not differentiable; call "
                              "torch_ws.spectral_bound to differentiate the bound";
  attach_double_backward_error(tensors, inputs, message);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor>
spectral_parts_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                        const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                        c10::string_view activation, c10::string_view reduction,
                        c10::string_view loss) {
  const std::vector<Tensor> inputs = {x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())};
  refuse_tangents(inputs, "torch_ws._spectral_parts");
  static auto op = find_op<SpectralPartsSignature>("torch_ws::_spectral_parts");
  auto out = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, target, w1, b1, w2, b2, activation, reduction, loss);
  }();
  std::vector<Tensor> floating = {std::get<0>(out), std::get<1>(out), std::get<2>(out),
                                  std::get<3>(out), std::get<4>(out), std::get<7>(out),
                                  std::get<8>(out), std::get<10>(out)};
  mark_not_differentiable(floating, inputs, "torch_ws._spectral_parts");
  return {floating[0], floating[1], floating[2], floating[3], floating[4], std::get<5>(out),
          std::get<6>(out), floating[5], floating[6], std::get<9>(out), floating[7],
          std::get<11>(out)};
}

std::vector<Tensor> spectral_backward_autograd(
    const Tensor& grad_upper, const Tensor& grad_ggn, const Tensor& grad_residual_max,
    const Tensor& grad_lambda_min, const Tensor& x, const Tensor& target, const Tensor& w1,
    const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss,
    const Tensor& ws_wins, const Tensor& ggn_vector, const Tensor& residual_max_vector,
    const Tensor& residual_max_unit, const Tensor& residual_min_vector,
    const Tensor& residual_min_unit, bool need_grad_x) {
  const std::vector<Tensor> inputs = {grad_upper, grad_ggn, grad_residual_max, grad_lambda_min,
                                      x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor()),
                                      ggn_vector, residual_max_vector, residual_min_vector};
  refuse_tangents(inputs, "torch_ws._spectral_backward");
  static auto op = find_op<SpectralBackwardSignature>("torch_ws::_spectral_backward");
  std::vector<Tensor> grads;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    grads = op.call(grad_upper, grad_ggn, grad_residual_max, grad_lambda_min, x, target, w1, b1,
                    w2, b2, activation, reduction, loss, ws_wins, ggn_vector,
                    residual_max_vector, residual_max_unit, residual_min_vector,
                    residual_min_unit, need_grad_x);
  }
  mark_not_differentiable(grads, inputs, "torch_ws._spectral_backward");
  return grads;
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  m.impl("hessian_traces", &torch_ws::hessian_traces_autograd);
  m.impl("ws_bound", &torch_ws::ws_bound_autograd);
  m.impl("_traces_with_gradients", &torch_ws::traces_with_gradients_autograd);
  m.impl("_traces_backward", &torch_ws::traces_backward_autograd);
  m.impl("_ws_bound_with_gradient", &torch_ws::ws_bound_with_gradient_autograd);
  m.impl("ws_bound_batched", &torch_ws::ws_bound_batched_autograd);
  m.impl("_batched_traces", &torch_ws::batched_traces_autograd);
  m.impl("spectral_bound", &torch_ws::spectral_bound_autograd);
  m.impl("_spectral_parts", &torch_ws::spectral_parts_autograd);
  m.impl("_spectral_backward", &torch_ws::spectral_backward_autograd);
}
