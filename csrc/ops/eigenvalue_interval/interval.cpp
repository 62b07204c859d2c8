// The eigenvalue-interval family: a certified interval on λ_max (or λ_min) of the loss Hessian
// from Lanczos on closed-form Hessian-vector products, capped by the exact traces
// (docs/math.md §11), and the products themselves.
//
//   eigenvalue_interval(..., largest=True, steps=32, start=None, seed=0)
//       -> (lower, upper, source, ritz_values, ritz_vectors, products):
//       lower ≤ λ ≤ upper for λ = λ_max (largest) or λ_min, both in x's dtype rounded outward;
//       source says which guarantee gave the bound away from the Ritz value (0 Wolkowicz-Styan,
//       1 the trace cap, 2 Kato-Temple); the Ritz values (k,) and vectors (k, n) in float64,
//       extreme first; products: the Hessian-vector products used.
//   hessian_vector_products(..., vectors) -> H·v for each row of vectors (k, n), in x's dtype.
//
// Kernels: one device-generic kernel each (ATen; the scalars of the certificate are read on the
// host), the Meta kernels (the same checks, shapes only). Not differentiable: the Python wrappers
// pass detached tensors.
#include "engines/dispatch.h"
#include "core/problem.h"
#include "core/ws_bound.h"
#include "ops/eigenvalue_interval/hessian_products.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

namespace torch_ws {
namespace {

using at::Tensor;
using std::optional;

constexpr char kIntervalName[] = "torch_ws.eigenvalue_interval";
constexpr char kProductsName[] = "torch_ws.hessian_vector_products";
constexpr double kUnit = 0x1p-53;  // float64's unit roundoff: the certificate runs in float64

enum class Source : int64_t { WolkowiczStyan = 0, TraceCap = 1, KatoTemple = 2 };

// Directed rounding of one float64 operation's result (docs/math.md §11.3): the neighbour
// toward ±∞ of a correctly rounded result bounds the exact one.
double up(double v) { return std::nextafter(v, HUGE_VAL); }
double down(double v) { return std::nextafter(v, -HUGE_VAL); }
// γ_m = m·u / (1 − m·u) (Higham, Accuracy and Stability, §3.1), rounded up.
double gamma(double m) { return up(up(m * kUnit) / down(1 - m * kUnit)); }
double dot_value(const Tensor& a, const Tensor& b) { return at::dot(a, b).item<double>(); }
double norm_value(const Tensor& a) { return a.norm().item<double>(); }

// The problem in float64 (exact conversion of every value): the certificate's arithmetic.
MlpProblem as_float64(MlpProblem p) {
  p.x = p.x.to(at::kDouble);
  if (p.target.is_floating_point()) p.target = p.target.to(at::kDouble);
  for (Layer& layer : p.layers) {
    layer.weight = layer.weight.to(at::kDouble);
    if (layer.bias) layer.bias = layer.bias->to(at::kDouble);
  }
  return p;
}

struct Interval {
  double lower, upper;
  Source source;
  Tensor ritz_values, ritz_vectors;
  int64_t products;
};

// A unit vector orthogonal to the rows of `basis` (m, n), m < n, from `seed`'s generator:
// Lanczos' restart when the Krylov space closes (an invariant subspace) and its first vector.
Tensor random_orthogonal(const Tensor& basis, int64_t n, at::Generator& generator,
                         const at::TensorOptions& options) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    Tensor r = at::randn({n}, generator, at::TensorOptions().dtype(at::kDouble)).to(options.device());
    for (int pass = 0; pass < 2 && basis.size(0) > 0; ++pass) {
      r = r - at::mv(basis.t(), at::mv(basis, r));
    }
    const double size = norm_value(r);
    if (size > 1e-8) return r / size;
  }
  TORCH_CHECK(false, kIntervalName, ": could not draw a direction orthogonal to the Krylov basis");
}

