// docs/math.md §11.2 (the certificate) and §11.3 (its rounding). Nothing here relies on the
// Lanczos recurrence: only on the basis Q and the products W = fl(QH) computed for its rows.
#include "core/ritz_certificate.h"

#include "core/dense_eigen.h"
#include "core/rounding.h"
#include "core/ws_bound.h"  // kRoundingAllowance

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;

constexpr double kUnit = 0x1p-53;  // float64's unit roundoff: the certificate runs in float64

double dot_value(const Tensor& a, const Tensor& b) { return at::dot(a, b).item<double>(); }
double norm_value(const Tensor& a) { return a.norm().item<double>(); }

// A unit vector orthogonal to the rows of `basis` (m, n), m < n, from `seed`'s generator:
// Lanczos' restart when the Krylov space closes (an invariant subspace) and its first vector.
Tensor random_orthogonal(const Tensor& basis, int64_t n, at::Generator& generator,
                         const at::TensorOptions& options, const char* op) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    Tensor r = at::randn({n}, generator, at::TensorOptions().dtype(at::kDouble)).to(options.device());
    for (int pass = 0; pass < 2 && basis.size(0) > 0; ++pass) {
      r = r - at::mv(basis.t(), at::mv(basis, r));
    }
    const double size = norm_value(r);
    if (size > 1e-8) return r / size;
  }
  TORCH_CHECK(false, op, ": could not draw a direction orthogonal to the Krylov basis");
}

}  // namespace

int64_t SymmetricProducts::run_length(int64_t num_samples, int64_t width, int64_t numbers) {
  return std::max<int64_t>(1, numbers / std::max<int64_t>(1, num_samples * width));
}

at::Tensor SymmetricProducts::in_runs(const at::Tensor& directions, int64_t num_samples,
                                      int64_t width,
                                      const std::function<at::Tensor(const at::Tensor&)>& run,
                                      int64_t numbers) {
  const int64_t step = run_length(num_samples, width, numbers);
  const int64_t k = directions.size(0);
  if (k <= step) return run(directions);
  std::vector<Tensor> parts;
  for (int64_t first = 0; first < k; first += step) {
    parts.push_back(run(directions.narrow(0, first, std::min(step, k - first))));
  }
  return at::cat(parts, 0);
}

