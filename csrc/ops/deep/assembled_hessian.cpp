// The deep family's parameter-space engine (docs/math.md §12.7): the n × n Hessian assembled
// block by block, each block one matrix product over the N samples, then tr H and ‖H‖²_F.
// O(N·n²) time, O(n² + N·H²) memory. ATen only, as the Gram forms: autograd's reverse mode of
// the assembly is the gradient (its backward is two more products per block with the block's
// adjoint 2·H_block), and it runs on any device.
//
// The parameters of layer l are taken as W̃_l = [W_l, b_l] (H_l × H̃_{l-1}), entry (p, q); the
// traces do not depend on the order of the parameters, so for them the blocks are never permuted
// into nn.Sequential's order (assembled_hessian, the matrix the intervals certify on, is).
#include "ops/deep/engines.h"

#include "core/packed_symmetric.h"
#include "core/rounding.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace torch_ws {
namespace {

// Σ_i vec(X_i) vec(Y_i)ᵀ for per-sample arrays X (N, ...) and Y (N, ...): one product whose
// inner dimension is the samples.
at::Tensor sum_over_samples(const at::Tensor& x, const at::Tensor& y) {
  const int64_t n = x.size(0);
  return at::mm(x.reshape({n, -1}).t(), y.reshape({n, -1}));
}

// The assembly of (12.7): the per-sample factors and features of a chain, and its blocks.
class Assembly {
 public:
  explicit Assembly(const JacobianChain& chain) : chain_(chain), features_(chain.out + 1) {
    for (int64_t l = 1; l <= chain.out; ++l) features_[l] = chain.features_in(l);
  }

  // The per-sample factor of block (m, k) that multiplies ã_{m-1}ã_{k-1}ᵀ: the Gauss-Newton
  // part E(m, k) and the forward curvature N[m][k] (hidden m, k; N[L][L] = diag r_L).
  at::Tensor factor(int64_t m, int64_t k) const {
    at::Tensor f = chain_.E(m, k);
    const int64_t L = chain_.L;
    if (m <= L && k <= L) {
      f = f + (m == L && k == L ? at::diag_embed(chain_.r[L]) : chain_.curvature[m][k]);
    }
    return f;
  }

  // H_mk (k ≤ m) laid out (p, P, q, Q): (H_m, H_k, H̃_{m-1}, H̃_{k-1}), from its factor.
  at::Tensor block(int64_t m, int64_t k, const at::Tensor& x) const {
    const int64_t rows = x.size(1), cols = x.size(2);
    const int64_t in_m = features_[m].size(1), in_k = features_[k].size(1);
    // H[(m; p, q), (k; P, Q)] = Σ_i X_i[p, P] ã_{i,m-1}[q] ã_{i,k-1}[Q].
    at::Tensor out = sum_over_samples(x, features_[m].unsqueeze(2) * features_[k].unsqueeze(1))
                         .view({rows, cols, in_m, in_k});
    if (k < m) {
      // W̃_m multiplies z_{m-1}, which depends on W̃_k: Σ_i p_m[p] G_i[q, P] ã_{i,k-1}[Q] with
      // G = D'_{m-1} F_{m-1,k} (the bias's coordinate q of ã_{m-1} is constant: a zero row).
      at::Tensor g = chain_.c.d1[m - 1].unsqueeze(2) * chain_.F[m - 1][k];  // (N, H_{m-1}, H_k)
      if (chain_.c.bias[m]) g = at::constant_pad_nd(g, {0, 0, 0, 1});
      const at::Tensor pair = sum_over_samples(
          chain_.p[m].unsqueeze(2) * features_[k].unsqueeze(1), g);  // (p, Q) × (q, P)
      out = out + pair.view({rows, in_k, in_m, cols}).permute({0, 3, 2, 1});
    }
    return out;
  }

