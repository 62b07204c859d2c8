// What the engines return: the traces and, with gradients, the gradients of tr H and tr(H²)
// (docs/math.md §4, §6). The vocabulary every engine shares and the dispatcher
// (engines/dispatch.h) hands back; it includes nothing above core/.
#pragma once

#include "problem.h"

#include <functional>
#include <optional>
#include <utility>

namespace torch_ws {

// What the caller needs besides the traces.
enum class Gradients { None, Parameters, ParametersAndX };

struct TracesResult {
  at::Tensor trace, trace_sq;  // 0-d float64 on the problem's device
  // With gradients: of tr H and of tr(H²), in the input dtype.
  std::optional<InputGradients> trace_grad, trace_sq_grad;
};

// The weights (α, β) of a scalar F(tr H, tr(H²)), ∇F = α·∇tr H + β·∇tr(H²), as 0-d float64
// tensors, from the 0-d float64 traces.
using TraceWeights =
    std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>;

struct WeightedTraces {
  at::Tensor trace, trace_sq;  // 0-d float64 on the problem's device
  InputGradients grad;         // of F, in the input dtype
};

// The shapes the engine choice reads.
struct ProblemShape {
  c10::Device device;
  int64_t num_samples, in_dim, hidden, num_outputs;
  bool has_b1, has_b2;
};

}  // namespace torch_ws
