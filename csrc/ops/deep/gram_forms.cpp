// The deep family's sample-space engine (docs/math.md §12.3): tr H and tr(H²) as Gram forms of
// per-sample matrices weighted by feature kernels; never the n × n Hessian nor the (N, N, H, H)
// pair kernels. O(N²·(Σ_l H_l)²) time. Tiled (§12.4): the pairs (i, j) run in tiles of rows i
// against every j, so that no N × N matrix is held whole (each tile's feature kernels and Grams
// are (rows, N)); the per-sample arrays are O(N·L²H²). A share [begin, end) of the rows i is the
// part one rank of dataset_bounds evaluates. ATen only, so it runs on any device. In reverse mode
// the traces are one autograd node (GramFormsBackward) whose reverse pass is derived by hand
// (gram_forms_gradients); forward mode and torch.func take the ATen operations. Both exact.
#include "ops/deep/engines.h"

#include "autograd/support.h"  // functorch_transform_active

#include "core/rounding.h"
#include "core/scratch.h"  // reused

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <vector>

namespace torch_ws {
namespace {

using at::Tensor;

// The numbers of one (rows, N) matrix of a tile: 32 MiB in float64. The paired products' (rows,
// N, H) arrays are blocked to the same size. The tiles of GramFormsBackward are a quarter of that:
// with create_graph its backward holds one tile's graph, about a hundred such matrices.
constexpr int64_t kTileNumbers = int64_t{1} << 22;
constexpr int64_t kReverseTileNumbers = int64_t{1} << 20;

// Samples [begin, end) of a per-sample array (N, ...).
struct Rows {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
  Tensor of(const Tensor& t) const { return t.narrow(0, begin, end - begin); }
};

// Buffers for a tile's (rows, H, H)-sized arrays, reused by every tile of a call (core/scratch.h:
// at [200, 200], N = 1000, each such array was 33 MB, faulted in at ~40 ms against ~3 ms for the
// pass that fills it). Only where nothing is recorded: the forward of GramFormsBackward and its
// adjoints, a value without gradients, the magnitudes; a recorded tile takes fresh arrays
// (a null TileScratch*).
struct TileScratch {
  enum Slot { kLeft, kScaled, kRowsSide, kLeftAdjoint, kProducts, kProductsAdjoint, kSlots };
  Tensor slots[kSlots];
  Tensor get(Slot slot, at::IntArrayRef shape, const at::TensorOptions& options) {
    return reused(slots[slot], shape, options);
  }
};

// a ∘ b (broadcast), in the scratch's slot where there is one.
Tensor mul_into(TileScratch* scratch, TileScratch::Slot slot, const Tensor& a, const Tensor& b) {
  if (scratch == nullptr) return a * b;
  Tensor out = scratch->get(slot, at::infer_size(a.sizes(), b.sizes()), a.options());
  return at::mul_out(out, a, b);
}

// The pair values of a tile: (rows, N) matrices v_ij, the terms of the sums Σ_ij w_ij·v_ij whose
// weights w are built from the feature kernels (TileWeights).

// a_i·b_j for a tile's rows a (rows, ...) and every sample's b (N, ...): a Gram of the flattened
// samples.
Tensor gram_of(const Tensor& a, const Tensor& b) {
  return at::mm(a.reshape({a.size(0), -1}), b.reshape({b.size(0), -1}).t());
}

// a_i·b_j where the samples are columns: a tile's columns a_cols (K, rows) against every sample's
// b_cols (K, N). The transposed operand goes to BLAS as it is.
Tensor gram_of_columns(const Tensor& a_cols, const Tensor& b_cols) {
  return at::mm(a_cols.t(), b_cols);
}

// left_ij·right_ij with left_ij = Nᵢᵀp_j (N_i: (H_a, H_b), p_j: (H_a,)) and right_ij = G_jᵀz_i
// (G_j: (H_y, H_b), z_i: (H_y,)): the Q2 and T2 pattern of §12.3. n_mats and z are the tile's
// rows; p and g_cols every sample's, g_cols in the samples-last layout (H_y, H_b, N) of
// RightFactors. In blocks of rows so that the (block, H_b, N) arrays stay near kTileNumbers. Both
// sides are one matrix product each, laid out (i, b, j) so that they meet without a copy:
// left_i = N_iᵀ pᵀ (all of the block's i at once) and right = z·G (all j at once). (As einsums
// these were batched products over a broadcast operand with the whole (N, H_y, H_b) array permuted
// per block: 70% of the Gram forms' time at D = 784, [128, 128], C = 10.)
Tensor paired_values(const Tensor& n_mats, const Tensor& p, const Tensor& g_cols, const Tensor& z) {
  const int64_t rows = n_mats.size(0), n = p.size(0), height = n_mats.size(1),
                width = n_mats.size(2);
  const Tensor g_flat = g_cols.view({g_cols.size(0), width * n});
  const int64_t block = std::max<int64_t>(1, kTileNumbers / std::max<int64_t>(1, n * width));
  std::vector<Tensor> blocks;
  for (int64_t start = 0; start < rows; start += block) {
    const int64_t stop = std::min(rows, start + block), size = stop - start;
    // left[i, b, j] = Σ_a N_i[a, b] p_j[a];  right[i, b, j] = Σ_y z_i[y] G_j[y, b]
    const Tensor left =
        at::mm(n_mats.slice(0, start, stop).transpose(1, 2).reshape({size * width, height}), p.t())
            .view({size, width, n});
    const Tensor right = at::mm(z.slice(0, start, stop), g_flat).view({size, width, n});
    blocks.push_back((left * right).sum(1));
  }
  return at::cat(blocks, 0);
}

// The same values as one Gram: left_ij·right_ij = Σ_a p_j[a]·⟨z_i ⊗ N_i[a, :], G_j⟩, a Gram of the
// tile's (rows·H_a, H_y·H_b) products z_i[y]·N_i[a, b] against every G_j, then the p_j-weighted sum
// over a. It takes rows·N·H_a·H_y·H_b multiply-adds against paired_values' rows·N·H_b·(H_a + H_y),
// but as a product over H_y·H_b, where paired_values' reverse mode multiplies over a block's
// rows (at [200, 200], N = 1000, one logit: 6 GFLOP/s there against 40–75 for the Grams, and a
// third of the gradient's time, when autograd took it). So where N_i has few rows, as at the
// logits (H_a = C).
bool pairs_as_gram(const Tensor& n_mats, const Tensor& z) {
  const int64_t height = n_mats.size(1), width_y = z.size(1);
  return height * width_y <= 2 * (height + width_y);
}

// z_i[y]·N_i[a, b] as (rows·H_a, H_y·H_b).
Tensor pair_products_of(TileScratch* scratch, const Tensor& n_mats, const Tensor& z) {
  const int64_t rows = n_mats.size(0), height = n_mats.size(1), width = n_mats.size(2),
                width_y = z.size(1);
  return mul_into(scratch, TileScratch::kProducts, z.view({rows, 1, width_y, 1}),
                  n_mats.unsqueeze(2))
      .view({rows * height, width_y * width});
}

// (The Gram (rows, H_a, N) into `gram` where it is given.)
Tensor paired_values_as_gram(const Tensor& n_mats, const Tensor& p, const Tensor& g_cols,
                             const Tensor& z, TileScratch* scratch, Tensor* gram = nullptr) {
  const int64_t rows = n_mats.size(0), n = p.size(0), height = n_mats.size(1),
                width = n_mats.size(2), width_y = z.size(1);
  const Tensor products = pair_products_of(scratch, n_mats, z);
  const Tensor grams = at::mm(products, g_cols.view({width_y * width, n})).view({rows, height, n});
  if (gram != nullptr) *gram = grams;
  return (grams * p.t().unsqueeze(0)).sum(1);
}

// The same values where G_j = diag(d_j) (k = m − 1, where F_{m-1,m-1} = I): right_ijb =
// z_i[b]·d_j[b], so Σ_b left_ijb·right_ijb = ⟨N_i ∘ z_i (columns), p_j d_jᵀ⟩, one Gram of
// (H_a·H_b) arrays; `p_d` is every sample's p_j d_jᵀ.
Tensor paired_values_diagonal(const Tensor& n_mats, const Tensor& p_d, const Tensor& z,
                              TileScratch* scratch) {
  return gram_of(mul_into(scratch, TileScratch::kScaled, n_mats, z.unsqueeze(1)), p_d);
}

// What the pair sums read of a chain (tensor handles), and its sizes: built from a chain, or from
// the tensors GramFormsBackward saved (each_slot visits them in one fixed order).
struct PairFactors {
  int64_t out, L, N, C;
  std::vector<bool> bias;
  std::vector<Tensor> z, d1, p, r;
  Tensor S;
  std::vector<std::vector<Tensor>> F, curvature;
};

PairFactors factors_of(const JacobianChain& chain) {
  const Coefficients& c = chain.c;
  return {chain.out, chain.L, chain.N, chain.C, c.bias, c.z, c.d1, chain.p, chain.r, c.S,
          chain.F, chain.curvature};
}

// Every slot of the factors, defined or not, in one fixed order.
template <typename Each>
void each_slot(PairFactors& f, const Each& each) {
  for (std::vector<Tensor>* v : {&f.z, &f.d1, &f.p, &f.r}) {
    for (Tensor& t : *v) each(t);
  }
  each(f.S);
  for (std::vector<std::vector<Tensor>>* table : {&f.F, &f.curvature}) {
    for (std::vector<Tensor>& row : *table) {
      for (Tensor& t : row) each(t);
    }
  }
}

// Factors of these sizes with every slot empty (what each_slot fills back).
PairFactors empty_factors(int64_t out, int64_t N, int64_t C, std::vector<bool> bias) {
  const std::vector<Tensor> column(out + 1);
  return {out, out - 1, N, C, std::move(bias), column, column, column, column, Tensor(),
          std::vector<std::vector<Tensor>>(out + 1, column),
          std::vector<std::vector<Tensor>>(out + 1, column)};
}

// Every sample's right-hand factors, formed once: the Gauss-Newton blocks E_{k'k} (k ≤ k';
// E_{kk'} = E_{k'k}ᵀ with the same Grams) where the dual matrix is not used, p_m d_{m-1}ᵀ, and
// G_{mk} = D'_{m-1}F_{m-1,k} of §12.3's g^{ij}, samples last ((H_{m-1}, H_k, N): what
// paired_products multiplies by without a copy per block).
struct RightFactors {
  std::vector<std::vector<Tensor>> E, G;
  std::vector<Tensor> p_d;
};

// Every defined tensor of the right-hand factors, in one fixed order, with the dimension that
// runs over the samples (G is samples-last).
template <typename Each>
void each_right(RightFactors& right, const Each& each) {
  for (std::vector<std::vector<Tensor>>* table : {&right.E, &right.G}) {
    for (std::vector<Tensor>& row : *table) {
      for (Tensor& t : row) {
        if (t.defined()) each(t, table == &right.G ? 2 : 0);
      }
    }
  }
  for (Tensor& t : right.p_d) {
    if (t.defined()) each(t, 0);
  }
}

// tr(G²) by the (N·C)² dual matrix of §8 where it is small (one logit: N²), else by Grams of the
// per-sample E_{k'k} (memory N·H² rather than (N·C)²).
bool uses_dual(const PairFactors& f) { return (f.N * f.C) * (f.N * f.C) <= (int64_t{1} << 26); }

// The rows [begin, end) of every per-sample factor (views; N the rows' count): what a tile reads
// of its own samples i.
PairFactors sample_rows(const PairFactors& f, Rows rows) {
  PairFactors t = f;
  t.N = rows.size();
  each_slot(t, [&](Tensor& x) {
    if (x.defined()) x = rows.of(x);
  });
  return t;
}

// The feature kernel κ_k(i, j) = ã_{i,k-1}·ã_{j,k-1} for the tile's rows i (`tile`, sample_rows of f)
// and every j.
Tensor feature_kernel(const PairFactors& f, const PairFactors& tile, int64_t k) {
  const Tensor gram = at::mm(tile.z[k - 1], f.z[k - 1].t());
  return f.bias[k] ? gram + 1 : gram;
}

// E(m, k) = B_mᵀ S B_k for every sample of `f` (the whole set or a tile's rows).
Tensor E_of(const PairFactors& f, int64_t m, int64_t k) {
  return at::matmul(f.F[f.out][m].transpose(1, 2), at::matmul(f.S, f.F[f.out][k]));
}

// The diagonal of E(k, k) = B_kᵀ S B_k for every sample of `f`, (N, H_k): Σ_c (S B_k)_c ∘ (B_k)_c,
// without the (N, H_k, H_k) matrices (N·C·H_k work instead of N·C·H_k²).
Tensor E_diagonal_of(const PairFactors& f, int64_t k) {
  const Tensor& B = f.F[f.out][k];
  return (at::matmul(f.S, B) * B).sum(1);
}

RightFactors right_factors(const PairFactors& f) {
  const int64_t out = f.out;
  RightFactors right{std::vector<std::vector<Tensor>>(out + 1, std::vector<Tensor>(out + 1)),
                     std::vector<std::vector<Tensor>>(out + 1, std::vector<Tensor>(out + 1)),
                     std::vector<Tensor>(out + 1)};
  if (!uses_dual(f)) {
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = k; k2 <= out; ++k2) {
        right.E[k2][k] = E_of(f, k2, k);
      }
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    right.p_d[m] = f.p[m].unsqueeze(2) * f.d1[m - 1].unsqueeze(1);
    for (int64_t k = 1; k < m - 1; ++k) {
      right.G[m][k] = (f.d1[m - 1].unsqueeze(2) * f.F[m - 1][k]).permute({1, 2, 0}).contiguous();
    }
  }
  return right;
}

// The rows [begin, end) of the right-hand factors (views).
RightFactors sample_rows(const RightFactors& right, Rows rows) {
  RightFactors t = right;
  each_right(t, [&](Tensor& x, int64_t dim) { x = x.narrow(dim, rows.begin, rows.size()); });
  return t;
}

// A tile of the pairs' sums: its rows i against every j, of the dual matrix's tr(G²) or of the
// Gram forms (the rest).
struct Tile {
  bool dual;
  Rows rows;
};

// What a tile of rows i reads: every sample's factors and right-hand factors (for the j), and
// its own rows of both (for the i, views of the former); and where its large arrays go.
struct TileInputs {
  const PairFactors& all;
  const PairFactors& rows;
  const RightFactors& right;
  const RightFactors& right_rows;
  TileScratch* scratch = nullptr;
};

// E(m, k) of the tile's rows: formed once for all samples where the dual matrix is not used.
Tensor E_rows(const TileInputs& in, int64_t m, int64_t k) {
  const Tensor& e = in.right_rows.E[m][k];
  return e.defined() ? e : E_of(in.rows, m, k);
}

// N + α·E(m, k) of the tile's rows as one array: with E formed for every sample an axpy, else
// one batched product B_mᵀ(S B_k) added to N, without an E block of its own (forming E, scaling
// it and adding N were three passes over the tile's (rows, H, H) arrays, each a fresh 30 MB at
// [200, 200]: more time than the Gram they feed).
Tensor plus_E(const TileInputs& in, const Tensor& n_block, int64_t m, int64_t k, double alpha) {
  const Tensor& e = in.right_rows.E[m][k];
  const PairFactors& t = in.rows;
  const Tensor& B_m = t.F[t.out][m];
  if (in.scratch == nullptr) {
    if (e.defined()) return at::add(n_block, e, alpha);
    return at::baddbmm(n_block, B_m.transpose(1, 2), at::matmul(t.S, t.F[t.out][k]), 1, alpha);
  }
  Tensor out = in.scratch->get(TileScratch::kLeft, n_block.sizes(), n_block.options());
  if (e.defined()) return at::add_out(out, n_block, e, alpha);
  return at::baddbmm_out(out, n_block, B_m.transpose(1, 2), at::matmul(t.S, t.F[t.out][k]), 1,
                         alpha);
}

// The unit gradients of the pairs' sums in z_l and p_m through the tiles' weights
// (TileWeights): (N, H) arrays, taken with the sum in the forward of GramFormsBackward.
struct WeightGrads {
  std::vector<Tensor> z, p;  // z[l], l = 0..o − 1; p[m], m = 2..o (others undefined)
};

// Zeros in WeightGrads' layout for the factors f.
WeightGrads zero_weight_grads(const PairFactors& f) {
  WeightGrads grads{std::vector<Tensor>(f.out), std::vector<Tensor>(f.out + 1)};
  for (int64_t l = 0; l < f.out; ++l) grads.z[l] = at::zeros_like(f.z[l]);
  for (int64_t m = 2; m <= f.out; ++m) grads.p[m] = at::zeros_like(f.p[m]);
  return grads;
}

// A tile's weights (rows, N): the feature kernels κ_k(i, j) and the Grams p_{i,m}·p_{j,m} of the
// Q3 terms, and, where `partials`, the tile's sum's partial derivatives in them: each term
// c·Σ_ij w_ij·v_ij adds c·v_ij times the weight's other factors, from pair values v that the sum
// forms anyway, so that the reverse pass need not form those Grams again (§12.4). Likewise the
// partials of the as-Gram paired values in every sample's p_m (d_p, (N, H_m)), which their Gram
// gives.
struct TileWeights {
  std::vector<Tensor> kappa, p_gram, d_kappa, d_p_gram, d_p;

