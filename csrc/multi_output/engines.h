// The two engines for heads of C ≥ 2 logits (docs/math.md §8), device-agnostic ATen. They compute
// the same tr H, tr(H²) and gradients in the two evaluation orders of the one-logit engines:
//   - sample space: pairwise sums over blocks of T samples, O(N²(D + C²H)) work,
//     O(N(D + C·H) + (T·C)²) memory;
//   - parameter space: the n×n Hessian assembled from the per-sample Jacobians, O(N·C·n²) work,
//     O(n² + N(D + C·H) + B·C·n) memory in chunks of B samples, for small networks
//     (n ≤ kMaxParameterSpaceParams).
#pragma once

#include "core/engine.h"
#include "core/problem.h"

namespace torch_ws::multi_output {

// Pairwise sums over blocks of `tile` samples (tile = N: whole matrices).
TracesResult sample_space_traces(const MlpProblem& p, Gradients gradients, int64_t tile);

// The n×n Hessian assembled in float64, the Jacobians of `chunk` samples at a time.
TracesResult parameter_space_traces(const MlpProblem& p, Gradients gradients, int64_t chunk);

}  // namespace torch_ws::multi_output
