// The eigenvalue-interval family: a certified interval on λ_max (or λ_min) of the loss Hessian
// from Lanczos on closed-form Hessian-vector products, capped by the exact traces
// (docs/math.md §11), and the products themselves.
//
//   eigenvalue_interval(..., largest=True, steps=32, start=None, seed=0)
//       -> (lower, upper, source, ritz_values, ritz_vectors, products):
//       lower ≤ λ ≤ upper for λ = λ_max (largest) or λ_min, both in x's dtype rounded outward;
//       source says which guarantee gave the bound away from the Ritz value (0 Wolkowicz-Styan,
//       1 the trace cap, 2 Kato-Temple, 3 Weyl, 4 Kato-Temple with Weyl's λ_2 bound, 5 the
//       assembled Hessian's own top eigenvalue); the Ritz
//       values (k,) and vectors (k, n) in float64,
//       extreme first; products: the Hessian-vector products used.
//   hessian_vector_products(..., vectors) -> H·v for each row of vectors (k, n), in x's dtype.
//
//   _eigenvalue_interval_with_gradients(..., need_grad_x) -> the same and the gradients of lower
//       and of upper ([x, w1, b1, w2, b2] each, x's empty unless asked for): what the Autograd
//       kernel (autograd.cpp) saves for its backward.
//
// Kernels: one device-generic kernel each (ATen; the scalars of the certificate are read on the
// host), the Meta kernels (the same checks, shapes only).
#include "engines/dispatch.h"
#include "core/threads.h"
#include "core/problem.h"
#include "core/ritz_certificate.h"
#include "core/rounding.h"
#include "core/ws_bound.h"
#include "ops/eigenvalue_interval/hessian_products.h"
#include "ops/deep/engines.h"  // try_assembled_certificate: §12.7's assembly holds for L = 1
#include "ops/eigenvalue_interval/low_precision.h"
#include "ops/low_precision.h"
#include "ops/problem_args.h"
#include "ops/gradient_list.h"
#include "ops/schemas.h"
#include "ops/spectral/spectral_bound.h"

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
using Source = IntervalSource;

// Up to this many dual rows (N·C), the Weyl bound of spectral_bound (docs/math.md §9: the exact
// Gauss-Newton top eigenvalue plus the residual's, certified) joins the candidates for `upper`:
// its dual eigenproblem then costs about what the Lanczos products do (§11.2).
constexpr int64_t kWeylMaxDualRows = 2048;
constexpr double kWeylWorthIt = 1.01;


struct Interval {
  double lower, upper;
  Source source;
  Tensor ritz_values, ritz_vectors;
  int64_t products;
  // With gradients (docs/math.md §11.4): of lower and of upper, in float64.
  optional<InputGradients> lower_grad, upper_grad;
  // The spectral parts (§9), where the interval was wide enough to call for them.
  optional<spectral::SpectralParts> parts;
};

// λ_max(R) plus its allowance (§9.5), rounded up: what both spectral candidates add for R.
double residual_max_upper(const spectral::SpectralParts& s) {
  return up(s.residual_lambda_max.item<double>() + s.residual_allowance.item<double>());
}

// Whether [lower, upper] is still wider than 1%; not on NaN or ±Inf input, where the interval is
// NaN already and the eigensolvers would refuse to converge.
bool still_wide(double lower, double upper) {
  return (!(upper <= kWeylWorthIt * lower) || lower <= 0) && std::isfinite(lower);
}

// Whether the interval is still wide and small enough for the spectral parts: they cost about
// what the Lanczos products do up to kWeylMaxDualRows dual rows (trained networks close the
// interval by Kato-Temple without them).
bool calls_for_spectral_parts(double lower, double upper, const MlpProblem& p) {
  return still_wide(lower, upper) && p.num_samples() * p.num_outputs() <= kWeylMaxDualRows;
}

// Above kWeylMaxDualRows and up to kSecondAtScaleMaxDualRows, a bound on λ_2 alone, for
// Kato-Temple (spectral::second_bound_at_scale, docs/math.md §11.2 "At scale"): the residual by a
// majorant, no block formed, and λ_2(GGN) by one Cholesky factorization of the NC × NC dual,
// (NC)³/3 flops (3.4 s at 8192 rows on 2 cores) and 1.5 GiB of float64 at most. Only where θ
// is certified positive and converged enough that a λ_2 bound below θ − ρ could close the interval.
constexpr int64_t kSecondAtScaleMaxDualRows = 8192;

