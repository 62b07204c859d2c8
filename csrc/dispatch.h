// Typed handles to the torch_ws ops, looked up through the dispatcher (so calls get autograd,
// and reach the CPU, CUDA or fake kernel). The signature is the kernel's: decltype(kernel).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace torch_ws {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace torch_ws