  TileWeights(const PairFactors& f, const PairFactors& t, bool with_p_grams, bool partials)
      : kappa(f.out + 1), p_gram(f.out + 1) {
    for (int64_t k = 1; k <= f.out; ++k) kappa[k] = feature_kernel(f, t, k);
    for (int64_t m = 2; with_p_grams && m <= f.out; ++m) p_gram[m] = at::mm(t.p[m], f.p[m].t());
    if (!partials) return;
    d_kappa.resize(f.out + 1);
    d_p_gram.resize(f.out + 1);
    d_p.resize(f.out + 1);
    for (int64_t k = 1; k <= f.out; ++k) d_kappa[k] = at::zeros_like(kappa[k]);
    for (int64_t m = 2; with_p_grams && m <= f.out; ++m) d_p_gram[m] = at::zeros_like(kappa[1]);
  }

  // κ_k ∘ κ_k2 (k2 > 0) ∘ p_gram_m (m > 0).
  Tensor weight(int64_t k, int64_t k2, int64_t m) const {
    Tensor w = kappa[k];
    if (k2 > 0) w = w * kappa[k2];
    if (m > 0) w = w * p_gram[m];
    return w;
  }

  // c·Σ_ij w_ij·v_ij with w = weight(k, k2, m), its partials added where wanted.
  Tensor term(double c, const Tensor& values, int64_t k, int64_t k2, int64_t m) {
    if (!d_kappa.empty()) {
      const Tensor cv = c * values;
      const auto times = [&](Tensor x, int64_t kernel, int64_t grams) {
        if (kernel > 0) x = x * kappa[kernel];
        if (grams > 0) x = x * p_gram[grams];
        return x;
      };
      d_kappa[k].add_(times(cv, k2, m));
      if (k2 > 0) d_kappa[k2].add_(times(cv, k, m));
      if (m > 0) d_p_gram[m].add_(times(cv * kappa[k], k2, 0));
    }
    return c * (weight(k, k2, m) * values).sum(at::kDouble);
  }

