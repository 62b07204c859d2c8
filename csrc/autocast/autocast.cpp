// Autocast (torch.autocast on CPU or CUDA): the public ops run in float32, as torchvision's ops
// do under autocast. Lower-precision floating inputs (bfloat16, float16) are cast to float32
// (float64 ones are left as they are), and the op runs with autocast excluded: otherwise every
// matrix product inside it would be autocast to the lower precision while the elementwise work
// stays in float32, and either the first mixed product fails ("addmv input tensors must have the
// same dtype") or, where every product is autocast alike, the result silently carries bfloat16's
// error (the Hessian-vector products did: 0.4% of the largest entry). The result is float32 (or
// float64 for float64 inputs), not the autocast dtype: a bound on a Hessian is a scalar worth its
// precision. The casts are recorded by autograd, so gradients reach the bfloat16/float16
// parameters in their own dtype.
//
// One boxed kernel serves every public op: it casts each tensor argument (alone, in a Tensor[]
// or in a Tensor?[]) and calls the op again below the autocast key.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace torch_ws {
namespace {

template <c10::DeviceType device>
constexpr c10::DispatchKey autocast_key() {
  return device == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA
                                         : c10::DispatchKey::AutocastCPU;
}

// An argument with its bfloat16/float16 tensors in float32 (cached_cast leaves float64 and
// non-floating tensors alone).
template <c10::DeviceType device>
c10::IValue to_float32(const c10::IValue& value) {
  if (value.isTensor()) return at::autocast::cached_cast(at::kFloat, value.toTensor(), device);
  if (value.isTensorList()) {
    c10::List<at::Tensor> out;
    for (const at::Tensor& t : value.toTensorList()) {
      out.push_back(at::autocast::cached_cast(at::kFloat, t, device));
    }
    return out;
  }
  if (value.isList()) {  // Tensor?[]: each entry None or a tensor
    c10::List<c10::IValue> in = value.toList();
    c10::impl::GenericList out(in.elementType());
    for (const c10::IValue& entry : in) out.push_back(to_float32<device>(entry));
    return out;
  }
  return value;
}

template <c10::DeviceType device>
void in_float32(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key<device>());
  const size_t arguments = op.schema().arguments().size();
  for (size_t i = stack->size() - arguments; i < stack->size(); ++i) {
    (*stack)[i] = to_float32<device>((*stack)[i]);
  }
  op.callBoxed(stack);
}

// The public ops (the private ones are reached from these, already in float32).
constexpr const char* kPublicOps[] = {
    "hessian_traces",        "ws_bound",                 "ws_bound_batched",
    "spectral_bound",        "eigenvalue_interval",      "hessian_vector_products",
    "deep_hessian_traces",   "deep_ws_bounds",           "deep_eigenvalue_interval",
    "deep_hessian_vector_products"};

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  for (const char* name : kPublicOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&in_float32<device>>());
  }
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_IMPL(torch_ws, AutocastCPU, m) {
  torch_ws::register_autocast<c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(torch_ws, AutocastCUDA, m) {
  torch_ws::register_autocast<c10::DeviceType::CUDA>(m);
}
