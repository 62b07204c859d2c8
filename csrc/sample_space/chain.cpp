// Stage 3 of the sample-space engine (docs/math.md §6): from the adjoints of a scalar with respect
// to the per-sample arrays, through U, V, s, e, z and A to x, w1, b1, w2, b2. O(N(D+H)): no Gram
// matrix is involved.
#include "sample_space.h"

namespace torch_ws {

InputGradients chain_to_inputs(const MlpProblem& p, const SampleFeatures& f,
                               const SampleAdjoints& a, bool need_grad_x) {
  const at::Tensor w2 = p.output_row();

  // U = Φ1 diag(w2), V = Φ2 diag(w2).
  at::Tensor phi1_bar = a.phi1 + a.U * w2;
  at::Tensor phi2_bar = a.V * w2;
  at::Tensor w2_bar = (a.U * f.phi1).sum(0) + (a.V * f.phi2).sum(0);

  // s and e depend on the logit z: ds/dz = c·ℓ''', de/dz = c·ℓ'' = s (losses.h).
  at::Tensor z_bar = f.ds_dz * a.s + f.s * a.e;

  // z = Φ0 w2ᵀ + b2.
  at::Tensor phi0_bar = a.phi0 + z_bar.unsqueeze(1) * w2;
  w2_bar = w2_bar + at::mv(f.phi0.t(), z_bar);

  // Φk = φ^(k)(A), A = X W1ᵀ + b1.
  at::Tensor pre_bar = phi0_bar * f.phi1 + phi1_bar * f.phi2 + phi2_bar * f.phi3;
  InputGradients g;
  g.w1 = at::mm(pre_bar.t(), f.x);
  // x enters through A and through K (whose adjoint arrives as a.x).
  if (need_grad_x) g.x = at::addmm(a.x, pre_bar, p.w1);
  if (p.b1) g.b1 = pre_bar.sum(0);
  g.w2 = w2_bar.reshape_as(p.w2);
  if (p.b2) g.b2 = z_bar.sum().reshape({1});
  return g;
}

}  // namespace torch_ws