  // c·Σ_ij κ_k(i, j) Σ_a gram[i, a, j] p_j[a] (paired_values_as_gram) in p_j, where wanted.
  void add_p_partials(double c, const Tensor& gram, int64_t k, int64_t m) {
    if (d_kappa.empty()) return;
    const Tensor term = (kappa[k].unsqueeze(1) * gram).sum(0).t() * c;  // (N, H_m)
    d_p[m] = d_p[m].defined() ? d_p[m] + term : term;
  }

  // The partials through κ_k = z_{k-1}(rows)·z_{k-1}ᵀ (+ 1) and p_gram_m = p_m(rows)·p_mᵀ into
  // both sides of z and p (the tile's rows `rows` of f), and d_p into p.
  void add_into(const PairFactors& f, const PairFactors& t, Rows rows, WeightGrads& grads) const {
    for (int64_t k = 1; k <= f.out; ++k) {
      Tensor& z = grads.z[k - 1];
      z.narrow(0, rows.begin, rows.size()).addmm_(d_kappa[k], f.z[k - 1]);
      z.addmm_(d_kappa[k].t(), t.z[k - 1]);
    }
    for (int64_t m = 2; m <= f.out; ++m) {
      Tensor& p = grads.p[m];
      if (d_p[m].defined()) p.add_(d_p[m]);
      if (!d_p_gram[m].defined()) continue;
      p.narrow(0, rows.begin, rows.size()).addmm_(d_p_gram[m], f.p[m]);
      p.addmm_(d_p_gram[m].t(), t.p[m]);
    }
  }
};

// tr(G²)'s share Σ_{i ∈ rows, j} tr(S_i K_ij S_j K_ijᵀ), K_ij = Σ_k κ_k(i,j) B_ik B_jkᵀ (C × C);
// the partials in κ_k from ∂/∂K = 2 S_i K_ij S_j (S symmetric).
Tensor dual_tile(const TileInputs& in, TileWeights& w) {
  const PairFactors& f = in.all;
  const int64_t N = f.N, C = f.C, rows = in.rows.N;
  Tensor K;  // (rows, C, N, C)
  std::vector<Tensor> products(f.out + 1);
  for (int64_t k = 1; k <= f.out; ++k) {
    products[k] = at::mm(in.rows.F[f.out][k].reshape({rows * C, -1}),
                         f.F[f.out][k].reshape({N * C, -1}).t())
                      .view({rows, C, N, C});
    const Tensor term = products[k] * w.kappa[k].view({rows, 1, N, 1});
    K = K.defined() ? K + term : term;
  }
  const Tensor SKS =
      at::einsum("iajc,jcd->iajd", {at::einsum("iab,ibjc->iajc", {in.rows.S, K}), f.S});
  for (int64_t k = 1; k <= f.out && !w.d_kappa.empty(); ++k) {
    w.d_kappa[k].add_((SKS * products[k]).sum({1, 3}) * 2);
  }
  return (SKS * K).sum(at::kDouble);
}

// The Gram forms' share of the tile's rows: tr(G²) where the dual matrix is not used, then
// 2 tr(GR) + tr(R²) (§12.3).
Tensor gram_tile(const TileInputs& in, TileWeights& w) {
  const PairFactors& f = in.all;
  const PairFactors& t = in.rows;
  const int64_t out = f.out, L = f.L;
  Tensor sum = at::zeros({}, f.S.options().dtype(at::kDouble));
  if (!uses_dual(f)) {  // tr(G²) = Σ_{k,k'} Σ_ij κ_k κ_k' ⟨E^i_{k'k}, E^j_{k'k}⟩
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = k; k2 <= out; ++k2) {
        const Tensor gram = gram_of(in.right_rows.E[k2][k], in.right.E[k2][k]);
        sum = sum + w.term(k2 == k ? 1 : 2, gram, k, k2, 0);
      }
    }
  }

  // Where a factor is diagonal (N_LL = diag r_L; G = D'_{m-1} when k = m − 1) its Gram is one
  // of vectors: ⟨diag a, diag b⟩ = a·b. The pairs (k, k') and (k', k) give the same Grams
  // (N_{k'k} = N_{kk'}ᵀ, E_{k'k} = E_{kk'}ᵀ, and the weight is symmetric): k ≤ k', off-diagonal
  // pairs twice. Terms that share a right-hand factor and a weight are one Gram of their
  // left-hand factors' sum, Q1 + 2·T1 = Σ κκ'⟨N^i + 2E^i, N^j⟩ and Q2 + 2·T2 likewise (one
  // product over H² per pair instead of two: these Grams are the engine's cost).
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = k; k2 <= L; ++k2) {
      if (k == L && k2 == L) {  // Q1 + 2·T1
        sum = sum + w.term(1, gram_of(t.r[L] + 2 * E_diagonal_of(t, L), f.r[L]), L, L, 0);
        continue;
      }
      // (k', k): the orientation the chain builds (JacobianChain::curvature), contiguous
      const Tensor gram = gram_of(plus_E(in, t.curvature[k2][k], k2, k, 2), f.curvature[k2][k]);
      sum = sum + w.term(k2 == k ? 1 : 2, gram, k, k2, 0);  // Q1 + 2·T1
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    for (int64_t k = 1; k < m; ++k) {
      const Tensor& z_rows = t.z[m - 1];
      // T2 pairs E^i_{mk} with p_j and g^{ij}, Q2 (hidden m only) N^i_{mk} with the same
      const Tensor left = m <= L ? plus_E(in, t.curvature[m][k], m, k, 1) : E_rows(in, m, k);
      if (k == m - 1) {
        sum = sum + w.term(4, paired_values_diagonal(left, in.right.p_d[m], z_rows, in.scratch),
                           k, 0, 0);                                          // 2·T2 + Q2
        sum = sum + w.term(2, gram_of(t.d1[m - 1], f.d1[m - 1]), k, 0, m);  // Q3
        continue;
      }
      // g_ij = F_{j,m-1,k}ᵀ(φ'_{j,m-1} ∘ z_{i,m-1}): G_j = D'_{j,m-1} F_{j,m-1,k}, samples last
      const Tensor& g = in.right.G[m][k];
      Tensor values;
      if (pairs_as_gram(left, z_rows)) {
        Tensor gram;
        values = paired_values_as_gram(left, f.p[m], g, z_rows, in.scratch, &gram);
        w.add_p_partials(4, gram, k, m);
      } else {
        values = paired_values(left, f.p[m], g, z_rows);
      }
      sum = sum + w.term(4, values, k, 0, 0);  // 2·T2 + Q2
      const Tensor& g_rows = in.right_rows.G[m][k];
      sum = sum + w.term(2, gram_of_columns(g_rows.reshape({-1, t.N}), g.view({-1, f.N})), k, 0,
                         m);  // Q3
    }
  }
  return sum;
}

// The widest layer's width, the logits' C included: a per-sample H × H array has at most its
// square of numbers.
int64_t widest_layer(const PairFactors& f) {
  int64_t widest = f.C;
  for (int64_t l = 1; l <= f.L; ++l) widest = std::max(widest, f.z[l].size(1));
  return widest;
}

