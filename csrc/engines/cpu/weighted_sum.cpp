// weighted_sum_cpu (core/weighted_sum.h): α·a + β·b in float64, one pass.
#include "core/weighted_sum.h"

#include <ATen/Dispatch.h>

namespace torch_ws {

at::Tensor weighted_sum_cpu(double alpha, const at::Tensor& a, double beta, const at::Tensor& b) {
  if (!a.defined()) return a;
  TORCH_INTERNAL_ASSERT(a.is_cpu() && b.is_cpu() && a.sizes() == b.sizes() &&
                        a.scalar_type() == b.scalar_type());
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  at::Tensor out = at::empty_like(ca, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(),
                                  "torch_ws_weighted_sum_cpu", [&] {
    const scalar_t* pa = ca.const_data_ptr<scalar_t>();
    const scalar_t* pb = cb.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < ca.numel(); ++i) {
      po[i] = static_cast<scalar_t>(alpha * static_cast<double>(pa[i]) +
                                    beta * static_cast<double>(pb[i]));
    }
  });
  return out;
}

}  // namespace torch_ws
