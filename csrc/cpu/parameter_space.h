// The parameter-space engine (CPU): tr H and tr(H²) = ‖H‖²_F read off the n×n Hessian, assembled
// in closed form from the per-sample tangents (docs/math.md §3), and their gradients from one more
// pass over the samples. The cheaper order for small networks (n ≤ kMaxParameterSpaceParams).
#pragma once

#include "core/problem.h"

#include <utility>

namespace torch_ws {

struct HessianResult {
  double trace, trace_sq;
  at::Tensor hessian;  // (n, n) float64, contiguous
};
HessianResult hessian_cpu(const MlpProblem& p);

// (gradient of tr H, gradient of tr(H²)) from the assembled Hessian, in the input dtype.
std::pair<InputGradients, InputGradients> hessian_cpu_gradients(const MlpProblem& p,
                                                                 const at::Tensor& hessian,
                                                                 bool need_grad_x);

}  // namespace torch_ws