// The tiles of the rows [begin, end): each holds (rows, N) matrices of at most `numbers` numbers
// ((rows·C, N·C) for the dual matrix) and per-sample arrays of at most kTileNumbers (rows × the
// widest layer's H × H), so a single tile up to N = 2048 on ordinary widths (1024 in reverse
// mode, kReverseTileNumbers); or tiles of the caller's count of rows.
std::vector<Tile> tiles_of(const PairFactors& f, Rows all, int64_t tile_rows, int64_t numbers) {
  const int64_t widest = widest_layer(f);
  // Rows such that a (rows, N·…) matrix holds at most `numbers` and a tile's per-sample arrays at
  // most kTileNumbers.
  const auto step = [&](int64_t per_row) {
    return tile_rows > 0 ? tile_rows
                         : std::max<int64_t>(1, std::min(numbers / std::max<int64_t>(1, per_row),
                                                         kTileNumbers / (widest * widest)));
  };
  std::vector<Tile> tiles;
  const auto add = [&](bool dual, int64_t rows) {
    for (int64_t begin = all.begin; begin < all.end; begin += rows) {
      tiles.push_back({dual, {begin, std::min(all.end, begin + rows)}});
    }
  };
  if (uses_dual(f)) add(true, step(f.N * f.C * f.C));
  add(false, step(f.N));
  return tiles;
}

// The tile's sum; where `grads`, its weights' partials added into them.
Tensor tile_sum(const TileInputs& in, const Tile& tile, WeightGrads* grads) {
  TileWeights w(in.all, in.rows, !tile.dual, grads != nullptr);
  const Tensor sum = tile.dual ? dual_tile(in, w) : gram_tile(in, w);
  if (grads != nullptr) w.add_into(in.all, in.rows, tile.rows, *grads);
  return sum;
}

// The tile with its rows read as views of every sample's factors; `scratch` where nothing is
// recorded (else null).
Tensor tile_sum(const PairFactors& f, const RightFactors& right, const Tile& tile,
                TileScratch* scratch, WeightGrads* grads = nullptr) {
  const PairFactors rows = sample_rows(f, tile.rows);
  const RightFactors right_rows = sample_rows(right, tile.rows);
  return tile_sum(TileInputs{f, rows, right, right_rows, scratch}, tile, grads);
}

// ---- The pairs' sums' reverse pass, derived by hand (docs/math.md §12.4) ----
//
// Each tile's sum is a sum of weighted Grams c·Σ_ij w_ij⟨a_i, b_j⟩ of per-sample factors (and
// the paired products and the dual matrix, likewise bilinear). Its partials in the weights come
// with the sum (TileWeights); in the factors they are W b for the rows' side and Wᵀa for every
// sample's side, W = upstream·c·w. The gradients go into buffers of the factors' own shapes, in
// place: the rows' side into their rows, every sample's side whole (by addmm_, a product
// accumulated where it is written). Autograd's reverse mode through a recorded tile gave every
// tile fresh (N, H, H) gradients, which the kernel faulted in page by page: at [200, 200],
// N = 500, such a product took 250 ms fresh against 65 ms into a buffer.

// What a tile writes its gradients into: every sample's buffers (views of which are the rows'),
// undefined where no gradient is wanted.
struct TileGrads {
  const PairFactors& all;
  const PairFactors& rows;
  const RightFactors& right;
  const RightFactors& right_rows;
};

// dst += term where a gradient is wanted.
void add_into(const Tensor& dst, const Tensor& term) {
  if (dst.defined()) dst.add_(term);
}

// The adjoint of Σ_ij W_ij⟨a_i, b_j⟩ in a (the tile's rows) and b (every sample's): W b
// returned (a's shape; in the scratch's kRowsSide where there is one), Wᵀa added into `db`
// where defined.
Tensor gram_adjoint(const Tensor& W, const Tensor& a, const Tensor& b, const Tensor& db,
                    TileScratch* scratch) {
  const Tensor a2 = a.reshape({a.size(0), -1}), b2 = b.reshape({b.size(0), -1});
  if (db.defined()) db.view({b.size(0), -1}).addmm_(W.t(), a2);
  if (scratch == nullptr) return at::mm(W, b2).view(a.sizes());
  Tensor rows_side = scratch->get(TileScratch::kRowsSide, {a2.size(0), a2.size(1)}, a.options());
  return at::mm_out(rows_side, W, b2).view(a.sizes());
}

// The adjoint of X = α·B_mᵀ S B_k (every sample of the arguments' rows) given dX, into the
// gradients of B_m, B_k and S where wanted (B_m and B_k may be one factor: both terms add).
void E_adjoint(const Tensor& Bm, const Tensor& S, const Tensor& Bk, const Tensor& dX, double alpha,
               const Tensor& dBm, const Tensor& dS, const Tensor& dBk) {
  if (dBm.defined()) dBm.baddbmm_(at::matmul(S, Bk), dX.transpose(1, 2), 1, alpha);
  if (!dBk.defined() && !dS.defined()) return;
  const Tensor BmdX = at::matmul(Bm, dX);  // (n, C, H_k)
  if (dBk.defined()) dBk.baddbmm_(S.transpose(1, 2), BmdX, 1, alpha);
  if (dS.defined()) dS.baddbmm_(BmdX, Bk.transpose(1, 2), 1, alpha);
}

// The adjoint of v = α·Σ_c (S B)_c ∘ B_c (E_diagonal_of) given dv (n, H).
void E_diagonal_adjoint(const Tensor& S, const Tensor& B, const Tensor& dv, double alpha,
                        const Tensor& dB, const Tensor& dS) {
  const Tensor weighted = B * (alpha * dv).unsqueeze(1);  // B ∘ α·dv, (n, C, H)
  if (dB.defined()) {
    dB.add_(at::matmul(S, B) * (alpha * dv).unsqueeze(1));
    dB.baddbmm_(S.transpose(1, 2), weighted);
  }
  if (dS.defined()) dS.baddbmm_(weighted, B.transpose(1, 2));
}

// The adjoint of Σ_ij W_ij·paired_values_ij (same blocks) in N_i (into dn, (rows, H_a, H_b)), z_i
// (dz, (rows, H_y)) and every sample's p and G (samples-last, as (H_y, H_b·N)) (dp, dg), each
// where defined.
void paired_values_adjoint(const Tensor& W, const Tensor& n_mats, const Tensor& p,
                           const Tensor& g_cols, const Tensor& z, const Tensor& dn,
                           const Tensor& dz, const Tensor& dp, const Tensor& dg) {
  const int64_t rows = n_mats.size(0), n = p.size(0), height = n_mats.size(1),
                width = n_mats.size(2);
  const Tensor g_flat = g_cols.view({g_cols.size(0), width * n});
  const int64_t block = std::max<int64_t>(1, kTileNumbers / std::max<int64_t>(1, n * width));
  for (int64_t start = 0; start < rows; start += block) {
    const int64_t stop = std::min(rows, start + block), size = stop - start;
    const Tensor n_t = n_mats.slice(0, start, stop).transpose(1, 2).reshape({size * width, height});
    const Tensor left = at::mm(n_t, p.t()).view({size, width, n});
    const Tensor right = at::mm(z.slice(0, start, stop), g_flat).view({size, width, n});
    const Tensor w = W.slice(0, start, stop).unsqueeze(1);
    const Tensor w_right = (w * right).reshape({size * width, n});  // d left
    const Tensor w_left = (w * left).reshape({size, width * n});    // d right
    add_into(dn.defined() ? dn.slice(0, start, stop) : dn,
             at::mm(w_right, p).view({size, width, height}).transpose(1, 2));
    if (dp.defined()) dp.addmm_(w_right.t(), n_t);
    add_into(dz.defined() ? dz.slice(0, start, stop) : dz, at::mm(w_left, g_flat.t()));
    if (dg.defined()) dg.addmm_(z.slice(0, start, stop).t(), w_left);
  }
}

// The same for paired_values_as_gram, with paired_values_adjoint's arguments but p's: its
// partials come with the sum (TileWeights::add_p_partials), from the Gram formed there.
void paired_values_as_gram_adjoint(const Tensor& W, const Tensor& n_mats, const Tensor& p,
                                   const Tensor& g_cols, const Tensor& z, const Tensor& dn,
                                   const Tensor& dz, const Tensor& dg, TileScratch& scratch) {
  const int64_t rows = n_mats.size(0), n = p.size(0), height = n_mats.size(1),
                width = n_mats.size(2), width_y = z.size(1);
  const Tensor products = pair_products_of(&scratch, n_mats, z);
  const Tensor g2 = g_cols.view({width_y * width, n});
  const Tensor d_gram = (W.unsqueeze(1) * p.t().unsqueeze(0)).reshape({rows * height, n});
  if (dg.defined()) dg.view({width_y * width, n}).addmm_(products.t(), d_gram);
  Tensor d_products = scratch.get(TileScratch::kProductsAdjoint, {rows * height, width_y * width},
                                  W.options());
  at::mm_out(d_products, d_gram, g2.t());
  const Tensor blocks = d_products.view({rows, height, width_y, width});  // [i, a, y, b]
  // Σ_y z_i[y]·blocks[i, a, y, :] and Σ_{a,b} N_i[a, b]·blocks[i, a, :, b], as batched products
  add_into(dn, at::matmul(z.view({rows, 1, 1, width_y}), blocks).squeeze(2));
  add_into(dz, at::matmul(blocks, n_mats.unsqueeze(3)).squeeze(3).sum(1));
}

