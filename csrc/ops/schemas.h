// The C++ signatures of the torch_ws ops' kernels (ops/<family>/schemas.cpp hold the schemas):
// typed handles for calls through the dispatcher (so calls get autograd and reach the kernel of
// the tensors' backend, or the Meta kernel).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

namespace torch_ws {

using HessianTracesSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss);
using WsBoundSignature = at::Tensor(const at::Tensor& x, const at::Tensor& target,
                                    const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                    const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                    c10::string_view activation, c10::string_view reduction,
                                    c10::string_view loss);
using TracesWithGradientsSignature =
    std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
        const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
        const std::optional<at::Tensor>& b1, const at::Tensor& w2,
        const std::optional<at::Tensor>& b2, c10::string_view activation,
        c10::string_view reduction, bool need_grad_x, c10::string_view caller,
        c10::string_view loss);
using WsBoundWithGradientSignature = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, bool need_grad_x,
    c10::string_view caller, c10::string_view loss);
using TracesBackwardSignature = std::vector<at::Tensor>(const at::Tensor& grad_trace,
                                                        const at::Tensor& grad_trace_sq,
                                                        at::TensorList trace_grads,
                                                        at::TensorList trace_sq_grads);
using DeepTraceErrorsSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss);
using DeepGramFormErrorsSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, int64_t begin, std::optional<int64_t> end,
    int64_t tile_rows);
using WsBoundsFromTracesSignature =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor& trace, const at::Tensor& trace_sq, int64_t num_params,
        std::optional<at::ScalarType> dtype, double trace_error, double trace_sq_error);

using SpectralBoundSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                          at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, c10::string_view loss);
using SpectralPartsSignature =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
               at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
        const std::optional<at::Tensor>& b1, const at::Tensor& w2,
        const std::optional<at::Tensor>& b2, c10::string_view activation,
        c10::string_view reduction, c10::string_view loss);
using SpectralBackwardSignature = std::vector<at::Tensor>(
    const at::Tensor& grad_upper, const at::Tensor& grad_ggn, const at::Tensor& grad_residual_max,
    const at::Tensor& grad_lambda_min, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    c10::string_view loss, const at::Tensor& ws_wins, const at::Tensor& ggn_vector,
    const at::Tensor& residual_max_vector, const at::Tensor& residual_max_unit,
    const at::Tensor& residual_min_vector, const at::Tensor& residual_min_unit, bool need_grad_x);

using WsBoundBatchedSignature = WsBoundSignature;
using BatchedTracesSignature =
    std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
        const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
        const std::optional<at::Tensor>& b1, const at::Tensor& w2,
        const std::optional<at::Tensor>& b2, c10::string_view activation,
        c10::string_view reduction, bool with_gradients, bool need_grad_x,
        c10::string_view loss);

// The deep family (ops/deep/): weights of the L + 1 layers, biases empty or one per layer.
using DeepHessianTracesSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss);
using DeepWsBoundsSignature =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
        const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
        c10::string_view reduction, c10::string_view loss);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The public ops' names, the prefix of their error messages.
inline constexpr char kHessianTracesName[] = "torch_ws.hessian_traces";
inline constexpr char kWsBoundName[] = "torch_ws.ws_bound";
inline constexpr char kSpectralBoundName[] = "torch_ws.spectral_bound";
inline constexpr char kWsBoundBatchedName[] = "torch_ws.ws_bound_batched";

}  // namespace torch_ws