// Still wide above kWeylMaxDualRows after that: Weyl's bound (spectral::weyl_at_scale), at any
// size. For λ_max, spectral_bound's parts: λ_max(GGN) by the dual matrix up to spectral::kMaxDual
// rows ((NC)³/3 flops, up to 2 GiB), above without it; R's eigenpairs where its blocks are cheap,
// else its majorant. For λ_min, R's λ_min alone (blocks or the majorant of −R), no dual matrix.
bool calls_for_weyl_at_scale(double lower, double upper, const MlpProblem& p) {
  return still_wide(lower, upper) && p.num_samples() * p.num_outputs() > kWeylMaxDualRows;
}

bool calls_for_second_at_scale(const RitzCertificate& c, const MlpProblem& p) {
  const int64_t rows = p.num_samples() * p.num_outputs();
  return still_wide(c.lower, c.upper) && c.lower > 0 && c.u.defined() && c.lower - c.rho > 0 &&
         rows > kWeylMaxDualRows && rows <= kSecondAtScaleMaxDualRows;
}

// The gradient of the spectral parts' g_ggn·λ + g_max·λ_max(R) + g_min·λ_min(R) (§9.4), with
// `ggn_vector` the GGN eigenvector in question (the top one, or the deflated one for λ_2).
InputGradients spectral_gradient(const MlpProblem& p, const spectral::SpectralParts& s,
                                 const Tensor& ggn_vector, double g_ggn, double g_max,
                                 double g_min, bool need_grad_x) {
  const auto scalar = [&](double v) { return at::scalar_tensor(v, p.x.options()); };
  const spectral::ResidualMajorant* majorant =
      s.residual_majorant ? &*s.residual_majorant : nullptr;
  const spectral::ResidualMajorant* minorant =
      s.residual_minorant ? &*s.residual_minorant : nullptr;
  return spectral::gradient(p,
                            {ggn_vector, s.residual_max_vector, s.residual_max_unit,
                             s.residual_min_vector, s.residual_min_unit, majorant, minorant},
                            scalar(g_ggn), scalar(g_max), scalar(g_min), need_grad_x);
}

// α·a + β·b over the gradients that exist (x's only where both have it).
InputGradients combine(double alpha, const InputGradients& a, double beta, const InputGradients& b) {
  auto mix = [&](const Tensor& s, const Tensor& t) {
    if (!s.defined() || !t.defined()) return Tensor();
    return alpha * s + beta * t;
  };
  return {mix(a.x, b.x), mix(a.w1, b.w1), mix(a.b1, b.b1), mix(a.w2, b.w2), mix(a.b2, b.b2)};
}

// Σ_j c_j⟨a_j, H b_j⟩ over fixed vectors: what each end's gradient is made of (Rayleigh
// quotients of Ritz vectors, ‖Hu‖²), collected so that one reverse pass
// (HessianProducts::bilinear_backward) gives the gradient of all of them; Rayleigh quotients
// (a = b) apart, which that pass takes at half the cost.
struct QuadraticForms {
  std::vector<Tensor> a, b, quotients;
  std::vector<double> c, quotient_c;
  void add(const Tensor& left, const Tensor& right, double coefficient) {
    a.push_back(left);
    b.push_back(right);
    c.push_back(coefficient);
  }
  void add_quotient(const Tensor& vector, double coefficient) {
    quotients.push_back(vector);
    quotient_c.push_back(coefficient);
  }
  // Their gradient; with no form, zeros in the gradients' shapes (`like` is a vector of θ).
  InputGradients gradient(const HessianProducts& products, const Tensor& like,
                          bool need_grad_x) const {
    std::vector<HessianProducts::Forms> forms;
    if (!quotients.empty()) {
      forms.push_back({at::stack(quotients), Tensor(), at::tensor(quotient_c, like.options())});
    }
    if (!a.empty()) forms.push_back({at::stack(a), at::stack(b), at::tensor(c, like.options())});
    if (forms.empty()) forms.push_back({like.unsqueeze(0), Tensor(), at::zeros({1}, like.options())});
    return products.bilinear_backward(forms, need_grad_x);
  }
};

