// The one table of output losses (docs/math.md §2): names, parsing, and the per-sample
// derivatives of the loss in the logits that every engine consumes.
//
// Adding a loss means adding a row here (its name, output width, targets and derivatives) and its
// pairwise terms (docs/math.md §4); the problem description (problem.h) already carries the loss
// and the output width C. Only the binary cross-entropy of the papers exists today (C = 1).
#pragma once

#include "activations.h"  // primitives::sigmoid

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace torch_ws {

enum class Loss { BinaryCrossEntropy };

struct LossEntry {
  Loss loss;
  const char* name;
  int64_t num_outputs;   // C, the width of the last Linear layer
  const char* as_torch;  // the PyTorch loss it is, for messages and docs
};

inline constexpr std::array<LossEntry, 1> kLosses = {{
    {Loss::BinaryCrossEntropy, "bce", 1, "BCEWithLogitsLoss"},
}};

const LossEntry& loss_entry(Loss loss);
// Raises c10::Error naming the supported losses when `name` is not one of them.
Loss parse_loss(std::string_view name);

// One sample's loss derivatives in its logit z, scaled by the reduction's c (1/N or 1):
//   e = c·ℓ'(z),  s = c·ℓ''(z),  ds_dz = c·ℓ'''(z)      (de/dz = s for every loss)
// `y` is the prediction the derivatives are written in (σ(z) for BCE). Written once for tensors
// (the sample-space engines) and doubles (the parameter-space engine's fused loops).
template <typename T>
struct LogitTerms {
  T y, s, e, ds_dz;
};

template <typename T, typename Target>
LogitTerms<T> logit_terms(Loss loss, const T& z, const Target& target, double scale) {
  switch (loss) {
    case Loss::BinaryCrossEntropy:
    default: {
      // ℓ = softplus(z) − t·z: ℓ' = σ − t, ℓ'' = σ(1 − σ), ℓ''' = σ(1 − σ)(1 − 2σ). σ(1 − σ) is
      // computed as σ(z)σ(−z), which keeps its relative accuracy when σ saturates.
      T y = primitives::sigmoid(z);
      T s = scale * (y * primitives::sigmoid(-z));
      T e = scale * (y - target);
      T ds_dz = s * (1 - 2 * y);
      return {y, s, e, ds_dz};
    }
  }
}

}  // namespace torch_ws
