// docs/math.md §9.2: the two solvers of core/dense_eigen.h and the rounding of each.
#include "core/dense_eigen.h"

#include "core/rounding.h"
#include "core/ws_bound.h"  // kRoundingAllowance

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;

constexpr double kUnitRoundoff = 0x1p-53;  // float64

CertifiedEigenpair dense_top_eigenpair(const Tensor& M, const Tensor& forming_error,
                                       const Tensor& norm) {
  const auto [values, vectors] = at::linalg_eigh(M);
  const int64_t m = M.size(0);
  CertifiedEigenpair top;
  top.value = values.select(0, m - 1);
  top.vector = vectors.select(1, m - 1);
  top.residual = (at::mv(M, top.vector) - top.value * top.vector).norm();
  // eigh is backward stable: its eigenvalues are those of M + E with ‖E‖ ≤ p(m)·u·‖M‖.
  const double eigh_factor = (kRoundingAllowance + 2.0 * static_cast<double>(m)) * kUnitRoundoff;
  top.allowance = forming_error + eigh_factor * norm;
  top.iterations = at::zeros({}, M.options().dtype(at::kLong));
  return top;
}

}  // namespace

TopRitzPair top_ritz_pair(const Tensor& M) {
  const int64_t m = M.size(0);
  const int64_t max_steps = std::min<int64_t>(m, 300);
  const auto options = M.options();
  // A fixed-seed random start: deterministic results, and almost surely not orthogonal to the
  // top eigenvector.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(0x5eed);
  Tensor q = at::randn({m}, generator, at::TensorOptions().dtype(at::kDouble)).to(M.device());
  q = q / q.norm();
  Tensor basis = at::empty({max_steps, m}, options);
  std::vector<double> alpha, beta;
  Tensor ritz_value, ritz_vector;
  int64_t steps = 0;
  for (int64_t j = 0; j < max_steps; ++j) {
    basis.select(0, j).copy_(q);
    Tensor w = at::mv(M, q);
    alpha.push_back(at::dot(q, w).item<double>());
    const Tensor done = basis.narrow(0, 0, j + 1);
    for (int pass = 0; pass < 2; ++pass) w = w - at::mv(done.t(), at::mv(done, w));
    const double b = w.norm().item<double>();
    steps = j + 1;
    const bool last = steps == max_steps;
    const bool invariant = b <= 1e-13 * std::abs(alpha.front()) + 1e-300;
    if (last || invariant || (steps >= 8 && steps % 4 == 0)) {
      Tensor T = at::zeros({steps, steps}, at::TensorOptions().dtype(at::kDouble));
      auto Ta = T.accessor<double, 2>();
      for (int64_t i = 0; i < steps; ++i) {
        Ta[i][i] = alpha[i];
        if (i + 1 < steps) Ta[i][i + 1] = Ta[i + 1][i] = beta[i];
      }
      const auto [theta, s] = at::linalg_eigh(T);
      const double top = theta[steps - 1].item<double>();
      const double estimate = b * std::abs(s[steps - 1][steps - 1].item<double>());
      if (last || invariant || estimate <= 1e-10 * std::abs(top)) {
        ritz_value = theta.select(0, steps - 1).to(M.device());
        ritz_vector = at::mv(done.t(), s.select(1, steps - 1).to(M.device()));
        break;
      }
    }
    beta.push_back(b);
    q = w / b;
  }
  TopRitzPair top;
  top.vector = ritz_vector / ritz_vector.norm();
  top.value = at::dot(top.vector, at::mv(M, top.vector));  // the Rayleigh quotient, ≤ λ_max
  top.steps = steps;
  return top;
}

namespace {

// The top Ritz pair (θ, y) by Lanczos with full reorthogonalization, with no bound yet
// (allowance +∞).
CertifiedEigenpair lanczos_top_estimate(const Tensor& M) {
  const TopRitzPair pair = top_ritz_pair(M);
  CertifiedEigenpair top;
  top.vector = pair.vector;
  top.value = pair.value;
  top.residual = (at::mv(M, top.vector) - top.value * top.vector).norm();
  top.iterations = at::scalar_tensor(pair.steps, M.options().dtype(at::kLong));
  top.allowance = at::scalar_tensor(HUGE_VAL, M.options());
  return top;
}

// The certificate of a Lanczos estimate: τ = θ + 2‖My − θy‖ + 10⁻¹⁰θ is an upper bound on
// λ_max(M) iff τI − M is positive definite, which a Cholesky factorization decides (docs/math.md
// §9.2). Where it fails (the Ritz value missed the top eigenvalue), the dense solver decides
// instead.
CertifiedEigenpair certify_lanczos_estimate(const Tensor& M, CertifiedEigenpair top,
                                            const Tensor& forming_error, const Tensor& norm) {
  const double theta = top.value.item<double>(), residual = top.residual.item<double>();
  const double tau = theta + 2 * residual + 1e-10 * std::abs(theta) + 1e-300;
  const ShiftCertificate certificate =
      certify_shift(M, tau, forming_error.item<double>(), norm.item<double>());
  if (!certificate.holds) return dense_top_eigenpair(M, forming_error, norm);
  top.allowance = at::scalar_tensor(certificate.upper - theta, M.options());
  return top;
}

}  // namespace

ShiftCertificate certify_shift(const Tensor& M, double tau, double forming_error, double norm) {
  const int64_t m = M.size(0);
  ShiftCertificate out;
  Tensor shifted = -M;
  shifted.diagonal().add_(tau);
  const bool factored = std::get<1>(at::linalg_cholesky_ex(shifted)).item<int64_t>() == 0;
  shifted = Tensor();
  if (!factored) return out;
  // A Cholesky factorization that succeeds in floating point proves A + E positive definite with
  // ‖E‖ ≤ γ_{m+1}·tr(A) (Demmel); so λ_max(M) ≤ τ + γ_{m+1}·tr(τI − M), and M itself is off by
  // the forming error. (The shift's own rounding, u·|τ − M_ii| on the diagonal, is inside
  // κu·‖M‖ when τ ≤ ‖M‖, and inside γ_{m+1}·tr(τI − M) when τ is larger.)
  const double cholesky_factor = 2.0 * static_cast<double>(m + 1) * kUnitRoundoff;
  const double trace = M.trace().item<double>();
  out.holds = true;
  out.upper = tau + cholesky_factor * (static_cast<double>(m) * tau - trace) + forming_error +
              kRoundingAllowance * kUnitRoundoff * norm;
  out.upper = up(out.upper * (1 + 4 * kUnitRoundoff));
  return out;
}

CertifiedEigenpair top_eigenpair_estimate(const Tensor& M, const Tensor& forming_error,
                                          const Tensor& norm) {
  return M.size(0) <= kDenseEigenRows ? dense_top_eigenpair(M, forming_error, norm)
                                      : lanczos_top_estimate(M);
}

CertifiedEigenpair certify_top_estimate(const Tensor& M, const CertifiedEigenpair& estimate,
                                        const Tensor& forming_error, const Tensor& norm) {
  if (std::isfinite(estimate.allowance.item<double>())) return estimate;
  return certify_lanczos_estimate(M, estimate, forming_error, norm);
}

CertifiedEigenpair certified_top_eigenpair(const Tensor& M, const Tensor& forming_error,
                                           const Tensor& norm) {
  return certify_top_estimate(M, top_eigenpair_estimate(M, forming_error, norm), forming_error,
                              norm);
}

}  // namespace torch_ws
