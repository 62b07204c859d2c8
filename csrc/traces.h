// Closed-form traces of the loss Hessian of Linear(D,H) → φ → Linear(H,1) with BCE-with-logits
// (math.md §2–§5). Device-agnostic ATen: the same code runs on CPU and CUDA tensors.
#pragma once

#include "activations.h"

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace torch_ws {

enum class Reduction { Mean, Sum };

// The checked arguments of every op: shapes, dtypes, devices and option strings validated once.
struct MlpProblem {
  at::Tensor x;       // (N, D)
  at::Tensor target;  // (N,), flattened from (N,) or (N, 1)
  at::Tensor w1;      // (H, D)
  std::optional<at::Tensor> b1;  // (H,)
  at::Tensor w2;      // (H,), flattened from the (1, H) row
  std::optional<at::Tensor> b2;  // (1,)
  Activation activation;
  Reduction reduction;

  int64_t num_samples() const { return x.size(0); }
  // n = H·D + H·[b1] + H + [b2]: the length of θ and the size of the Hessian.
  int64_t num_params() const;
};

// Validates the arguments with TORCH_CHECK (messages say what was expected and what arrived).
// `check_values` also scans the targets for values outside [0, 1]; fake tensors skip it.
MlpProblem check_problem(const char* op_name, const at::Tensor& x, const at::Tensor& target,
                         const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                         std::string_view activation, std::string_view reduction,
                         bool check_values = true);

// Everything the forward and backward share (math.md §2, §4). Recomputed by the backward
// rather than saved: it is cheap next to the backward itself and keeps saved state O(inputs).
struct Intermediates {
  at::Tensor phi0, phi1, phi2, phi3;  // φ^(k)(A), (N, H); phi3 only when built for the backward
  at::Tensor U, V;                    // U = Φ1 diag(w2), V = Φ2 diag(w2)
  at::Tensor y, s, e;                 // σ(z), c·y(1−y), c·(y − t)
  at::Tensor K, Q, R, G;              // Gram matrices (N, N); G = K∘Q + R
  at::Tensor P1, P2, P3, P4;          // (U∘U)Vᵀ, (U∘Φ0)Φ1ᵀ, VVᵀ, Φ1Φ1ᵀ
  at::Tensor KK, B, C;                // K∘K and the residual-term matrices of tr(H²)
  double scale;                       // c: 1/N for "mean", 1 for "sum"
};
Intermediates compute_intermediates(const MlpProblem& p, bool for_backward);

// (tr H, tr H²) as float64 0-dim tensors: the reductions accumulate in float64.
std::tuple<at::Tensor, at::Tensor> traces_float64(const Intermediates& f);

// λ_sup = m + s·√(n−1) from float64 traces (math.md §5), s² clamped at 0.
at::Tensor ws_upper_bound_float64(const at::Tensor& trace, const at::Tensor& trace_sq,
                                  int64_t num_params);

// Kernels registered for CPU and CUDA (ops.cpp holds the schemas).
std::tuple<at::Tensor, at::Tensor> hessian_traces_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction);
at::Tensor ws_bound_kernel(const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
                           const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                           const std::optional<at::Tensor>& b2, c10::string_view activation,
                           c10::string_view reduction);
std::tuple<at::Tensor, at::Tensor, at::Tensor> ws_bound_with_traces_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction);

// The hand-derived backward (traces_backward.cpp). Returns the gradients of
// grad_trace·tr(H) + grad_trace_sq·tr(H²) for (x, w1, b1, w2, b2); grad_x is an empty tensor
// unless `need_grad_x`, and the bias gradients are empty tensors for absent biases.
using MlpGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
MlpGrads hessian_traces_backward_kernel(
    const at::Tensor& grad_trace, const at::Tensor& grad_trace_sq, const at::Tensor& x,
    const at::Tensor& target, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
    const at::Tensor& w2, const std::optional<at::Tensor>& b2, c10::string_view activation,
    c10::string_view reduction, bool need_grad_x);
MlpGrads ws_bound_backward_kernel(
    const at::Tensor& grad_bound, const at::Tensor& trace, const at::Tensor& trace_sq,
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, bool need_grad_x);

}  // namespace torch_ws
