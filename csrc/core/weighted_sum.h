// α·a + β·b entry by entry, computed in float64 and returned in a's dtype: how every gradient is
// combined from the gradients (or per-sample adjoints) of tr H and tr(H²). float64 because the
// weights, derivatives of a bound such as ∂λ_sup/∂tr ∝ 1/s, can exceed the float32 range where
// the spread s is tiny (and inf·0 would be NaN).
#pragma once

#include <ATen/ATen.h>

namespace torch_ws {

// Any device, the weights 0-d tensors (no host sync). An undefined `a` gives undefined.
inline at::Tensor weighted_sum(const at::Tensor& alpha, const at::Tensor& a,
                               const at::Tensor& beta, const at::Tensor& b) {
  if (!a.defined()) return a;
  return at::addcmul(a.to(at::kDouble) * alpha, b.to(at::kDouble), beta).to(a.scalar_type());
}

// CPU tensors of one shape and dtype (floating, bfloat16/float16 included): one fused loop, a
// fresh contiguous result (engines/cpu/weighted_sum.cpp). At the papers' scale five tensor operations
// per gradient were a third of a backward's time.
at::Tensor weighted_sum_cpu(double alpha, const at::Tensor& a, double beta, const at::Tensor& b);

}  // namespace torch_ws
