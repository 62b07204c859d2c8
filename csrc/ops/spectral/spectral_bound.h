// The spectral bound (docs/math.md §9): λ_max(H) ≤ λ_max(GGN) + λ_max(R) by Weyl, with both parts
// computed exactly, and λ_min(H) ≥ λ_min(R) as GGN is positive semi-definite.
//
//   GGN = Σ_i J_iᵀ S_i J_i: its non-zero spectrum is that of the NC×NC dual matrix M = J̃ J̃ᵀ, the
//         rows of J̃ being L_iᵀ J_i for a factor S_i = L_i L_iᵀ; M's entries are closed forms in
//         the Gram matrices K = X̃X̃ᵀ and ΦΦᵀ (never the n-wide Jacobians).
//   R   = Σ_ic e_ic ∇²z_ic: block-diagonal over hidden units after a permutation, H blocks
//         R_k = [[Σ_i β_ik x̃_i x̃_iᵀ, F_k], [F_kᵀ, 0]] of size D̃ + C.
//
// Everything runs in float64 whatever the inputs' dtype (the inputs are exact in float64), with
// ATen operations (any device). The eigenvalues are widened by a rounding allowance so that the
// bound stays a bound; the gradients are those of the exact eigenvalues (Hellmann-Feynman: the
// derivative of a simple eigenvalue is vᵀ dM v for its unit eigenvector v).
#pragma once

#include "core/problem.h"

#include <ATen/ATen.h>

namespace torch_ws::spectral {

// The dual matrix has NC rows: its top eigenpair by core/dense_eigen.h (dense `eigh`, or Lanczos
// with a Cholesky certificate), and no GGN part at all above kMaxDual (its NC×NC float64 matrix
// would take more than 2 GiB): there the bound is the Wolkowicz-Styan one.
inline constexpr int64_t kMaxDual = 16384;

// Everything in float64 (0-dim unless said), on the problem's device.
struct SpectralParts {
  at::Tensor ggn_lambda_max;   // λ_max(GGN); NaN when NC > kMaxDual
  at::Tensor ggn_allowance;    // what to add to it so that it is an upper bound
  at::Tensor residual_lambda_max, residual_lambda_min;  // λ_max(R) ≥ 0 ≥ λ_min(R)
  at::Tensor residual_allowance;
  at::Tensor eigen_residual;   // ‖M v − λ v‖ of the GGN eigenpair (0 when there is none)
  at::Tensor iterations;       // int64: Lanczos steps, 0 for the dense solver
  // For the gradient: unit eigenvectors, and the hidden unit of each R eigenpair.
  at::Tensor ggn_vector;                                  // (N, C); zeros when there is none
  at::Tensor residual_max_vector, residual_min_vector;    // (D̃ + C,)
  at::Tensor residual_max_unit, residual_min_unit;        // int64
  // With `second` (and the GGN part): an upper bound on λ_2(GGN), for Kato-Temple on the
  // interval's top Ritz pair (docs/math.md §11.2): λ_max(M − c·yyᵀ) with y, c the top dual pair,
  // certified like λ_max(GGN), its smooth value, and its unit vector z (N, C), so that the
  // value's derivative with y and c held fixed is zᵀ dM z (the GGN term of `gradient` with z).
  at::Tensor ggn_second_upper, ggn_second_value, ggn_second_vector;
};

SpectralParts evaluate(const MlpProblem& p, bool second = false);

// The eigenvectors a gradient needs (SpectralParts' last six fields).
struct Eigenvectors {
  at::Tensor ggn_vector, residual_max_vector, residual_max_unit, residual_min_vector,
      residual_min_unit;
};

// g_ggn·∇λ_max(GGN) + g_max·∇λ_max(R) + g_min·∇λ_min(R) (0-dim float64 coefficients) with respect
// to (x, w1, b1, w2, b2), in the inputs' dtype; x's only when `need_x`.
InputGradients gradient(const MlpProblem& p, const Eigenvectors& vectors, const at::Tensor& g_ggn,
                        const at::Tensor& g_max, const at::Tensor& g_min, bool need_x);

}  // namespace torch_ws::spectral