// The Weyl bound of spectral_bound (docs/math.md §9) as a candidate for the top end of σ·H:
// λ_max(GGN) + λ_max(R) for λ_max (σ = 1), and −(λ_min(R) − allowance) ≥ −λ_min(H) for σ = −1,
// from the spectral parts certified_top computed. With gradients, spectral_bound's own (§9.4).
void weyl_candidate(const MlpProblem& p, bool largest, Gradients gradients, Interval& top) {
  const spectral::SpectralParts& s = *top.parts;
  double candidate = HUGE_VAL;
  if (!largest) {
    candidate = up(-(s.residual_lambda_min.item<double>() - s.residual_allowance.item<double>()));
  } else if (!at::isnan(s.ggn_lambda_max).item<bool>()) {
    candidate = up(up(s.ggn_lambda_max.item<double>() + s.ggn_allowance.item<double>()) +
                   residual_max_upper(s));
  }
  if (!(candidate < top.upper)) return;
  top.upper = candidate;
  top.source = Source::Weyl;
  if (gradients == Gradients::None) return;
  // The gradient of the top end of σ·H: σ times that of the bound on H's own end.
  const InputGradients of_bound =
      largest ? spectral_gradient(p, s, s.ggn_vector, 1, 1, 0,
                                  gradients == Gradients::ParametersAndX)
              : spectral_gradient(p, s, s.ggn_vector, 0, 0, 1,
                                  gradients == Gradients::ParametersAndX);
  top.upper_grad = combine(largest ? 1 : -1, of_bound, 0, of_bound);
}