// The adjoint of gram_tile's sum in the factors, scaled by `upstream` (0-dimensional), into `d`;
// `in` with a scratch (the adjoints run without recording).
void gram_tile_adjoint(const TileInputs& in, const Tensor& upstream, const TileGrads& d) {
  const PairFactors& f = in.all;
  const PairFactors& t = in.rows;
  const int64_t out = f.out, L = f.L;
  TileScratch* scratch = in.scratch;
  const TileWeights w(f, t, /*with_p_grams=*/true, /*partials=*/false);
  // W = upstream·c·w for the term c·Σ w⟨a, b⟩
  const auto scaled = [&](double c, int64_t k, int64_t k2, int64_t m) {
    return w.weight(k, k2, m) * (upstream * c);
  };
  // E(m, k) of the rows scaled by α, given its adjoint: into the E factor formed for every
  // sample where there is one, else into B_m, S, B_k.
  const auto E_rows_adjoint = [&](int64_t m, int64_t k, const Tensor& dX, double alpha) {
    if (in.right_rows.E[m][k].defined()) {
      if (d.right_rows.E[m][k].defined()) d.right_rows.E[m][k].add_(dX, alpha);
      return;
    }
    E_adjoint(t.F[out][m], t.S, t.F[out][k], dX, alpha, d.rows.F[out][m], d.rows.S,
              d.rows.F[out][k]);
  };

  if (!uses_dual(f)) {
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = k; k2 <= out; ++k2) {
        const Tensor da = gram_adjoint(scaled(k2 == k ? 1 : 2, k, k2, 0), in.right_rows.E[k2][k],
                                       in.right.E[k2][k], d.right.E[k2][k], scratch);
        add_into(d.right_rows.E[k2][k], da);
      }
    }
  }
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = k; k2 <= L; ++k2) {
      if (k == L && k2 == L) {
        const Tensor a = t.r[L] + 2 * E_diagonal_of(t, L);
        const Tensor da = gram_adjoint(scaled(1, L, L, 0), a, f.r[L], d.all.r[L], nullptr);
        add_into(d.rows.r[L], da);
        E_diagonal_adjoint(t.S, t.F[out][L], da, 2, d.rows.F[out][L], d.rows.S);
        continue;
      }
      const Tensor a = plus_E(in, t.curvature[k2][k], k2, k, 2);
      const Tensor da = gram_adjoint(scaled(k2 == k ? 1 : 2, k, k2, 0), a, f.curvature[k2][k],
                                     d.all.curvature[k2][k], scratch);
      add_into(d.rows.curvature[k2][k], da);
      E_rows_adjoint(k2, k, da, 2);
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    const Tensor& z_rows = t.z[m - 1];
    const Tensor& dz_rows = d.rows.z[m - 1];
    for (int64_t k = 1; k < m; ++k) {
      const Tensor left = m <= L ? plus_E(in, t.curvature[m][k], m, k, 1) : E_rows(in, m, k);
      // The left factor's adjoint, into N_{mk} (hidden m) and E(m, k)
      const auto left_adjoint = [&](const Tensor& d_left) {
        if (m <= L) add_into(d.rows.curvature[m][k], d_left);
        E_rows_adjoint(m, k, d_left, 1);
      };
      const Tensor W3 = scaled(2, k, 0, m);  // Q3's
      if (k == m - 1) {
        const Tensor z = z_rows.unsqueeze(1);
        const Tensor a = mul_into(scratch, TileScratch::kScaled, left, z);
        Tensor da = gram_adjoint(scaled(4, k, 0, 0), a, in.right.p_d[m], d.right.p_d[m], scratch);
        add_into(dz_rows, mul_into(scratch, TileScratch::kScaled, da, left).sum(1));
        left_adjoint(da.mul_(z));  // (before Q3's adjoint, which may reuse the scratch)
        add_into(d.rows.d1[m - 1], gram_adjoint(W3, t.d1[m - 1], f.d1[m - 1], d.all.d1[m - 1],
                                                nullptr));
        continue;
      }
      const Tensor& g = in.right.G[m][k];
      const Tensor& dG = d.right.G[m][k];
      const Tensor d_left =
          scratch->get(TileScratch::kLeftAdjoint, left.sizes(), left.options()).zero_();
      const Tensor dg = dG.defined() ? dG.view({g.size(0), -1}) : Tensor();
      if (pairs_as_gram(left, z_rows)) {
        paired_values_as_gram_adjoint(scaled(4, k, 0, 0), left, f.p[m], g, z_rows, d_left,
                                      dz_rows, dg, *scratch);
      } else {
        paired_values_adjoint(scaled(4, k, 0, 0), left, f.p[m], g, z_rows, d_left, dz_rows,
                              d.all.p[m], dg);
      }
      left_adjoint(d_left);
      // Q3: Σ_ij W3_ij⟨g_i, g_j⟩ with the samples as columns, both sides G's
      if (dG.defined()) {
        const Tensor g_cols = in.right_rows.G[m][k].reshape({-1, t.N});
        dG.view({-1, f.N}).addmm_(g_cols, W3);
        d.right_rows.G[m][k].view({-1, t.N}).addmm_(g.view({-1, f.N}), W3.t());
      }
    }
  }
}

// The adjoint of dual_tile's sum in the B's and S's, scaled by `upstream`, into `d`:
// dK = 2 S_i K_ij S_j, dS_i = Σ_j K_ij S_j K_ijᵀ, dS_j = Σ_i K_ijᵀ S_i K_ij (S symmetric), then
// through K = Σ_k κ_k ∘ B_ik B_jkᵀ into the B's.
void dual_tile_adjoint(const TileInputs& in, const Tensor& upstream, const TileGrads& d) {
  const PairFactors& f = in.all;
  const int64_t N = f.N, C = f.C, rows = in.rows.N;
  const TileWeights w(f, in.rows, /*with_p_grams=*/false, /*partials=*/false);
  Tensor K;  // (rows, C, N, C)
  for (int64_t k = 1; k <= f.out; ++k) {
    const Tensor term = at::mm(in.rows.F[f.out][k].reshape({rows * C, -1}),
                               f.F[f.out][k].reshape({N * C, -1}).t())
                            .view({rows, C, N, C}) *
                        w.kappa[k].view({rows, 1, N, 1});
    K = K.defined() ? K + term : term;
  }
  const Tensor SK = at::einsum("iab,ibjc->iajc", {in.rows.S, K});
  if (d.rows.S.defined()) {
    d.rows.S.add_(at::einsum("iajd,ibjd->iab", {at::einsum("iajc,jcd->iajd", {K, f.S}), K}) *
                  upstream);
  }
  if (d.all.S.defined()) d.all.S.add_(at::einsum("iajc,iajd->jcd", {K, SK}) * upstream);
  const Tensor dK = at::einsum("iajc,jcd->iajd", {SK, f.S}) * (2 * upstream);
  for (int64_t k = 1; k <= f.out; ++k) {
    const Tensor d_product = (dK * w.kappa[k].view({rows, 1, N, 1})).reshape({rows * C, N * C});
    const Tensor& dB_rows = d.rows.F[f.out][k];
    const Tensor& dB_all = d.all.F[f.out][k];
    if (dB_rows.defined()) {
      dB_rows.view({rows * C, -1}).addmm_(d_product, f.F[f.out][k].reshape({N * C, -1}));
    }
    if (dB_all.defined()) {
      dB_all.view({N * C, -1}).addmm_(d_product.t(), in.rows.F[f.out][k].reshape({rows * C, -1}));
    }
  }
}

