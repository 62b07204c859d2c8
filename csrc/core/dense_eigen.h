// The top eigenpair of a dense symmetric float64 matrix with a certified upper bound on its top
// eigenvalue (docs/math.md §9.2): dense `eigh` up to kDenseEigenRows rows, Lanczos with a Cholesky
// certificate above. What the spectral bound's Gauss-Newton part (ops/spectral) and the interval's
// dense Kato-Temple (core/ritz_certificate.h) run on.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

namespace torch_ws {

// Dense `eigh` up to this many rows (its O(m³) is then a few milliseconds), Lanczos above.
inline constexpr int64_t kDenseEigenRows = 512;

// value + allowance ≥ λ_max of the exact matrix M whose computed version was given; all 0-dim
// float64 but `vector` (m,), a unit vector; `residual` = ‖M·vector − value·vector‖; `iterations`
// (int64) the Lanczos steps, 0 for the dense solver.
struct CertifiedEigenpair {
  at::Tensor value, vector, allowance, residual, iterations;
};

// `forming_error` ≥ ‖fl(M) − M‖₂ and `norm` ≥ ‖M‖₂ (0-dim float64): what the allowances are made
// of (tr M for both when M is positive semi-definite). M symmetric, float64.
CertifiedEigenpair certified_top_eigenpair(const at::Tensor& M, const at::Tensor& forming_error,
                                           const at::Tensor& norm);
// The same in two steps, for a caller that may not need the bound: the pair (dense `eigh`'s,
// already certified, up to kDenseEigenRows rows; above, the Lanczos Ritz pair with allowance +∞,
// an estimate), then its certificate (the Cholesky factorization; a no-op on a certified pair).
CertifiedEigenpair top_eigenpair_estimate(const at::Tensor& M, const at::Tensor& forming_error,
                                          const at::Tensor& norm);
CertifiedEigenpair certify_top_estimate(const at::Tensor& M, const CertifiedEigenpair& estimate,
                                        const at::Tensor& forming_error, const at::Tensor& norm);

// Whether λ_max(M) ≤ τ, decided by one Cholesky factorization of τI − M (docs/math.md §9.2);
// where it holds, `upper` ≥ λ_max of the exact M (τ plus the factorization's and the forming
// error's allowances, rounded up). M symmetric, float64; `forming_error` ≥ ‖fl(M) − M‖₂,
// `norm` ≥ ‖M‖₂.
struct ShiftCertificate {
  bool holds = false;
  double upper = HUGE_VAL;
};
ShiftCertificate certify_shift(const at::Tensor& M, double tau, double forming_error, double norm);

// The top Ritz pair of M by Lanczos with full reorthogonalization from a fixed-seed start, run
// until its residual estimate is below 10⁻¹⁰θ (at most 300 steps): an estimate, not a bound.
// `value` is the vector's Rayleigh quotient (0-dim float64), `vector` unit.
struct TopRitzPair {
  at::Tensor value, vector;
  int64_t steps = 0;
};
TopRitzPair top_ritz_pair(const at::Tensor& M);

}  // namespace torch_ws
