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

// The terms of samples [begin, end) of H (one logit; the loss scaled over all N), in this
// engine's layout (unit k's [W1_k, b1_k], then w2, then b2): (n, n) float64, symmetric.
at::Tensor parameter_space_hessian_cpu(const MlpProblem& p, int64_t begin, int64_t end);
// The gradient of ⟨H̄, those terms⟩ for a (n, n) float64 H̄ in the same layout (its symmetric
// part counts), in the input dtype.
InputGradients parameter_space_hessian_backward_cpu(const MlpProblem& p,
                                                    const at::Tensor& hessian_bar,
                                                    int64_t begin, int64_t end,
                                                    bool need_grad_x);

}  // namespace torch_ws