// λ_max of σ·H for σ = ±1 (docs/math.md §11): Lanczos with full reorthogonalization, then the
// certificate on the basis it built.
Interval certified_top(const MlpProblem& p, double sign, int64_t steps,
                       const optional<Tensor>& start, int64_t seed) {
  const HessianProducts products(p);
  const int64_t n = products.num_params(), k = std::min(steps, n);
  const at::TensorOptions options = p.x.options();
  const TracesResult traces = evaluate_traces(p, Gradients::None);
  const double trace = sign * traces.trace.item<double>(), trace_sq = traces.trace_sq.item<double>();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double ws = ws_upper_bound(trace, trace_sq, n, rounding_allowance(at::kDouble));
  if (!std::isfinite(trace) || !std::isfinite(trace_sq)) {
    // NaN or ±Inf in the input: no interval (the traces ops return NaN there too).
    return {nan, nan, Source::WolkowiczStyan, at::full({k}, nan, options),
            at::full({k, n}, nan, options), 0};
  }
  auto product = [&](const Tensor& rows) { return products.apply(rows) * sign; };

  // ---- Lanczos with full reorthogonalization (twice is enough: Parlett, §6.9). ----
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  Tensor Q = at::zeros({k, n}, options), W = at::zeros({k, n}, options);
  Tensor q = start ? start->reshape({-1, n})[0].to(options) : Tensor();
  if (q.defined()) {
    const double size = norm_value(q);
    TORCH_CHECK(std::isfinite(size) && size > 0, kIntervalName,
                ": expected a finite, non-zero start vector, got one of norm ", size);
    q = q / size;
  } else {
    q = random_orthogonal(Q.narrow(0, 0, 0), n, generator, options);
  }
  Tensor q_previous;
  double beta_previous = 0;
  const double scale = std::sqrt(std::max(trace_sq, 0.0));
  for (int64_t j = 0; j < k; ++j) {
    Q[j] = q;
    const Tensor w = product(q.unsqueeze(0)).squeeze(0);
    W[j] = w;
    if (j + 1 == k) break;
    const double alpha = dot_value(q, w);
    Tensor r = w - alpha * q;
    if (beta_previous > 0) r = r - beta_previous * q_previous;
    const Tensor basis = Q.narrow(0, 0, j + 1);
    for (int pass = 0; pass < 2; ++pass) r = r - at::mv(basis.t(), at::mv(basis, r));
    const double beta = norm_value(r);
    q_previous = q;
    if (beta > 1e-10 * std::max({scale, std::abs(alpha), beta_previous}) && std::isfinite(beta)) {
      q = r / beta;
      beta_previous = beta;
    } else {
      // The Krylov space is invariant: go on in a fresh direction (the certificate below does
      // not rely on the recurrence, only on Q and W = HQ).
      q = random_orthogonal(basis, n, generator, options);
      beta_previous = 0;
    }
  }

  // ---- Rayleigh-Ritz on Q, with every rounding error bounded (docs/math.md §11.3). ----
  Tensor T = at::mm(Q, W.t());
  T = (T + T.t()) / 2;
  if (!at::isfinite(T).all().item<bool>()) {
    return {nan, nan, Source::WolkowiczStyan, at::full({k}, nan, options),
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
  const double w_error = up(products.error_factor() * norm_value(products.majorant(Q)) * (1 + gamma_n));
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
  const double trace_sq_high = up(trace_sq * (1 + rounding_allowance(at::kDouble)));
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

  Interval out{theta_low, ws, Source::WolkowiczStyan, mu.to(options.device()), ritz_vectors, k + 1};
  if (cap < out.upper) out.upper = cap, out.source = Source::TraceCap;
  if (kato_temple < out.upper) out.upper = kato_temple, out.source = Source::KatoTemple;
  return out;
}

void check_steps_and_start(const MlpProblem& p, int64_t steps, const optional<Tensor>& start) {
  TORCH_CHECK(steps >= 1, kIntervalName, ": expected steps >= 1 (the Hessian-vector products of "
              "the Lanczos iteration), got ", steps);
  if (!start) return;
  const int64_t n = p.num_params();
  TORCH_CHECK(start->is_floating_point(), kIntervalName, ": expected a floating-point start, got ",
              start->scalar_type());
  TORCH_CHECK((start->dim() == 1 && start->size(0) == n) ||
                  (start->dim() == 2 && start->size(0) >= 1 && start->size(1) == n),
              kIntervalName, ": expected start of shape (n,) or (r, n) with n = ", n,
              " (the network's parameter count; e.g. the ritz_vectors of an earlier call), got ",
              start->sizes());
  TORCH_CHECK(start->device() == p.x.device(), kIntervalName, ": expected start on x's device ",
              p.x.device(), ", got ", start->device());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> eigenvalue_interval_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed) {
  const MlpProblem checked =
      check_problem(kIntervalName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  check_steps_and_start(checked, steps, start);
  const double sign = largest ? 1 : -1;
  const Interval top = certified_top(as_float64(checked), sign, steps, start, seed);
  // λ_min(H) = −λ_max(−H): the interval of −H, mirrored.
  const double lower = largest ? top.lower : -top.upper;
  const double upper = largest ? top.upper : -top.lower;
  const auto options = x.options().dtype(at::kDouble);
  return {round_directed(at::scalar_tensor(lower, options), x.scalar_type(), /*up=*/false),
          round_directed(at::scalar_tensor(upper, options), x.scalar_type(), /*up=*/true),
          at::scalar_tensor(static_cast<int64_t>(top.source), options.dtype(at::kLong)),
          top.ritz_values * sign, top.ritz_vectors,
          at::scalar_tensor(top.products, options.dtype(at::kLong))};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> eigenvalue_interval_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool /*largest*/, int64_t steps,
    const optional<Tensor>& start, int64_t /*seed*/) {
  const MlpProblem checked =
      check_problem(kIntervalName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  check_steps_and_start(checked, steps, start);
  const c10::SymInt n = w1.sym_numel() + (b1 ? b1->sym_numel() : 0) + w2.sym_numel() +
                        (b2 ? b2->sym_numel() : 0);
  const c10::SymInt k = c10::SymInt(steps).min(n);
  const auto f64 = x.options().dtype(at::kDouble);
  return {at::empty({}, x.options()), at::empty({}, x.options()),
          at::empty({}, x.options().dtype(at::kLong)), at::empty_symint({k}, f64),
          at::empty_symint({k, n}, f64), at::empty({}, x.options().dtype(at::kLong))};
}

// The problem in the dtype the products are computed in: bfloat16/float16 in float32.
MlpProblem in_compute_dtype(MlpProblem p) {
  if (p.x.scalar_type() == at::kDouble || p.x.scalar_type() == at::kFloat) return p;
  p.x = p.x.to(at::kFloat);
  if (p.target.is_floating_point()) p.target = p.target.to(at::kFloat);
  for (Layer& layer : p.layers) {
    layer.weight = layer.weight.to(at::kFloat);
    if (layer.bias) layer.bias = layer.bias->to(at::kFloat);
  }
  return p;
}

void check_vectors(const MlpProblem& p, const Tensor& vectors) {
  const int64_t n = p.num_params();
  TORCH_CHECK(vectors.is_floating_point(), kProductsName,
              ": expected floating-point vectors, got ", vectors.scalar_type());
  TORCH_CHECK((vectors.dim() == 1 && vectors.size(0) == n) ||
                  (vectors.dim() == 2 && vectors.size(1) == n),
              kProductsName, ": expected vectors of shape (n,) or (k, n) with n = ", n,
              " (the network's parameter count, θ = (W1 row-major, b1, W2 row-major, b2)), got ",
              vectors.sizes());
  TORCH_CHECK(vectors.device() == p.x.device(), kProductsName,
              ": expected vectors on x's device ", p.x.device(), ", got ", vectors.device());
}

Tensor hessian_vector_products_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                                      const optional<Tensor>& b1, const Tensor& w2,
                                      const optional<Tensor>& b2, const Tensor& vectors,
                                      c10::string_view activation, c10::string_view reduction,
                                      c10::string_view loss) {
  const MlpProblem checked =
      check_problem(kProductsName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  check_vectors(checked, vectors);
  const MlpProblem p = in_compute_dtype(checked);
  const Tensor rows = vectors.reshape({-1, checked.num_params()}).to(p.x.scalar_type());
  return HessianProducts(p).apply(rows).to(x.scalar_type()).reshape(vectors.sizes());
}

Tensor hessian_vector_products_meta(const Tensor& x, const Tensor& target, const Tensor& w1,
                                    const optional<Tensor>& b1, const Tensor& w2,
                                    const optional<Tensor>& b2, const Tensor& vectors,
                                    c10::string_view activation, c10::string_view reduction,
                                    c10::string_view loss) {
  check_problem(kProductsName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  return at::empty_symint(vectors.sym_sizes(), x.options());
}

}  // namespace
}  // namespace torch_ws

TORCH_LIBRARY_FRAGMENT(torch_ws, m) {
  m.def(
      "eigenvalue_interval(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation=\"tanh\", str reduction=\"mean\", str loss=\"bce\", "
      "bool largest=True, int steps=32, Tensor? start=None, int seed=0) -> (Tensor lower, "
      "Tensor upper, Tensor source, Tensor ritz_values, Tensor ritz_vectors, Tensor products)");
  m.def(
      "hessian_vector_products(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, Tensor vectors, str activation=\"tanh\", str reduction=\"mean\", "
      "str loss=\"bce\") -> Tensor");
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("eigenvalue_interval", &torch_ws::eigenvalue_interval_kernel);
  m.impl("hessian_vector_products", &torch_ws::hessian_vector_products_kernel);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("eigenvalue_interval", &torch_ws::eigenvalue_interval_meta);
  m.impl("hessian_vector_products", &torch_ws::hessian_vector_products_meta);
}
