// Scratch arrays reused from one step of a loop to the next. On CPU a fresh array of tens of
// megabytes costs more in page faults than the pass that fills it (glibc hands every freed array
// above 32 MiB back to the system): φ'∘dz in a block of Hessian-vector products took 0.28 ms
// fresh against 0.03 ms in place, a (104, 200, 200) product of the deep Gram tiles 40 ms against
// 3 ms (docs/benchmarks.md).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

namespace torch_ws {

// `slot`'s first numel(shape) numbers as a contiguous array of that shape, `slot` grown (never
// shrunk) where it holds fewer, and made anew for another dtype or device. Not for arrays
// autograd records (written in place).
inline at::Tensor reused(at::Tensor& slot, at::IntArrayRef shape, const at::TensorOptions& options) {
  const int64_t numel = c10::multiply_integers(shape);
  if (!slot.defined() || slot.numel() < numel || slot.dtype() != options.dtype() ||
      slot.device() != options.device()) {
    slot = at::empty({numel}, options);
  }
  return slot.narrow(0, 0, numel).view(shape);
}

}  // namespace torch_ws