EndDerivatives end_derivatives(const RitzCertificate& certificate, double sign,
                               const TraceFacts& facts, int64_t num_params) {
  const int64_t k = certificate.ritz_values.size(0);
  EndDerivatives out;
  out.lower.ritz.assign(k, 0.0);
  out.upper.ritz.assign(k, 0.0);
  if (!certificate.u.defined()) {  // no interval: NaN gradients, as the other ops give
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (EndDerivative* end : {&out.lower, &out.upper}) {
      end->ritz.assign(k, nan);
      end->image = end->trace = end->trace_sq = nan;
    }
    return out;
  }
  const Tensor &hu = certificate.hu, &ritz_vectors = certificate.ritz_vectors;
  const double denominator = certificate.denominator, theta = certificate.theta;
  const double trace = facts.trace, trace_sq = facts.trace_sq;
  const Tensor mu = certificate.ritz_values.cpu();
  const auto mu_values = mu.accessor<double, 1>();
  // The quadratic form of H (not σH) in a fixed vector v, as a Rayleigh quotient: σ/‖v‖².
  auto ritz_norm_sq = [&](int64_t i) { return dot_value(ritz_vectors[i], ritz_vectors[i]); };
  // The Ritz values the value subtracted from tr(H²): the certified ones, positive from index
  // `first_positive` on (1 for the cap, 2 for ν), and every negative one.
  auto subtracted_from = [&](int64_t i, int64_t first_positive) {
    if (!(std::abs(mu_values[i]) > certificate.eps_T) || !certificate.orthonormal_enough) {
      return false;
    }
    return mu_values[i] < 0 || i >= first_positive;
  };
  // lower = θ = uᵀσHu/uᵀu, or the assembled Hessian's zᵀσHz/zᵀz.
  const double assembled_form =
      certificate.assembled_vector.defined()
          ? sign / dot_value(certificate.assembled_vector, certificate.assembled_vector)
          : 0.0;
  if (certificate.lower_from_assembled) {
    out.lower.assembled = assembled_form;
  } else {
    out.lower.ritz[0] = sign / denominator;
  }

  EndDerivative& upper = out.upper;
  // Kato-Temple, θ + ρ²/(θ − ν) with ρ² = ‖Hû‖² − θ²: its terms in θ and in ‖Hû‖² (ν held)
  // go into `upper`; returns its derivative in ν.
  auto kato_temple = [&](double nu_value) {
    const double image_sq = dot_value(hu, hu) / denominator;  // ‖Hû‖²
    const double rho_sq = std::max(image_sq - theta * theta, 0.0), gap = theta - nu_value;
    upper.ritz[0] += (1 - 2 * theta / gap - rho_sq / (gap * gap)) * sign / denominator;
    // ∇‖Hû‖² = 2⟨Hu, ∇H u⟩/‖u‖², and Hu = σ·hu.
    upper.image = (1 / gap) * 2 * sign / denominator;
    return rho_sq / (gap * gap);
  };
  if (certificate.source == IntervalSource::WolkowiczStyan) {
    const auto [d_trace, d_trace_sq] = bound_trace_grads(1.0, trace, trace_sq, num_params);
    upper.trace = sign * d_trace;
    upper.trace_sq = d_trace_sq;
  } else if (certificate.source == IntervalSource::TraceCap) {
    // cap = √(tr(H²) − Σ_{i ∈ cap} μ_i²), μ_i the Ritz values of the fixed basis.
    double subtracted = 0;
    for (int64_t i = 0; i < k; ++i) {
      if (subtracted_from(i, /*first_positive=*/1)) subtracted += mu_values[i] * mu_values[i];
    }
    const double value = std::sqrt(std::max(trace_sq - subtracted, 0.0));
    if (value > 0) {
      upper.trace_sq = 1 / (2 * value);
      for (int64_t i = 0; i < k; ++i) {
        if (subtracted_from(i, /*first_positive=*/1)) {
          upper.ritz[i] = -mu_values[i] / value * sign / ritz_norm_sq(i);
        }
      }
    }
  } else if (certificate.source == IntervalSource::AssembledHessian) {
    // λ_max(σH) itself: σ⟨z, dH z⟩/zᵀz at its eigenvector (simple), as the lower end's form.
    upper.assembled = assembled_form;
  } else if (certificate.source == IntervalSource::KatoTempleWeyl) {
    // ν is the family's own smooth function (not of θ): its derivative comes from the family,
    // weighted by `nu`.
    upper.nu = kato_temple(certificate.nu_value);
  } else if (certificate.source == IntervalSource::KatoTemple) {
    // ν = √(tr(H²) − θ² − Σ_{i ∈ ν} μ_i²), a function of θ, of tr(H²) and of the Ritz values.
    double subtracted = 0;
    for (int64_t i = 0; i < k; ++i) {
      if (subtracted_from(i, /*first_positive=*/2)) subtracted += mu_values[i] * mu_values[i];
    }
    const double nu_value = std::sqrt(std::max(trace_sq - theta * theta - subtracted, 0.0));
    const double d_nu = kato_temple(nu_value);
    if (nu_value > 0) {
      upper.ritz[0] += d_nu * (-theta / nu_value) * sign / denominator;
      upper.trace_sq = d_nu / (2 * nu_value);
      for (int64_t i = 0; i < k; ++i) {
        if (subtracted_from(i, /*first_positive=*/2)) {
          upper.ritz[i] += d_nu * (-mu_values[i] / nu_value) * sign / ritz_norm_sq(i);
        }
      }
    }
  }
  // (Weyl is the one-hidden-layer family's own candidate, with its own gradient, §9.4.)
  return out;
}

void check_directions(const char* op, int64_t n, const at::Device& device,
                      const at::Tensor& vectors, const char* order) {
  TORCH_CHECK(vectors.is_floating_point(), op, ": expected floating-point vectors, got ",
              vectors.scalar_type());
  TORCH_CHECK((vectors.dim() == 1 && vectors.size(0) == n) ||
                  (vectors.dim() == 2 && vectors.size(1) == n),
              op, ": expected vectors of shape (n,) or (k, n) with n = ", n,
              " (the network's parameter count, θ = ", order, "), got ", vectors.sizes());
  TORCH_CHECK(vectors.device() == device, op, ": expected vectors on x's device ", device,
              ", got ", vectors.device());
}

