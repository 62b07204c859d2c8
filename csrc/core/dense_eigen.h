// The top eigenpair of a dense symmetric float64 matrix with a certified upper bound on its top
// eigenvalue (docs/math.md §9.2): dense `eigh` up to kDenseEigenRows rows, Lanczos with a Cholesky
// certificate above. What the spectral bound's Gauss-Newton part (ops/spectral) and the interval's
// dense Kato-Temple (core/ritz_certificate.h) run on.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace torch_ws
