// bfloat16 / float16 inputs of deep_eigenvalue_interval: the low-precision policy of the other ops
// (ops/low_precision.h, deep_traces.h deep_low_precision). The op is called again, through the
// dispatcher, on exactly upcast float32 copies (the casts are differentiable, so gradients return
// in the input dtype); the interval's ends come back in the input dtype rounded outward, the
// traces rounded to nearest. Both the Autograd kernel (autograd.cpp) and the backend kernel
// (deep_interval.cpp, for calls under torch.inference_mode()) take this path.
#pragma once

#include "core/ws_bound.h"  // round_directed
#include "ops/deep/deep_traces.h"
#include "ops/schemas.h"  // find_op

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace torch_ws::deep_low_precision_interval {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor, at::Tensor>;
using Signature = Outputs(const at::Tensor&, const at::Tensor&, at::TensorList,
                          const c10::List<std::optional<at::Tensor>>&, c10::string_view,
                          c10::string_view, c10::string_view, bool, int64_t,
                          const std::optional<at::Tensor>&, int64_t);

inline Outputs via_float32(const at::Tensor& x, const at::Tensor& target, at::TensorList weights,
                           const c10::List<std::optional<at::Tensor>>& biases,
                           c10::string_view activation, c10::string_view reduction,
                           c10::string_view loss, bool largest, int64_t steps,
                           const std::optional<at::Tensor>& start, int64_t seed) {
  static auto op = find_op<Signature>("torch_ws::deep_eigenvalue_interval");
  const DeepInputs w = in_float32(x, target, weights, biases);
  auto [lower, upper, source, values, vectors, products, trace, trace_sq] =
      op.call(w.x, w.target, w.weights, w.biases, activation, reduction, loss, largest, steps,
              start, seed);
  const at::ScalarType dtype = x.scalar_type();
  return {round_directed(lower, dtype, /*up=*/false), round_directed(upper, dtype, /*up=*/true),
          source, values, vectors, products, trace.to(dtype), trace_sq.to(dtype)};
}

}  // namespace torch_ws::deep_low_precision_interval
