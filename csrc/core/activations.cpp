#include "activations.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace torch_ws {

std::string supported_activations() {
  std::string names;
  for (const auto& entry : kActivations) {
    if (!names.empty()) names += ", ";
    names += entry.name;
  }
  return names;
}

Activation parse_activation(std::string_view op, std::string_view name) {
  for (const auto& entry : kActivations) {
    if (name == entry.name) return entry.activation;
  }
  TORCH_CHECK(false, op, ": unknown activation '", std::string(name), "'; expected one of: ",
              supported_activations());
}

const char* activation_name(Activation activation) {
  for (const auto& entry : kActivations) {
    if (entry.activation == activation) return entry.name;
  }
  TORCH_INTERNAL_ASSERT(false, "activation missing from kActivations");
}

}  // namespace torch_ws