void check_steps_and_start(const char* op, int64_t n, const at::Device& device, int64_t steps,
                           const std::optional<at::Tensor>& start) {
  TORCH_CHECK(steps >= 1, op, ": expected steps >= 1 (the Hessian-vector products of "
              "the Lanczos iteration), got ", steps);
  if (!start) return;
  TORCH_CHECK(start->is_floating_point(), op, ": expected a floating-point start, got ",
              start->scalar_type());
  TORCH_CHECK((start->dim() == 1 && start->size(0) == n) ||
                  (start->dim() == 2 && start->size(0) >= 1 && start->size(1) == n),
              op, ": expected start of shape (n,) or (r, n) with n = ", n,
              " (the network's parameter count; e.g. the ritz_vectors of an earlier call), got ",
              start->sizes());
  TORCH_CHECK(start->device() == device, op, ": expected start on x's device ", device, ", got ",
              start->device());
}

RitzCertificate certify_top(const SymmetricProducts& products, double sign, const TraceFacts& facts,
                            int64_t steps, const std::optional<at::Tensor>& start, int64_t seed,
                            const at::TensorOptions& options, const char* op) {
  const int64_t n = products.num_params(), k = std::min(steps, n);
  const double trace_sq = facts.trace_sq;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (!std::isfinite(facts.trace) || !std::isfinite(trace_sq)) {
    // NaN or ±Inf in the input: no interval (the traces ops return NaN there too).
    return {nan, nan, IntervalSource::WolkowiczStyan, at::full({k}, nan, options),
            at::full({k, n}, nan, options), 0};
  }
  auto product = [&](const Tensor& rows) { return products.apply(rows) * sign; };

  // ---- The basis: the start rows first (a warm start: the previous call's Ritz vectors), then
  // Krylov directions H·q, each orthogonalized twice against all before it (Lanczos with full
  // reorthogonalization, Parlett §6.9; after seeds, Arnoldi's expansion of their span). The
  // certificate below relies on no recurrence, only on Q and W = fl(QH). ----
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  Tensor Q = at::zeros({k, n}, options), W = at::zeros({k, n}, options);
  const Tensor seeds = start ? start->reshape({-1, n}).to(options) : at::empty({0, n}, options);
  const int64_t num_seeds = seeds.size(0);
  Tensor q;
  if (num_seeds > 0) {
    const double size = norm_value(seeds[0]);
    TORCH_CHECK(std::isfinite(size) && size > 0, op,
                ": expected a finite, non-zero start vector, got one of norm ", size);
    q = seeds[0] / size;
  } else {
    q = random_orthogonal(Q.narrow(0, 0, 0), n, generator, options, op);
  }
  const double scale = std::sqrt(std::max(trace_sq, 0.0));
  for (int64_t j = 0; j < k; ++j) {
    Q[j] = q;
    const Tensor w = product(q.unsqueeze(0)).squeeze(0);
    W[j] = w;
    if (j + 1 == k) break;
    const bool seeded = j + 1 < num_seeds;
    Tensor r = seeded ? seeds[j + 1] : w;
    const double reference = seeded ? norm_value(r) : std::max(norm_value(w), scale);
    const Tensor basis = Q.narrow(0, 0, j + 1);
    for (int pass = 0; pass < 2; ++pass) r = r - at::mv(basis.t(), at::mv(basis, r));
    const double size = norm_value(r);
    // A direction already in the span (an invariant subspace, or a seed the others span): go on
    // in a fresh random one.
    q = size > 1e-10 * reference && std::isfinite(size)
            ? r / size
            : random_orthogonal(basis, n, generator, options, op);
  }

  // ---- Rayleigh-Ritz on Q, with every rounding error bounded (docs/math.md §11.3). ----
  Tensor T = at::mm(Q, W.t());
  T = (T + T.t()) / 2;
  if (!at::isfinite(T).all().item<bool>()) {
    return {nan, nan, IntervalSource::WolkowiczStyan, at::full({k}, nan, options),
            at::full({k, n}, nan, options), k};
  }
  auto [ascending, vectors] = at::linalg_eigh(T);
  const Tensor mu = ascending.flip(0).cpu();         // μ_1 ≥ … ≥ μ_k
  const Tensor Y = vectors.flip(1);                  // their eigenvectors in T's coordinates
  const Tensor ritz_vectors = at::mm(Y.t(), Q);      // (k, n)
  const double gamma_n = gamma(static_cast<double>(n) + 2);
  const double q_norm = up(norm_value(Q) * (1 + gamma_n));
  // ‖fl(HQ) − HQ‖_F ≤ γ_H ‖majorant‖_F, then the product QWᵀ's own rounding, then eigh's
  // backward error (κ + k)u‖T‖_F: |μ̃_i − μ_i(QHQᵀ)| ≤ ε_T.
  // The majorant is linear with non-negative coefficients, so M(|q_j|) ≤ M(Σ_j |q_j|)
  // elementwise for every row and ‖M(|Q|)‖_F ≤ √k·‖M(Σ_j |q_j|)‖: one majorant product, not k.
  const Tensor row_sum = Q.abs().sum(0, /*keepdim=*/true);
  const double w_error = up(products.error_factor() * std::sqrt(static_cast<double>(k)) *
                            norm_value(products.majorant(row_sum)) * (1 + gamma_n));
  const double eps_T = up(up(q_norm * w_error) + up(gamma_n * q_norm * up(norm_value(W) * (1 + gamma_n))) +
                          up((kRoundingAllowance + k) * kUnit * norm_value(T) * 2));
  // η ≥ ‖QQᵀ − I‖_2: the basis' departure from orthonormality (Ostrowski's theorem).
  const double eta = up(norm_value(at::mm(Q, Q.t()) - at::eye(k, options)) + gamma_n * q_norm * q_norm);

  // ---- The top Ritz vector's Rayleigh quotient θ and residual ρ, certified. ----
  const Tensor u = ritz_vectors[0];
  const Tensor hu = product(u.unsqueeze(0)).squeeze(0);
  const Tensor hu_majorant = products.majorant(u.unsqueeze(0)).squeeze(0);
  const double gamma_H = products.error_factor();
  const double numerator = dot_value(u, hu), denominator = dot_value(u, u);
  const double numerator_error = up(up(gamma_H * dot_value(u.abs(), hu_majorant)) +
                                    up(gamma_n * dot_value(u.abs(), hu.abs())));
  const double den_low = down(denominator * (1 - gamma_n)), den_high = up(denominator * (1 + gamma_n));
  const double num_low = down(numerator - numerator_error), num_high = up(numerator + numerator_error);
  const double theta_low = num_low >= 0 ? down(num_low / den_high) : down(num_low / den_low);
  const double theta_high = num_high >= 0 ? up(num_high / den_low) : up(num_high / den_high);
  const double theta = numerator / denominator;
  const Tensor residual = hu - theta * u;
  const double residual_error =
      up(up(gamma_H * norm_value(hu_majorant)) + up(2 * kUnit * norm_value(hu.abs() + std::abs(theta) * u.abs())));
  const double rho = up(up(up(norm_value(residual) * (1 + gamma_n)) + residual_error) /
                        down(std::sqrt(den_low)));

  // ---- The trace cap (interlacing) and the bound on λ_2 it gives. ----
  // Magnitudes certified below for the Ritz values of the orthonormal polar factor of Q:
  // positive ones a prefix, negative ones a suffix (docs/math.md §11.2).
  const auto mu_values = mu.accessor<double, 1>();
  double positive_tail = 0, negative_sum = 0;  // Σ_{i≥3} μ_i² (positive), Σ μ_j² (negative)
  double second = 0;                            // μ_2², when certified positive
  int64_t positives = 0, negatives = 0;
  const bool orthonormal_enough = eta < 0.5;
  for (int64_t i = 0; i < k && orthonormal_enough; ++i) {
    const double magnitude = std::abs(mu_values[i]) - eps_T;
    if (!(magnitude > 0)) continue;
    const double low = down(down(magnitude) / up(1 + eta));
    const double square = down(low * low);
    if (mu_values[i] > 0) {
      ++positives;
      if (i == 1) second = square;
      if (i >= 2) positive_tail = down(positive_tail + square);
    } else {
      ++negatives;
      negative_sum = down(negative_sum + square);
    }
  }
  const double trace_sq_high = facts.trace_sq_high;
  double cap = HUGE_VAL, nu = HUGE_VAL;
  if (orthonormal_enough) {
    cap = up(std::sqrt(std::max(0.0, up(trace_sq_high - down(down(second + positive_tail) + negative_sum)))));
    if (theta_low > 0 && std::max<int64_t>(positives, 2) + negatives <= n) {
      const double rest = down(down(down(theta_low * theta_low) + positive_tail) + negative_sum);
      nu = up(std::sqrt(std::max(0.0, up(trace_sq_high - rest))));
    }
  }
  // Kato-Temple: with λ_2 ≤ ν < θ − ρ, λ_1 ≤ θ + ρ²/(θ − ν); the right side grows with θ there.
  double kato_temple = HUGE_VAL;
  if (theta_low - nu > rho) {
    kato_temple = up(theta_high + up(up(rho * rho) / down(theta_high - nu)));
  }

  RitzCertificate out{theta_low, facts.ws_upper, IntervalSource::WolkowiczStyan,
                      mu.to(options.device()), ritz_vectors, k + 1};
  if (cap < out.upper) out.upper = cap, out.source = IntervalSource::TraceCap;
  if (kato_temple < out.upper) out.upper = kato_temple, out.source = IntervalSource::KatoTemple;
  out.u = u;
  out.hu = hu;
  out.denominator = denominator;
  out.theta = theta;
  out.eps_T = eps_T;
  out.orthonormal_enough = orthonormal_enough;
  out.theta_high = theta_high;
  out.rho = rho;
  return out;
}