// λ_max of σ·H for σ = ±1 (docs/math.md §11): the shared certificate (core/ritz_certificate.h)
// on this family's products and traces, then, if asked, the gradients of its ends (§11.4).
Interval certified_top(const MlpProblem& p, double sign, int64_t steps,
                       const optional<Tensor>& start, int64_t seed, Gradients gradients) {
  const HessianProducts products(p, HessianProducts::Uses::Certificate);
  const int64_t n = products.num_params();
  // The traces' values only: their gradients are taken after the certificate, for the ends that
  // read the traces (below).
  const TracesResult traces = evaluate_traces(p, Gradients::None);
  const double trace = sign * traces.trace.item<double>(), trace_sq = traces.trace_sq.item<double>();
  const double ws = ws_upper_bound(trace, trace_sq, n, rounding_allowance(at::kDouble));
  // tr(H²) is taken as (1 + κu)·tr(H²) (docs/math.md §11.3, §5.1).
  const double trace_sq_high = up(trace_sq * (1 + rounding_allowance(at::kDouble)));
  RitzCertificate certificate = certify_top(products, sign, {trace, trace_sq, trace_sq_high, ws},
                                            steps, start, seed, p.x.options(), kIntervalName);
  // Still wide: the spectral parts. For λ_max, λ_2(H) ≤ λ_2(GGN) + λ_max(R) (Weyl's inequality
  // for the second eigenvalue, §11.2) may put λ_2 below θ − ρ where the cap could not, and
  // Kato-Temple then closes the interval. (For λ_min it cannot: λ_2(−H) ≤ −λ_min(R), which is
  // at least −λ_min(H) ≥ θ.)
  optional<spectral::SpectralParts> parts;
  const auto nu_upper_of = [](const spectral::SpectralParts& s) {
    return up(up(s.ggn_second_upper.item<double>()) + residual_max_upper(s));
  };
  if (calls_for_spectral_parts(certificate.lower, certificate.upper, p)) {
    // λ_max(GGN)'s own bound (a Cholesky factorization of the dual matrix) serves only the Weyl
    // candidate below, which a Kato-Temple interval that closes makes moot: it is taken only
    // where that interval would stay wide.
    parts = spectral::evaluate(p, /*second=*/sign > 0, [&](const spectral::SpectralParts& s) {
      RitzCertificate trial = certificate;
      kato_temple_with_second(trial, nu_upper_of(s), 0.0);
      return still_wide(trial.lower, trial.upper);
    });
  } else if (sign > 0 && calls_for_second_at_scale(certificate, p)) {
    // τ's estimate: the second Ritz value (λ_2(GGN) is near it where R is small).
    const double estimate = certificate.ritz_values.size(0) >= 2
                                ? certificate.ritz_values[1].item<double>() : 0.0;
    parts = spectral::second_bound_at_scale(p, certificate.ritz_vectors[0],
                                            certificate.lower - certificate.rho, estimate,
                                            gradients != Gradients::None);
  }
  if (sign > 0 && parts && parts->ggn_second_upper.defined()) {
    kato_temple_with_second(certificate, nu_upper_of(*parts),
                            parts->ggn_second_value.item<double>() +
                                parts->residual_lambda_max.item<double>());
  }
  // Still wide, and n small: both ends from the assembled Hessian (§11.6). After the spectral
  // parts, which close trained networks' intervals at less cost where N·C is small; this closes
  // random networks' and large-N·C ones' where n is small.
  try_assembled_certificate(certificate, sign, p, trace_sq_high);
  // Still wide, N·C above what the exact parts are worth and n too large for the assembly:
  // Weyl at scale, in place of the λ_2 parts (unless Kato-Temple took them: its gradient reads
  // them).
  if (certificate.source != Source::KatoTempleWeyl &&
      calls_for_weyl_at_scale(certificate.lower, certificate.upper, p)) {
    parts = spectral::weyl_at_scale(p, /*largest=*/sign > 0);
  }
  Interval out{certificate.lower, certificate.upper, certificate.source, certificate.ritz_values,
               certificate.ritz_vectors, certificate.products};
  out.parts = parts;
  // Still wide with the spectral parts at hand: Weyl's bound itself may be the tighter `upper`;
  // where it is, its gradient is spectral_bound's, and the certificate's own is not taken.
  if (parts && still_wide(out.lower, out.upper)) weyl_candidate(p, sign > 0, gradients, out);
  if (!certificate.u.defined()) return out;  // NaN or ±Inf input: no interval, NaN gradients
  if (gradients == Gradients::None) return out;
  // With Q held fixed, both ends are smooth functions of the parameters made of Rayleigh
  // quotients of fixed vectors and of the traces (docs/math.md §11.4); the allowances are
  // constants. One reverse pass of the forms per end, then, for an end that reads the traces
  // (Wolkowicz-Styan, the trace cap, Kato-Temple by the cap), the gradient of its combination of
  // them in one chain (evaluate_weighted_gradient). Kato-Temple with Weyl's λ_2, Weyl, the
  // assembled Hessian and the Rayleigh quotient of `lower` read none: at N = 8192, D = 784,
  // H = 256 both traces' gradients in float64 took 6–8 s of a 15 s call.
  const EndDerivatives derivatives =
      end_derivatives(certificate, sign, {trace, trace_sq, trace_sq_high, ws}, n);
  const bool need_grad_x = gradients == Gradients::ParametersAndX;
  auto gradient_of = [&](const EndDerivative& end) {
    QuadraticForms forms;
    for (size_t i = 0; i < end.ritz.size(); ++i) {
      if (end.ritz[i] != 0) forms.add_quotient(certificate.ritz_vectors[i], end.ritz[i]);
    }
    if (end.image != 0) forms.add(certificate.hu, certificate.u, end.image);
    if (end.assembled != 0) {
      const Tensor z = certificate.assembled_vector.to(certificate.u.scalar_type());
      forms.add_quotient(z, end.assembled);
    }
    InputGradients g = forms.gradient(products, certificate.u, need_grad_x);
    if (end.trace != 0 || end.trace_sq != 0) {
      const auto weights = [&](const Tensor& trace_value, const Tensor&) {
        return std::make_pair(at::scalar_tensor(end.trace, trace_value.options()),
                              at::scalar_tensor(end.trace_sq, trace_value.options()));
      };
      g = combine(1, g, 1, evaluate_weighted_gradient(p, need_grad_x, weights).grad);
    }
    if (end.nu != 0) {  // ν = λ_2(GGN)'s bound + λ_max(R): both are Rayleigh quotients (§9.4)
      g = combine(1, g, end.nu,
                  spectral_gradient(p, *parts, parts->ggn_second_vector, 1, 1, 0, need_grad_x));
    }
    return g;
  };
  out.lower_grad = gradient_of(derivatives.lower);
  if (out.source != Source::Weyl) out.upper_grad = gradient_of(derivatives.upper);
  return out;
}

using IntervalOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using IntervalWithGradients = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                         std::vector<Tensor>, std::vector<Tensor>>;

// Both kernels: the interval of λ_max (largest) or of λ_min = −λ_max(−H), mirrored, and with
// `gradients` those of its two ends.
IntervalWithGradients interval_of(const Tensor& x, const Tensor& target, const Tensor& w1,
                                  const optional<Tensor>& b1, const Tensor& w2,
                                  const optional<Tensor>& b2, c10::string_view activation,
                                  c10::string_view reduction, c10::string_view loss,
                                  bool largest, int64_t steps, const optional<Tensor>& start,
                                  int64_t seed, Gradients gradients) {
  const MlpProblem checked =
      check_problem(kIntervalName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  check_steps_and_start(kIntervalName, checked.num_params(), x.device(), steps, start);
  const CallThreads threads(x.device());
  const double sign = largest ? 1 : -1;
  const MlpProblem p64 = with_dtype(checked, at::kDouble);
  Interval top = certified_top(p64, sign, steps, start, seed, gradients);
  const double lower = largest ? top.lower : -top.upper;
  const double upper = largest ? top.upper : -top.lower;
  const auto options = x.options().dtype(at::kDouble);
  std::vector<Tensor> lower_grads, upper_grads;
  if (gradients != Gradients::None) {
    // NaN input: NaN gradients, as the other ops give.
    const InputGradients zeros = zero_gradients(p64, gradients == Gradients::ParametersAndX);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (!top.lower_grad) top.lower_grad = combine(nan, zeros, 0, zeros);
    if (!top.upper_grad) top.upper_grad = combine(nan, zeros, 0, zeros);
    auto in_dtype = [&](const InputGradients& g, double factor) {
      std::vector<Tensor> list = gradient_list(combine(factor, g, 0, g), x);
      for (Tensor& t : list) t = t.to(x.scalar_type());
      return list;
    };
    lower_grads = largest ? in_dtype(*top.lower_grad, 1) : in_dtype(*top.upper_grad, -1);
    upper_grads = largest ? in_dtype(*top.upper_grad, 1) : in_dtype(*top.lower_grad, -1);
  }
  return {round_directed(at::scalar_tensor(lower, options), x.scalar_type(), /*up=*/false),
          round_directed(at::scalar_tensor(upper, options), x.scalar_type(), /*up=*/true),
          at::scalar_tensor(static_cast<int64_t>(top.source), options.dtype(at::kLong)),
          top.ritz_values * sign, top.ritz_vectors,
          at::scalar_tensor(top.products, options.dtype(at::kLong)), lower_grads, upper_grads};
}

IntervalOutputs eigenvalue_interval_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed) {
  // bfloat16/float16 under torch.inference_mode(), which skips the Autograd key.
  if (low_precision::applies(ProblemArgs(x, target, w1, b1, w2, b2, activation, reduction, loss))) {
    return eigenvalue_interval_low_precision::via_float32(x, target, w1, b1, w2, b2, activation,
                                                          reduction, loss, largest, steps, start,
                                                          seed);
  }
  auto [lower, upper, source, values, vectors, products, unused_lower, unused_upper] =
      interval_of(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start,
                  seed, Gradients::None);
  return {lower, upper, source, values, vectors, products};
}

IntervalWithGradients eigenvalue_interval_with_gradients_kernel(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed, bool need_grad_x) {
  return interval_of(x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps,
                     start, seed, need_grad_x ? Gradients::ParametersAndX : Gradients::Parameters);
}

