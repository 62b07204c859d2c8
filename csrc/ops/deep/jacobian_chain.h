// What both engines of the deep family's traces read (docs/math.md §12.1, §12.3): the
// coefficients of the forward pass, and the per-sample Jacobian chain built from them. Either
// values, or magnitudes (every entry replaced by a non-negative majorant): the chain is sums and
// products only, so the same code on magnitudes gives Σ|terms| of every sum (§12.5).
#pragma once

#include "core/problem.h"

#include <ATen/ATen.h>

#include <vector>

namespace torch_ws {

// Layers l = 1..o (index 0 unused): the features z_l entering layer l + 1 (z_0 = x), φ'(a_l),
// φ''(a_l), the weights, whether layer l has a bias, and the loss's S and e. (The feature kernels
// κ_l(i,j) = ã_{i,l-1}·ã_{j,l-1} are N × N: the Gram forms build them a tile of rows at a time.)
struct Coefficients {
  std::vector<at::Tensor> z, d1, d2, weight;
  std::vector<bool> bias;  // index l = 1..o
  at::Tensor S, e, e_magnitude;  // e_magnitude: Σ|terms| of e's formula (losses.h)
};

// The values: the family's forward pass (forward.h).
Coefficients coefficient_values(const MlpProblem& p);

// Majorants of the values (no autograd), and the logits' rounding allowance that enters the
// error's chain length (losses.h logit_rounding, docs/math.md §11.3).
struct CoefficientMagnitudes {
  Coefficients magnitudes;
  double logit_allowance;
};
CoefficientMagnitudes coefficient_magnitudes(const MlpProblem& p);

// The samples [begin, end) of the coefficients (their per-sample rows): a share of the sums over
// samples, with the whole set's loss scale.
Coefficients rows_of(const Coefficients& c, int64_t begin, int64_t end);

// The per-sample chain of §12.3, for layers o = L + 1 (the logits) down to 1.
struct JacobianChain {
  explicit JacobianChain(const Coefficients& c);

  // E(m, k) = B_mᵀ S B_k (N, H_m, H_k), B_l = F[o][l]: the Gauss-Newton part's per-sample block.
  at::Tensor E(int64_t m, int64_t k) const;
  // ã_{l-1}: the features entering layer l with the bias's 1 appended (N, H̃_{l-1}).
  at::Tensor features_in(int64_t l) const;

  const Coefficients& c;
  int64_t out, L, N, C;
  // F[l][k] = ∂a_l/∂a_k (N, H_l, H_k) for k ≤ l (F_kk = I, expanded).
  std::vector<std::vector<at::Tensor>> F;
  // p_l = B_lᵀe (N, H_l), the loss's adjoint at a_l; r_l = φ''_l ∘ W_{l+1}ᵀp_{l+1} (hidden l).
  std::vector<at::Tensor> p, r;
  // The forward-curvature blocks N[k][k'] = Σ_{max(k,k') ≤ l ≤ L} F_lkᵀ diag(r_l) F_lk'
  // (N, H_k, H_k') for hidden k ≥ k' (N[k'][k] = N[k][k']ᵀ: read this orientation); N[L][L] =
  // diag(r_L) is left unbuilt (its users take r_L).
  std::vector<std::vector<at::Tensor>> curvature;
};

}  // namespace torch_ws
