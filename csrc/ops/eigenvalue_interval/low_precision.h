// bfloat16 / float16 inputs of eigenvalue_interval: the low-precision policy of the other ops
// (ops/low_precision.h) for this family's extra arguments. The op is called again on the exactly
// upcast float32 values (the casts are differentiable, so gradients return in the input dtype),
// and the interval's ends come back in the input dtype rounded outward.
#pragma once

#include "core/ws_bound.h"  // round_directed
#include "ops/schemas.h"    // find_op

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace torch_ws::eigenvalue_interval_low_precision {

using IntervalSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                     at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view, c10::string_view,
    c10::string_view, bool, int64_t, const std::optional<at::Tensor>&, int64_t);

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
via_float32(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
            const std::optional<at::Tensor>& b1, const at::Tensor& w2,
            const std::optional<at::Tensor>& b2, c10::string_view activation,
            c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
            const std::optional<at::Tensor>& start, int64_t seed) {
  static auto op = find_op<IntervalSignature>("torch_ws::eigenvalue_interval");
  auto wide = [](const at::Tensor& t) { return t.is_floating_point() ? t.to(at::kFloat) : t; };
  auto wide_optional = [&](const std::optional<at::Tensor>& t) {
    return t ? std::optional<at::Tensor>(wide(*t)) : std::nullopt;
  };
  auto [lower, upper, source, values, vectors, products] =
      op.call(wide(x), wide(target), wide(w1), wide_optional(b1), wide(w2), wide_optional(b2),
              activation, reduction, loss, largest, steps, start, seed);
  const at::ScalarType dtype = x.scalar_type();
  return {round_directed(lower, dtype, /*up=*/false), round_directed(upper, dtype, /*up=*/true),
          source, values, vectors, products};
}

}  // namespace torch_ws::eigenvalue_interval_low_precision
