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

#include <functional>
#include <optional>

namespace torch_ws::spectral {

// The dual matrix has NC rows: up to kMaxDual its top eigenpair by core/dense_eigen.h (dense
// `eigh`, or Lanczos with a Cholesky certificate); above (its NC×NC float64 matrix would take
// more than 2 GiB) M is never formed: GGN itself (n × n) where n ≤ 4096, else Lanczos on its
// closed-form products, certified by its own exact traces (docs/math.md §9.2 "Without the dual
// matrix").
inline constexpr int64_t kMaxDual = 16384;

// λ_max(R) ≤ max_k (a_k + √(a_k² + 4σ_k²))/2, a_k = c_k·λ_w (docs/math.md §11.2, "At scale"):
// the value, its allowance, and what its gradient needs (the maximizing unit and sample, the
// fixed weights w and the top unit eigenvector of X̃ᵀ diag(w) X̃). float64, 0-dim unless said.
struct ResidualMajorant {
  double sign = 1;                  // +1: of R; −1: of −R (λ_min(R) ≥ −value − allowance)
  at::Tensor value, allowance;
  at::Tensor unit, sample;          // int64: k (the maximizing block) and the i of c_k
  at::Tensor c, sigma, gram_value;  // c_k, σ_k = ‖F_k‖_F, λ_max(X̃ᵀ diag(w) X̃)
  at::Tensor weights;               // w (N,), held fixed
  at::Tensor gram_vector;           // (D̃,)
};

// R's blocks cost H·N·D̃² multiply-adds to form (1.3·10¹² at N = 8192, D = 784, H = 256: 15–40 s
// on 2 cores). Above this many, `evaluate` bounds λ_max(R) and λ_min(R) by the majorants of R and
// −R instead (docs/math.md §9.3, §11.2 "At scale": O(N·D̃·(H·C + min(N, D̃))), a few percent
// looser where measured), so that the residual no longer dominates the bound's time at large D.
inline constexpr double kExactResidualWork = 0x1p35;
bool residual_by_majorant(const MlpProblem& p);

// Everything in float64 (0-dim unless said), on the problem's device.
struct SpectralParts {
  at::Tensor ggn_lambda_max;   // λ_max(GGN) (above kMaxDual by Lanczos: the top Ritz value)
  at::Tensor ggn_allowance;    // what to add to it so that it is an upper bound
  at::Tensor residual_lambda_max, residual_lambda_min;  // λ_max(R) ≥ 0 ≥ λ_min(R)
  at::Tensor residual_allowance;
  at::Tensor eigen_residual;   // ‖M v − λ v‖ of the GGN eigenpair (0 when there is none; above
                               // kMaxDual ‖G u − λ u‖ of the unit vector u in θ's space)
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
  // At scale (second_bound_at_scale, weyl_at_scale, and `evaluate` where residual_by_majorant):
  // majorants in place of R's eigenpairs (whose vectors are then zeros);
  // residual_lambda_max (residual_lambda_min) then holds the majorant's value (minus that of −R's)
  // and residual_allowance its allowance.
  std::optional<ResidualMajorant> residual_majorant, residual_minorant;
};

// With `second` and `top_bound_needed` (the interval's Kato-Temple, which reads λ_2's bound and
// R's part but not λ_max(GGN)'s): the top dual pair's certificate (a Cholesky factorization above
// kDenseEigenRows rows) is taken only where `top_bound_needed`, called with the parts computed so
// far, says so; otherwise ggn_allowance is +∞ (no bound), and ggn_lambda_max the estimate.
SpectralParts evaluate(const MlpProblem& p, bool second = false,
                       const std::function<bool(const SpectralParts&)>& top_bound_needed = {});

// At scale (N·C above what `evaluate`'s second bound is worth): ν ≥ λ_2(GGN) + λ_max(R) below
// `ceiling` (the interval's θ_low − ρ), or nothing where it cannot be certified there
// (docs/math.md §11.2, "At scale"). λ_max(R) by the majorant (no block formed), λ_2(GGN) ≤ τ by
// one Cholesky factorization of τI − (M − c·yyᵀ), y the dual image of `top_direction` (the top
// Ritz vector of H), τ between `estimate` (the second Ritz value) and what the majorant leaves.
// With `for_gradients`, the deflated matrix's top vector z (Lanczos) for the derivative. The
// parts' fields ggn_second_* and residual_* are set; ggn_lambda_max is NaN (not computed).
std::optional<SpectralParts> second_bound_at_scale(const MlpProblem& p,
                                                   const at::Tensor& top_direction,
                                                   double ceiling, double estimate,
                                                   bool for_gradients);

// The Weyl bound's parts at scale (docs/math.md §11.2 "At scale"): for `largest`, `evaluate`'s
// (λ_max(GGN) with the dual matrix up to kMaxDual rows, without it above; R's eigenpairs where its
// blocks are cheap, else the majorants); else R's part alone (λ_min(R) from its blocks, or
// −(the majorant of −R)), no GGN part. The parts carry what their gradient reads.
SpectralParts weyl_at_scale(const MlpProblem& p, bool largest);

// λ_max(R) ≤ the majorant's value plus its allowance (0-dim float64): the private op
// _residual_majorant, which the tests hold against eigvalsh of the explicit H − GGN.
at::Tensor residual_majorant_upper(const MlpProblem& p);

// The eigenvectors a gradient needs (SpectralParts' last six fields).
struct Eigenvectors {
  at::Tensor ggn_vector, residual_max_vector, residual_max_unit, residual_min_vector,
      residual_min_unit;
  // Where set, g_max applies to this majorant of λ_max(R) instead of the eigenpair, and g_min to
  // minus the majorant of −R.
  const ResidualMajorant* residual_majorant = nullptr;
  const ResidualMajorant* residual_minorant = nullptr;
};

// g_ggn·∇λ_max(GGN) + g_max·∇λ_max(R) + g_min·∇λ_min(R) (0-dim float64 coefficients) with respect
// to (x, w1, b1, w2, b2), in the inputs' dtype; x's only when `need_x`.
InputGradients gradient(const MlpProblem& p, const Eigenvectors& vectors, const at::Tensor& g_ggn,
                        const at::Tensor& g_max, const at::Tensor& g_min, bool need_x);

}  // namespace torch_ws::spectral
