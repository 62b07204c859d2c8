// The deep family's sample-space engine (docs/math.md §12.3): tr H and tr(H²) as Gram forms of
// per-sample matrices weighted by feature kernels; never the n × n Hessian nor the (N, N, H, H)
// pair kernels. O(N²·(Σ_l H_l)²) time. Tiled (§12.4): the pairs (i, j) run in tiles of rows i
// against every j, so that no N × N matrix is held whole (each tile's feature kernels and Grams
// are (rows, N)); the per-sample arrays are O(N·L²H²). A share [begin, end) of the rows i is the
// part one rank of dataset_bounds evaluates. ATen only: autograd differentiates it exactly, and
// it runs on any device.
#include "ops/deep/engines.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;

// The numbers of one (rows, N) matrix of a tile: 32 MiB in float64. The paired products' (rows,
// N, H) arrays are blocked to the same size.
constexpr int64_t kTileNumbers = int64_t{1} << 22;

// Samples [begin, end) of a per-sample array (N, ...).
struct Rows {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
  Tensor of(const Tensor& t) const { return t.narrow(0, begin, end - begin); }
};

// Σ_{i ∈ tile, j} weight_ij·(a_i·b_j) for a tile's rows a (rows, ...), every sample's b (N, ...)
// and weight (rows, N): a Gram of the flattened samples, summed in float64.
Tensor weighted_gram(const Tensor& weight, const Tensor& a, const Tensor& b) {
  const Tensor gram = at::mm(a.reshape({a.size(0), -1}), b.reshape({b.size(0), -1}).t());
  return (weight * gram).sum(at::kDouble);
}

// Σ_{i ∈ tile, j} weight_ij·(left_ij·right_ij) with left_ij = Nᵢᵀp_j (N_i: (H_a, H_b), p_j:
// (H_a,)) and right_ij = G_jᵀz_i (G_j: (H_y, H_b), z_i: (H_y,)): the Q2 and T2 pattern of §12.3.
// n_mats, z and weight are the tile's rows; p and g_mats every sample's. In blocks of rows so
// that the (block, N, H_b) arrays stay near kTileNumbers.
Tensor paired_products(const Tensor& weight, const Tensor& n_mats, const Tensor& p,
                       const Tensor& g_mats, const Tensor& z) {
  const int64_t rows = n_mats.size(0), n = p.size(0), width = n_mats.size(2);
  const int64_t block = std::max<int64_t>(1, kTileNumbers / std::max<int64_t>(1, n * width));
  Tensor total = at::zeros({}, weight.options().dtype(at::kDouble));
  for (int64_t start = 0; start < rows; start += block) {
    const int64_t stop = std::min(rows, start + block);
    // left[i, j, b] = Σ_a N_i[a, b] p_j[a];  right[i, j, b] = Σ_y z_i[y] G_j[y, b]
    const Tensor left = at::einsum("iab,ja->ijb", {n_mats.slice(0, start, stop), p});
    const Tensor right = at::einsum("iy,jyb->ijb", {z.slice(0, start, stop), g_mats});
    total = total + (weight.slice(0, start, stop).unsqueeze(2) * left * right).sum(at::kDouble);
  }
  return total;
}

// The same sum where G_j = diag(d_j) (k = m − 1, where F_{m-1,m-1} = I): right_ijb = z_i[b]·d_j[b],
// so Σ_b left_ijb·right_ijb = ⟨N_i ∘ z_i (columns), p_j d_jᵀ⟩, one Gram of (H_a·H_b) arrays;
// `p_d` is every sample's p_j d_jᵀ.
Tensor paired_products_diagonal(const Tensor& weight, const Tensor& n_mats, const Tensor& p_d,
                                const Tensor& z) {
  return weighted_gram(weight, n_mats * z.unsqueeze(1), p_d);
}

// The rows of a tile per step: 2²² numbers per (rows, N) matrix (so a single tile up to
// N = 2048), or the caller's count.
int64_t rows_per_tile(int64_t per_row, int64_t requested) {
  if (requested > 0) return requested;
  return std::max<int64_t>(1, kTileNumbers / std::max<int64_t>(1, per_row));
}

}  // namespace

std::pair<Tensor, Tensor> gram_form_traces(const JacobianChain& chain) {
  return gram_form_traces(chain, GramShare{});
}

