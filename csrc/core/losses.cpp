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
      // p_c(1 − p_c) and the residual τp_c − t_c = (Σ_{c'≠c} t_c') − τ·rest_c keep their relative
      // accuracy (the analogue of σ(z)σ(−z) for one logit).
      out.probs = at::softmax(z, 1);
      const at::Tensor others = 1 - at::eye(num_outputs, z.options());
      const at::Tensor rest = at::matmul(out.probs, others);  // Σ_{c'≠c} p_c' (others symmetric)
      const at::Tensor target_rest = at::matmul(target, others);
      const at::Tensor tau = target.sum(1, /*keepdim=*/true);
      out.e = scale * (target_rest - tau * rest);
      const at::Tensor p_i = out.probs.unsqueeze(2), p_j = out.probs.unsqueeze(1);
      out.S = (scale * tau).unsqueeze(2) * (at::diag_embed(out.probs * rest) - p_i * p_j * others);
      break;
    }
    case Loss::MeanSquaredError: {
      // ℓ = Σ_c (z_c − t_c)²: ∇ℓ = 2(z − t), ∇²ℓ = 2I.
      out.e = 2 * scale * (z - target);
      out.S = (2 * scale * at::eye(num_outputs, z.options())).expand({z.size(0), num_outputs,
                                                                       num_outputs});
      break;
    }
    case Loss::BinaryCrossEntropy:
      // One logit (its table row): logit_terms serves it, never the C-logit engine.
      TORCH_INTERNAL_ASSERT(false, "output_terms: binary cross-entropy has one logit");
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
    case Loss::BinaryCrossEntropy:
      break;
  }
  TORCH_INTERNAL_ASSERT(false, "output_terms_backward: binary cross-entropy has one logit");
}

}  // namespace torch_ws
