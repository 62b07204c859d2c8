// The deep family's traces (docs/math.md §12.3) and their certified rounding errors (§12.5), as
// the ops of deep_traces.cpp compute them; the deep eigenvalue interval (deep_interval.cpp)
// builds its certificate from them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

namespace torch_ws {

// A deep op's tensor arguments with every floating one converted (exactly) to float64, where the
// family evaluates its traces and certificates (docs/math.md §12.5).
struct DeepInputs {
  at::Tensor x, target;
  std::vector<at::Tensor> weights;
  c10::List<std::optional<at::Tensor>> biases;
};
DeepInputs in_float64(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases);

// bfloat16 / float16 inputs, the policy of the other ops (ops/low_precision.h): true when x has
// one of these dtypes and every floating input has x's. The deep ops then run on float32 copies
// (exact; in_float32) and return x's dtype, bounds rounded outward (core/ws_bound.h
// round_directed). Mixed dtypes are left to check_deep_problem, which names them.
bool deep_low_precision(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                        const c10::List<std::optional<at::Tensor>>& biases);
DeepInputs in_float32(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases);
// The inputs as the deep ops compute on them: in_float32 where deep_low_precision, else as given.
DeepInputs as_computed(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                       const c10::List<std::optional<at::Tensor>>& biases);

// tr H and tr(H²) in x's dtype, evaluated in float64 (the op deep_hessian_traces).
std::tuple<at::Tensor, at::Tensor> deep_hessian_traces(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss);

// Bounds on the rounding errors of that float64 evaluation, float64 0-d (the op
// _deep_trace_errors).
std::tuple<at::Tensor, at::Tensor> deep_trace_errors(
    const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
    const c10::List<std::optional<at::Tensor>>& biases, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss);

}  // namespace torch_ws
