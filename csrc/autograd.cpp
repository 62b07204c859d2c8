// Autograd wiring: C++ torch::autograd::Functions registered at the Autograd key. Each forward
// redispatches below autograd (so CPU, CUDA and fake kernels all serve), each backward calls the
// hand-derived backward op through the dispatcher, whose own autograd refuses double backward.
#include "dispatch.h"
#include "traces.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The problem's inputs as saved for the backward: tensors in save_for_backward (an absent bias
// is saved as an undefined tensor), option strings in saved_data.
struct SavedProblem {
  Tensor x, target, w1, w2;
  optional<Tensor> b1, b2;
  std::string activation, reduction;
};

void save_problem(AutogradContext* ctx, const Tensor& x, const Tensor& target, const Tensor& w1,
                  const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                  c10::string_view activation, c10::string_view reduction,
                  variable_list extra = {}) {
  variable_list to_save = {x, target, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor())};
  to_save.insert(to_save.end(), extra.begin(), extra.end());
  ctx->save_for_backward(to_save);
  ctx->saved_data["activation"] = std::string(activation);
  ctx->saved_data["reduction"] = std::string(reduction);
}

// Returns the saved problem; `extra` receives the tensors saved after the six inputs.
SavedProblem load_problem(AutogradContext* ctx, variable_list* extra = nullptr) {
  variable_list saved = ctx->get_saved_variables();
  auto optional_of = [](const Tensor& t) { return t.defined() ? optional<Tensor>(t) : std::nullopt; };
  SavedProblem p{saved[0], saved[1], saved[2], saved[4], optional_of(saved[3]),
                 optional_of(saved[5]), ctx->saved_data["activation"].toStringRef(),
                 ctx->saved_data["reduction"].toStringRef()};
  if (extra) extra->assign(saved.begin() + 6, saved.end());
  return p;
}

// Maps the backward op's (x, w1, b1, w2, b2) gradients onto the forward's nine arguments
// (the last is the engine).
variable_list input_grads(const MlpGrads& grads, const SavedProblem& p, bool need_grad_x) {
  const auto& [grad_x, grad_w1, grad_b1, grad_w2, grad_b2] = grads;
  return {need_grad_x ? grad_x : Tensor(), Tensor(), grad_w1, p.b1 ? grad_b1 : Tensor(), grad_w2,
          p.b2 ? grad_b2 : Tensor(), Tensor(), Tensor(), Tensor()};
}

Tensor grad_or_zero(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad : at::zeros({}, like.options());
}

// The backward ops' names: looked up for the engines below, and template arguments of their
// autograd kernels at the end of this file.
constexpr char kTracesBackward[] = "torch_ws::_hessian_traces_backward";
constexpr char kBoundBackward[] = "torch_ws::_ws_bound_backward";
constexpr char kTracesBackwardFromHessian[] = "torch_ws::_hessian_traces_backward_from_hessian";
constexpr char kBoundBackwardFromHessian[] = "torch_ws::_ws_bound_backward_from_hessian";

// The ops of one engine: the forward that autograd runs, returning (bound, float64 traces, the
// tensor the backward needs), and the backward ops that read that tensor: the packed per-sample
// tr(H²) adjoints in the sample space, the n×n Hessian in the parameter space. Both sets share
// their signatures.
struct EngineOps {
  c10::TypedOperatorHandle<decltype(forward_with_adjoints_kernel)> forward;
  c10::TypedOperatorHandle<decltype(hessian_traces_backward_kernel)> traces_backward;
  c10::TypedOperatorHandle<decltype(ws_bound_backward_kernel)> bound_backward;
};

const EngineOps& engine_ops(Engine engine) {
  static const EngineOps sample{
      find_op<decltype(forward_with_adjoints_kernel)>("torch_ws::_forward_with_adjoints"),
      find_op<decltype(hessian_traces_backward_kernel)>(kTracesBackward),
      find_op<decltype(ws_bound_backward_kernel)>(kBoundBackward)};
  static const EngineOps parameter{
      find_op<decltype(forward_with_adjoints_kernel)>("torch_ws::_forward_with_hessian"),
      find_op<decltype(hessian_traces_backward_kernel)>(kTracesBackwardFromHessian),
      find_op<decltype(ws_bound_backward_kernel)>(kBoundBackwardFromHessian)};
  return engine == Engine::ParameterSpace ? parameter : sample;
}

const EngineOps& saved_engine_ops(AutogradContext* ctx) {
  return engine_ops(static_cast<Engine>(ctx->saved_data["engine"].toInt()));
}

class HessianTracesFunction : public torch::autograd::Function<HessianTracesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& target,
                               const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, Engine engine) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [bound, trace, trace_sq, saved] =
        engine_ops(engine).forward.call(x, target, w1, b1, w2, b2, activation, reduction);
    save_problem(ctx, x, target, w1, b1, w2, b2, activation, reduction, {saved});
    ctx->saved_data["engine"] = static_cast<int64_t>(engine);
    // copy=true: for float64 inputs .to() would hand back the inner op's output itself, and a
    // Function's outputs must be its own.
    return {trace.to(x.scalar_type(), false, true), trace_sq.to(x.scalar_type(), false, true)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list extra;
    SavedProblem p = load_problem(ctx, &extra);
    const bool need_grad_x = ctx->needs_input_grad(0);
    MlpGrads grads = saved_engine_ops(ctx).traces_backward.call(
        grad_or_zero(grad_outputs[0], p.x), grad_or_zero(grad_outputs[1], p.x), extra[0], p.x,
        p.target, p.w1, p.b1, p.w2, p.b2, p.activation, p.reduction, need_grad_x);
    return input_grads(grads, p, need_grad_x);
  }
};

