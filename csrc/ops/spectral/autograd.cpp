// Autograd of the spectral family (spectral_bound and its internal ops), registered at the
// Autograd key: the forward keeps the eigenvectors _spectral_parts returns, the backward turns
// them into gradients through _spectral_backward (docs/math.md §9.4). Forward mode is refused
// with an error; bfloat16/float16 inputs go through the low-precision policy first.
#include "autograd/support.h"
#include "core/ws_bound.h"
#include "ops/low_precision.h"
#include "ops/schemas.h"

#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

// The Functions live at global scope for their grad_fn's sake: Python prints a C++
// Function's node as the last "::" segment of its demangled type, torch::autograd::CppNode<T>,
// so a namespaced T read <WsBoundFunction>> (a stray bracket); a global one reads
// <CppNode<WsBoundBackward>>.
using at::Tensor;
using std::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace ws = torch_ws;

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

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

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
  m.impl("spectral_bound", &torch_ws::spectral_bound_autograd);
  m.impl("_spectral_parts", &torch_ws::spectral_parts_autograd);
  m.impl("_spectral_backward", &torch_ws::spectral_backward_autograd);
}