bool kato_temple_with_second(RitzCertificate& certificate, double nu_upper, double nu_value) {
  const double theta_low = certificate.lower, theta_high = certificate.theta_high;
  const double rho = certificate.rho;
  // As in certify_top: with λ_2 ≤ ν < θ − ρ, λ_1 ≤ θ + ρ²/(θ − ν), growing with θ there.
  if (!certificate.u.defined() || !(theta_low - nu_upper > rho)) return false;
  const double bound = up(theta_high + up(up(rho * rho) / down(theta_high - nu_upper)));
  if (!(bound < certificate.upper)) return false;
  certificate.upper = bound;
  certificate.source = IntervalSource::KatoTempleWeyl;
  certificate.nu_value = nu_value;
  return true;
}

bool certify_on_assembled(RitzCertificate& certificate, double sign, const at::Tensor& hessian,
                          double forming_error, double norm) {
  if (!certificate.u.defined() || !std::isfinite(certificate.lower)) return false;
  const int64_t n = hessian.size(0);
  const Tensor matrix = sign * hessian;
  const auto scalar = [&](double v) { return at::scalar_tensor(v, matrix.options()); };
  const CertifiedEigenpair top =
      certified_top_eigenpair(matrix, scalar(forming_error), scalar(norm));
  const double upper = up(top.value.item<double>() + top.allowance.item<double>());
  // λ_max(σH) ≥ zᵀσHz/zᵀz for the computed z: the quotient on the computed matrix is within
  // ‖fl(H) − H‖₂ of the exact one, and its own rounding (fl(H)z: n terms, then the dot product:
  // n more; zᵀz: n; the division) within γ_{3n+4}·(|z|ᵀ|fl(H)||z| + |zᵀfl(H)z|)/zᵀz
  // ≤ 2γ_{3n+4}·(‖H‖_F + ‖fl(H) − H‖_F), to first order in γ (the factor 1 + 2γ covers the rest).
  const Tensor& z = top.vector;
  const double z_sq = dot_value(z, z);
  const double quotient = dot_value(z, at::mv(matrix, z)) / z_sq;
  const double g = gamma(static_cast<double>(3 * n + 4));
  const double slack =
      up(forming_error + up(up(2 * g * up(norm + forming_error)) * up(1 + 2 * g)));
  const double lower = down(quotient - slack);
  bool changed = false;
  if (upper < certificate.upper) {
    certificate.upper = upper;
    certificate.source = IntervalSource::AssembledHessian;
    changed = true;
  }
  if (lower > certificate.lower) {
    certificate.lower = lower;
    certificate.lower_from_assembled = true;
    changed = true;
  }
  if (changed) certificate.assembled_vector = z.contiguous().clone();
  return changed;
}

}  // namespace torch_ws