  // A diagonal block H_kk packed: both X_i and ã ãᵀ are symmetric, so H_kk[(p,q),(P,Q)] depends
  // only on the pairs {p, P} and {q, Q}; C = Σ_i vech(X_i) vech(ã_iã_iᵀ)ᵀ holds each value once,
  // a quarter of the block's products. Returns C and the two packings (rows: X's, columns: ã's).
  struct Packed {
    at::Tensor values;
    PackedSymmetric rows, columns;
  };
  Packed diagonal_block(int64_t k, const at::Tensor& x) const {
    const int64_t n = x.size(0), width = x.size(1), in = features_[k].size(1);
    PackedSymmetric rows(width, x.options()), columns(in, x.options());
    const at::Tensor outer =
        features_[k].index_select(1, columns.row) * features_[k].index_select(1, columns.col);
    at::Tensor values = at::mm(x.reshape({n, -1}).index_select(1, rows.upper).t(), outer);
    return {std::move(values), std::move(rows), std::move(columns)};
  }

  const at::Tensor& features(int64_t l) const { return features_[l]; }

 private:
  const JacobianChain& chain_;
  std::vector<at::Tensor> features_;  // ã_{l-1}, entering layer l
};

// tr H = Σ_k Σ_i tr(X_{i,kk})·‖ã_{i,k-1}‖² (§12.7), from the diagonal blocks' factors only.
at::Tensor assembled_trace(const Assembly& assembly, const JacobianChain& chain) {
  at::Tensor trace = at::zeros({}, chain.c.z[0].options().dtype(at::kDouble));
  for (int64_t k = 1; k <= chain.out; ++k) {
    const at::Tensor x = assembly.factor(k, k);  // (N, H_k, H_k)
    trace = trace + (x.diagonal(0, 1, 2).sum(1) * assembly.features(k).pow(2).sum(1))
                        .sum(at::kDouble);
  }
  return trace;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> assembled_hessian_traces(const JacobianChain& chain) {
  const Assembly assembly(chain);
  const auto options = chain.c.z[0].options().dtype(at::kDouble);
  at::Tensor trace_sq = at::zeros({}, options);
  for (int64_t m = 1; m <= chain.out; ++m) {
    for (int64_t k = 1; k <= m; ++k) {
      const at::Tensor x = assembly.factor(m, k);  // (N, H_m, H_k)
      if (m == k) {  // each packed value stands w_row·w_column times in the block
        const Assembly::Packed packed = assembly.diagonal_block(k, x);
        trace_sq = trace_sq + (packed.values.pow(2) * packed.rows.weight.unsqueeze(1) *
                               packed.columns.weight.unsqueeze(0))
                                  .sum(at::kDouble);
        continue;
      }
      // Off-diagonal blocks stand twice in ‖H‖²_F (H is symmetric).
      trace_sq = trace_sq + 2 * assembly.block(m, k, x).pow(2).sum(at::kDouble);
    }
  }
  return {assembled_trace(assembly, chain), trace_sq};
}

double assembled_frobenius_bound(const JacobianChain& magnitudes) {
  const Assembly assembly(magnitudes);
  // ‖Σ_i X_i ⊗ Y_i‖_F ≤ Σ_i ‖X_i‖_F‖Y_i‖_F, and the outer products' norms are products of norms:
  // per block, O(N·H_m·H_k) instead of the block's O(N·n_m·n_k).
  const auto norms = [](const at::Tensor& t) { return t.reshape({t.size(0), -1}).norm(2, 1); };
  std::vector<at::Tensor> feature_norms(magnitudes.out + 1);
  int64_t widest = 0;
  for (int64_t l = 1; l <= magnitudes.out; ++l) {
    feature_norms[l] = norms(assembly.features(l));
    widest = std::max({widest, assembly.features(l).size(1), magnitudes.c.weight[l].size(0)});
  }
  double total = 0;
  for (int64_t m = 1; m <= magnitudes.out; ++m) {
    for (int64_t k = 1; k <= m; ++k) {
      at::Tensor per_sample =
          norms(assembly.factor(m, k)) * feature_norms[m] * feature_norms[k];
      if (k < m) {
        const at::Tensor g = magnitudes.c.d1[m - 1].unsqueeze(2) * magnitudes.F[m - 1][k];
        per_sample = per_sample + norms(magnitudes.p[m]) * norms(g) * feature_norms[k];
      }
      const double block = per_sample.sum().item<double>();
      total += (m == k ? 1 : 2) * block * block;
    }
  }
  // The bound is itself computed: sums of non-negative terms, the longest of the per-sample norms
  // (≤ widest² terms) then the N samples, and the square root, so the computed value is at least
  // the exact one times 1 − γ' (ℓ' = widest² + N + 64); returned widened by 1 + 2γ' ≥ 1/(1 − γ').
  const double own_chain = static_cast<double>(widest * widest + magnitudes.N + 64);
  return up(std::sqrt(total) * (1 + 2 * gamma(own_chain)));
}

std::pair<at::Tensor, at::Tensor> assembled_hessian_magnitudes(const JacobianChain& magnitudes) {
  const Assembly assembly(magnitudes);
  // M_tr: tr H's own evaluation on magnitudes (linear in N). M_sq = Σ_ab M_ab² = ‖M‖²_F, M the
  // assembly on magnitudes (≥ |terms| of every entry): bounded by the triangle inequality over the
  // samples instead of assembled (§12.7), O(N·H²) for the assembly's O(N·n²).
  const double norm = assembled_frobenius_bound(magnitudes);
  const auto options = magnitudes.c.z[0].options().dtype(at::kDouble);
  return {assembled_trace(assembly, magnitudes), at::scalar_tensor(up(norm * norm), options)};
}

at::Tensor assembled_hessian(const JacobianChain& chain) {
  const Assembly assembly(chain);
  const Coefficients& c = chain.c;
  // Each layer's parameters as W̃_l (p, q), at the offset nn.Sequential.parameters() gives the
  // layer; then the permutation to that order (W_l row-major, then b_l).
  std::vector<int64_t> offset(chain.out + 2, 0), order;
  for (int64_t l = 1; l <= chain.out; ++l) {
    const int64_t rows = c.weight[l].size(0), cols = c.weight[l].size(1);
    const int64_t width = cols + (c.bias[l] ? 1 : 0);
    offset[l + 1] = offset[l] + rows * width;
    for (int64_t p = 0; p < rows; ++p) {
      for (int64_t q = 0; q < cols; ++q) order.push_back(offset[l] + p * width + q);
    }
    if (c.bias[l]) {
      for (int64_t p = 0; p < rows; ++p) order.push_back(offset[l] + p * width + cols);
    }
  }
  const int64_t n = offset[chain.out + 1];
  const auto options = c.z[0].options();
  at::Tensor tilde = at::empty({n, n}, options);
  for (int64_t m = 1; m <= chain.out; ++m) {
    for (int64_t k = 1; k <= m; ++k) {
      const at::Tensor x = assembly.factor(m, k);
      at::Tensor b;  // (p, P, q, Q)
      if (m == k) {
        const Assembly::Packed packed = assembly.diagonal_block(k, x);
        b = packed.values.index_select(0, packed.rows.position)
                .index_select(1, packed.columns.position)
                .view({x.size(1), x.size(2), assembly.features(k).size(1),
                       assembly.features(k).size(1)});
      } else {
        b = assembly.block(m, k, x);
      }
      const at::Tensor rows_by_cols =
          b.permute({0, 2, 1, 3}).reshape({b.size(0) * b.size(2), b.size(1) * b.size(3)});
      const int64_t r0 = offset[m], c0 = offset[k];
      tilde.narrow(0, r0, rows_by_cols.size(0)).narrow(1, c0, rows_by_cols.size(1))
          .copy_(rows_by_cols);
      if (k < m) {
        tilde.narrow(0, c0, rows_by_cols.size(1)).narrow(1, r0, rows_by_cols.size(0))
            .copy_(rows_by_cols.t());
      }
    }
  }
  // The diagonal blocks' products need not come out exactly symmetric: their mean is, and each
  // entry stays within the rounding bound of §12.7 (one more operation).
  tilde = (tilde + tilde.t()) * 0.5;
  const at::Tensor index = at::tensor(order, options.dtype(at::kLong));
  return tilde.index_select(0, index).index_select(1, index);
}

}  // namespace torch_ws