class WsBoundFunction : public torch::autograd::Function<WsBoundFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& target,
                               const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
                               const optional<Tensor>& b2, c10::string_view activation,
                               c10::string_view reduction, Engine engine) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [bound, trace, trace_sq, saved] =
        engine_ops(engine).forward.call(x, target, w1, b1, w2, b2, activation, reduction);
    save_problem(ctx, x, target, w1, b1, w2, b2, activation, reduction, {trace, trace_sq, saved});
    ctx->saved_data["engine"] = static_cast<int64_t>(engine);
    return {bound};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list extra;
    SavedProblem p = load_problem(ctx, &extra);
    const bool need_grad_x = ctx->needs_input_grad(0);
    MlpGrads grads = saved_engine_ops(ctx).bound_backward.call(
        grad_or_zero(grad_outputs[0], p.x), extra[0], extra[1], extra[2], p.x, p.target, p.w1,
        p.b1, p.w2, p.b2, p.activation, p.reduction, need_grad_x);
    return input_grads(grads, p, need_grad_x);
  }
};

// Whether autograd will record this call; if not, the plain kernels skip the adjoint work.
bool records_grad(const Tensor& x, const Tensor& w1, const optional<Tensor>& b1,
                  const Tensor& w2, const optional<Tensor>& b2) {
  return torch::autograd::GradMode::is_enabled() &&
         (x.requires_grad() || w1.requires_grad() || w2.requires_grad() ||
          (b1 && b1->requires_grad()) || (b2 && b2->requires_grad()));
}

// Autograd for the backward ops themselves: they run, but differentiating through them (double
// backward, e.g. create_graph=True followed by another backward) raises.
template <typename Signature>
class BackwardOpFunction : public torch::autograd::Function<BackwardOpFunction<Signature>> {
 public:
  template <typename... Args>
  static variable_list forward(AutogradContext* ctx, const c10::TypedOperatorHandle<Signature>& op,
                               const char* op_name, const Args&... args) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["op"] = std::string(op_name);
    auto [g0, g1, g2, g3, g4] = op.call(args...);
    return {g0, g1, g2, g3, g4};
  }

  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK(false, ctx->saved_data["op"].toStringRef(),
                ": double backward is not supported; torch_ws differentiates the bound once "
                "(first-order training with it as a regularizer), not its gradient");
  }
};

MlpGrads to_grads(const variable_list& v) {
  return {v[0], v[1], v[2], v[3], v[4]};
}

std::tuple<Tensor, Tensor> hessian_traces_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction) {
  if (!records_grad(x, w1, b1, w2, b2)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<decltype(hessian_traces_kernel)>("torch_ws::hessian_traces");
    return op.call(x, target, w1, b1, w2, b2, activation, reduction);
  }
  const Engine engine = engine_for(x, w1, b1.has_value(), b2.has_value());
  variable_list out =
      HessianTracesFunction::apply(x, target, w1, b1, w2, b2, activation, reduction, engine);
  return {out[0], out[1]};
}

Tensor ws_bound_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                         const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                         c10::string_view activation, c10::string_view reduction) {
  if (!records_grad(x, w1, b1, w2, b2)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<decltype(ws_bound_kernel)>("torch_ws::ws_bound");
    return op.call(x, target, w1, b1, w2, b2, activation, reduction);
  }
  const Engine engine = engine_for(x, w1, b1.has_value(), b2.has_value());
  return WsBoundFunction::apply(x, target, w1, b1, w2, b2, activation, reduction, engine)[0];
}

template <const char* kOpName>
MlpGrads traces_backward_autograd(
    const Tensor& grad_trace, const Tensor& grad_trace_sq, const Tensor& saved, const Tensor& x,
    const Tensor& target, const Tensor& w1, const optional<Tensor>& b1, const Tensor& w2,
    const optional<Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x) {
  using Signature = decltype(hessian_traces_backward_kernel);
  static auto op = find_op<Signature>(kOpName);
  return to_grads(BackwardOpFunction<Signature>::apply(op, kOpName, grad_trace, grad_trace_sq,
                                                       saved, x, target, w1, b1, w2, b2,
                                                       activation, reduction, need_grad_x));
}

template <const char* kOpName>
MlpGrads bound_backward_autograd(
    const Tensor& grad_bound, const Tensor& trace, const Tensor& trace_sq, const Tensor& saved,
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x) {
  using Signature = decltype(ws_bound_backward_kernel);
  static auto op = find_op<Signature>(kOpName);
  return to_grads(BackwardOpFunction<Signature>::apply(op, kOpName, grad_bound, trace, trace_sq,
                                                       saved, x, target, w1, b1, w2, b2,
                                                       activation, reduction, need_grad_x));
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  using namespace torch_ws;
  m.impl("hessian_traces", &hessian_traces_autograd);
  m.impl("ws_bound", &ws_bound_autograd);
  m.impl("_hessian_traces_backward", &traces_backward_autograd<kTracesBackward>);
  m.impl("_ws_bound_backward", &bound_backward_autograd<kBoundBackward>);
  m.impl("_hessian_traces_backward_from_hessian",
         &traces_backward_autograd<kTracesBackwardFromHessian>);
  m.impl("_ws_bound_backward_from_hessian", &bound_backward_autograd<kBoundBackwardFromHessian>);
}
