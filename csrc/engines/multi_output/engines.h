// The two engines for heads of C ≥ 2 logits (docs/math.md §8), device-agnostic ATen. They compute
// the same tr H, tr(H²) and gradients in the two evaluation orders of the one-logit engines:
//   - sample space: pairwise sums over blocks of T samples, O(N²(D + C²H)) work,
//     O(N(D + C·H) + (T·C)²) memory;
//   - parameter space: the n×n Hessian assembled from the per-sample Jacobians, O(N·C·n²) work,
//     O(n² + N(D + C·H) + B·C·n) memory in chunks of B samples, for small networks
//     (n ≤ kMaxParameterSpaceParams).
#pragma once

#include "core/traces.h"
#include "core/problem.h"
#include "core/share.h"

namespace torch_ws::multi_output {

// Pairwise sums over blocks of `tile` samples (tile = N: whole matrices); with a share, its part
// of the sums (core/share.h).
TracesResult sample_space_traces(const MlpProblem& p, Gradients gradients, int64_t tile,
                                 const Share& share = {});

// The n×n Hessian assembled in float64, the Jacobians of `chunk` samples at a time.
TracesResult parameter_space_traces(const MlpProblem& p, Gradients gradients, int64_t chunk);

// The explicit Hessian's share of the samples [begin, end) (their terms of H, the loss scaled
// over all N): (n, n) float64 in the flat order of θ (W1 row-major, b1, W2 row-major, b2). The
// assembly serves every head, bce as the case C = 1 (docs/math.md §3, §8.5).
at::Tensor hessian_of_samples(const MlpProblem& p, int64_t begin, int64_t end, int64_t chunk);
// The gradient of ⟨H̄, that share⟩ for any (n, n) H̄ in the same order (its symmetric part is
// what counts), in the input dtype; x's when need_x.
InputGradients hessian_of_samples_backward(const MlpProblem& p, const at::Tensor& hessian_bar,
                                           int64_t begin, int64_t end, int64_t chunk,
                                           bool need_x);

// An (n, n) matrix between the parameter-space engines' layout of θ (hidden unit k's [W1_k, b1_k],
// then W2 row-major, then b2) and the flat order above.
at::Tensor layout_to_flat(const at::Tensor& matrix, const MlpProblem& p);
at::Tensor flat_to_layout(const at::Tensor& matrix, const MlpProblem& p);

}  // namespace torch_ws::multi_output
