// Stage 2 of the sample-space engine on whole N×N matrices: device-agnostic ATen, O(N²) memory.
// It serves every device without a tiled kernel of its own (and the TORCH_WS_TILE_SIZE=whole
// setting on the CPU). The per-pair formulas are those of core/pair_terms.h, on whole tensors.
#include "core/pair_terms.h"
#include "sample_space.h"

namespace torch_ws {

PairwiseResult pairwise_whole(const SampleFeatures& f, Gradients gradients) {
  namespace pt = pair_terms;
  // Gram matrices (docs/math.md §2) and the products of the residual kernels (§4), all N×N.
  at::Tensor K = at::mm(f.x, f.x.t());
  if (f.has_b1) K.add_(1);
  at::Tensor Q = at::mm(f.U, f.U.t());
  at::Tensor R = at::mm(f.phi0, f.phi0.t());
  if (f.has_b2) R.add_(1);
  at::Tensor UU = f.U * f.U, Uphi0 = f.U * f.phi0;
  at::Tensor P1 = at::mm(UU, f.V.t()), P2 = at::mm(Uphi0, f.phi1.t());
  at::Tensor P3 = at::mm(f.V, f.V.t()), P4 = at::mm(f.phi1, f.phi1.t());
  at::Tensor G = pt::tangent_kernel(K, Q, R);
  at::Tensor B = pt::residual_kernel(K, P1, P2);
  at::Tensor C = pt::residual_kernel(K, P3, P4);

  // tr(H²) = Σ_ij f(i, j), summed entry by entry in float64.
  at::Tensor s_i = f.s.unsqueeze(1), s_j = f.s.unsqueeze(0);
  at::Tensor e_i = f.e.unsqueeze(1), e_j = f.e.unsqueeze(0);
  PairwiseResult out;
  out.trace_sq = pt::pair_value(s_i, e_i, s_j, e_j, G, B, C).sum(at::kDouble);
  if (gradients == Gradients::None) return out;

  // Reverse mode through the lines above (docs/math.md §6), upstream gradient 1.
  SampleAdjoints a;
  a.s = 2 * (at::mv(G * G, f.s) + at::mv(B, f.e));
  a.e = 2 * (at::mv(B.t(), f.s) + at::mv(C, f.e));  // C is symmetric
  const pt::KernelAdjoints<at::Tensor> kernel = pt::pair_kernel_adjoints(s_i, e_i, s_j, e_j, G);
  const pt::GramAdjoints<at::Tensor> gram =
      pt::gram_adjoints(K, Q, P1, P2, P3, P4, kernel.G, kernel.B, kernel.C);
  // Each Gram product P = L Rᵀ sends back L̄ = P̄R and R̄ = P̄ᵀL; the symmetric ones (K, Q, R, P3,
  // P4, whose adjoints are symmetric too) send 2P̄L.
  at::Tensor P2_bar_phi1 = at::mm(gram.P2, f.phi1);
  a.U = 2 * at::mm(gram.Q, f.U) + 2 * f.U * at::mm(gram.P1, f.V) + f.phi0 * P2_bar_phi1;
  a.V = at::mm(gram.P1.t(), UU) + 2 * at::mm(gram.P3, f.V);
  a.phi0 = 2 * at::mm(gram.R, f.phi0) + f.U * P2_bar_phi1;
  a.phi1 = at::mm(gram.P2.t(), Uphi0) + 2 * at::mm(gram.P4, f.phi1);
  if (gradients == Gradients::ParametersAndX) a.x = at::mm(gram.K + gram.K.t(), f.x);
  out.adjoints = std::move(a);
  return out;
}

}  // namespace torch_ws
