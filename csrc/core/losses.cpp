#include "losses.h"

#include <c10/util/Exception.h>

namespace torch_ws {

const LossEntry& loss_entry(Loss loss) {
  for (const auto& entry : kLosses) {
    if (entry.loss == loss) return entry;
  }
  TORCH_INTERNAL_ASSERT(false, "loss missing from kLosses");
}

Loss parse_loss(std::string_view name) {
  std::string names;
  for (const auto& entry : kLosses) {
    if (name == entry.name) return entry.loss;
    names += (names.empty() ? "" : ", ") + std::string(entry.name);
  }
  TORCH_CHECK(false, "torch_ws: unknown loss '", std::string(name), "'; expected one of: ", names);
}

}  // namespace torch_ws