// The adjoint of right_factors (every sample), given the gradients of E, p_d and G, into `d`.
void right_factors_adjoint(const PairFactors& f, const RightFactors& d_right,
                           const PairFactors& d) {
  const int64_t out = f.out;
  for (int64_t k = 1; k <= out; ++k) {
    for (int64_t k2 = k; k2 <= out; ++k2) {
      const Tensor& dE = d_right.E[k2][k];
      if (!dE.defined()) continue;
      E_adjoint(f.F[out][k2], f.S, f.F[out][k], dE, 1, d.F[out][k2], d.S, d.F[out][k]);
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    const Tensor& dpd = d_right.p_d[m];  // p_d = p_m ⊗ d_{m-1}
    if (dpd.defined()) {
      add_into(d.p[m], (dpd * f.d1[m - 1].unsqueeze(1)).sum(2));
      add_into(d.d1[m - 1], (dpd * f.p[m].unsqueeze(2)).sum(1));
    }
    for (int64_t k = 1; k < m - 1; ++k) {
      if (!d_right.G[m][k].defined()) continue;
      // G = (D'_{m-1} F_{m-1,k}) samples last
      const Tensor dG = d_right.G[m][k].permute({2, 0, 1});
      add_into(d.d1[m - 1], (dG * f.F[m - 1][k]).sum(2));
      add_into(d.F[m - 1][k], dG * f.d1[m - 1].unsqueeze(2));
    }
  }
}

// tr H = tr G + tr R (§12.3) of the samples `all`, each diagonal term κ_k(i,i)·(per-sample trace).
Tensor diagonal_trace(const PairFactors& f, Rows all) {
  Tensor trace = at::zeros({}, f.S.options().dtype(at::kDouble));
  const PairFactors rows = sample_rows(f, all);
  for (int64_t k = 1; k <= f.out; ++k) {
    const Tensor self = rows.z[k - 1].pow(2).sum(1) + (f.bias[k] ? 1 : 0);
    trace = trace + (self * E_diagonal_of(rows, k).sum(1)).sum(at::kDouble);
    for (int64_t l = k; l <= f.L; ++l) {
      // Σ_a r_l[a]·‖(F_lk)_a‖², where F_kk = I: Σ_a r_k[a] (no pass over the identity)
      const Tensor weighted =
          l == k ? rows.r[l] : rows.r[l] * rows.F[l][k].pow(2).sum(2);
      trace = trace + (self * weighted.sum(1)).sum(at::kDouble);
    }
  }
  return trace;
}

// The adjoint of diagonal_trace(f, all), scaled by `upstream`, into `d` (buffers of f's shapes,
// undefined where no gradient is wanted): with s_ik = ‖ã_{i,k−1}‖² and u = upstream·s_ik,
// z̄_{k−1} += 2ū·z_{k−1}·(the sample's inner sum), diag E's adjoint with u, r̄_k += u, and for
// l > k r̄_l += u·‖(F_lk)_a‖², F̄_lk += 2u·r_l ∘ F_lk (rows).
void diagonal_trace_adjoint(const PairFactors& f, Rows all, const Tensor& upstream,
                            const PairFactors& d) {
  const PairFactors rows = sample_rows(f, all), d_rows = sample_rows(d, all);
  for (int64_t k = 1; k <= f.out; ++k) {
    const Tensor self = rows.z[k - 1].pow(2).sum(1) + (f.bias[k] ? 1 : 0);
    const Tensor u = (upstream * self).unsqueeze(1);  // (rows, 1)
    Tensor inner = E_diagonal_of(rows, k).sum(1);
    const int64_t width = f.F[f.out][k].size(2);
    E_diagonal_adjoint(rows.S, rows.F[f.out][k], u.expand({all.size(), width}), 1,
                       d_rows.F[f.out][k], d_rows.S);
    for (int64_t l = k; l <= f.L; ++l) {
      if (l == k) {
        inner = inner + rows.r[l].sum(1);
        add_into(d_rows.r[l], u.expand_as(rows.r[l]));
        continue;
      }
      const Tensor squares = rows.F[l][k].pow(2).sum(2);
      inner = inner + (rows.r[l] * squares).sum(1);
      add_into(d_rows.r[l], u * squares);
      add_into(d_rows.F[l][k], rows.F[l][k] * (2 * u * rows.r[l]).unsqueeze(2));
    }
    add_into(d_rows.z[k - 1], rows.z[k - 1] * (2 * upstream * inner).unsqueeze(1));
  }
}

// The Gram forms' gradients in the factors (each_slot's order of the defined slots; `wanted`
// says which take one, the others' stay undefined): the pairs' sums' scaled by `upstream` (the
// adjoints above, plus the weights' partials the forward took, `weight_grads`, WeightGrads'
// layout, at a unit upstream) and tr H's diagonal terms' of the rows `all` scaled by
// `trace_upstream`; either upstream may be undefined (no gradient).
std::vector<Tensor> gram_forms_gradients(const PairFactors& f, const std::vector<bool>& wanted,
                                         const std::vector<Tile>& tiles, const Tensor& upstream,
                                         const WeightGrads& weight_grads, Rows all,
                                         const Tensor& trace_upstream) {
  const at::NoGradGuard no_grad;
  PairFactors d = f;
  std::vector<Tensor> grads;  // the buffers, in the defined slots' order
  size_t slot = 0;
  each_slot(d, [&](Tensor& t) {
    if (!t.defined()) return;
    t = wanted[slot++] ? at::zeros_like(t, at::MemoryFormat::Contiguous) : Tensor();
    grads.push_back(t);
  });
  if (trace_upstream.defined()) diagonal_trace_adjoint(f, all, trace_upstream.to(at::kDouble), d);
  if (!upstream.defined()) return grads;
  const RightFactors right = right_factors(f);
  RightFactors d_right = right;
  each_right(d_right, [](Tensor& t, int64_t) {
    t = at::zeros_like(t, at::MemoryFormat::Contiguous);
  });
  const Tensor scale = upstream.to(at::kDouble);
  TileScratch scratch;
  for (const Tile& tile : tiles) {
    const PairFactors rows = sample_rows(f, tile.rows), d_rows = sample_rows(d, tile.rows);
    const RightFactors right_rows = sample_rows(right, tile.rows),
                       d_right_rows = sample_rows(d_right, tile.rows);
    const TileInputs in{f, rows, right, right_rows, &scratch};
    const TileGrads tile_grads{d, d_rows, d_right, d_right_rows};
    if (tile.dual) {
      dual_tile_adjoint(in, scale, tile_grads);
    } else {
      gram_tile_adjoint(in, scale, tile_grads);
    }
  }
  right_factors_adjoint(f, d_right, d);
  for (int64_t l = 0; l < f.out; ++l) add_into(d.z[l], weight_grads.z[l] * scale);
  for (int64_t m = 2; m <= f.out; ++m) {
    if (weight_grads.p[m].defined()) add_into(d.p[m], weight_grads.p[m] * scale);
  }
  return grads;  // filled in place
}

// What autograd would record through the factors (autograd/support.h): in reverse mode alone
// the traces are one node with a hand-derived reverse pass (GramFormsBackward); where nothing
// records, the tiles may write into scratch arrays (TileScratch).
Recording recording_of(PairFactors& f) {
  std::vector<Tensor> tensors;
  each_slot(f, [&](Tensor& t) { tensors.push_back(t); });
  return torch_ws::recording_of(at::TensorList(tensors));  // autograd/support.h
}

}  // namespace
}  // namespace torch_ws

// The Gram forms' traces of a share of rows with a reverse pass of their own (docs/math.md
// §12.4): tr(H²)'s pair sums and tr H's diagonal terms. The forward runs without recording, so
// autograd keeps only the per-sample factors (O(N·L²H²)), never a tile's (rows, N) matrices; the
// backward runs the hand-derived adjoints tile by tile (gram_forms_gradients), or, with
// create_graph, evaluates each tile again with recording and takes its gradient with
// create_graph (one tile's graph at a time), so that double backward stays exact. Reverse mode
// only (forward-mode tangents take the recorded path). At global scope for its grad_fn's name
// (autograd/skeleton.h).
class GramFormsBackward : public torch::autograd::Function<GramFormsBackward> {
 public:
  using Factors = torch_ws::PairFactors;

