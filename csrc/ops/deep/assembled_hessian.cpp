// The deep family's parameter-space engine (docs/math.md §12.7): the n × n Hessian assembled
// block by block, each block one matrix product over the N samples, then tr H and ‖H‖²_F.
// O(N·n²) time, O(n² + N·H²) memory. ATen only, as the Gram forms: autograd's reverse mode of
// the assembly is the gradient (its backward is two more products per block with the block's
// adjoint 2·H_block), and it runs on any device.
//
// The parameters of layer l are taken as W̃_l = [W_l, b_l] (H_l × H̃_{l-1}), entry (p, q); the
// traces do not depend on the order of the parameters, so the blocks are never permuted into
// nn.Sequential's order.
#include "ops/deep/engines.h"

#include <ATen/ATen.h>

namespace torch_ws {
namespace {

// Σ_i vec(X_i) vec(Y_i)ᵀ for per-sample arrays X (N, ...) and Y (N, ...): one product whose
// inner dimension is the samples.
at::Tensor sum_over_samples(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.size(0);
  return at::mm(x.reshape({n, -1}).t(), y.reshape({n, -1}));
}

}  // namespace

std::pair<at::Tensor, at::Tensor> assembled_hessian_traces(const JacobianChain& chain) {
  const Coefficients& c = chain.c;
  const int64_t out = chain.out, L = chain.L, N = chain.N;
  const auto options = c.z[0].options();
  std::vector<at::Tensor> features(out + 1);  // ã_{l-1}, entering layer l
  for (int64_t l = 1; l <= out; ++l) features[l] = chain.features_in(l);
  // The per-sample factor of block (m, k) that multiplies ã_{m-1}ã_{k-1}ᵀ (§12.7): the
  // Gauss-Newton part E(m, k) and the forward curvature N[m][k] (hidden m, k; N[L][L] = diag r_L).
  const auto factor = [&](int64_t m, int64_t k) {
    at::Tensor f = chain.E(m, k);
    if (m <= L && k <= L) {
      f = f + (m == L && k == L ? at::diag_embed(chain.r[L]) : chain.curvature[m][k]);
    }
    return f;
  };

  at::Tensor trace = at::zeros({}, options.dtype(at::kDouble));
  at::Tensor trace_sq = at::zeros({}, options.dtype(at::kDouble));
  for (int64_t m = 1; m <= out; ++m) {
    for (int64_t k = 1; k <= m; ++k) {
      const at::Tensor x = factor(m, k);  // (N, H_m, H_k)
      const int64_t rows = x.size(1), cols = x.size(2);
      const int64_t in_m = features[m].size(1), in_k = features[k].size(1);
      if (m == k) {
        // Its diagonal: Σ_i tr(X_i)·‖ã_{i,k-1}‖², without the block.
        trace = trace + (x.diagonal(0, 1, 2).sum(1) * features[k].pow(2).sum(1)).sum(at::kDouble);
      }
      // H[(m; p, q), (k; P, Q)] = Σ_i X_i[p, P] ã_{i,m-1}[q] ã_{i,k-1}[Q], laid out (p, P, q, Q).
      at::Tensor block = sum_over_samples(
          x, features[m].unsqueeze(2) * features[k].unsqueeze(1));
      if (k < m) {
        // W̃_m multiplies z_{m-1}, which depends on W̃_k: Σ_i p_m[p] G_i[q, P] ã_{i,k-1}[Q] with
        // G = D'_{m-1} F_{m-1,k} (the bias's coordinate q of ã_{m-1} is constant: a zero row).
        at::Tensor g = c.d1[m - 1].unsqueeze(2) * chain.F[m - 1][k];  // (N, H_{m-1}, H_k)
        if (c.bias[m]) g = at::constant_pad_nd(g, {0, 0, 0, 1});
        const at::Tensor pair = sum_over_samples(
            chain.p[m].unsqueeze(2) * features[k].unsqueeze(1), g);  // (p, Q) × (q, P)
        block = block.view({rows, cols, in_m, in_k}) +
                pair.view({rows, in_k, in_m, cols}).permute({0, 3, 2, 1});
      }
      // Off-diagonal blocks stand twice in ‖H‖²_F (H is symmetric).
      trace_sq = trace_sq + (m == k ? 1 : 2) * block.pow(2).sum(at::kDouble);
    }
  }
  return {trace, trace_sq};
}

}  // namespace torch_ws