std::pair<Tensor, Tensor> gram_form_traces(const JacobianChain& chain, GramShare share) {
  const Coefficients& c = chain.c;
  const int64_t out = chain.out, L = chain.L, N = chain.N, C = chain.C;
  const auto options = c.z[0].options().dtype(at::kDouble);
  const int64_t end = share.end < 0 ? N : share.end;
  TORCH_CHECK(0 <= share.begin && share.begin <= end && end <= N,
              "gram_form_traces: expected 0 <= begin <= end <= N = ", N, ", got ", share.begin,
              ", ", end);
  const Rows all{share.begin, end};
  const auto& F = chain.F;
  const auto& r = chain.r;
  const auto& p = chain.p;
  const auto& curvature = chain.curvature;  // N[k][k'] of §12.3

  // The feature kernel κ_k(i, j) = ã_{i,k-1}·ã_{j,k-1} for the tile's rows i and every j.
  const auto kappa = [&](int64_t k, Rows rows) {
    const Tensor& z = c.z[k - 1];
    const Tensor gram = at::mm(rows.of(z), z.t());
    return c.bias[k] ? gram + 1 : gram;
  };
  // E(m, k) = B_mᵀ S B_k for the tile's rows (chain.E for all of them).
  const auto E_rows = [&](int64_t m, int64_t k, Rows rows) {
    return at::matmul(rows.of(F[out][m]).transpose(1, 2),
                      at::matmul(rows.of(c.S), rows.of(F[out][k])));
  };

  // tr H = tr G + tr R (§12.3), each diagonal term κ_k(i,i)·(per-sample trace).
  Tensor trace = at::zeros({}, options);
  for (int64_t k = 1; k <= out; ++k) {
    const Tensor self = all.of(c.z[k - 1]).pow(2).sum(1) + (c.bias[k] ? 1 : 0);
    trace = trace + (self * E_rows(k, k, all).diagonal(0, 1, 2).sum(1)).sum(at::kDouble);
    for (int64_t l = k; l <= L; ++l) {
      trace = trace + (self * (all.of(r[l]) * all.of(F[l][k]).pow(2).sum(2)).sum(1))
                          .sum(at::kDouble);
    }
  }
  Tensor trace_sq = at::zeros({}, options);
  if (all.size() == 0) return {trace, trace_sq};

  // tr(G²) = Σ_ij tr(S_i K_ij S_j K_ijᵀ) with K_ij = Σ_k κ_k(i,j) B_ik B_jkᵀ (C × C): the
  // (N·C)² dual matrix of §8 where it is small (one logit: N²; a tile of its rows at a time),
  // else the same sum as Grams of the per-sample E_{k'k} = B_k'ᵀ S B_k (below), whose memory is
  // N·H² rather than (N·C)².
  const bool dual = (N * C) * (N * C) <= (int64_t{1} << 26);
  if (dual) {
    const int64_t step = rows_per_tile(N * C * C, share.tile_rows);
    for (int64_t begin = all.begin; begin < all.end; begin += step) {
      const Rows rows{begin, std::min(all.end, begin + step)};
      Tensor K;  // (rows, C, N, C)
      for (int64_t k = 1; k <= out; ++k) {
        const Tensor& B = F[out][k];
        const Tensor term =
            at::mm(rows.of(B).reshape({rows.size() * C, -1}), B.reshape({N * C, -1}).t())
                .view({rows.size(), C, N, C}) *
            kappa(k, rows).view({rows.size(), 1, N, 1});
        K = K.defined() ? K + term : term;
      }
      const Tensor SKS =
          at::einsum("iajc,jcd->iajd", {at::einsum("iab,ibjc->iajc", {rows.of(c.S), K}), c.S});
      trace_sq = trace_sq + (SKS * K).sum(at::kDouble);
    }
  }

  // Every sample's right-hand factors, formed once: the Gauss-Newton blocks E_{k'k} (k ≤ k';
  // E_{kk'} = E_{k'k}ᵀ with the same Grams) where the dual matrix is not used, p_m d_{m-1}ᵀ, and
  // G_{mk} = D'_{m-1}F_{m-1,k} of §12.3's g^{ij}.
  std::vector<std::vector<Tensor>> E_all(out + 1, std::vector<Tensor>(out + 1));
  if (!dual) {
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = k; k2 <= out; ++k2) E_all[k2][k] = chain.E(k2, k);
    }
  }
  std::vector<Tensor> p_d(out + 1);
  std::vector<std::vector<Tensor>> G(out + 1, std::vector<Tensor>(out + 1));
  for (int64_t m = 2; m <= out; ++m) {
    p_d[m] = p[m].unsqueeze(2) * c.d1[m - 1].unsqueeze(1);
    for (int64_t k = 1; k < m - 1; ++k) G[m][k] = c.d1[m - 1].unsqueeze(2) * F[m - 1][k];
  }

  const int64_t step = rows_per_tile(N, share.tile_rows);
  for (int64_t begin = all.begin; begin < all.end; begin += step) {
    const Rows rows{begin, std::min(all.end, begin + step)};
    std::vector<Tensor> kappas(out + 1);
    for (int64_t k = 1; k <= out; ++k) kappas[k] = kappa(k, rows);

    if (!dual) {  // tr(G²) = Σ_{k,k'} Σ_ij κ_k κ_k' ⟨E^i_{k'k}, E^j_{k'k}⟩ (§12.3)
      for (int64_t k = 1; k <= out; ++k) {
        for (int64_t k2 = k; k2 <= out; ++k2) {
          const Tensor gram =
              weighted_gram(kappas[k] * kappas[k2], rows.of(E_all[k2][k]), E_all[k2][k]);
          trace_sq = trace_sq + (k2 == k ? gram : 2 * gram);
        }
      }
    }

    // 2 tr(GR) + tr(R²) by the Gram forms of §12.3. Where a factor is diagonal (N_LL = diag
    // r_L; G = D'_{m-1} when k = m − 1) its Gram is one of vectors: ⟨diag a, diag b⟩ = a·b.
    for (int64_t k = 1; k <= L; ++k) {
      for (int64_t k2 = 1; k2 <= L; ++k2) {
        const Tensor weight = kappas[k] * kappas[k2];
        if (k == L && k2 == L) {
          trace_sq = trace_sq + weighted_gram(weight, rows.of(r[L]), r[L])  // Q1
                     + 2 * weighted_gram(weight, E_rows(L, L, rows).diagonal(0, 1, 2),
                                         r[L]);  // 2·T1
          continue;
        }
        const Tensor& n_kk = curvature[k][k2];
        trace_sq = trace_sq + weighted_gram(weight, rows.of(n_kk), n_kk)            // Q1
                   + 2 * weighted_gram(weight, E_rows(k, k2, rows), n_kk);         // 2·T1
      }
    }
    for (int64_t m = 2; m <= out; ++m) {
      for (int64_t k = 1; k < m; ++k) {
        const Tensor pair_weight = kappas[k] * at::mm(rows.of(p[m]), p[m].t());
        const Tensor z_rows = rows.of(c.z[m - 1]);
        if (k == m - 1) {
          const Tensor& d = c.d1[m - 1];
          trace_sq = trace_sq + 4 * paired_products_diagonal(kappas[k], E_rows(m, k, rows),
                                                             p_d[m], z_rows);  // 2·T2
          if (m <= L) {
            trace_sq = trace_sq + 4 * paired_products_diagonal(
                                          kappas[k], rows.of(curvature[m][k]), p_d[m],
                                          z_rows);  // Q2
          }
          trace_sq = trace_sq + 2 * weighted_gram(pair_weight, rows.of(d), d);  // Q3
          continue;
        }
        // g_ij = F_{j,m-1,k}ᵀ(φ'_{j,m-1} ∘ z_{i,m-1}): G_j = D'_{j,m-1} F_{j,m-1,k}
        trace_sq = trace_sq + 4 * paired_products(kappas[k], E_rows(m, k, rows), p[m], G[m][k],
                                                  z_rows);  // 2·T2
        if (m <= L) {
          trace_sq = trace_sq + 4 * paired_products(kappas[k], rows.of(curvature[m][k]), p[m],
                                                    G[m][k], z_rows);  // Q2
        }
        trace_sq = trace_sq + 2 * weighted_gram(pair_weight, rows.of(G[m][k]), G[m][k]);  // Q3
      }
    }
  }
  return {trace, trace_sq};
}

}  // namespace torch_ws