  // `shape`: the factors, which the forward evaluates (their sizes, bias flags and which slots
  // are defined are saved for the backward); `all`: the share's rows; `factors`: the same
  // defined tensors in each_slot's order, passed as a list so that autograd connects the node to
  // them and saves them. Returns tr(H²)'s pair sums and tr H's diagonal terms.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const Factors& shape,
                                                const std::vector<torch_ws::Tile>& tiles,
                                                torch_ws::Rows all, at::TensorList factors) {
    Factors f = shape;
    std::vector<int64_t> defined;
    torch_ws::each_slot(f, [&](at::Tensor& t) { defined.push_back(t.defined() ? 1 : 0); });
    const torch_ws::RightFactors right = torch_ws::right_factors(f);
    at::Tensor sum = at::zeros({}, f.S.options().dtype(at::kDouble));
    torch_ws::TileScratch scratch;  // (a custom Function's forward records nothing)
    torch_ws::WeightGrads weight_grads = torch_ws::zero_weight_grads(f);
    for (const torch_ws::Tile& tile : tiles) {
      sum = sum + torch_ws::tile_sum(f, right, tile, &scratch, &weight_grads);
    }
    // The factors, then the weights' partials (z's, then p's, WeightGrads' layout)
    std::vector<at::Tensor> saved = factors.vec();
    saved.insert(saved.end(), weight_grads.z.begin(), weight_grads.z.end());
    saved.insert(saved.end(), weight_grads.p.begin(), weight_grads.p.end());
    ctx->save_for_backward(saved);
    std::vector<int64_t> bias(f.bias.begin(), f.bias.end()), flat_tiles;
    for (const torch_ws::Tile& tile : tiles) {
      flat_tiles.insert(flat_tiles.end(), {tile.dual ? 1 : 0, tile.rows.begin, tile.rows.end});
    }
    ctx->saved_data["sizes"] = std::vector<int64_t>{f.out, f.N, f.C};
    ctx->saved_data["bias"] = bias;
    ctx->saved_data["defined"] = defined;
    ctx->saved_data["tiles"] = flat_tiles;
    ctx->saved_data["rows"] = std::vector<int64_t>{all.begin, all.end};
    return {sum, torch_ws::diagonal_trace(f, all)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const std::vector<int64_t> sizes = ctx->saved_data["sizes"].toIntVector();
    const std::vector<int64_t> bias = ctx->saved_data["bias"].toIntVector();
    const std::vector<int64_t> defined = ctx->saved_data["defined"].toIntVector();
    const std::vector<int64_t> flat_tiles = ctx->saved_data["tiles"].toIntVector();
    const std::vector<int64_t> rows = ctx->saved_data["rows"].toIntVector();
    const torch_ws::Rows all{rows[0], rows[1]};
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const auto factor_count = std::count(defined.begin(), defined.end(), int64_t{1});
    const torch::autograd::variable_list factors(saved.begin(), saved.begin() + factor_count);
    torch_ws::WeightGrads weight_grads;
    const int64_t out = sizes[0];
    weight_grads.z.assign(saved.begin() + factor_count, saved.begin() + factor_count + out);
    weight_grads.p.assign(saved.begin() + factor_count + out, saved.end());
    std::vector<torch_ws::Tile> tiles;
    for (size_t t = 0; t < flat_tiles.size(); t += 3) {
      tiles.push_back({flat_tiles[t] == 1, {flat_tiles[t + 1], flat_tiles[t + 2]}});
    }
    const auto factors_from = [&](const std::vector<at::Tensor>& tensors) {
      Factors f = torch_ws::empty_factors(sizes[0], sizes[1], sizes[2],
                                          std::vector<bool>(bias.begin(), bias.end()));
      size_t slot = 0, next = 0;
      torch_ws::each_slot(f, [&](at::Tensor& t) {
        if (defined[slot++] == 1) t = tensors[next++];
      });
      return f;
    };

    torch::autograd::variable_list grads(factors.size());
    const at::Tensor& upstream = grad_outputs[0];        // of the pair sums
    const at::Tensor& trace_upstream = grad_outputs[1];  // of tr H's diagonal terms
    std::vector<bool> wanted;
    for (const at::Tensor& t : factors) wanted.push_back(t.requires_grad());
    const bool any = std::find(wanted.begin(), wanted.end(), true) != wanted.end() &&
                     (upstream.defined() || trace_upstream.defined());
    if (any && !at::GradMode::is_enabled()) {
      // The hand-derived adjoints (gram_forms_gradients).
      grads = torch_ws::gram_forms_gradients(factors_from(factors), wanted, tiles, upstream,
                                             weight_grads, all, trace_upstream);
    } else if (any) {
      // create_graph: each tile recorded again on aliases of the factors (views, so that the
      // result stays attached to their history) and its gradient taken in the aliases, with
      // create_graph, so that double backward is exact. (Taken in the factors themselves, the
      // gradient would also hold what flows into them through the other factors they feed, e.g.
      // d1 through F, which autograd adds again when it propagates the gradients this returns.)
      std::vector<at::Tensor> recorded(factors.begin(), factors.end());
      torch::autograd::variable_list aliases;
      std::vector<size_t> index;
      for (size_t k = 0; k < factors.size(); ++k) {
        if (!wanted[k]) continue;
        recorded[k] = factors[k].view_as(factors[k]);
        aliases.push_back(recorded[k]);
        index.push_back(k);
      }
      const Factors f = factors_from(recorded);
      const auto add_gradient_of = [&](const at::Tensor& value, const at::Tensor& upstream_of) {
        if (!value.requires_grad()) return;
        const torch::autograd::variable_list part = torch::autograd::grad(
            {value}, aliases, {upstream_of.to(value.scalar_type())}, /*retain_graph=*/true,
            /*create_graph=*/true, /*allow_unused=*/true);
        for (size_t k = 0; k < index.size(); ++k) {
          at::Tensor& g = grads[index[k]];
          if (part[k].defined()) g = g.defined() ? g + part[k] : part[k];
        }
      };
      if (trace_upstream.defined()) add_gradient_of(torch_ws::diagonal_trace(f, all), trace_upstream);
      if (upstream.defined()) {
        const torch_ws::RightFactors right = torch_ws::right_factors(f);
        for (const torch_ws::Tile& tile : tiles) {
          add_gradient_of(torch_ws::tile_sum(f, right, tile, nullptr), upstream);
        }
      }
    }
    grads.insert(grads.begin(), {at::Tensor(), at::Tensor(), at::Tensor()});  // shape, tiles, rows
    return grads;
  }
};