IntervalOutputs eigenvalue_interval_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool /*largest*/, int64_t steps,
    const optional<Tensor>& start, int64_t /*seed*/) {
  const MlpProblem checked =
      check_problem(kIntervalName, x, target, w1, b1, w2, b2, activation, reduction, loss);
  check_steps_and_start(kIntervalName, checked.num_params(), x.device(), steps, start);
  const c10::SymInt n = w1.sym_numel() + (b1 ? b1->sym_numel() : 0) + w2.sym_numel() +
                        (b2 ? b2->sym_numel() : 0);
  const c10::SymInt k = c10::SymInt(steps).min(n);
  const auto f64 = x.options().dtype(at::kDouble);
  return {at::empty({}, x.options()), at::empty({}, x.options()),
          at::empty({}, x.options().dtype(at::kLong)), at::empty_symint({k}, f64),
          at::empty_symint({k, n}, f64), at::empty({}, x.options().dtype(at::kLong))};
}

IntervalWithGradients eigenvalue_interval_with_gradients_meta(
    const Tensor& x, const Tensor& target, const Tensor& w1, const optional<Tensor>& b1,
    const Tensor& w2, const optional<Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, c10::string_view loss, bool largest, int64_t steps,
    const optional<Tensor>& start, int64_t seed, bool need_grad_x) {
  auto [lower, upper, source, values, vectors, products] = eigenvalue_interval_meta(
      x, target, w1, b1, w2, b2, activation, reduction, loss, largest, steps, start, seed);
  return {lower, upper, source, values, vectors, products,
          empty_gradient_list(x, need_grad_x, w1, b1, w2, b2),
          empty_gradient_list(x, need_grad_x, w1, b1, w2, b2)};
}

Tensor hessian_vector_products_kernel(const Tensor& x, const Tensor& target, const Tensor& w1,
                                      const optional<Tensor>& b1, const Tensor& w2,
                                      const optional<Tensor>& b2, const Tensor& vectors,
                                      c10::string_view activation, c10::string_view reduction,
                                      c10::string_view loss) {
  // bfloat16/float16 inputs (all of one dtype) are computed in float32, as the other ops do.
  auto wide = [&](const Tensor& t) {
    return low_precision::applies(ProblemArgs(x, target, w1, b1, w2, b2, activation, reduction,
                                              loss)) && t.is_floating_point()
               ? t.to(at::kFloat)
               : t;
  };
  auto wide_optional = [&](const optional<Tensor>& t) {
    return t ? optional<Tensor>(wide(*t)) : std::nullopt;
  };
  const MlpProblem p = check_problem(kProductsName, wide(x), wide(target), wide(w1),
                                     wide_optional(b1), wide(w2), wide_optional(b2), activation,
                                     reduction, loss);
  check_directions(kProductsName, p.num_params(), p.x.device(), vectors,
                   "(W1 row-major, b1, W2 row-major, b2)");
  const CallThreads threads(x.device());
  const Tensor rows = vectors.reshape({-1, p.num_params()}).to(p.x.scalar_type());
  return HessianProducts(p, HessianProducts::Uses::Products).apply(rows).to(x.scalar_type()).reshape(vectors.sizes());
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
      "_eigenvalue_interval_with_gradients(Tensor x, Tensor target, Tensor w1, Tensor? b1, "
      "Tensor w2, Tensor? b2, str activation, str reduction, str loss, bool largest, int steps, "
      "Tensor? start, int seed, bool need_grad_x) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor[], Tensor[])");
  m.def(
      "hessian_vector_products(Tensor x, Tensor target, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, Tensor vectors, str activation=\"tanh\", str reduction=\"mean\", "
      "str loss=\"bce\") -> Tensor");
}

TORCH_LIBRARY_IMPL(torch_ws, CompositeExplicitAutograd, m) {
  m.impl("eigenvalue_interval", &torch_ws::eigenvalue_interval_kernel);
  m.impl("_eigenvalue_interval_with_gradients",
         &torch_ws::eigenvalue_interval_with_gradients_kernel);
  m.impl("hessian_vector_products", &torch_ws::hessian_vector_products_kernel);
}

TORCH_LIBRARY_IMPL(torch_ws, Meta, m) {
  m.impl("eigenvalue_interval", &torch_ws::eigenvalue_interval_meta);
  m.impl("_eigenvalue_interval_with_gradients",
         &torch_ws::eigenvalue_interval_with_gradients_meta);
  m.impl("hessian_vector_products", &torch_ws::hessian_vector_products_meta);
}
