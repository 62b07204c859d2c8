// Stage 3 of the sample-space engine (docs/math.md §6): from the adjoints of a scalar with respect
// to the per-sample arrays, through U, V, s, e, z and A to x, w1, b1, w2, b2. O(N(D+H)): no Gram
// matrix is involved. ATen, any device; the CPU's tiled path fuses the elementwise part instead
// (cpu/weighted_chain.cpp), from the same formulas (chain_terms.h).
#include "sample_space.h"

#include "chain_terms.h"
#include "core/weighted_sum.h"

namespace torch_ws {

InputGradients chain_to_inputs(const MlpProblem& p, const SampleFeatures& f,
                               const SampleAdjoints& a, bool need_grad_x) {
  namespace ct = chain_terms;
  const at::Tensor w2 = p.output_row();
  const at::Tensor z_bar = ct::logit_adjoint(f.ds_dz, f.s, a.s, a.e).unsqueeze(1);
  const at::Tensor pre_bar = ct::pre_activation_adjoint(a.phi0, a.phi1, a.U, a.V, z_bar, w2,
                                                        f.phi1, f.phi2, f.phi3);
  InputGradients g;
  g.w1 = at::mm(pre_bar.t(), f.x);
  // x enters through A and through K (whose adjoint arrives as a.x).
  if (need_grad_x) g.x = at::addmm(a.x, pre_bar, p.w1());
  if (p.b1()) g.b1 = pre_bar.sum(0);
  g.w2 = ct::output_weight_adjoint(a.U, a.V, z_bar, f.phi0, f.phi1, f.phi2).sum(0).reshape_as(p.w2());
  if (p.b2()) g.b2 = z_bar.sum().reshape({1});
  return g;
}

SampleAdjoints weigh_adjoints(const at::Tensor& alpha, const SampleAdjoints& a,
                              const at::Tensor& beta, const SampleAdjoints& b) {
  return {weighted_sum(alpha, a.U, beta, b.U),       weighted_sum(alpha, a.V, beta, b.V),
          weighted_sum(alpha, a.phi0, beta, b.phi0), weighted_sum(alpha, a.phi1, beta, b.phi1),
          weighted_sum(alpha, a.x, beta, b.x),       weighted_sum(alpha, a.s, beta, b.s),
          weighted_sum(alpha, a.e, beta, b.e)};
}

}  // namespace torch_ws
