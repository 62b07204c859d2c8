// The Wolkowicz-Styan bounds (λ_sup = m + s·√(n−1) and the four others) and the derivatives of
// λ_sup in the traces (docs/math.md §5 and §7), written once for two value types: 0-d float64
// tensors (any device, no host sync) and doubles.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <cmath>
#include <utility>

namespace torch_ws {

namespace primitives {
inline at::Tensor sqrt(const at::Tensor& v) { return v.sqrt(); }
inline double sqrt(double v) { return std::sqrt(v); }
inline at::Tensor clamp_min(const at::Tensor& v, double lo) { return v.clamp_min(lo); }
inline double clamp_min(double v, double lo) { return v < lo ? lo : v; }  // NaN stays NaN
inline at::Tensor where(const at::Tensor& c, const at::Tensor& a, double b) {
  return at::where(c, a, b);
}
inline at::Tensor where(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
  return at::where(c, a, b);
}
inline double where(bool c, double a, double b) { return c ? a : b; }
}  // namespace primitives

// m = tr/n and s² = tr(H²)/n − m² (docs/math.md §5), s² not yet clamped.
template <typename T>
struct WsMoments {
  T mean, spread_sq;
};

template <typename T>
WsMoments<T> ws_moments(const T& trace, const T& trace_sq, int64_t num_params) {
  const double n = static_cast<double>(num_params);
  T mean = trace / n;
  return {mean, trace_sq / n - mean * mean};
}

// s = √max(s², 0). Where s² ≤ 0 (a spectrum with one value, or rounding) the bounds collapse to m;
// sqrt's infinite slope at 0 is routed through a constant there, so differentiating through this
// (ws_bounds) gives the gradient of m, as bound_trace_grads does. NaN propagates (s²·0).
template <typename T>
T ws_spread(const WsMoments<T>& moments) {
  namespace fn = primitives;
  const auto positive = moments.spread_sq > 0;
  return fn::where(positive, fn::sqrt(fn::where(positive, moments.spread_sq, 1.0)),
                   moments.spread_sq * 0.0);
}

// λ_sup from the traces.
template <typename T>
T ws_upper_bound(const T& trace, const T& trace_sq, int64_t num_params) {
  const WsMoments<T> moments = ws_moments(trace, trace_sq, num_params);
  return moments.mean + std::sqrt(static_cast<double>(num_params) - 1) * ws_spread(moments);
}

// Every Wolkowicz-Styan bound (docs/math.md §5): λ_max ∈ [lambda_max_lower, lambda_max_upper],
// λ_min ∈ [lambda_min_lower, lambda_min_upper], λ_max − λ_min ≤ spread_upper.
template <typename T>
struct WsBounds {
  T lambda_max_upper, lambda_max_lower, lambda_min_lower, lambda_min_upper, spread_upper;
};

template <typename T>
WsBounds<T> ws_bounds_from_traces(const T& trace, const T& trace_sq, int64_t num_params) {
  const double n = static_cast<double>(num_params), root = std::sqrt(n - 1);
  const WsMoments<T> moments = ws_moments(trace, trace_sq, num_params);
  const T spread = ws_spread(moments);
  return {moments.mean + spread * root, moments.mean + spread / root,
          moments.mean - spread * root, moments.mean - spread / root,
          spread * std::sqrt(2 * n)};
}

// (∂λ_sup/∂tr H, ∂λ_sup/∂tr(H²)) times grad_bound (§6): λ = m + √(n−1)·s, so
// ∂λ/∂tr = 1/n − √(n−1)·m/(n·s) and ∂λ/∂tr(H²) = √(n−1)/(2n·s). Where s = 0 the bound is m and
// we use the gradient of m: (1/n, 0).
template <typename T>
std::pair<T, T> bound_trace_grads(const T& grad_bound, const T& trace, const T& trace_sq,
                                  int64_t num_params) {
  namespace fn = primitives;
  const double n = static_cast<double>(num_params), root = std::sqrt(n - 1);
  const WsMoments<T> moments = ws_moments(trace, trace_sq, num_params);
  const auto positive = moments.spread_sq > 0;
  const T spread = fn::sqrt(fn::where(positive, moments.spread_sq, 1.0));
  const T d_trace = fn::where(positive, 1 / n - root * moments.mean / (n * spread), 1 / n);
  const T d_trace_sq = fn::where(positive, root / (2 * n * spread), 0.0);
  return {grad_bound * d_trace, grad_bound * d_trace_sq};
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

// λ_sup as a 0-d tensor of `dtype`.
inline at::Tensor ws_upper_bound_tensor(const at::Tensor& trace, const at::Tensor& trace_sq,
                                        int64_t num_params, at::ScalarType dtype) {
  if (plain_cpu(trace)) {
    const double bound = ws_upper_bound(trace.item<double>(), trace_sq.item<double>(), num_params);
    return at::scalar_tensor(bound, trace.options().dtype(dtype));
  }
  return ws_upper_bound(trace, trace_sq, num_params).to(dtype);
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
