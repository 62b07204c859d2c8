// The parameter-space engine (CPU): tr H and tr(H²) = ‖H‖²_F read off the n×n Hessian, assembled
// in closed form from the per-sample tangents (docs/math.md §3), and their gradients from one more
// pass over the samples. The cheaper order for small networks (n ≤ kMaxParameterSpaceParams).
#pragma once

#include "core/problem.h"

#include <optional>
#include <utility>

namespace torch_ws {

struct ParameterSpaceResult {
  double trace, trace_sq;
  // With gradients: (gradient of tr H, gradient of tr(H²)) in the input dtype, x's if asked for.
  std::optional<std::pair<InputGradients, InputGradients>> gradients;
};

ParameterSpaceResult parameter_space_cpu(const MlpProblem& p, bool with_gradients,
                                         bool need_grad_x);

}  // namespace torch_ws
