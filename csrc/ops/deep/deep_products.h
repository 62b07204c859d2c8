// Hessian-vector products of a deep MLP's loss in closed form (docs/math.md §12.6): the
// forward-over-reverse of Linear → φ → … → Linear written out as matrix products, for blocks of
// directions at once, O(N·n) per direction; never an n×n, N×N or (N·C)² array. What the deep
// eigenvalue interval (deep_interval.cpp) runs its Lanczos iteration on, and what
// torch_ws.deep_hessian_vector_products returns.
#pragma once

#include "core/problem.h"
#include "core/ritz_certificate.h"

#include <ATen/ATen.h>

#include <vector>

namespace torch_ws {

class DeepHessianProducts final : public SymmetricProducts {
 public:
  // What the products serve: `Products` alone, or a `Certificate` as well (the majorant).
  enum class Uses { Products, Certificate };

  // The per-layer coefficients (z_l, φ'(a_l), φ''(a_l) ∘ W_{l+1}ᵀg_{l+1}, the adjoints g_l) and
  // the loss's S and e are computed once here, in the problem's dtype.
  DeepHessianProducts(const MlpProblem& p, Uses uses);

  // H·v for each row v of `directions` (k, n), θ layer by layer (W_l row-major, then b_l): the
  // order of nn.Sequential.parameters(). Returns (k, n) in the problem's dtype.
  at::Tensor apply(const at::Tensor& directions) const override;
  // The same chain on magnitudes, applied to |directions| (docs/math.md §12.6, §11.3).
  at::Tensor majorant(const at::Tensor& directions) const override;
  double error_factor() const override { return error_factor_; }
  int64_t num_params() const override { return num_params_; }

 private:
  // Layers l = 1..o (index 0: the input). z[l] (N, H_l) the features leaving layer l (z[0] = x),
  // d1[l] = φ'(a_l), second[l] = φ''(a_l) ∘ (g_{l+1} W_{l+1}) for hidden l; g[l] (N, H_l) the
  // loss's adjoint at a_l (g[o] = e); weight[l] = W_l (or their magnitudes).
  struct Chain {
    std::vector<at::Tensor> z, d1, second, g, weight;
    at::Tensor S;
  };
  at::Tensor run(const Chain& chain, const at::Tensor& directions) const;
  int64_t widest() const;  // the widest layer after the input: the (N, k, ·) runs' width

  Chain values_, magnitudes_;
  std::vector<bool> has_bias_;
  std::vector<int64_t> widths_;  // H_0 = D, H_1, …, H_o = C
  int64_t num_samples_, num_params_;
  double error_factor_;
};

}  // namespace torch_ws
