// Hessian-vector products of the loss in closed form, for blocks of directions at once
// (docs/math.md §11.1): the forward-over-reverse of the network written out as matrix products,
// O(N·(D + C)·H) per direction, never an n×n, N×N or (N·C)² array. What the Lanczos iteration
// of the eigenvalue interval (interval.cpp) runs on, and what torch_ws.hessian_vector_products
// returns.
#pragma once

#include "core/problem.h"

#include <ATen/ATen.h>

namespace torch_ws {

class HessianProducts {
 public:
  // The per-sample coefficients (φ(a), φ'(a), φ''(a), S_i, e_i) are computed once here, in the
  // problem's dtype; every product reuses them.
  explicit HessianProducts(const MlpProblem& p);

  // H·v for each row v of `directions` (k, n), θ in the flat order (W1 row-major, b1, W2
  // row-major, b2); returns (k, n) in the problem's dtype.
  at::Tensor apply(const at::Tensor& directions) const;

  // The same chain with every factor replaced by its absolute value, applied to |directions|:
  // an elementwise majorant of the sums of absolute terms whose rounding the computed H·v
  // carries (docs/math.md §11.3).
  at::Tensor majorant(const at::Tensor& directions) const;

  // γ with |fl(H·v) − H·v| ≤ γ·majorant(v) elementwise (docs/math.md §11.3).
  double error_factor() const { return error_factor_; }

  int64_t num_params() const { return num_params_; }

 private:
  struct Chain {
    at::Tensor x, w2, phi0, phi1, phi2, S, e, hidden_residual;
  };
  at::Tensor run(const Chain& chain, const at::Tensor& directions) const;

  Chain values_, magnitudes_;
  int64_t hidden_, in_dim_, num_outputs_, num_params_;
  bool has_b1_, has_b2_;
  double error_factor_;
};

}  // namespace torch_ws
