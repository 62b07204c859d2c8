// Autocast (torch.autocast on CPU or CUDA): the public ops run in float32, as torchvision's ops
// do under autocast. Lower-precision floating inputs (bfloat16, float16) are cast to float32
// (float64 ones are left as they are), and the op runs with autocast excluded: otherwise every
// matrix product inside it would be autocast to the lower precision while the elementwise work
// stays in float32, and the first mixed product fails ("addmv input tensors must have the same
// dtype"). The result is float32 (or float64 for float64 inputs), not the autocast dtype: a bound
// on a Hessian is a scalar worth its precision. The casts are recorded by autograd, so gradients
// reach the bfloat16/float16 parameters in their own dtype.
#include "ops/schemas.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

template <c10::DeviceType device>
Tensor to_float32(const Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, device);
}

template <c10::DeviceType device>
optional<Tensor> to_float32(const optional<Tensor>& t) {
  return t ? optional<Tensor>(to_float32<device>(*t)) : t;
}

template <c10::DeviceType device>
constexpr c10::DispatchKey autocast_key() {
  return device == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA
                                         : c10::DispatchKey::AutocastCPU;
}

template <c10::DeviceType device>
std::tuple<Tensor, Tensor> hessian_traces_autocast(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<device>());
  static auto op = find_op<HessianTracesSignature>("torch_ws::hessian_traces");
  return op.call(to_float32<device>(x), to_float32<device>(target), to_float32<device>(w1),
                 to_float32<device>(b1), to_float32<device>(w2), to_float32<device>(b2),
                 activation, reduction, loss);
}

template <c10::DeviceType device>
Tensor ws_bound_autocast(const Tensor& x, const Tensor& target, const Tensor& w1,
                         const optional<Tensor>& b1, const Tensor& w2, const optional<Tensor>& b2,
                         c10::string_view activation, c10::string_view reduction,
                         c10::string_view loss) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<device>());
  static auto op = find_op<WsBoundSignature>("torch_ws::ws_bound");
  return op.call(to_float32<device>(x), to_float32<device>(target), to_float32<device>(w1),
                 to_float32<device>(b1), to_float32<device>(w2), to_float32<device>(b2),
                 activation, reduction, loss);
}

template <c10::DeviceType device>
Tensor ws_bound_batched_autocast(const Tensor& x, const Tensor& target, const Tensor& w1,
                                 const optional<Tensor>& b1, const Tensor& w2,
                                 const optional<Tensor>& b2, c10::string_view activation,
                                 c10::string_view reduction, c10::string_view loss) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<device>());
  static auto op = find_op<WsBoundBatchedSignature>("torch_ws::ws_bound_batched");
  return op.call(to_float32<device>(x), to_float32<device>(target), to_float32<device>(w1),
                 to_float32<device>(b1), to_float32<device>(w2), to_float32<device>(b2),
                 activation, reduction, loss);
}

template <c10::DeviceType device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> spectral_bound_autocast(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<device>());
  static auto op = find_op<SpectralBoundSignature>("torch_ws::spectral_bound");
  return op.call(to_float32<device>(x), to_float32<device>(target), to_float32<device>(w1),
                 to_float32<device>(b1), to_float32<device>(w2), to_float32<device>(b2),
                 activation, reduction, loss);
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, AutocastCPU, m) {
  m.impl("hessian_traces", &torch_ws::hessian_traces_autocast<c10::DeviceType::CPU>);
  m.impl("ws_bound", &torch_ws::ws_bound_autocast<c10::DeviceType::CPU>);
  m.impl("ws_bound_batched", &torch_ws::ws_bound_batched_autocast<c10::DeviceType::CPU>);
  m.impl("spectral_bound", &torch_ws::spectral_bound_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(torch_ws, AutocastCUDA, m) {
  m.impl("hessian_traces", &torch_ws::hessian_traces_autocast<c10::DeviceType::CUDA>);
  m.impl("ws_bound", &torch_ws::ws_bound_autocast<c10::DeviceType::CUDA>);
  m.impl("ws_bound_batched", &torch_ws::ws_bound_batched_autocast<c10::DeviceType::CUDA>);
  m.impl("spectral_bound", &torch_ws::spectral_bound_autocast<c10::DeviceType::CUDA>);
}
