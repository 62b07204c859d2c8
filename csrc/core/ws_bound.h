// The Wolkowicz-Styan bounds (λ_sup = m + s·√(n−1) and the four others) and the derivatives of
// λ_sup in the traces (docs/math.md §5 and §7), written once for two value types: 0-d float64
// tensors (any device, no host sync) and doubles.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <cmath>
#include <tuple>
#include <utility>

namespace torch_ws {

namespace primitives {
inline at::Tensor sqrt(const at::Tensor& v) { return v.sqrt(); }
inline double sqrt(double v) { return std::sqrt(v); }
inline at::Tensor clamp_min(const at::Tensor& v, double lo) { return v.clamp_min(lo); }
inline double clamp_min(double v, double lo) { return v < lo ? lo : v; }  // NaN stays NaN
inline at::Tensor abs(const at::Tensor& v) { return v.abs(); }
inline double abs(double v) { return std::abs(v); }
inline at::Tensor where(const at::Tensor& c, const at::Tensor& a, double b) {
  return at::where(c, a, b);
}
inline at::Tensor where(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
  return at::where(c, a, b);
}
inline double where(bool c, double a, double b) { return c ? a : b; }
// A value the derivatives treat as a constant.
inline at::Tensor constant(const at::Tensor& v) { return v.detach(); }
inline double constant(double v) { return v; }
}  // namespace primitives

// ---- The rounding allowance (docs/math.md §5.1). ----
// The traces come out of long sums in the compute precision (unit roundoff u: 2⁻²⁴ in float32,
// 2⁻⁵³ in float64), so m + s√(n−1) from them can land below λ_max, where the bound is tight
// (n = 2, where it is exact; or λ_max ≪ |λ_min|). Every bound is therefore widened by the
// traces' rounding error: m by κ·u·q and s² by κ·u·q², with q² = tr(H²)/n the mean squared
// eigenvalue, the scale of both sums' terms. κ = 2¹³ exceeds every error measured over 15,000
// random float32 problems with weights up to scale 3 (at most 28·u·q on m and 6,054·u·q² on s²;
// benchmarks/rounding_allowance.py); saturated networks whose Hessian entries near float32's
// underflow can exceed it (§5.1: pass float64 there). It widens a float32 bound by about
// 5·10⁻⁴·q (a float64 one by 10⁻¹²·q). It corrects the value, not the function: the derivatives
// are those of the bounds themselves (bound_trace_grads, and ws_bounds_from_traces's
// decomposition, where the widening enters as a constant).
constexpr double kRoundingAllowance = 8192;

// The allowance's factor κu for traces of `dtype`. bfloat16/float16 traces were computed in
// float32 and then rounded to their dtype (relative error u_dtype on both traces, so at most
// u_dtype·q on m and 3·u_dtype·q² on s²): their factor adds 4·u_dtype.
inline double rounding_allowance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return kRoundingAllowance * 0x1p-53;
    case at::kBFloat16: return kRoundingAllowance * 0x1p-24 + 4 * 0x1p-8;
    case at::kHalf: return kRoundingAllowance * 0x1p-24 + 4 * 0x1p-11;
    default: return kRoundingAllowance * 0x1p-24;
  }
}

// m = tr/n, s² = tr(H²)/n − m² (docs/math.md §5), s² not yet clamped, and the allowances on
// both (κuq and κuq²), plus what certified absolute errors e_tr, e_sq of the traces move them by
// (the deep op's, docs/math.md §12.5): e_tr/n on m, e_sq/n + (2|m| + e_tr/n)·e_tr/n on s².
template <typename T>
struct WsMoments {
  T mean, spread_sq, mean_allowance, spread_sq_allowance;
};

// The errors are doubles, or 0-d tensors (constants: deep_ws_bounds', which stay on the device
// and traceable, unread).
template <typename T, typename E = double>
WsMoments<T> ws_moments(const T& trace, const T& trace_sq, int64_t num_params, double allowance,
                        const E& trace_error = 0, const E& trace_sq_error = 0) {
  namespace fn = primitives;
  const double n = static_cast<double>(num_params), k = allowance;
  const E mean_error = trace_error / n;
  T mean = trace / n;
  T mean_square = fn::clamp_min(fn::constant(trace_sq) / n, 0.0);  // q²
  return {mean, trace_sq / n - mean * mean, k * fn::sqrt(mean_square) + mean_error,
          k * mean_square + trace_sq_error / n +
              (2 * fn::abs(fn::constant(mean)) + mean_error) * mean_error};
}

