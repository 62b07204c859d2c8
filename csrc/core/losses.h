// The one table of output losses (docs/math.md §2, §8): names, output widths, and the per-sample
// derivatives of the loss in the logits that every engine consumes.
//
// Two shapes of head:
//   - one logit (C = 1: "bce", "mse" with one output): the loss's derivatives in z are scalars
//     s, e, ds/dz per sample (logit_terms), and both engines of docs/math.md §4 run;
//   - C logits ("cross_entropy", "mse" with C ≥ 2): the loss Hessian in the logits is a C×C
//     matrix S_i per sample and its gradient a C-vector e_i (output_terms), and the multi-output
//     sample-space engine of docs/math.md §8 runs.
#pragma once

#include "activations.h"  // primitives::sigmoid

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace torch_ws {

enum class Loss { BinaryCrossEntropy, CrossEntropy, MeanSquaredError };

struct LossEntry {
  Loss loss;
  const char* name;
  int64_t min_outputs, max_outputs;  // the widths C of Linear(H, C) the loss takes (-1: any)
  const char* as_torch;              // the PyTorch loss it is, for messages and docs
  const char* targets;               // what its targets are, for messages
};

inline constexpr std::array<LossEntry, 3> kLosses = {{
    {Loss::BinaryCrossEntropy, "bce", 1, 1, "BCEWithLogitsLoss",
     "probabilities in [0, 1] of shape (N,) or (N, 1)"},
    {Loss::CrossEntropy, "cross_entropy", 2, -1, "CrossEntropyLoss",
     "class indices (N,) int64 in [0, C) or class probabilities (N, C) in [0, 1] (rows of any sum)"},
    {Loss::MeanSquaredError, "mse", 1, -1, "MSELoss",
     "real values (N, C) (or (N,) when C = 1)"},
}};

const LossEntry& loss_entry(Loss loss);
// Raises c10::Error, its message starting with `op`, naming the supported losses when `name` is
// not one of them.
Loss parse_loss(std::string_view op, std::string_view name);

// c in L = c·Σ_i ℓ_i for N samples of C outputs: "sum" is 1; "mean" is 1/N, except for the squared
// error, whose mean (F.mse_loss) runs over all N·C entries.
double loss_scale(Loss loss, bool mean, int64_t num_samples, int64_t num_outputs);

// ---- One logit (C = 1). ----

// One sample's loss derivatives in its logit z, scaled by the reduction's c:
//   e = c·ℓ'(z),  s = c·ℓ''(z),  ds_dz = c·ℓ'''(z)      (de/dz = s for every loss)
// Written once for tensors (the sample-space engines) and doubles (the parameter-space engine's
// fused loops).
template <typename T>
struct LogitTerms {
  T s, e, ds_dz;
};

template <typename T, typename Target>
LogitTerms<T> logit_terms(Loss loss, const T& z, const Target& target, double scale) {
  switch (loss) {
    case Loss::MeanSquaredError:
      // ℓ = (z − t)²: ℓ' = 2(z − t), ℓ'' = 2, ℓ''' = 0.
      return {0 * z + 2 * scale, 2 * scale * (z - target), 0 * z};
    case Loss::BinaryCrossEntropy:
    default: {
      // ℓ = softplus(z) − t·z: ℓ' = σ − t, ℓ'' = σ(1 − σ), ℓ''' = σ(1 − σ)(1 − 2σ). σ(1 − σ) is
      // computed as σ(z)σ(−z), which keeps its relative accuracy when σ saturates.
      // σ(z) − t is computed as (1 − t)σ(z) − tσ(−z), which does not cancel either: in float32
      // σ(17.8) = 1 − 1.9·10⁻⁸ rounds to 1, and σ − 1 was 0 for a well-fit sample (tr H of a
      // saturated tanh net 11% off, its e·k·v terms lost).
      T y = primitives::sigmoid(z), rest = primitives::sigmoid(-z);
      T s = scale * (y * rest);
      return {s, scale * ((1 - target) * y - target * rest), s * (rest - y)};
    }
  }
}

// The sum of the absolute terms of e's formula above (≥ |e|, what e's rounding is relative to):
// c((1 − t)σ(z) + tσ(−z)) for the binary cross-entropy, 2c(|z| + |t|) for the squared error.
inline at::Tensor logit_e_magnitude(Loss loss, const at::Tensor& z, const at::Tensor& target,
                                    double scale) {
  if (loss == Loss::MeanSquaredError) return 2 * scale * (z.abs() + target.abs());
  return scale * ((1 - target) * at::sigmoid(z) + target * at::sigmoid(-z));
}

// ---- C logits (docs/math.md §8). ----

// The loss derivatives in the logits z_i (C,) of every sample, scaled by c, for the losses that
// take C ≥ 2 logits (cross_entropy, mse), and for bce as the case C = 1 (only the explicit
// Hessian's assembly reads it so; the one-logit engines use logit_terms):
//   e_i = c·∇_z ℓ (N, C),   S_i = c·∇²_z ℓ (N, C, C), symmetric.
// `probs` is softmax(z) for the cross-entropy (its backward reads it), undefined otherwise.
struct OutputTerms {
  at::Tensor S, e, probs;
  // The scalar factor a_i (N, 1) of S_i: cτ_i for S_i = cτ_i(diag(p_i) − p_i p_iᵀ), 2c for 2c·I.
  at::Tensor curvature_scale;
  // The cross-entropy's 1 − p computed as the sum of the other probabilities (N, C).
  at::Tensor rest;
  // The sum of the absolute terms of each e entry's formula (N, C), ≥ |e|: what e's rounding
  // error is relative to where the formula subtracts (soft targets, a squared error near its
  // target); for the squared error |z| + |t|, leaving z's own rounding to logit_rounding.
  at::Tensor e_magnitude;
  // Binary cross-entropy (C = 1): ds/dz = c·ℓ''' (N, 1).
  at::Tensor ds_dz;
};
// z (N, C); target (N, C) in z's dtype (class indices arrive one-hot, problem.cpp).
OutputTerms output_terms(Loss loss, const at::Tensor& z, const at::Tensor& target, double scale);
// z̄ (N, C) from the adjoints S̄ (N, C, C) and ē (N, C) of S and e (either may be undefined).
at::Tensor output_terms_backward(Loss loss, const OutputTerms& terms, const at::Tensor& S_bar,
                                 const at::Tensor& e_bar);

// How the logits' own rounding reaches S and e, for the certificates (docs/math.md §11.3, §12.5):
// logits z = Φ Wᵀ + b computed from features Φ (N, H) are within (H + 2)u·Z, Z = |Φ||W|ᵀ + |b|.
// The squared error's e takes that error absolutely: its magnitude becomes 2c(Z + |t|). The
// softmax's and sigmoid's S and e take it relatively, at most 4(H + 2)u·max Z (a product of two
// probabilities): `allowance`, in units of u, for the chain's depth.
struct LogitRounding {
  at::Tensor e_magnitude;  // (N, C)
  double allowance = 0;
};
LogitRounding logit_rounding(Loss loss, const at::Tensor& e_magnitude, const at::Tensor& features,
                             const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& target, double scale);

// Y_i = L_iᵀ U_i for a factor S_i = L_i L_iᵀ and U (N, C, H): then tr(S_i Q S_j Qᵀ) with
// Q = U_i U_jᵀ is ‖Y_i Y_jᵀ‖²_F, one symmetric product per block pair (docs/math.md §8.3).
//   cross-entropy: L_i = √(cτ_i)(diag(√p_i) − p_i √p_iᵀ), so Y_ir = √(cτ_i p_ir)·D_ir with
//                  D_ir = Σ_{c≠r} p_ic (U_ir − U_ic), computed without cancellation;
//   squared error: L = √(2c)·I.
at::Tensor factor_times(Loss loss, const OutputTerms& terms, const at::Tensor& U);
// The adjoints of U (N, C, H) and of the logits z (N, C) from Ȳ.
struct FactorAdjoints {
  at::Tensor U, z;  // z undefined when Y does not depend on z (squared error)
};
FactorAdjoints factor_times_backward(Loss loss, const OutputTerms& terms, const at::Tensor& U,
                                     const at::Tensor& Y_bar);

}  // namespace torch_ws
