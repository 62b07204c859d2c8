// Stage 1 of the sample-space engine: per-sample features, the diagonals of tr H and their
// adjoints (docs/math.md §2, §4).
#include "sample_space.h"

#include "chain_terms.h"

namespace torch_ws {

SampleFeatures sample_features(const MlpProblem& p, bool for_gradients) {
  SampleFeatures f;
  f.x = p.x.contiguous();
  const at::Tensor w2 = p.output_row();  // (H,)
  // A = X W1ᵀ + b1, then φ and its derivatives (φ''' only for the gradients' chain through Φ2).
  at::Tensor pre = p.b1() ? at::addmm(*p.b1(), f.x, p.w1().t()) : at::mm(f.x, p.w1().t());
  ActivationValues<at::Tensor> act = activation_values(p.activation, pre, for_gradients ? 3 : 2);
  f.phi0 = act.phi0.contiguous();
  f.phi1 = act.phi1.contiguous();
  f.phi2 = act.phi2.contiguous();
  f.phi3 = act.phi3;
  f.U = f.phi1 * w2;
  f.V = f.phi2 * w2;
  // z = Φ0 w2ᵀ + b2; s and e are the loss's second and first derivatives in the logit.
  at::Tensor z = at::mv(f.phi0, w2);
  if (p.b2()) z = z + *p.b2();
  LogitTerms<at::Tensor> logit = logit_terms(p.loss, z, p.target, p.loss_scale());
  f.s = logit.s;
  f.e = logit.e;
  if (for_gradients) f.ds_dz = logit.ds_dz;
  f.has_b1 = p.b1().has_value();
  f.has_b2 = p.b2().has_value();
  return f;
}

Diagonals diagonals(const SampleFeatures& f) {
  return {(f.x * f.x).sum(1) + (f.has_b1 ? 1 : 0), (f.U * f.U).sum(1),
          (f.phi0 * f.phi0).sum(1) + (f.has_b2 ? 1 : 0), f.V.sum(1)};
}

at::Tensor trace_float64(const SampleFeatures& f, const Diagonals& d) {
  return (f.s * (d.k * d.q + d.r) + f.e * d.k * d.v).sum(at::kDouble);
}

SampleAdjoints trace_adjoints(const SampleFeatures& f, const Diagonals& d, bool need_grad_x) {
  const auto t = chain_terms::trace_adjoints(f.s, f.e, d.k, d.q, d.r, d.v);
  SampleAdjoints a;
  a.s = t.s;
  a.e = t.e;
  a.U = t.u.unsqueeze(1) * f.U;
  a.phi0 = t.phi0.unsqueeze(1) * f.phi0;
  a.V = t.v.unsqueeze(1).expand_as(f.V);
  a.phi1 = at::zeros_like(f.phi1);
  if (need_grad_x) a.x = t.x.unsqueeze(1) * f.x;
  return a;
}

}  // namespace torch_ws