// √max(v, 0) for v = s² (widened or narrowed). Where v ≤ 0 (a spectrum with one value, or
// rounding) the spread is 0 and the bounds collapse to m; sqrt's infinite slope at 0 is routed
// through a constant there, so differentiating through this (ws_bounds) gives the gradient of m,
// as bound_trace_grads does. NaN propagates (v·0).
template <typename T>
T ws_spread(const T& spread_sq) {
  namespace fn = primitives;
  const auto positive = spread_sq > 0;
  return fn::where(positive, fn::sqrt(fn::where(positive, spread_sq, 1.0)), spread_sq * 0.0);
}

// λ_sup from the traces, widened by the rounding allowance.
template <typename T>
T ws_upper_bound(const T& trace, const T& trace_sq, int64_t num_params, double allowance) {
  const WsMoments<T> w = ws_moments(trace, trace_sq, num_params, allowance);
  const double root = std::sqrt(static_cast<double>(num_params) - 1);
  return w.mean + w.mean_allowance + root * ws_spread(w.spread_sq + w.spread_sq_allowance);
}

// Every Wolkowicz-Styan bound (docs/math.md §5), each widened by the allowance in its own
// direction: λ_max ∈ [lambda_max_lower, lambda_max_upper], λ_min ∈ [lambda_min_lower,
// lambda_min_upper], λ_max − λ_min ≤ spread_upper.
template <typename T>
struct WsBounds {
  T lambda_max_upper, lambda_max_lower, lambda_min_lower, lambda_min_upper, spread_upper;
};

template <typename T, typename E = double>
WsBounds<T> ws_bounds_from_traces(const T& trace, const T& trace_sq, int64_t num_params,
                                  double allowance, const E& trace_error = 0,
                                  const E& trace_sq_error = 0) {
  namespace fn = primitives;
  const double n = static_cast<double>(num_params), root = std::sqrt(n - 1);
  const WsMoments<T> w =
      ws_moments(trace, trace_sq, num_params, allowance, trace_error, trace_sq_error);
  const T spread = ws_spread(w.spread_sq);
  const T wide = ws_spread(w.spread_sq + w.spread_sq_allowance);
  const T narrow = ws_spread(w.spread_sq - w.spread_sq_allowance);
  const T m = w.mean, k = w.mean_allowance;
  // Each bound is its exact formula plus the widening as a constant (its derivatives are the
  // formula's).
  auto widened = [](const T& exact, const T& value) {
    return exact + fn::constant(value - exact);
  };
  return {widened(m + spread * root, m + k + wide * root),
          widened(m + spread / root, m - k + narrow / root),
          widened(m - spread * root, m - k - wide * root),
          widened(m - spread / root, m + k - narrow / root),
          widened(spread * std::sqrt(2 * n), wide * std::sqrt(2 * n))};
}

// (∂λ_sup/∂tr H, ∂λ_sup/∂tr(H²)) times grad_bound (§6): λ = m + √(n−1)·s, so
// ∂λ/∂tr = 1/n − √(n−1)·m/(n·s) and ∂λ/∂tr(H²) = √(n−1)/(2n·s). Where s = 0 the bound is m and
// we use the gradient of m: (1/n, 0).
template <typename T>
std::pair<T, T> bound_trace_grads(const T& grad_bound, const T& trace, const T& trace_sq,
                                  int64_t num_params) {
  namespace fn = primitives;
  const double n = static_cast<double>(num_params), root = std::sqrt(n - 1);
  const WsMoments<T> w = ws_moments(trace, trace_sq, num_params, 0.0);
  const T& spread_sq = w.spread_sq;
  const auto positive = spread_sq > 0;
  const T spread = fn::sqrt(fn::where(positive, spread_sq, 1.0));
  const T d_trace = fn::where(positive, 1 / n - root * w.mean / (n * spread), 1 / n);
  const T d_trace_sq = fn::where(positive, root / (2 * n * spread), 0.0);
  return {grad_bound * d_trace, grad_bound * d_trace_sq};
}

// `value` (float64, or float32 for a bfloat16/float16 result) as `dtype`, rounded up (toward +∞)
// or down rather than to nearest, so that a bound stays a bound in a narrower dtype.
inline at::Tensor round_directed(const at::Tensor& value, at::ScalarType dtype, bool up) {
  if (dtype == at::kDouble) return value.to(at::kDouble);
  const at::Tensor nearest = value.to(dtype);
  const at::Tensor back = nearest.to(value.scalar_type());
  const at::Tensor missed = up ? back < value : back > value;
  const at::Tensor away = at::full_like(nearest, up ? HUGE_VAL : -HUGE_VAL);
  // The step to the neighbour is taken off the graph (torch 2.11 has no derivative of nextafter;
  // 2.13's is the identity), and the rounded value gets the gradient of `nearest`: one ulp added
  // exactly. At ±∞ (an overflow rounded back to the largest finite value) only the value counts.
  const at::Tensor fixed = nearest.detach();
  const at::Tensor rounded = at::where(missed, at::nextafter(fixed, away), fixed);
  const at::Tensor through = nearest + (rounded - fixed);
  return at::where(missed & at::isfinite(fixed), through, at::where(missed, rounded, nearest));
}

