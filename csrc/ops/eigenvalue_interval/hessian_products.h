// Hessian-vector products of the loss in closed form, for blocks of directions at once
// (docs/math.md §11.1): the forward-over-reverse of the network written out as matrix products,
// O(N·(D + C)·H) per direction, never an n×n, N×N or (N·C)² array. What the Lanczos iteration
// of the eigenvalue interval (interval.cpp) runs on, and what torch_ws.hessian_vector_products
// returns.
#pragma once

#include "core/problem.h"
#include "core/ritz_certificate.h"

#include <ATen/ATen.h>

#include <vector>

namespace torch_ws {

class HessianProducts final : public SymmetricProducts {
 public:
  // What the products serve: `Products` alone (hessian_vector_products), or a `Certificate`
  // as well, which also needs the majorant's absolute values and φ''' (bilinear_backward).
  enum class Uses { Products, Certificate };
  // Which matrix: the loss Hessian H, or its Gauss-Newton part G = Σ_i J_iᵀ S_i J_i alone (the
  // same chain with the loss gradient e set to 0, which removes exactly the residual's terms:
  // docs/math.md §9.2 "Without the dual matrix"). bilinear_backward serves H only.
  enum class Curvature { Hessian, GaussNewton };

  // The per-sample coefficients (φ(a), φ'(a), φ''(a), S_i, e_i) are computed once here, in the
  // problem's dtype; every product reuses them.
  HessianProducts(const MlpProblem& p, Uses uses, Curvature curvature = Curvature::Hessian);

  // H·v for each row v of `directions` (k, n), θ in the flat order (W1 row-major, b1, W2
  // row-major, b2); returns (k, n) in the problem's dtype.
  at::Tensor apply(const at::Tensor& directions) const override;

  // The same chain with every factor replaced by its absolute value, applied to |directions|:
  // an elementwise majorant of the sums of absolute terms whose rounding the computed H·v
  // carries (docs/math.md §11.3).
  at::Tensor majorant(const at::Tensor& directions) const override;

  // γ with |fl(H·v) − H·v| ≤ γ·majorant(v) elementwise (docs/math.md §11.3).
  double error_factor() const override { return error_factor_; }

  int64_t num_params() const override { return num_params_; }

  // Forms Σ_j c_j·⟨left_j, H right_j⟩ over fixed directions (left, right (k, n), c (k,));
  // `right` undefined: ⟨left_j, H left_j⟩ (Rayleigh quotients, computed at half the cost).
  struct Forms {
    at::Tensor left, right, coefficients;
  };
  // The gradient of the sum of all `forms` with respect to x (only when `need_grad_x`), w1, b1,
  // w2, b2, with the directions held fixed (docs/math.md §11.4): what the gradients of Rayleigh
  // quotients and residual norms of fixed vectors are made of. At least one form.
  InputGradients bilinear_backward(const std::vector<Forms>& forms, bool need_grad_x) const;

 private:
  struct Blocks {
    at::Tensor w1, b1, w2, b2;  // (k, H, D), (k, H) or undefined, (k, C, H), (k, C) or undefined
  };
  Blocks split(const at::Tensor& directions) const;

  struct Chain {
    at::Tensor x, w2, phi0, phi1, phi2, S, e;
    at::Tensor hidden_residual;  // e W2 (N, H): the hidden layer's adjoint before φ'
    at::Tensor second_order;     // φ''(A) ∘ (e W2)
  };
  at::Tensor run(const Chain& chain, const at::Tensor& directions) const;

  // bilinear_backward's adjoints of the per-sample values, summed over runs of forms.
  struct Adjoints;
  void accumulate(Adjoints& adjoints, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& coefficients, bool need_grad_x) const;

  // The (N, k, ·) arrays of `run`, reused by every run of every call (so an object serves one
  // thread at a time, as every caller uses it): a fresh array of a megabyte cost more in page
  // faults than the step that fills it (digits, N = 1797, four directions: φ'∘dz 0.28 ms into a
  // fresh array, 0.03 ms in place).
  struct Scratch {
    at::Tensor dz, da, df, dg, d_eps;
  };
  mutable Scratch scratch_;
  // The scratch a run of `numbers` numbers in all uses: the thread's, kept across calls, where
  // small; else the object's.
  Scratch& scratch_for(int64_t numbers, const at::TensorOptions& options) const;

  Chain values_, magnitudes_;
  at::Tensor w1_, phi3_;  // for bilinear_backward
  OutputTerms terms_;
  Loss loss_;
  int64_t num_samples_, hidden_, in_dim_, num_outputs_, num_params_;
  bool has_b1_, has_b2_;
  double error_factor_;
};

}  // namespace torch_ws
