// The deep family's sample-space engine (docs/math.md §12.3): tr H and tr(H²) as Gram forms of
// per-sample matrices weighted by N × N feature kernels; never the n × n Hessian nor the
// (N, N, H, H) pair kernels. O(N²·(Σ_l H_l)²) time, O(N²) memory. ATen only: autograd
// differentiates it exactly, and it runs on any device.
#include "ops/deep/engines.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace torch_ws {
namespace {

// Σ_ij weight_ij·(A_i·B_j) for per-sample arrays A, B (N, ...): a Gram matrix of the flattened
// samples against an N × N weight, summed in float64.
at::Tensor weighted_gram(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0);
  const at::Tensor gram = at::mm(a.reshape({n, -1}), b.reshape({n, -1}).t());
  return (weight * gram).sum(at::kDouble);
}

// Σ_ij weight_ij·(left_ij·right_ij) with left_ij = Nᵢᵀp_j (N_i: (H_a, H_b), p_j: (H_a,)) and
// right_ij = G_jᵀz_i (G_j: (H_y, H_b), z_i: (H_y,)): the Q2 and T2 pattern of §12.3, in blocks of
// samples i so that the (block, N, H_b) arrays stay near 2²² numbers.
at::Tensor paired_products(const at::Tensor& weight, const at::Tensor& n_mats, const at::Tensor& p,
                           const at::Tensor& g_mats, const at::Tensor& z) {
  const int64_t n = n_mats.size(0), width = n_mats.size(2);
  const int64_t block = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, n * width));
  at::Tensor total = at::zeros({}, weight.options().dtype(at::kDouble));
  for (int64_t start = 0; start < n; start += block) {
    const int64_t stop = std::min(n, start + block);
    // left[i, j, b] = Σ_a N_i[a, b] p_j[a];  right[i, j, b] = Σ_y z_i[y] G_j[y, b]
    const at::Tensor left = at::einsum("iab,ja->ijb", {n_mats.slice(0, start, stop), p});
    const at::Tensor right = at::einsum("iy,jyb->ijb", {z.slice(0, start, stop), g_mats});
    total = total + (weight.slice(0, start, stop).unsqueeze(2) * left * right).sum(at::kDouble);
  }
  return total;
}

// The same sum where G_j = diag(d_j) (k = m − 1, where F_{m-1,m-1} = I): right_ijb = z_i[b]·d_j[b],
// so Σ_b left_ijb·right_ijb = ⟨N_i ∘ z_i (columns), p_j d_jᵀ⟩, one Gram of (H_a·H_b) arrays.
at::Tensor paired_products_diagonal(const at::Tensor& weight, const at::Tensor& n_mats,
                                    const at::Tensor& p, const at::Tensor& d, const at::Tensor& z) {
  return weighted_gram(weight, n_mats * z.unsqueeze(1), p.unsqueeze(2) * d.unsqueeze(1));
}

}  // namespace