// The five bounds as the `_ws_bounds_from_traces` op returns them: from float64 traces computed
// in `dtype`, widened by that dtype's allowance and by the traces' certified errors (doubles, or
// 0-d float64 tensors), each rounded outward to `dtype`.
template <typename E>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ws_bounds_rounded(
    const at::Tensor& trace, const at::Tensor& trace_sq, int64_t num_params, at::ScalarType dtype,
    const E& trace_error, const E& trace_sq_error) {
  const auto b = ws_bounds_from_traces(trace.to(at::kDouble), trace_sq.to(at::kDouble), num_params,
                                       rounding_allowance(dtype), trace_error, trace_sq_error);
  return {round_directed(b.lambda_max_upper, dtype, true),
          round_directed(b.lambda_max_lower, dtype, false),
          round_directed(b.lambda_min_lower, dtype, false),
          round_directed(b.lambda_min_upper, dtype, true),
          round_directed(b.spread_upper, dtype, true)};
}

// The two forms the ops use, on the 0-d float64 traces the engines return. On the CPU the traces
// are read as doubles (no device to wait for) and the arithmetic runs in C++: the dozen scalar
// tensor operations it replaces (each a dispatch and an allocation) cost about 30 µs per call,
// a tenth of a whole call at the papers' scale. Elsewhere it stays on the device, without a sync,
// and so does anything being traced (fake, functional or batched tensors, a dispatch mode), whose
// values cannot be read.
inline bool plain_cpu(const at::Tensor& t) {
  static const c10::DispatchKeySet kTraced({c10::DispatchKey::Python,
                                            c10::DispatchKey::Functionalize,
                                            c10::DispatchKey::FuncTorchBatched,
                                            c10::DispatchKey::FuncTorchGradWrapper});
  return t.device().is_cpu() && !t.key_set().has_any(kTraced) &&
         !c10::impl::dispatch_mode_enabled();
}

// λ_sup as a 0-d tensor of `dtype`, the traces computed in `dtype` (float32 or float64),
// rounded up.
inline at::Tensor ws_upper_bound_tensor(const at::Tensor& trace, const at::Tensor& trace_sq,
                                        int64_t num_params, at::ScalarType dtype) {
  const double allowance = rounding_allowance(dtype);
  if (plain_cpu(trace)) {
    const double bound =
        ws_upper_bound(trace.item<double>(), trace_sq.item<double>(), num_params, allowance);
    if (dtype == at::kDouble) return at::scalar_tensor(bound, trace.options());
    float value = static_cast<float>(bound);
    if (static_cast<double>(value) < bound) value = std::nextafter(value, HUGE_VALF);
    return at::scalar_tensor(value, trace.options().dtype(at::kFloat));
  }
  return round_directed(ws_upper_bound(trace, trace_sq, num_params, allowance), dtype, true);
}

// λ_sup of B models from their (B,) float64 traces (computed in `dtype`), rounded up: the
// tensor form on any device (one batched call reads no values back).
inline at::Tensor ws_upper_bound_batched(const at::Tensor& trace, const at::Tensor& trace_sq,
                                         int64_t num_params, at::ScalarType dtype) {
  return round_directed(ws_upper_bound(trace, trace_sq, num_params, rounding_allowance(dtype)),
                        dtype, /*up=*/true);
}

// bound_trace_grads as 0-d float64 tensors.
inline std::pair<at::Tensor, at::Tensor> bound_trace_grads_tensor(const at::Tensor& grad_bound,
                                                                  const at::Tensor& trace,
                                                                  const at::Tensor& trace_sq,
                                                                  int64_t num_params) {
  if (plain_cpu(trace)) {
    const auto [d_trace, d_trace_sq] = bound_trace_grads(
        grad_bound.item<double>(), trace.item<double>(), trace_sq.item<double>(), num_params);
    const auto options = trace.options().dtype(at::kDouble);
    return {at::scalar_tensor(d_trace, options), at::scalar_tensor(d_trace_sq, options)};
  }
  return bound_trace_grads(grad_bound.to(at::kDouble), trace, trace_sq, num_params);
}

}  // namespace torch_ws
