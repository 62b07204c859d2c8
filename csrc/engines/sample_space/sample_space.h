// The sample-space engine (docs/math.md §4, §6): tr(H²) as sums over pairs of samples of functions
// of Gram-matrix entries, in three stages:
//   1. per-sample features (φ^(k)(A), U, V, s, e): O(N(D+H)), device-agnostic ATen (features.cpp);
//   2. the pairwise stage: tr(H²) and, with gradients, its adjoints with respect to the per-sample
//      arrays, in one pass: whole N×N matrices in ATen (any device; whole_matrix.cpp), or T×T
//      tiles fused and reduced on the fly (CPU; cpu/tiled_pairwise.cpp);
//   3. the chain from per-sample adjoints to x, w1, b1, w2, b2 (chain.cpp): O(N(D+H)). It serves
//      tr H (whose adjoints come from the diagonal formula) and tr(H²) alike.
#pragma once

#include "core/traces.h"
#include "core/problem.h"
#include "core/share.h"

#include <ATen/ATen.h>

#include <optional>

namespace torch_ws {

// Stage 1 (docs/math.md §2).
struct SampleFeatures {
  at::Tensor x;                       // (N, D), contiguous
  at::Tensor phi0, phi1, phi2, phi3;  // φ^(k)(A), (N, H); phi3 only for gradients
  at::Tensor U, V;                    // U = Φ1 diag(w2), V = Φ2 diag(w2)
  at::Tensor s, e, ds_dz;             // c·ℓ'', c·ℓ', c·ℓ''' (losses.h); ds_dz only for gradients
  bool has_b1, has_b2;                // the bias "1"s in K and R
};
SampleFeatures sample_features(const MlpProblem& p, bool for_gradients);

// The per-sample diagonals tr(H) is made of: k = K_ii = ‖x_i‖² + [b1], q = Q_ii = ‖U_i‖²,
// r = R_ii = ‖Φ0_i‖² + [b2], v = (Φ2 w2ᵀ)_i.
struct Diagonals {
  at::Tensor k, q, r, v;
};
Diagonals diagonals(const SampleFeatures& f);

// tr H = Σ_i s_i (k_i q_i + r_i) + e_i k_i v_i (docs/math.md §4): O(N(D+H)), float64.
at::Tensor trace_float64(const SampleFeatures& f, const Diagonals& d);

// The adjoints of one scalar (tr H or tr(H²)) with respect to the per-sample arrays.
struct SampleAdjoints {
  at::Tensor U, V, phi0, phi1;  // (N, H)
  at::Tensor x;                 // (N, D), through K; may be undefined when x's gradient is not asked for
  at::Tensor s, e;              // (N,)
};
// tr H's, from the diagonal formula (x's only with need_grad_x).
SampleAdjoints trace_adjoints(const SampleFeatures& f, const Diagonals& d, bool need_grad_x);
// α·a + β·b entry by entry, in float64 (the weights, ∂F/∂tr of a bound F, can exceed the float32
// range where the spread is tiny), returned in the arrays' dtype; undefined entries stay so.
SampleAdjoints weigh_adjoints(const at::Tensor& alpha, const SampleAdjoints& a,
                              const at::Tensor& beta, const SampleAdjoints& b);

// Stage 2: tr(H²) in float64 and, with gradients, its adjoints. X's adjoint (the products K̄X,
// N²D multiply-adds, a fifth of the work at D = 784) only for Gradients::ParametersAndX: nothing
// but x's gradient reads it.
struct PairwiseResult {
  at::Tensor trace_sq;
  std::optional<SampleAdjoints> adjoints;
};
PairwiseResult pairwise_whole(const SampleFeatures& f, Gradients gradients);
// With a share (core/share.h): only the tile pairs dealt to it.
PairwiseResult pairwise_tiled_cpu(const SampleFeatures& f, Gradients gradients, int64_t tile,
                                  const Share& share = {});
// How many distinct threads run the lanes of the tiled engine: at::get_num_threads() when this
// library was built with OpenMP, 1 when the parallel loops silently run serially.
int64_t parallel_threads();

// Stage 3: the gradient of the scalar whose per-sample adjoints are `a`.
InputGradients chain_to_inputs(const MlpProblem& p, const SampleFeatures& f,
                               const SampleAdjoints& a, bool need_grad_x);
// Stage 3 for α·tr H + β·tr(H²) on the CPU (cpu/weighted_chain.cpp): tr H's adjoints, the
// weighting and the chain's elementwise part in one pass over the (N, H) arrays, from tr(H²)'s
// adjoints, then the products with X (and W1). The same result as chain_to_inputs of
// weigh_adjoints(α, trace_adjoints(f, d), β, trace_sq_adjoints), without its dozen (N, H)
// temporaries.
InputGradients weighted_chain_cpu(const MlpProblem& p, const SampleFeatures& f,
                                  const Diagonals& d, double alpha, double beta,
                                  const SampleAdjoints& trace_sq_adjoints, bool need_grad_x);

}  // namespace torch_ws