std::pair<at::Tensor, at::Tensor> gram_form_traces(const JacobianChain& chain) {
  const Coefficients& c = chain.c;
  const int64_t out = chain.out, L = chain.L, N = chain.N, C = chain.C;
  const auto options = c.z[0].options();
  const auto& F = chain.F;
  const auto& r = chain.r;
  const auto& p = chain.p;
  const auto& curvature = chain.curvature;  // N[k][k'] of §12.3
  const auto E = [&](int64_t m, int64_t k) { return chain.E(m, k); };

  // tr H = tr G + tr R (§12.3), each diagonal term κ_k(i,i)·(per-sample trace).
  at::Tensor trace = at::zeros({}, options.dtype(at::kDouble));
  for (int64_t k = 1; k <= out; ++k) {
    const at::Tensor self = c.kappa[k].diagonal();
    trace = trace + (self * E(k, k).diagonal(0, 1, 2).sum(1)).sum(at::kDouble);
    for (int64_t l = k; l <= L; ++l) {
      trace = trace + (self * (r[l] * F[l][k].pow(2).sum(2)).sum(1)).sum(at::kDouble);
    }
  }

  // tr(G²) = Σ_ij tr(S_i K_ij S_j K_ijᵀ) with K_ij = Σ_k κ_k(i,j) B_ik B_jkᵀ (C × C): the
  // (N·C)² dual matrix of §8 where it is small (one logit: N²), else the same sum as Grams of the
  // per-sample E_{k'k} = B_k'ᵀ S B_k: Σ_{k,k'} Σ_ij κ_k κ_k' ⟨E^i_{k'k}, E^j_{k'k}⟩ (§12.3), whose
  // memory is N·H² rather than (N·C)².
  at::Tensor trace_sq;
  if ((N * C) * (N * C) <= (int64_t{1} << 26)) {
    at::Tensor K;
    for (int64_t k = 1; k <= out; ++k) {
      const at::Tensor B = F[out][k].reshape({N * C, -1});
      const at::Tensor term = at::mm(B, B.t()).view({N, C, N, C}) * c.kappa[k].view({N, 1, N, 1});
      K = K.defined() ? K + term : term;
    }
    const at::Tensor SKS =
        at::einsum("iajc,jcd->iajd", {at::einsum("iab,ibjc->iajc", {c.S, K}), c.S});
    trace_sq = (SKS * K).sum(at::kDouble);
  } else {
    trace_sq = at::zeros({}, options.dtype(at::kDouble));
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = 1; k2 <= out; ++k2) {
        const at::Tensor e = E(k2, k);
        trace_sq = trace_sq + weighted_gram(c.kappa[k] * c.kappa[k2], e, e);
      }
    }
  }

  // 2 tr(GR) + tr(R²) by the Gram forms of §12.3. Where a factor is diagonal (N_LL = diag r_L;
  // G = D'_{m-1} when k = m − 1) its Gram is one of vectors: ⟨diag a, diag b⟩ = a·b.
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = 1; k2 <= L; ++k2) {
      const at::Tensor weight = c.kappa[k] * c.kappa[k2];
      if (k == L && k2 == L) {
        trace_sq = trace_sq + weighted_gram(weight, r[L], r[L])                   // Q1
                   + 2 * weighted_gram(weight, E(L, L).diagonal(0, 1, 2), r[L]);  // 2·T1
        continue;
      }
      trace_sq = trace_sq + weighted_gram(weight, curvature[k][k2], curvature[k][k2])  // Q1
                 + 2 * weighted_gram(weight, E(k, k2), curvature[k][k2]);               // 2·T1
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    for (int64_t k = 1; k < m; ++k) {
      const at::Tensor pair_weight = c.kappa[k] * at::mm(p[m], p[m].t());
      if (k == m - 1) {
        const at::Tensor& d = c.d1[m - 1];
        trace_sq = trace_sq + 4 * paired_products_diagonal(c.kappa[k], E(m, k), p[m], d,
                                                           c.z[m - 1]);  // 2·T2
        if (m <= L) {
          trace_sq = trace_sq + 4 * paired_products_diagonal(c.kappa[k], curvature[m][k], p[m],
                                                             d, c.z[m - 1]);  // Q2
        }
        trace_sq = trace_sq + 2 * weighted_gram(pair_weight, d, d);  // Q3
        continue;
      }
      // g_ij = F_{j,m-1,k}ᵀ(φ'_{j,m-1} ∘ z_{i,m-1}): G_j = D'_{j,m-1} F_{j,m-1,k}
      const at::Tensor G = c.d1[m - 1].unsqueeze(2) * F[m - 1][k];
      trace_sq = trace_sq + 4 * paired_products(c.kappa[k], E(m, k), p[m], G, c.z[m - 1]);  // 2·T2
      if (m <= L) {
        trace_sq = trace_sq +
                   4 * paired_products(c.kappa[k], curvature[m][k], p[m], G, c.z[m - 1]);  // Q2
      }
      trace_sq = trace_sq + 2 * weighted_gram(pair_weight, G, G);  // Q3
    }
  }
  return {trace, trace_sq};
}

}  // namespace torch_ws
