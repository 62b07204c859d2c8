// What both engines for heads of C ≥ 2 logits share (docs/math.md §8): the per-sample features
// (stage 1) and the chain from adjoints with respect to them to x, w1, b1, w2, b2 (stage 3).
// The sample-space engine sums over pairs of samples between the two (sample_space.cpp), the
// parameter-space engine assembles the n×n Hessian from the same arrays (parameter_space.cpp).
// Device-agnostic ATen.
#pragma once

#include "core/problem.h"

#include <ATen/ATen.h>

namespace torch_ws::multi_output {

// Stage 1 (docs/math.md §8.2). Shapes: N samples, D inputs, H hidden units, C logits.
struct Features {
  at::Tensor x;                       // (N, D), contiguous
  at::Tensor phi0, phi1, phi2, phi3;  // φ^(k)(A), (N, H); phi3 only for gradients
  at::Tensor w2;                      // (C, H)
  OutputTerms terms;                  // S (N, C, C), e (N, C): the loss in the logits (losses.h)
  at::Tensor S_flat;                  // (N, C²)
  at::Tensor U, SU;                   // U_i = W2 diag(φ'(a_i)) and S_i U_i, (N, C, H)
  at::Tensor Y;                       // L_iᵀ U_i for S_i = L_i L_iᵀ, (N, C, H) (losses.h)
  at::Tensor omega;                   // Ω_ik = Σ_c U_ick (S_i U_i)_ck, (N, H)
  at::Tensor e_hidden, vt;            // ẽ_i = W2ᵀ e_i and ṽ_i = ẽ_i ∘ φ''(a_i), (N, H)
  at::Tensor lx, rx;                  // φ(a_ik)(S_i U_i)_ck and e_ic φ'(a_ik), flattened (N, C·H)
  bool has_b1, has_b2;

  int64_t num_samples() const { return x.size(0); }
  int64_t num_outputs() const { return w2.size(0); }
  int64_t hidden() const { return w2.size(1); }
};

// Stage 1: the features of every sample; φ''' only `for_gradients`.
Features features(const MlpProblem& p, bool for_gradients);

// The adjoints of one scalar with respect to the per-sample arrays of Features (undefined: zero).
struct Adjoints {
  at::Tensor x, phi0, phi1, U, SU, Y, S, e, omega, vt, lx, rx;
};

// Stage 3: the gradient of the scalar whose per-sample adjoints are `a` (x's when `need_x`).
InputGradients chain(const MlpProblem& p, const Features& f, Adjoints a, bool need_x);

}  // namespace torch_ws::multi_output
