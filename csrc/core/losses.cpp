// The loss table's lookups and the C-logit derivatives (docs/math.md §8.1).
#include "losses.h"

#include <c10/util/Exception.h>

namespace torch_ws {

const LossEntry& loss_entry(Loss loss) {
  for (const auto& entry : kLosses) {
    if (entry.loss == loss) return entry;
  }
  TORCH_INTERNAL_ASSERT(false, "loss missing from kLosses");
}

Loss parse_loss(std::string_view op, std::string_view name) {
  std::string names;
  for (const auto& entry : kLosses) {
    if (name == entry.name) return entry.loss;
    names += (names.empty() ? "" : ", ") + std::string(entry.name);
  }
  TORCH_CHECK(false, op, ": unknown loss '", std::string(name), "'; expected one of: ", names);
}

double loss_scale(Loss loss, bool mean, int64_t num_samples, int64_t num_outputs) {
  if (!mean) return 1.0;
  const int64_t count = loss == Loss::MeanSquaredError ? num_samples * num_outputs : num_samples;
  return 1.0 / static_cast<double>(count);
}

OutputTerms output_terms(Loss loss, const at::Tensor& z, const at::Tensor& target, double scale) {
  const int64_t num_outputs = z.size(1);
  OutputTerms out;
  switch (loss) {
    case Loss::CrossEntropy: {
      // ℓ = −Σ_c t_c log p_c with p = softmax(z) and τ = Σ_c t_c (1 for probabilities):
      //   ∇ℓ = τp − t,   ∇²ℓ = τ(diag(p) − p pᵀ)                 (docs/math.md §8.1)
      // Written so that nothing cancels when the softmax saturates: 1 − p_c is the sum of the
      // other probabilities (rest_c), never 1 minus a rounded p_c ≈ 1, so the diagonal
      // p_c(1 − p_c) keeps its relative accuracy (the analogue of σ(z)σ(−z) for one logit); the
      // residual τp_c − t_c is (τ − t_c)p_c − t_c·rest_c, the analogue of (1 − t)σ(z) − tσ(−z):
      // for a class-index target both terms are exact products, whichever class saturates.
      // (The form Σ_{c'≠c} t_c' − τ·rest_c cancelled for every class but the target's when
      // p_target → 1: 1 − (1 − 10⁻¹⁶) in float64 made W1's Hessian entries 50% off.)
      out.probs = at::softmax(z, 1);
      const at::Tensor others = 1 - at::eye(num_outputs, z.options());
      const at::Tensor rest = at::matmul(out.probs, others);  // Σ_{c'≠c} p_c' (others symmetric)
      const at::Tensor target_rest = at::matmul(target, others);  // τ − t_c, also without cancelling
      const at::Tensor tau = target.sum(1, /*keepdim=*/true);
      out.e = scale * (target_rest * out.probs - target * rest);
      out.e_magnitude = scale * (target_rest * out.probs + target * rest);
      // Off the diagonal −(cτp_c)·p_c', on it cτ·(p_c·rest_c): one pass over the (N, C, C) array
      // and one over its diagonal (four passes, diag_embed's zeros and a subtraction, cost a fifth
      // of a digits Hessian-vector product's fixed time). Two roundings an entry either way.
      const at::Tensor scaled = (scale * tau) * out.probs;  // cτp (N, C)
      out.S = (-scaled).unsqueeze(2) * out.probs.unsqueeze(1);
      out.S.diagonal(0, 1, 2).copy_((scale * tau) * (out.probs * rest));
      out.rest = rest;
      out.curvature_scale = scale * tau;
      break;
    }
    case Loss::MeanSquaredError: {
      // ℓ = Σ_c (z_c − t_c)²: ∇ℓ = 2(z − t), ∇²ℓ = 2I.
      out.e = 2 * scale * (z - target.view_as(z));  // one logit's target is (N,)
      out.e_magnitude = logit_e_magnitude(loss, z, target.view_as(z), scale);
      out.S = (2 * scale * at::eye(num_outputs, z.options())).expand({z.size(0), num_outputs,
                                                                       num_outputs});
      out.curvature_scale = at::full({z.size(0), 1}, 2 * scale, z.options());
      break;
    }
    case Loss::BinaryCrossEntropy: {
      // One logit as the C = 1 case (the explicit Hessian's assembly serves every head):
      // S_i = s_i, e_i as logit_terms computes them; ds/dz kept for the backward.
      TORCH_INTERNAL_ASSERT(num_outputs == 1, "output_terms: binary cross-entropy has one logit");
      const LogitTerms<at::Tensor> t = logit_terms(loss, z.squeeze(1), target.reshape({-1}), scale);
      out.e = t.e.unsqueeze(1);
      out.e_magnitude = logit_e_magnitude(loss, z, target.reshape({-1, 1}), scale);
      out.S = t.s.view({-1, 1, 1});
      out.curvature_scale = t.s.unsqueeze(1);
      out.ds_dz = t.ds_dz.unsqueeze(1);
      break;
    }
  }
  return out;
}

at::Tensor output_terms_backward(Loss loss, const OutputTerms& terms, const at::Tensor& S_bar,
                                 const at::Tensor& e_bar) {
  switch (loss) {
    case Loss::CrossEntropy: {
      // de/dz = S, and for S = cτ(diag(p) − ppᵀ) with dp/dz = diag(p) − ppᵀ = S/(cτ):
      //   z̄ = S (ē + diag(S̄) − (S̄ + S̄ᵀ) p)            (docs/math.md §8.1)
      at::Tensor w = e_bar.defined() ? e_bar : at::zeros_like(terms.e);
      if (S_bar.defined()) {
        w = w + S_bar.diagonal(0, 1, 2) -
            at::matmul(S_bar + S_bar.transpose(1, 2), terms.probs.unsqueeze(2)).squeeze(2);
      }
      return at::matmul(terms.S, w.unsqueeze(2)).squeeze(2);
    }
    case Loss::MeanSquaredError:
      // S is constant; de/dz = S = 2c·I.
      return e_bar.defined() ? at::matmul(terms.S, e_bar.unsqueeze(2)).squeeze(2)
                             : at::zeros_like(terms.e);
    case Loss::BinaryCrossEntropy: {
      // de/dz = s, ds/dz = c·ℓ''' (losses.h).
      at::Tensor z_bar = at::zeros_like(terms.e);
      if (e_bar.defined()) z_bar = z_bar + terms.curvature_scale * e_bar;
      if (S_bar.defined()) z_bar = z_bar + terms.ds_dz * S_bar.view({-1, 1});
      return z_bar;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "output_terms_backward: unknown loss");
}

LogitRounding logit_rounding(Loss loss, const at::Tensor& e_magnitude, const at::Tensor& features,
                             const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& target, double scale) {
  at::Tensor logit_magnitude = at::matmul(features.abs(), weight.abs().t());  // Z
  if (bias) logit_magnitude = logit_magnitude + bias->abs();
  if (loss == Loss::MeanSquaredError) {
    return {2 * scale * (logit_magnitude + target.abs()), 0.0};
  }
  return {e_magnitude, 4.0 * static_cast<double>(features.size(1) + 2) *
                           logit_magnitude.max().item<double>()};
}

namespace {

// Σ_{c≠r} v_ic for every r, along dimension 1 of (N, C, ...): a product with 11ᵀ − I, never the
// total minus v_ir (which cancels when v_ir dominates).
at::Tensor sum_of_others(const at::Tensor& v) {
  const int64_t num_outputs = v.size(1);
  const at::Tensor others = 1 - at::eye(num_outputs, v.options());
  return v.dim() == 2 ? at::matmul(v, others) : at::matmul(others, v);
}

}  // namespace

at::Tensor factor_times(Loss loss, const OutputTerms& terms, const at::Tensor& U) {
  switch (loss) {
    case Loss::CrossEntropy: {
      // D_r = rest_r U_r − Σ_{c≠r} p_c U_c: both terms are small when p_r → 1, so D keeps its
      // relative accuracy where U_r − Σ_c p_c U_c would cancel.
      const at::Tensor D = terms.rest.unsqueeze(2) * U - sum_of_others(terms.probs.unsqueeze(2) * U);
      return (terms.curvature_scale * terms.probs).sqrt().unsqueeze(2) * D;
    }
    case Loss::MeanSquaredError:
    case Loss::BinaryCrossEntropy:  // S = s (C = 1)
      return terms.curvature_scale.sqrt().unsqueeze(2) * U;
  }
  TORCH_INTERNAL_ASSERT(false, "factor_times: binary cross-entropy has one logit");
}

FactorAdjoints factor_times_backward(Loss loss, const OutputTerms& terms, const at::Tensor& U,
                                     const at::Tensor& Y_bar) {
  switch (loss) {
    case Loss::CrossEntropy: {
      // Y_r = √(a p_r)·D_r with D_r = rest_r U_r − Σ_{c≠r} p_c U_c, a = cτ (docs/math.md §8.4):
      //   D̄_r = √(a p_r) Ȳ_r,   Ū_r = rest_r D̄_r − p_r Σ_{c≠r} D̄_c,
      //   p̄_r = (a / (2√(a p_r))) Ȳ_r·D_r + Σ_{c≠r} D̄_c·(U_c − U_r),
      // and through the softmax z̄ = p∘p̄ − p(p·p̄). The first term of p_r p̄_r is √(a p_r) Ȳ_r·D_r / 2,
      // finite as p_r → 0; z̄_r is taken as g_r rest_r − p_r Σ_{c≠r} g_c with g = p∘p̄, which does
      // not cancel when p_r → 1.
      const at::Tensor root = (terms.curvature_scale * terms.probs).sqrt();  // √(a p), (N, C)
      const at::Tensor D = terms.rest.unsqueeze(2) * U - sum_of_others(terms.probs.unsqueeze(2) * U);
      const at::Tensor D_bar = root.unsqueeze(2) * Y_bar;
      const at::Tensor others_D_bar = sum_of_others(D_bar);  // Σ_{c≠r} D̄_c, (N, C, H)
      FactorAdjoints out;
      out.U = terms.rest.unsqueeze(2) * D_bar - terms.probs.unsqueeze(2) * others_D_bar;
      // Σ_{c≠r} D̄_c·(U_c − U_r) = Σ_{c≠r} D̄_c·U_c − U_r·Σ_{c≠r} D̄_c
      const at::Tensor cross = sum_of_others((D_bar * U).sum(2)) - (U * others_D_bar).sum(2);
      const at::Tensor g = 0.5 * root * (Y_bar * D).sum(2) + terms.probs * cross;
      out.z = g * terms.rest - terms.probs * sum_of_others(g);
      return out;
    }
    case Loss::MeanSquaredError:
      return {terms.curvature_scale.sqrt().unsqueeze(2) * Y_bar, at::Tensor()};
    case Loss::BinaryCrossEntropy:
      break;
  }
  TORCH_INTERNAL_ASSERT(false, "factor_times_backward: binary cross-entropy has one logit");
}

}  // namespace torch_ws