namespace torch_ws {
namespace {

Rows share_rows(const PairFactors& f, GramShare share) {
  const int64_t end = share.end < 0 ? f.N : share.end;
  TORCH_CHECK(0 <= share.begin && share.begin <= end && end <= f.N,
              "gram_form_traces: expected 0 <= begin <= end <= N = ", f.N, ", got ", share.begin,
              ", ", end);
  return {share.begin, end};
}


// Σ_{i ∈ rows} X_iᵀ α_i: per-sample arrays X_i (flattened to K numbers, made by `values` for a
// block of samples) weighted by the columns of `alphas` (N, A), as (K, A); in blocks of samples
// that hold at most kTileNumbers numbers (`per_sample`: K, or more). `rows` not empty.
template <typename Values>
Tensor weighted_sums(const Tensor& alphas, Rows rows, int64_t per_sample, const Values& values) {
  const int64_t block = std::max<int64_t>(1, kTileNumbers / std::max<int64_t>(1, per_sample));
  Tensor total;
  for (int64_t begin = rows.begin; begin < rows.end; begin += block) {
    const Rows part{begin, std::min(rows.end, begin + block)};
    const Tensor x = values(part).reshape({part.size(), -1});
    const Tensor term = at::mm(x.t(), part.of(alphas));
    total = total.defined() ? total + term : term;
  }
  TORCH_INTERNAL_ASSERT(total.defined(), "weighted_sums: no rows");
  return total;
}

// Σ_{i ∈ left, j ∈ right} α_iα_j⟨X_i, Y_j⟩ = ⟨Σ_i α_iX_i, Σ_j α_jY_j⟩.
template <typename Left, typename Right>
Tensor factorised_gram(const Tensor& alpha, Rows left, Rows right, int64_t per_sample,
                       const Left& x, const Right& y) {
  const Tensor a = alpha.unsqueeze(1);
  return (weighted_sums(a, left, per_sample, x) * weighted_sums(a, right, per_sample, y))
      .sum(at::kDouble);
}

// Σ_{i ∈ rows} E_i(m, k) ∘ (1 ⊗ w_i) as (H_m·H_k, 1), E_i = B_{i,m}ᵀ S_i B_{i,k} (§12.3) and w_i a
// weight per sample (w: (N, 1)) or per column b of E (w: (N, H_k)): Σ_{i,c} B_{i,m}[c]ᵀ
// (w_i ∘ (S_i B_{i,k})[c]), one product over the rows' N·C logits. The terms of weighted_sums over
// E_of, without any sample's (H_m, H_k) block (each an outer product when C = 1, then scaled and
// added: most of the certified errors' time at [200, 200]).
Tensor weighted_E(const PairFactors& f, const Tensor& w, Rows rows, int64_t m, int64_t k) {
  const Tensor& B = f.F[f.out][m];
  const int64_t n = rows.size(), C = f.C;
  const Tensor right = at::matmul(rows.of(f.S), rows.of(f.F[f.out][k])) * rows.of(w).unsqueeze(1);
  return at::mm(rows.of(B).reshape({n * C, B.size(2)}).t(), right.reshape({n * C, -1}))
      .reshape({-1, 1});
}

// §12.5's M for the Gram tiles' sums of the share's rows i against every j, on a chain of
// magnitudes, without the pairs: each feature kernel's magnitude Σ_x|ã_ix||ã_jx| is at most
// ν_iν_j, ν_i = ‖ã_i‖ (Cauchy–Schwarz), and p_i·p_j ≤ ‖p_i‖‖p_j‖, so every Gram's
// Σ_ij w_ij⟨X_i, Y_j⟩ with w_ij ≤ α_iα_j is at most ⟨Σ_i α_iX_i, Σ_j α_jY_j⟩, and the paired
// products' Σ_ij κ Σ_{a,b,y} N_i[a,b]p_j[a]z_i[y]G_j[y,b] at most Σ_{a,b,y} (Σ_i ν_iz_i[y]N_i[a,b])·
// (Σ_j ν_jp_j[a]G_j[y,b]): O(N·H²) (O(N·H³) for the hidden layers' paired products) instead of
// O(N²·H²). The same terms and multipliers as gram_tile, term by term.
Tensor gram_pairs_majorant(const PairFactors& f, Rows share) {
  const int64_t out = f.out, L = f.L;
  const Rows every{0, f.N};
  const int64_t widest = widest_layer(f), square = widest * widest;
  std::vector<Tensor> nu(out + 1);
  for (int64_t k = 1; k <= out; ++k) {
    nu[k] = (f.z[k - 1].pow(2).sum(1) + (f.bias[k] ? 1 : 0)).sqrt();
  }
  Tensor sum = at::zeros({}, f.S.options().dtype(at::kDouble));

  if (!uses_dual(f)) {
    for (int64_t k = 1; k <= out; ++k) {
      for (int64_t k2 = k; k2 <= out; ++k2) {
        const Tensor alpha = (nu[k] * nu[k2]).unsqueeze(1);
        const Tensor gram = (weighted_E(f, alpha, share, k2, k) *
                             weighted_E(f, alpha, every, k2, k)).sum(at::kDouble);
        sum = sum + (k2 == k ? gram : 2 * gram);
      }
    }
  }
  for (int64_t k = 1; k <= L; ++k) {
    for (int64_t k2 = k; k2 <= L; ++k2) {
      const Tensor alpha = nu[k] * nu[k2];
      if (k == L && k2 == L) {
        sum = sum + factorised_gram(
                        alpha, share, every, widest,
                        [&](Rows r) { return r.of(f.r[L]) + 2 * E_diagonal_of(sample_rows(f, r), L); },
                        [&](Rows r) { return r.of(f.r[L]); });
        continue;
      }
      // ⟨Σ_i α_i(N_i + 2E_i), Σ_j α_jN_j⟩, the E's weighted sum without their blocks
      const Tensor& n_kk = f.curvature[k2][k];
      const auto curvature = [&](Rows r) { return r.of(n_kk); };
      const Tensor a = alpha.unsqueeze(1);
      const Tensor right = weighted_sums(a, every, square, curvature);
      const Tensor own = share.begin == every.begin && share.end == every.end
                             ? right : weighted_sums(a, share, square, curvature);
      const Tensor pair = ((own + 2 * weighted_E(f, a, share, k2, k)) * right).sum(at::kDouble);
      sum = sum + (k2 == k ? pair : 2 * pair);
    }
  }
  for (int64_t m = 2; m <= out; ++m) {
    const Tensor& p = f.p[m];
    const Tensor& d = f.d1[m - 1];
    const Tensor& z = f.z[m - 1];
    for (int64_t k = 1; k < m; ++k) {
      const Tensor weighted_p = nu[k].unsqueeze(1) * p;  // ν_j p_j
      const Tensor q3_alpha = nu[k] * p.pow(2).sum(1).sqrt();  // ν_j‖p_j‖
      const auto left = [&, m, k](Rows r) {
        Tensor e = E_of(sample_rows(f, r), m, k);
        return m <= L ? e + r.of(f.curvature[m][k]) : e;
      };
      if (k == m - 1) {
        // ⟨Σ_i ν_i(left_i ∘ z_i), Σ_j ν_j p_j d_jᵀ⟩ and Q3's ‖Σ_i ν_i‖p_i‖ d_i‖² (left's E part
        // without its blocks)
        const Tensor weights = nu[k].unsqueeze(1) * z;  // ν_i z_i (N, H_k)
        Tensor left_sum = weighted_E(f, weights, share, m, k);
        if (m <= L) {
          left_sum = left_sum + weighted_sums(nu[k].unsqueeze(1), share, square, [&](Rows r) {
                       return r.of(f.curvature[m][k]) * r.of(z).unsqueeze(1);
                     });
        }
        const Tensor right_sum = at::mm(weighted_p.t(), d).reshape({-1, 1});
        sum = sum + 4 * (left_sum * right_sum).sum(at::kDouble);
        sum = sum + 2 * factorised_gram(q3_alpha, share, every, widest,
                                        [&](Rows r) { return r.of(d); },
                                        [&](Rows r) { return r.of(d); });
        continue;
      }
      // g_j = D'_{j,m-1}F_{j,m-1,k} (H_y × H_b), by blocks of samples
      const auto g = [&, m, k](Rows r) { return r.of(d).unsqueeze(2) * r.of(f.F[m - 1][k]); };
      const int64_t width_y = z.size(1), width_b = f.F[m - 1][k].size(2), height = p.size(1);
      // Σ_i ν_i z_i[y] left_i[a, b] as (H_y, H_a·H_b), by blocks of the share's samples
      Tensor left_sum = at::zeros({width_y, height * width_b}, sum.options());
      const int64_t block = std::max<int64_t>(1, kTileNumbers / std::max<int64_t>(1, height * width_b));
      for (int64_t begin = share.begin; begin < share.end; begin += block) {
        const Rows part{begin, std::min(share.end, begin + block)};
        left_sum = left_sum + at::mm((part.of(nu[k]).unsqueeze(1) * part.of(z)).t(),
                                     left(part).reshape({part.size(), -1}));
      }
      // Σ_j ν_j p_j[a] g_j[y, b] as (H_y·H_b, H_a)
      const Tensor right_sum = weighted_sums(weighted_p, every, width_y * width_b, g);
      sum = sum + 4 * (left_sum.view({width_y, height, width_b}) *
                       right_sum.view({width_y, width_b, height}).transpose(1, 2))
                          .sum(at::kDouble);
      sum = sum + 2 * factorised_gram(q3_alpha, share, every, width_y * width_b, g, g);
    }
  }
  return sum;
}

}  // namespace

std::pair<Tensor, Tensor> gram_form_magnitudes(const JacobianChain& magnitudes, GramShare share) {
  const at::NoGradGuard no_grad;
  PairFactors f = factors_of(magnitudes);
  const Rows all = share_rows(f, share);
  const Tensor trace = diagonal_trace(f, all);
  if (all.size() == 0) return {trace, at::zeros({}, trace.options())};
  Tensor trace_sq = gram_pairs_majorant(f, all);
  if (uses_dual(f)) {  // tr(G²)'s dual matrix, on magnitudes as it is evaluated
    const RightFactors unused;  // (dual tiles read none)
    TileScratch scratch;
    for (const Tile& tile : tiles_of(f, all, share.tile_rows, kTileNumbers)) {
      if (tile.dual) trace_sq = trace_sq + tile_sum(f, unused, tile, &scratch);
    }
  }
  // Both are computed in float64 from non-negative numbers by sums, products and square roots, in
  // chains no longer than the evaluation's ℓ (§12.5) plus the paired products' H³-term sums, so
  // each computed M is at least (1 − γ_ℓ')·M: divided by that, a bound on the exact one.
  int64_t widths = f.z[0].size(1) + f.C, widest = std::max(f.z[0].size(1), f.C);
  for (int64_t l = 1; l <= f.L; ++l) {
    widths += f.z[l].size(1);
    widest = std::max(widest, f.z[l].size(1));
  }
  const double chain = static_cast<double>(4 * widths + widest * widest * (widest + 1) +
                                           f.N * f.N + 4 * f.out + 33);
  const double inflation = up(1 / down(1 - gamma(chain)));
  return {trace * inflation, trace_sq * inflation};
}

std::pair<Tensor, Tensor> gram_form_traces(const JacobianChain& chain) {
  return gram_form_traces(chain, GramShare{});
}

std::pair<Tensor, Tensor> gram_form_traces(const JacobianChain& chain, GramShare share) {
  PairFactors f = factors_of(chain);
  const Rows all = share_rows(f, share);
  const bool reverse_only = recording_of(f).reverse_only();
  if (all.size() == 0) {
    const Tensor trace = diagonal_trace(f, all);
    return {trace, at::zeros({}, trace.options())};
  }

  // tr(H²) = tr(G²) + 2 tr(GR) + tr(R²): the pairs (i, j), i in the share, tile by tile.
  const std::vector<Tile> tiles = tiles_of(
      f, all, share.tile_rows, reverse_only ? kReverseTileNumbers : kTileNumbers);
  // Reverse mode alone: the Gram forms' own node, whose reverse pass is derived by hand.
  if (reverse_only) {
    std::vector<Tensor> factors;
    each_slot(f, [&](Tensor& t) {
      if (t.defined()) factors.push_back(t);
    });
    const std::vector<Tensor> traces =
        GramFormsBackward::apply(f, tiles, all, at::TensorList(factors));
    return {traces[1], traces[0]};
  }
  const Tensor trace = diagonal_trace(f, all);
  const RightFactors right = right_factors(f);
  Tensor trace_sq = at::zeros({}, trace.options());
  TileScratch scratch;
  TileScratch* reuse = recording_of(f).any() ? nullptr : &scratch;
  for (const Tile& tile : tiles) trace_sq = trace_sq + tile_sum(f, right, tile, reuse);
  return {trace, trace_sq};
}

}  // namespace torch_ws
