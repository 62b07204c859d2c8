// The Wolkowicz-Styan upper bound λ_sup = m + s·√(n−1) and its derivatives in the traces
// (math.md §5–§6), written once for two value types: 0-d float64 tensors (any device, no host
// sync) and doubles (the CPU parameter-space engine, where a dozen 0-d tensor operations would
// cost more than all of its arithmetic at the papers' scale).
#pragma once

#include <ATen/ATen.h>

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
inline double where(bool c, double a, double b) { return c ? a : b; }
}  // namespace primitives

// m = tr/n and s² = tr(H²)/n − m² (math.md §5), s² not yet clamped.
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

// λ_sup from the traces; s² is clamped at 0 because rounding can make it slightly negative.
template <typename T>
T ws_upper_bound(const T& trace, const T& trace_sq, int64_t num_params) {
  namespace fn = primitives;
  const WsMoments<T> moments = ws_moments(trace, trace_sq, num_params);
  return moments.mean +
         std::sqrt(static_cast<double>(num_params) - 1) * fn::sqrt(fn::clamp_min(moments.spread_sq, 0));
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

}  // namespace torch_ws
