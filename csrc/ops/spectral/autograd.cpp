// Autograd of the spectral family (spectral_bound and its internal ops), registered at the
// Autograd key: the forward keeps the eigenvectors _spectral_parts returns, the backward turns
// them into gradients through _spectral_backward (docs/math.md §9.4). Forward mode is refused
// with an error. The kernels follow the skeletons of autograd/skeleton.h (bfloat16/float16 inputs
// go through the low-precision policy first).
#include "autograd/skeleton.h"
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

// spectral_bound (docs/math.md §9): the forward keeps the eigenvectors; the backward turns them
// into gradients through _spectral_backward, which costs O(N·H·(D + C)), far less than the
// forward's eigenproblems.
class SpectralBoundBackward : public torch::autograd::Function<SpectralBoundBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const ws::ProblemArgs& p,
                               at::TensorList /*p.tensors()*/) {
    static auto op = ws::find_op<ws::SpectralPartsSignature>("torch_ws::_spectral_parts");
    auto parts = [&] {
      at::AutoDispatchBelowADInplaceOrView guard;
      return p.call(op);
    }();
    auto [upper, ggn, residual_max, lambda_min, residual, iterations, ws_wins, ggn_vector,
          max_vector, max_unit, min_vector, min_unit] = std::move(parts);
    // _spectral_backward takes the problem again, with the eigenvectors.
    p.save(ctx, {ws_wins, ggn_vector, max_vector, max_unit, min_vector, min_unit});
    ctx->saved_data["need_grad_x"] = p.x.requires_grad();
    ctx->mark_non_differentiable({residual, iterations});
    return {upper, ggn, residual_max, lambda_min, residual, iterations};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto [p, vectors] = ws::ProblemArgs::load(ctx);
    const bool need_grad_x = ctx->saved_data["need_grad_x"].toBool();
    static auto op = ws::find_op<ws::SpectralBackwardSignature>("torch_ws::_spectral_backward");
    std::vector<Tensor> grads;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      grads = op.call(ws::grad_or_zero(grad_outputs[0], p.x),
                      ws::grad_or_zero(grad_outputs[1], p.x),
                      ws::grad_or_zero(grad_outputs[2], p.x),
                      ws::grad_or_zero(grad_outputs[3], p.x), p.x, p.target, p.w1(), p.b1(),
                      p.w2(), p.b2(), p.activation, p.reduction, p.loss, vectors[0], vectors[1],
                      vectors[2], vectors[3], vectors[4], vectors[5], need_grad_x);
    }
    return ws::op_input_grads(std::move(grads), p.inputs(), ws::kSpectralBoundName);
  }
};

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound_autograd(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  static auto op = find_op<SpectralBoundSignature>("torch_ws::spectral_bound");
  return public_op_autograd<SpectralBoundBackward>(
      op, kSpectralBoundName, {x, target, w1, b1, w2, b2, activation, reduction, loss},
      &low_precision::spectral_bound,
      NoForwardMode{": forward-mode AD (torch.func.jvp, jacfwd, forward_ad) is not supported; "
                    "differentiate the bound in reverse mode (backward, torch.autograd.grad)"});
}

// _spectral_parts and _spectral_backward with inputs that require grad: their results
// (eigenvectors and gradients) are not differentiable.
std::string not_differentiable(const char* op) {
  return std::string(op) + " is not differentiable; call torch_ws.spectral_bound to "
                           "differentiate the bound";
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor>
spectral_parts_autograd(const Tensor& x, const Tensor& target, const Tensor& w1,
                        const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                        c10::string_view activation, c10::string_view reduction,
                        c10::string_view loss) {
  static auto op = find_op<SpectralPartsSignature>("torch_ws::_spectral_parts");
  const ProblemArgs p(x, target, w1, b1, w2, b2, activation, reduction, loss);
  return internal_op_autograd("torch_ws._spectral_parts", p.tensors(), p.inputs(),
                              not_differentiable("torch_ws._spectral_parts"),
                              [&] { return p.call(op); });
}

std::vector<Tensor> spectral_backward_autograd(
    const Tensor& grad_upper, const Tensor& grad_ggn, const Tensor& grad_residual_max,
    const Tensor& grad_lambda_min, const Tensor& x, const Tensor& target, const Tensor& w1,
    const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss,
    const Tensor& ws_wins, const Tensor& ggn_vector, const Tensor& residual_max_vector,
    const Tensor& residual_max_unit, const Tensor& residual_min_vector,
    const Tensor& residual_min_unit, bool need_grad_x) {
  static auto op = find_op<SpectralBackwardSignature>("torch_ws::_spectral_backward");
  const std::vector<Tensor> inputs = {grad_upper, grad_ggn, grad_residual_max, grad_lambda_min,
                                      x, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor()),
                                      ggn_vector, residual_max_vector, residual_min_vector};
  return internal_op_autograd(
      "torch_ws._spectral_backward", inputs, inputs,
      not_differentiable("torch_ws._spectral_backward"), [&] {
        return op.call(grad_upper, grad_ggn, grad_residual_max, grad_lambda_min, x, target, w1,
                       b1, w2, b2, activation, reduction, loss, ws_wins, ggn_vector,
                       residual_max_vector, residual_max_unit, residual_min_vector,
                       residual_min_unit, need_grad_x);
      });
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, Autograd, m) {
  m.impl("spectral_bound", &torch_ws::spectral_bound_autograd);
  m.impl("_spectral_parts", &torch_ws::spectral_parts_autograd);
  m.impl("_spectral_backward", &torch_ws::spectral_backward_autograd);
}
