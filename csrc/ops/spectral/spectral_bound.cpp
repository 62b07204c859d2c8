// The spectral bound's parts and their gradient (docs/math.md §9), in float64 ATen operations.
#include "ops/spectral/spectral_bound.h"

#include "core/dense_eigen.h"
#include "core/packed_symmetric.h"
#include "core/ritz_certificate.h"
#include "core/rounding.h"
#include "core/ws_bound.h"  // kRoundingAllowance
// G·v in closed form, the interval family's products with e = 0 (§9.2 "Without the dual matrix")
#include "ops/eigenvalue_interval/hessian_products.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace torch_ws::spectral {
namespace {

using at::Tensor;

constexpr double kUnitRoundoff = 0x1p-53;  // float64

Tensor f64(const Tensor& t) { return t.to(at::kDouble); }

// The network and its loss terms in float64: what both the parts and their gradient read.
struct Network {
  Tensor x, x_tilde;               // (N, D) and (N, D̃): x with a column of ones when b1 exists
  Tensor w1, w2;                   // (H, D), (C, H)
  Tensor phi0, phi1, phi2, phi3;   // φ^(k)(A), (N, H); phi3 only for gradients
  Tensor e;                        // c·∇_z ℓ, (N, C)
  Tensor e_magnitude;              // Σ|terms| of e's formula (losses.h), ≥ |e|
  Tensor U;                        // U_i = W2 diag(φ'(a_i)), (N, C, H): ∂z_ic/∂W̃1_k = U_ick x̃_i
  Tensor Lt, Y;                    // L_iᵀ (N, C, C) and L_iᵀ U_i (N, C, H), S_i = L_i L_iᵀ
  LogitTerms<Tensor> logit;        // one logit: s, e, ds/dz (N,)
  OutputTerms terms;               // C logits (losses.h)
  bool has_b1 = false, has_b2 = false;

  int64_t num_samples() const { return x.size(0); }
  int64_t num_outputs() const { return w2.size(0); }
  int64_t hidden() const { return w2.size(1); }
};

Network network(const MlpProblem& p, bool for_gradients) {
  Network n;
  n.x = f64(p.x);
  n.w1 = f64(p.w1());
  n.w2 = f64(p.w2());
  n.has_b1 = p.b1().has_value();
  n.has_b2 = p.b2().has_value();
  const int64_t N = n.num_samples(), C = n.num_outputs();
  Tensor a = at::matmul(n.x, n.w1.t());
  if (n.has_b1) a = a + f64(*p.b1());
  n.x_tilde = n.has_b1 ? at::cat({n.x, at::ones({N, 1}, n.x.options())}, 1) : n.x;
  auto act = activation_values(p.activation, a, for_gradients ? 3 : 2);
  n.phi0 = act.phi0;
  n.phi1 = act.phi1;
  n.phi2 = act.phi2;
  n.phi3 = act.phi3;
  Tensor z = at::matmul(n.phi0, n.w2.t());
  if (n.has_b2) z = z + f64(*p.b2());
  n.U = n.w2.unsqueeze(0) * n.phi1.unsqueeze(1);
  if (p.one_logit()) {
    n.logit = logit_terms(p.loss, z.squeeze(1), f64(p.target).reshape({N}), p.loss_scale());
    n.e = n.logit.e.unsqueeze(1);
    n.e_magnitude =
        logit_e_magnitude(p.loss, z, f64(p.target).reshape({N, 1}), p.loss_scale());
    n.Lt = n.logit.s.sqrt().view({N, 1, 1});
    n.Y = n.Lt * n.U;
  } else {
    n.terms = output_terms(p.loss, z, f64(p.target), p.loss_scale());
    n.e = n.terms.e;
    n.e_magnitude = n.terms.e_magnitude;
    n.Lt = factor_times(p.loss, n.terms, at::eye(C, z.options()).expand({N, C, C}));
    n.Y = factor_times(p.loss, n.terms, n.U);
  }
  return n;
}

// ---- λ_max(GGN) from the dual matrix M = J̃ J̃ᵀ (NC × NC). ----

// M[(i,r),(j,q)] = K_ij (Y_i Y_jᵀ)_rq + (ΦΦᵀ + [b2])_ij (L_iᵀ L_j)_rq (docs/math.md §9.1): the
// rows of the samples [begin, end) against the columns of the samples [0, columns), into `out`
// (((end − begin)·C, columns·C), a block of a larger matrix or not); every entry by the same
// formula whichever block is asked for.
void dual_block(const Network& n, int64_t begin, int64_t end, int64_t columns, Tensor& out) {
  const int64_t N = n.num_samples(), C = n.num_outputs(), H = n.hidden(), B = end - begin;
  const Tensor Y = n.Y.reshape({N * C, H}), Lt = n.Lt.reshape({N * C, C});
  at::mm_out(out, Y.narrow(0, begin * C, B * C), Y.narrow(0, 0, columns * C).t());
  const Tensor entries = out.view({B, C, columns, C});
  Tensor kernel =
      at::matmul(n.x_tilde.narrow(0, begin, B), n.x_tilde.narrow(0, 0, columns).t());
  entries.mul_(kernel.view({B, 1, columns, 1}));
  kernel = at::matmul(n.phi0.narrow(0, begin, B), n.phi0.narrow(0, 0, columns).t());
  if (n.has_b2) kernel.add_(1);
  const Tensor factors =
      at::matmul(Lt.narrow(0, begin * C, B * C), Lt.narrow(0, 0, columns * C).t());
  entries.addcmul_(factors.view({B, C, columns, C}), kernel.view({B, 1, columns, 1}));
}

// The rows of the samples [begin, end) against every column: ((end − begin)·C, N·C).
Tensor dual_rows(const Network& n, int64_t begin, int64_t end) {
  const int64_t N = n.num_samples(), C = n.num_outputs();
  Tensor rows = at::empty({(end - begin) * C, N * C}, n.x.options());
  dual_block(n, begin, end, N, rows);
  return rows;
}

// The whole matrix, by its symmetry: each block row of samples against the columns up to and
// including its diagonal block, then every block above the diagonal as the transpose of the one
// below it. The entries (i, j) and (j, i) are one formula (in another order of its sums), so each
// stored entry is a computed value of it, within §9.5's forming error as any; and M comes out
// exactly symmetric. Half the products and passes over N × N arrays (docs/math.md §9.1: at
// N = 8192, D = 784, H = 256, spectral_bound 6.7 → 5.8–5.9 s); blocks of about 1024 rows.
Tensor dual_matrix(const Network& n) {
  const int64_t N = n.num_samples(), C = n.num_outputs();
  const int64_t block = std::max<int64_t>(1, 1024 / C);  // samples a block row
  if (N <= block) return dual_rows(n, 0, N);
  Tensor M = at::empty({N * C, N * C}, n.x.options());
  for (int64_t begin = 0; begin < N; begin += block) {
    const int64_t end = std::min(N, begin + block);
    Tensor lower = M.narrow(0, begin * C, (end - begin) * C).narrow(1, 0, end * C);
    dual_block(n, begin, end, end, lower);
  }
  for (int64_t begin = block; begin < N; begin += block) {
    const int64_t rows = (std::min(N, begin + block) - begin) * C;
    M.narrow(0, 0, begin * C).narrow(1, begin * C, rows)
        .copy_(M.narrow(0, begin * C, rows).narrow(1, 0, begin * C).t());
  }
  return M;
}

// The rounding error of the computed M, in the spectral norm: each entry is a sum of products of
// dot products of lengths D̃, H and C, every term non-negative on the diagonal, so
// ‖ΔM‖ ≤ γ·Σ_i M_ii with γ ≈ (D̃ + H + 2C + 8)u; doubled for safety.
double forming_factor(const Network& n) {
  return 2.0 * static_cast<double>(n.x_tilde.size(1) + n.hidden() + 2 * n.num_outputs() + 8) *
         kUnitRoundoff;
}

// The GGN part's fields where it is not computed: λ_max(GGN) NaN, no allowance, residual or
// Lanczos steps, a zero vector.
void set_no_ggn_part(SpectralParts& out, const Network& n) {
  const auto options = n.x.options();
  out.ggn_lambda_max = at::full({}, NAN, options);
  out.ggn_allowance = at::zeros({}, options);
  out.eigen_residual = at::zeros({}, options);
  out.iterations = at::zeros({}, options.dtype(at::kLong));
  out.ggn_vector = at::zeros({n.num_samples(), n.num_outputs()}, options);
}

// ---- λ_max(R) and λ_min(R) from the H blocks (docs/math.md §9.3). ----

struct ResidualEigen {
  Tensor max_value, max_vector, max_unit, min_value, min_vector, min_unit, allowance;
};

// The forming error of R_k and eigh's backward error are both within
// (2N + κ)u·(Σ_i |β_ik|·‖x̃_i‖² + 2‖|X̃|ᵀ|γ_k|‖_F), a bound on ‖R_k‖ with absolute values, where
// e enters by its magnitude (what its rounding is relative to, losses.h), not by |e| (§9.5).
Tensor residual_allowance(const Network& n) {
  const int64_t N = n.num_samples(), C = n.num_outputs(), H = n.hidden();
  const int64_t Dt = n.x_tilde.size(1);
  const Tensor beta_magnitude = n.phi2.abs() * at::matmul(n.e_magnitude, n.w2.abs());
  const Tensor gamma_magnitude = n.e_magnitude.unsqueeze(2) * n.phi1.abs().unsqueeze(1);
  const Tensor abs_norm =
      at::matmul(n.x_tilde.square().sum(1), beta_magnitude) +
      2 * at::matmul(n.x_tilde.abs().t(), gamma_magnitude.reshape({N, C * H}))
              .view({Dt, C, H}).square().sum(at::IntArrayRef{0, 1}).sqrt();
  return (2.0 * static_cast<double>(N) + kRoundingAllowance) * kUnitRoundoff * abs_norm.max();
}

ResidualEigen residual_eigen(const Network& n) {
  const int64_t N = n.num_samples(), C = n.num_outputs(), H = n.hidden();
  const int64_t Dt = n.x_tilde.size(1), size = Dt + C;
  const auto options = n.x.options();
  const Tensor beta = n.phi2 * at::matmul(n.e, n.w2);                       // (N, H)
  const Tensor gamma = n.e.unsqueeze(2) * n.phi1.unsqueeze(1);              // (N, C, H)
  const Tensor coupling =                                                   // F_k: (H, D̃, C)
      at::matmul(n.x_tilde.t(), gamma.reshape({N, C * H})).view({Dt, C, H}).permute({2, 0, 1});
  ResidualEigen out;
  out.allowance = residual_allowance(n);
  // R_k for the given units. Its D̃ × D̃ part Σ_i β_ik x̃_i x̃_iᵀ is symmetric: each of its D̃(D̃+1)/2
  // distinct entries is Σ_i (β_ik x̃_ia) x̃_ib, so for each row a every unit's entries (a, b ≥ a)
  // come from one product (units × N)·(N × (D̃ − a)) of the weights scaled by x̃_a with the rows
  // b ≥ a of X̃ᵀ: half the multiply-adds of forming each block as (X̃ᵀ diag β_k) X̃, and no scaled
  // copy of X̃ per unit (0.48 s → 0.15 s at N = 2048, D̃ = 129, H = 256, §9.3). The same terms,
  // each a product of the same three factors, so §9.5's forming error holds unchanged.
  const PackedSymmetric pairs(Dt, options);
  const Tensor features = n.x_tilde.t().contiguous();  // (D̃, N)
  auto blocks_of = [&](const Tensor& units) {
    const int64_t h = units.size(0);
    Tensor blocks = at::zeros({h, size, size}, options);
    const Tensor weights = beta.index_select(1, units).t().contiguous();  // (h, N)
    Tensor packed = at::empty({h, pairs.size()}, options);
    Tensor scaled = at::empty_like(weights);  // one buffer for every row's scaled weights
    for (int64_t a = 0, offset = 0; a < Dt; offset += Dt - a, ++a) {
      at::mul_out(scaled, weights, features[a]);
      packed.narrow(1, offset, Dt - a).copy_(at::mm(scaled, features.narrow(0, a, Dt - a).t()));
    }
    blocks.narrow(1, 0, Dt).narrow(2, 0, Dt).copy_(
        packed.index_select(1, pairs.position).view({h, Dt, Dt}));
    const Tensor F = coupling.index_select(0, units);
    blocks.narrow(1, 0, Dt).narrow(2, Dt, C).copy_(F);
    blocks.narrow(1, Dt, C).narrow(2, 0, Dt).copy_(F.transpose(1, 2));
    return blocks;
  };
  // Eigenvalues only, in chunks of units so that a chunk's blocks stay near 256 MiB; then the
  // eigenvectors of the two blocks that hold the extremes.
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(H, (int64_t{1} << 25) / (size * size)));
  const auto index_options = options.dtype(at::kLong);
  std::vector<Tensor> max_values, min_values;
  for (int64_t k0 = 0; k0 < H; k0 += chunk) {
    const int64_t h = std::min(chunk, H - k0);
    const Tensor values = at::linalg_eigvalsh(blocks_of(at::arange(k0, k0 + h, index_options)));
    max_values.push_back(values.select(1, size - 1));
    min_values.push_back(values.select(1, 0));
  }
  const Tensor maxima = at::cat(max_values), minima = at::cat(min_values);
  out.max_unit = maxima.argmax();
  out.min_unit = minima.argmin();
  const auto [values, vectors] =
      at::linalg_eigh(blocks_of(at::stack({out.max_unit, out.min_unit})));
  out.max_value = values.select(0, 0).select(0, size - 1);
  out.min_value = values.select(0, 1).select(0, 0);
  out.max_vector = vectors.select(0, 0).select(1, size - 1);
  out.min_vector = vectors.select(0, 1).select(1, 0);
  return out;
}

// ---- At scale (docs/math.md §11.2, "At scale"): λ_max(R) by a per-block majorant, and λ_2(GGN)
// by one Cholesky factorization of the deflated dual matrix. ----

// λ_max(R_k) ≤ (a_k + √(a_k² + 4σ_k²))/2 with a_k = c_k·λ_w, for fixed weights w ≥ 0 (here e's
// magnitude, summed over the logits): c_k = max_i (β_ik)₊/w_i, λ_w ≥ λ_max(X̃ᵀ diag(w) X̃), σ_k =
// ‖F_k‖_F. The weights put the samples whose loss gradient is small out of the way, which the
// plain max_i (β_ik)₊·λ_max(X̃ᵀX̃) does not. Costs O(N·D̃·(H·C + min(N, D̃))), no block formed.
// With sign = −1, the same for −R (whose blocks have −β and −F, the same σ): λ_min(R) ≥ −value.
//
// What the majorants of R and −R share (everything but c_k's sign): computed once for both.
struct MajorantBasis {
  Tensor weights, beta;                        // w (N,) and β (N, H)
  Tensor gram_value, gram_upper, gram_vector;  // λ_max(X̃ᵀdiag(w)X̃), certified above, unit vector
  Tensor sigma;                                // ‖F_k‖_F (H,)
  Tensor allowance;                            // §9.5's allowance of R_k
};

MajorantBasis majorant_basis(const Network& n) {
  const int64_t N = n.num_samples(), C = n.num_outputs(), H = n.hidden();
  const int64_t Dt = n.x_tilde.size(1);
  MajorantBasis out;
  out.weights = n.e_magnitude.sum(1);
  out.beta = n.phi2 * at::matmul(n.e, n.w2);
  // λ_max(X̃ᵀ diag(w) X̃) from the smaller of its two Gram forms: B = diag(√w)X̃, BᵀB or BBᵀ.
  const Tensor B = n.x_tilde * out.weights.sqrt().unsqueeze(1);
  const bool primal = Dt <= N;
  const Tensor gram = primal ? at::matmul(B.t(), B) : at::matmul(B, B.t());
  const auto [values, vectors] = at::linalg_eigh(gram);
  const int64_t d = gram.size(0);
  const Tensor top_vector = vectors.select(1, d - 1);
  out.gram_vector = primal ? top_vector : at::mv(B.t(), top_vector);
  out.gram_vector = out.gram_vector / out.gram_vector.norm();
  out.gram_value = values.select(0, d - 1).clamp_min(0);
  // The Gram's rounding (√w and the products: chains of N + 3 or D̃ + 3) and eigh's backward
  // error, both within a multiple of tr(BᵀB) = Σ_i w_i‖x̃_i‖² ≥ ‖·‖₂ (every term non-negative).
  const Tensor trace = at::dot(out.weights, n.x_tilde.square().sum(1));
  const double slack = 2 * gamma(static_cast<double>(N + Dt + 4)) +
                       (kRoundingAllowance + 2.0 * static_cast<double>(d)) * kUnitRoundoff;
  out.gram_upper = out.gram_value + slack * trace;
  const Tensor gamma_values = n.e.unsqueeze(2) * n.phi1.unsqueeze(1);       // (N, C, H)
  out.sigma = at::matmul(n.x_tilde.t(), gamma_values.reshape({N, C * H})).view({Dt, C, H})
                  .square().sum(at::IntArrayRef{0, 1}).sqrt();
  out.allowance = residual_allowance(n);
  return out;
}

ResidualMajorant residual_majorant(const MajorantBasis& basis, double sign) {
  ResidualMajorant out;
  out.sign = sign;
  out.weights = basis.weights;
  out.gram_value = basis.gram_value;
  out.gram_vector = basis.gram_vector;
  // (σβ_ik)₊/w_i where w_i > 0; where w_i = 0, e_i = 0 and β_ik = 0.
  const Tensor ratio = at::where(basis.weights.unsqueeze(1) > 0,
                                 (sign * basis.beta).clamp_min(0) /
                                     basis.weights.clamp_min(1e-300).unsqueeze(1),
                                 at::zeros_like(basis.beta));
  const auto [c, samples] = ratio.max(0);                                    // (H,)
  // c's division and max: one rounding each way; the majorant's own arithmetic (a few
  // operations) within 8u relative, both covered by the factor (1 + 16u).
  const Tensor a = c * basis.gram_upper;
  const Tensor bound = (a + (a.square() + 4 * basis.sigma.square()).sqrt()) / 2;
  out.unit = bound.argmax();
  const Tensor unit = out.unit.view({1});
  out.sample = samples.index_select(0, unit).squeeze(0);
  out.c = c.index_select(0, unit).squeeze(0);
  out.sigma = basis.sigma.index_select(0, unit).squeeze(0);
  out.value = bound.max();
  // The majorant is of R̂_k, the blocks of the computed β and γ; R_k's own forming error
  // (the allowance of §9.5) and the sums in σ_k and c (inside it as well) are added twice.
  out.allowance = 2 * basis.allowance + 16 * kUnitRoundoff * out.value;
  return out;
}

ResidualMajorant residual_majorant(const Network& n, double sign) {
  return residual_majorant(majorant_basis(n), sign);
}

// (N, C): J̃u, the dual image of a direction u of θ (flat: W1 row-major, b1, W2, b2): sample i's
// rows are L_iᵀ J_i u, J_i u = U_i (dW̃1 x̃_i) + dW2 φ(a_i) + db2.
Tensor dual_image(const Network& n, const Tensor& direction) {
  const int64_t N = n.num_samples(), C = n.num_outputs(), H = n.hidden(), D = n.x.size(1);
  const Tensor u = f64(direction);
  int64_t offset = 0;
  auto block = [&](int64_t length) {
    const Tensor view = u.narrow(0, offset, length);
    offset += length;
    return view;
  };
  const Tensor dw1 = block(H * D).view({H, D});
  Tensor dz = at::matmul(n.x, dw1.t());                                     // (N, H)
  if (n.has_b1) dz = dz + block(H);
  const Tensor dw2 = block(C * H).view({C, H});
  Tensor df = at::matmul(n.U, dz.unsqueeze(2)).squeeze(2) + at::matmul(n.phi0, dw2.t());
  if (n.has_b2) df = df + block(C);
  return at::matmul(n.Lt, df.unsqueeze(2)).squeeze(2);                      // (N, C)
}

// ‖fl(M − c·yyᵀ) − (M − c·yyᵀ)‖₂ for the deflated dual matrix: M's forming error, plus the
// rank-one update's rounding (each entry fl(fl(c·y_i)·y_j), then the subtraction: within
// 2u|c·y_i·y_j| + u|entry|, so in norm 2u·c‖y‖² + u‖·‖_F, doubled for the second-order terms).
Tensor deflation_error(const Tensor& forming_error, const Tensor& c, const Tensor& y,
                       const Tensor& deflated) {
  return forming_error + kUnitRoundoff * (4 * c * at::dot(y, y) + 2 * deflated.norm());
}

// ---- λ_max(GGN) without the dual matrix (docs/math.md §9.2, "Without the dual matrix"). ----

// J̃u/‖J̃u‖ (N·C,) for a direction u of θ: what the gradient (§9.4) reads as M's top eigenvector
// when u is G's; zeros where J̃u = 0.
Tensor unit_dual_image(const Network& n, const Tensor& direction) {
  const Tensor image = dual_image(n, direction).reshape({-1});
  const double size = image.norm().item<double>();
  return size > 0 ? image / size : at::zeros_like(image);
}

// tr M = tr G, tr(M²) = ‖M‖²_F = tr(G²) as computed, and an upper bound on the exact tr(G²):
// from M's rows in tiles of samples (at most 2²² numbers each, 32 MiB), never M whole.
struct DualTraces {
  double trace = 0, trace_sq = 0, trace_sq_high = 0;
};

DualTraces dual_traces(const Network& n) {
  const int64_t N = n.num_samples(), C = n.num_outputs();
  const int64_t tile = std::max<int64_t>(1, (int64_t{1} << 22) / (C * N * C));
  DualTraces out;
  for (int64_t begin = 0; begin < N; begin += tile) {
    const int64_t end = std::min(N, begin + tile);
    const Tensor rows = dual_rows(n, begin, end);
    out.trace += at::diagonal(rows, begin * C).sum().item<double>();
    out.trace_sq += rows.square().sum().item<double>();
  }
  // ‖M‖_F ≤ ‖fl(M)‖_F + ‖fl(M) − M‖_F: the forming error of §9.5 bounds the Frobenius norm as
  // well (entrywise it is within γ·|J̃||J̃|ᵀ, whose Frobenius norm is at most ‖J̃‖²_F = tr M); the
  // sum of the (N·C)² squares, non-negative, within γ_m of its value, m = (N·C)² + N + 1.
  const double rows = static_cast<double>(N * C);
  const double sum_high = up(out.trace_sq * up(1 + 2 * gamma(rows * rows + N + 1)));
  const double forming = up(forming_factor(n) * up(out.trace * up(1 + gamma(rows + N + 1))));
  const double frobenius = up(up(std::sqrt(sum_high)) * (1 + kUnitRoundoff) + forming);
  out.trace_sq_high = up(up(frobenius * frobenius) * (1 + kUnitRoundoff));
  return out;
}

// Up to this many parameters (and fewer than N·C), G itself is formed instead (n products in
// blocks, then §9.2's dense certificate on n × n): exact whatever its bulk, and at n = 2410 (the
// digits net) a fraction of what Lanczos needs to close a C-logit cluster (docs/math.md §9.2).
constexpr int64_t kMaxPrimal = 4096;

// G = Σ_i J_iᵀ S_i J_i (n × n) from its products with the unit vectors, in blocks of rows, and
// its top eigenpair certified as M's (§9.2 "Without the dual matrix"). Column j is within γ_H·G_abs e_j
// of the exact one (§11.3), G_abs = Σ_i |J_i|ᵀ|S_i||J_i| the chain on magnitudes, so
// ‖fl(G) − G‖₂ ≤ γ_H‖G_abs‖_F ≤ γ_H Σ_i ‖S_i‖_F ‖J_i‖²_F, with
// ‖J_i‖²_F = ‖x̃_i‖² Σ_ck (W2_ck φ'(a_ik))² + C(‖φ(a_i)‖² + [b2]); plus the symmetrization's
// rounding, u‖Ĝ‖_F; and ‖G‖₂ ≤ tr G ≤ tr Ĝ + √n·that. `vector` as below.
CertifiedEigenpair ggn_top_in_parameter_space(const HessianProducts& products, const Network& n) {
  const int64_t params = products.num_params(), block = 256;
  const int64_t N = n.num_samples(), C = n.num_outputs();
  const auto options = n.x.options();
  Tensor G = at::empty({params, params}, options);
  for (int64_t first = 0; first < params; first += block) {
    const int64_t rows = std::min(block, params - first);
    Tensor unit = at::zeros({rows, params}, options);
    unit.diagonal(first).fill_(1);  // the unit vectors e_first … e_{first + rows − 1}
    G.narrow(0, first, rows).copy_(products.apply(unit));
  }
  G = (G + G.t()) / 2;
  const Tensor s_norm = C == 1 ? n.logit.s.abs() : n.terms.S.square().sum({1, 2}).sqrt();
  Tensor jacobian_sq = n.x_tilde.square().sum(1) * n.U.square().sum({1, 2}) +
                       static_cast<double>(C) * n.phi0.square().sum(1);
  if (n.has_b2) jacobian_sq = jacobian_sq + static_cast<double>(C);
  // The bound's own sums: at most N·(D̃ + H·(C + 1) + 4) non-negative terms.
  const double size = static_cast<double>(params);
  const double terms = static_cast<double>(N * (n.x_tilde.size(1) + n.hidden() * (C + 1) + 4));
  const double abs_norm = up(at::dot(s_norm, jacobian_sq).item<double>() * up(1 + gamma(terms)));
  const double columns = up(products.error_factor() * abs_norm);
  const double symmetrization =
      up(kUnitRoundoff * up(G.norm().item<double>() * up(1 + gamma(size * size))));
  const double forming = up(columns + symmetrization);
  const double norm =
      up(up(G.trace().item<double>() * up(1 + gamma(size))) + up(std::sqrt(size) * forming));
  auto scalar = [&](double v) { return at::scalar_tensor(v, options); };
  CertifiedEigenpair top = certified_top_eigenpair(G, scalar(forming), scalar(norm));
  top.vector = unit_dual_image(n, top.vector);
  return top;
}

// Lanczos steps on G: first kFirstSteps, enough where G's top eigenvalues stand out of a light
// bulk (trained networks, §9.2); where the certificate has not closed to kClosed (a heavy bulk:
// random initializations), twice as many, from a fresh start, until it does, or until doubling
// no longer halves the width, or until the basis spans θ's whole space (the cap is then exact),
// or until the products would cost more than the dual matrix's Cholesky factorization (NC)³/3
// flops, what §9.2's dense route pays. The narrowest round is kept.
constexpr int64_t kFirstSteps = 64;
constexpr double kClosed = 1e-6;

// λ_max(GGN) certified without M (N·C above kMaxDual), in parameter space, where G = Σ_i J_iᵀS_iJ_i
// has M's non-zero spectrum: G itself where n ≤ kMaxPrimal, else Lanczos on its closed-form
// products and the interval certificate of §11.2 on G with its own exact traces
// (core/ritz_certificate.h: the trace cap, then Kato-Temple with the cap's bound on λ_2(G)). `value` is the top Ritz value θ and
// value + allowance the certificate's upper end; `vector` the dual image of the Ritz vector,
// J̃u/‖J̃u‖, which the gradient (§9.4) reads as M's top eigenvector; `residual` ‖Gû − θû‖.
CertifiedEigenpair ggn_top_without_dual(const MlpProblem& p, const Network& n) {
  const int64_t N = n.num_samples(), C = n.num_outputs();
  const auto options = n.x.options();
  // G's products in float64, as M would be; with e = 0 the chain of H·v is G·v (§9.2).
  const HessianProducts products(with_dtype(p, at::kDouble), HessianProducts::Uses::Certificate,
                                 HessianProducts::Curvature::GaussNewton);
  if (products.num_params() <= kMaxPrimal && products.num_params() < N * C) {
    return ggn_top_in_parameter_space(products, n);
  }
  const DualTraces traces = dual_traces(n);
  // Before any product: λ_max(G) ≤ ‖G‖_F (G is positive semi-definite).
  const double frobenius = up(std::sqrt(traces.trace_sq_high));
  const TraceFacts facts{traces.trace, traces.trace_sq, traces.trace_sq_high, frobenius};
  const int64_t params = products.num_params();
  // A product's flops: four passes over the (N, H) arrays against the data and the output layer.
  const double rows = static_cast<double>(N * C);
  const double per_product = 4.0 * static_cast<double>(N * n.hidden()) *
                             static_cast<double>(n.x_tilde.size(1) + C);
  const double budget = rows * rows * rows / 3 / per_product;
  int64_t steps = std::min(kFirstSteps, params), spent = 0;
  // The narrowest certificate so far (each round is a valid one; the last is not always the
  // best: the rounding allowances grow with the steps).
  RitzCertificate certificate;
  while (true) {
    RitzCertificate round = certify_top(products, 1.0, facts, steps, std::nullopt, /*seed=*/0,
                                        options, "torch_ws.spectral_bound");
    spent += round.products;
    if (!round.u.defined()) {  // the traces overflowed: no bound
      certificate = round;
      break;
    }
    // Doubling the steps must at least halve the width to be worth another round. Where G's top
    // eigenvalue is repeated (a C-logit head with a zero output layer: C − 1 copies) Kato-Temple
    // has no gap to use, and one Krylov sequence finds the copies only through rounding: at
    // N = 1700, C = 10, n = 5610 the width was 10⁻⁴ relative after 512 steps and then grew with
    // the allowances, and without this rule the rounds ran on to n steps (13,746 products,
    // 526 s; now 1989 products, 28 s). At C = 20 (19 copies) 128 steps had not found them: the
    // rounds stop there, with the cap's looser bound (docs/math.md §9.2).
    const bool halved = !certificate.u.defined() ||
                        round.upper - round.lower <= (certificate.upper - certificate.lower) / 2;
    if (!certificate.u.defined() || round.upper < certificate.upper) certificate = round;
    const bool closed = certificate.upper <= certificate.lower * (1 + kClosed);
    const int64_t next = std::min(2 * steps, params);
    if (closed || !halved || steps == params ||
        static_cast<double>(spent + next + 1) > budget) {
      break;
    }
    steps = next;
  }
  auto scalar = [&](double v) { return at::scalar_tensor(v, options); };
  CertifiedEigenpair out;
  out.iterations = at::scalar_tensor(spent, options.dtype(at::kLong));
  out.vector = at::zeros({N * C}, options);
  if (!certificate.u.defined()) {  // the traces overflowed: no bound
    out.value = scalar(NAN);
    out.allowance = out.residual = scalar(0);
    return out;
  }
  out.value = scalar(certificate.theta);
  // θ + up(upper − θ) ≥ upper, and rounding to nearest keeps it there.
  out.allowance = scalar(up(certificate.upper - certificate.theta));
  out.residual = scalar(certificate.rho);
  out.vector = unit_dual_image(n, certificate.u);
  return out;
}

void set_ggn_part(SpectralParts& out, const CertifiedEigenpair& top, int64_t N, int64_t C) {
  out.ggn_lambda_max = top.value;
  out.ggn_allowance = top.allowance;
  out.eigen_residual = top.residual;
  out.iterations = top.iterations;
  out.ggn_vector = top.vector.view({N, C});
}

// R's parts (docs/math.md §9.3): λ_max(R), λ_min(R) and their eigenpairs from R's blocks, or
// where the blocks cost more than kExactResidualWork both ends by the majorants (§11.2 "At scale").
void set_residual_part(SpectralParts& out, const MlpProblem& p, const Network& n) {
  const int64_t C = n.num_outputs();
  const auto options = n.x.options();
  if (residual_by_majorant(p)) {
    // R's blocks would cost more than kExactResidualWork: both ends by the majorants (§11.2 "At
    // scale"), the eigenvector outputs zeros (the gradient recomputes the majorants).
    const MajorantBasis basis = majorant_basis(n);
    const ResidualMajorant above = residual_majorant(basis, 1), below = residual_majorant(basis, -1);
    out.residual_lambda_max = above.value;
    out.residual_lambda_min = -below.value;
    out.residual_allowance = at::maximum(above.allowance, below.allowance);
    out.residual_majorant = above;
    out.residual_minorant = below;
    const int64_t size = n.x_tilde.size(1) + C;
    out.residual_max_vector = at::zeros({size}, options);
    out.residual_min_vector = at::zeros({size}, options);
    out.residual_max_unit = at::zeros({}, options.dtype(at::kLong));
    out.residual_min_unit = at::zeros({}, options.dtype(at::kLong));
    return;
  }
  ResidualEigen r = residual_eigen(n);
  out.residual_lambda_max = r.max_value;
  out.residual_lambda_min = r.min_value;
  out.residual_allowance = r.allowance;
  out.residual_max_vector = r.max_vector;
  out.residual_min_vector = r.min_vector;
  out.residual_max_unit = r.max_unit;
  out.residual_min_unit = r.min_unit;
}

}  // namespace

SpectralParts evaluate(const MlpProblem& p, bool second,
                       const std::function<bool(const SpectralParts&)>& top_bound_needed) {
  const Network n = network(p, /*for_gradients=*/false);
  const int64_t N = n.num_samples(), C = n.num_outputs(), m = N * C;
  SpectralParts out;
  if (m <= kMaxDual) {
    const Tensor M = dual_matrix(n);
    const Tensor trace = M.trace();  // ≥ ‖M‖₂: M is positive semi-definite
    const Tensor forming_error = forming_factor(n) * trace;
    // The deflation below needs the top pair, not its bound: that waits for the caller's word.
    const bool deferred = second && top_bound_needed;
    const CertifiedEigenpair top = deferred ? top_eigenpair_estimate(M, forming_error, trace)
                                            : certified_top_eigenpair(M, forming_error, trace);
    set_ggn_part(out, top, N, C);
    if (second) {
      // λ_2(M) ≤ λ_max(M − c·yyᵀ) for every y ≠ 0 and c ≥ 0: on the unit vectors orthogonal to y,
      // where Courant-Fischer's max-min puts a value ≥ λ_2(M), the two quadratic forms agree.
      const Tensor c = top.value.clamp_min(0);
      const Tensor deflated = M - c * at::outer(top.vector, top.vector);
      const Tensor error = deflation_error(forming_error, c, top.vector, deflated);
      // ‖M − c·yyᵀ‖₂ ≤ tr M + c‖y‖².
      const Tensor norm = trace + c * at::dot(top.vector, top.vector);
      const CertifiedEigenpair next = certified_top_eigenpair(deflated, error, norm);
      out.ggn_second_upper = next.value + next.allowance;
      out.ggn_second_value = next.value;
      out.ggn_second_vector = next.vector.view({N, C});
      if (deferred) {
        set_residual_part(out, p, n);
        if (top_bound_needed(out)) {
          set_ggn_part(out, certify_top_estimate(M, top, forming_error, trace), N, C);
        }
        return out;
      }
    }
  } else {
    set_ggn_part(out, ggn_top_without_dual(p, n), N, C);
  }
  set_residual_part(out, p, n);
  return out;
}

bool residual_by_majorant(const MlpProblem& p) {
  const double d_tilde = static_cast<double>(p.x.size(1) + (p.b1().has_value() ? 1 : 0));
  return static_cast<double>(p.hidden()) * static_cast<double>(p.num_samples()) * d_tilde *
             d_tilde > kExactResidualWork;
}

InputGradients gradient(const MlpProblem& p, const Eigenvectors& v, const Tensor& g_ggn,
                        const Tensor& g_max, const Tensor& g_min, bool need_x) {
  const Network n = network(p, /*for_gradients=*/true);
  const int64_t N = n.num_samples(), C = n.num_outputs(), H = n.hidden();
  const int64_t D = n.x.size(1), Dt = n.x_tilde.size(1);
  const auto options = n.x.options();
  // `evaluate` took R's ends from the majorants here; they depend on the inputs alone, and are
  // recomputed where the caller (spectral_bound's backward) did not keep them.
  std::optional<ResidualMajorant> above, below;
  const ResidualMajorant* majorant = v.residual_majorant;
  const ResidualMajorant* minorant = v.residual_minorant;
  if (majorant == nullptr && minorant == nullptr && residual_by_majorant(p)) {
    const MajorantBasis basis = majorant_basis(n);
    above = residual_majorant(basis, 1);
    below = residual_majorant(basis, -1);
    majorant = &*above;
    minorant = &*below;
  }
  // The adjoints of the intermediate arrays, accumulated over the three eigenvalues.
  Tensor x_tilde_bar = at::zeros({N, Dt}, options);
  Tensor phi0_bar = at::zeros({N, H}, options), phi1_bar = at::zeros({N, H}, options);
  Tensor a_bar = at::zeros({N, H}, options), w2_bar = at::zeros({C, H}, options);
  Tensor z_bar = at::zeros({N, C}, options), e_bar = at::zeros({N, C}, options);

  // λ_max(GGN) = ‖u‖² for u = Σ_i J̃_iᵀ y_i (docs/math.md §9.4): with ω_i = Y_iᵀ y_i and
  // w_i = L_i y_i, u's blocks are ωᵀX̃ (W̃1), wᵀΦ (W2) and Σ_i w_i (b2).
  {
    const Tensor y = f64(v.ggn_vector).view({N, C});
    const Tensor scale = 2 * f64(g_ggn);
    const Tensor omega = (n.Y * y.unsqueeze(2)).sum(1);  // (N, H)
    const Tensor w = (n.Lt * y.unsqueeze(2)).sum(1);     // (N, C)
    const Tensor u1 = at::matmul(omega.t(), n.x_tilde), u2 = at::matmul(w.t(), n.phi0);
    const Tensor omega_bar = scale * at::matmul(n.x_tilde, u1.t());
    x_tilde_bar += scale * at::matmul(omega, u1);
    Tensor w_bar = scale * at::matmul(n.phi0, u2.t());
    if (n.has_b2) w_bar = w_bar + scale * w.sum(0);
    phi0_bar += scale * at::matmul(w, u2);
    const Tensor Y_bar = y.unsqueeze(2) * omega_bar.unsqueeze(1);  // (N, C, H)
    const Tensor Lt_bar = y.unsqueeze(2) * w_bar.unsqueeze(1);     // (N, C, C)
    Tensor U_bar;
    if (p.one_logit()) {
      // Y = r·U and Lt = r with r = √s: z̄ = r̄·(ds/dz)/(2r), 0 where s = 0 (ds/dz = 0 there).
      const Tensor r = n.Lt.view({N});
      U_bar = n.Lt * Y_bar;
      const Tensor r_bar = (Y_bar * n.U).sum({1, 2}) + Lt_bar.view({N});
      const Tensor dr_dz = at::where(r > 0, n.logit.ds_dz / (2 * r), at::zeros_like(r));
      z_bar += (r_bar * dr_dz).unsqueeze(1);
    } else {
      const FactorAdjoints through_U = factor_times_backward(p.loss, n.terms, n.U, Y_bar);
      const FactorAdjoints through_L = factor_times_backward(
          p.loss, n.terms, at::eye(C, options).expand({N, C, C}), Lt_bar);
      U_bar = through_U.U;
      if (through_U.z.defined()) z_bar += through_U.z;
      if (through_L.z.defined()) z_bar += through_L.z;
    }
    w2_bar += (U_bar * n.phi1.unsqueeze(1)).sum(0);
    phi1_bar += (U_bar * n.w2.unsqueeze(0)).sum(1);
  }

  // λ(R) = ρᵀR_kρ = Σ_i β_ik q_i² + 2Σ_i q_i φ'(a_ik)(e_i·ρ_c), q = X̃ρ_x (docs/math.md §9.4).
  auto residual_term = [&](const Tensor& vector, const Tensor& unit, const Tensor& g) {
    const Tensor rho = f64(vector), index = unit.view({1});
    const Tensor rho_x = rho.narrow(0, 0, Dt), rho_c = rho.narrow(0, Dt, C);
    const Tensor coefficient = f64(g);
    const Tensor q = at::mv(n.x_tilde, rho_x);
    auto column = [&](const Tensor& t) { return t.index_select(1, index).view({N}); };
    const Tensor p1 = column(n.phi1), p2 = column(n.phi2), p3 = column(n.phi3);
    const Tensor w2k = n.w2.index_select(1, index).view({C});
    const Tensor ew = at::mv(n.e, w2k), erho = at::mv(n.e, rho_c);
    const Tensor q2 = q * q;
    a_bar.index_add_(1, index, (coefficient * (p3 * ew * q2 + 2 * q * p2 * erho)).view({N, 1}));
    e_bar += coefficient * ((p2 * q2).unsqueeze(1) * w2k + (2 * q * p1).unsqueeze(1) * rho_c);
    w2_bar.index_add_(1, index, (coefficient * (n.e * (p2 * q2).unsqueeze(1)).sum(0)).view({C, 1}));
    const Tensor q_bar = coefficient * 2 * (p2 * ew * q + p1 * erho);
    x_tilde_bar += q_bar.unsqueeze(1) * rho_x.unsqueeze(0);
  };
  // The majorant (a + √(a² + 4σ²))/2 of λ_max(R) (docs/math.md §11.4), with a = c·λ_w,
  // c = β_ik/w_i at its maximizing sample i and unit k, λ_w = vᵀX̃ᵀdiag(w)X̃v (w held fixed, v its
  // top unit eigenvector: Hellmann-Feynman) and σ = ‖X̃ᵀΓ‖_F, Γ_ic = e_ic φ'(a_ik).
  auto majorant_term = [&](const ResidualMajorant& r, const Tensor& g) {
    const int64_t k = r.unit.item<int64_t>(), i = r.sample.item<int64_t>();
    const double c = r.c.item<double>(), sigma = r.sigma.item<double>();
    const double gram = r.gram_value.item<double>(), a = c * gram;
    const double s = std::sqrt(a * a + 4 * sigma * sigma);
    const double db_da = s > 0 ? (1 + a / s) / 2 : 1, db_dsigma = s > 0 ? 2 * sigma / s : 0;
    const Tensor coefficient = f64(g);
    const Tensor w2k = n.w2.select(1, k);                                   // (C,)
    if (c > 0) {  // c = σ·β_ik/w_i, σ = r.sign
      const Tensor gc = coefficient * (r.sign * db_da * gram / r.weights[i].item<double>());
      const Tensor e_i = n.e.select(0, i);
      const Tensor p2 = n.phi2.select(0, i).select(0, k), p3 = n.phi3.select(0, i).select(0, k);
      a_bar.select(0, i).select(0, k).add_(gc * p3 * at::dot(e_i, w2k));
      e_bar.select(0, i).add_(gc * p2 * w2k);
      w2_bar.select(1, k).add_(gc * p2 * e_i);
    }
    const Tensor q = at::mv(n.x_tilde, r.gram_vector);
    x_tilde_bar += (coefficient * (2 * db_da * c)) *
                   at::outer(r.weights * q, r.gram_vector);
    if (sigma > 0) {
      const Tensor p1k = n.phi1.select(1, k), p2k = n.phi2.select(1, k);
      const Tensor Gamma = n.e * p1k.unsqueeze(1);                          // (N, C)
      const Tensor unit = at::matmul(n.x_tilde.t(), Gamma) / sigma;         // (D̃, C)
      const Tensor gs = coefficient * db_dsigma;
      x_tilde_bar += gs * at::matmul(Gamma, unit.t());
      const Tensor Gamma_bar = gs * at::matmul(n.x_tilde, unit);           // (N, C)
      e_bar += Gamma_bar * p1k.unsqueeze(1);
      a_bar.select(1, k).add_((Gamma_bar * n.e).sum(1) * p2k);
    }
  };
  // Where the parts hold majorants, λ_max(R) stands for the majorant of R and λ_min(R) for
  // minus that of −R.
  if (majorant != nullptr) {
    majorant_term(*majorant, g_max);
  } else if (v.residual_max_vector.defined()) {
    residual_term(v.residual_max_vector, v.residual_max_unit, g_max);
  }
  if (minorant != nullptr) {
    majorant_term(*minorant, -g_min);
  } else if (v.residual_min_vector.defined()) {
    residual_term(v.residual_min_vector, v.residual_min_unit, g_min);
  }

  // e → z: de_i/dz_i = S_i (s for one logit).
  if (p.one_logit()) {
    z_bar += n.logit.s.unsqueeze(1) * e_bar;
  } else {
    z_bar += at::matmul(n.terms.S, e_bar.unsqueeze(2)).squeeze(2);
  }
  // z = Φ W2ᵀ + b2, Φ = φ(A), A = X W1ᵀ + b1.
  phi0_bar += at::matmul(z_bar, n.w2);
  w2_bar += at::matmul(z_bar.t(), n.phi0);
  a_bar += phi0_bar * n.phi1 + phi1_bar * n.phi2;

  InputGradients out;
  const auto dtype = p.x.scalar_type();
  out.w1 = at::matmul(a_bar.t(), n.x).to(dtype);
  out.w2 = w2_bar.to(dtype);
  if (n.has_b1) out.b1 = a_bar.sum(0).to(dtype);
  if (n.has_b2) out.b2 = z_bar.sum(0).to(dtype);
  if (need_x) out.x = (at::matmul(a_bar, n.w1) + x_tilde_bar.narrow(1, 0, D)).to(dtype);
  return out;
}

SpectralParts weyl_at_scale(const MlpProblem& p, bool largest) {
  // λ_max: spectral_bound's own parts. λ_min: R's alone (λ_min(H) ≥ λ_min(R), GGN being
  // positive semi-definite). R exact where its blocks are cheap: far tighter than the majorants
  // where D is small.
  if (largest) return evaluate(p);
  const Network n = network(p, /*for_gradients=*/false);
  SpectralParts out;
  set_no_ggn_part(out, n);
  set_residual_part(out, p, n);
  return out;
}

Tensor residual_majorant_upper(const MlpProblem& p) {
  const ResidualMajorant r = residual_majorant(network(p, /*for_gradients=*/false), 1);
  return r.value + r.allowance;
}

std::optional<SpectralParts> second_bound_at_scale(const MlpProblem& p, const Tensor& top_direction,
                                                   double ceiling, double estimate,
                                                   bool for_gradients) {
  const Network n = network(p, /*for_gradients=*/false);
  const int64_t N = n.num_samples(), C = n.num_outputs();
  const auto options = n.x.options();
  const ResidualMajorant r = residual_majorant(n, 1);
  const double residual_upper = up(r.value.item<double>() + r.allowance.item<double>());
  // What is left for λ_2(GGN): ν = τ + λ_max(R)'s bound must stay below θ_low − ρ.
  const double budget = ceiling - residual_upper;
  // Nothing to gain where the second Ritz value, which λ_2(GGN) is close to where R is small,
  // already lies above the budget: the factorization would cost (NC)³/3 flops to fail.
  const double low = std::max(estimate, 0.0);
  if (!(budget > low) || !std::isfinite(budget)) return std::nullopt;
  // λ_2(M) ≤ λ_max(M − c·yyᵀ) for every y ≠ 0, c ≥ 0 (§11.2), with y = J̃u/‖J̃u‖ the image of
  // the top Ritz vector (close to M's top eigenvector wherever Kato-Temple can close the
  // interval) and c = yᵀMy; formed in place of M.
  Tensor M = dual_matrix(n);
  const Tensor trace = M.trace();
  const Tensor forming_error = forming_factor(n) * trace;
  Tensor y = dual_image(n, top_direction).reshape({N * C});
  const double y_norm = y.norm().item<double>();
  if (!(y_norm > 0)) return std::nullopt;
  y = y / y_norm;
  const Tensor c = at::dot(y, at::mv(M, y)).clamp_min(0);
  M.addr_(y, y, 1, -c.item<double>());
  const double error = deflation_error(forming_error, c, y, M).item<double>();
  const double norm = (trace + c).item<double>();
  // One factorization at the midpoint between the estimate and the budget (λ_2(GGN) is near
  // the second Ritz value of H where R is small), a second just below the budget if that fails.
  ShiftCertificate certificate;
  for (const double tau : {(low + budget) / 2, budget - 0.01 * (budget - low)}) {
    certificate = certify_shift(M, tau, error, norm);
    if (certificate.holds && certificate.upper < budget) break;
    certificate = ShiftCertificate();
  }
  if (!certificate.holds) return std::nullopt;
  SpectralParts out;
  set_no_ggn_part(out, n);
  out.ggn_second_upper = at::scalar_tensor(certificate.upper, options);
  out.ggn_second_value = out.ggn_second_upper;
  out.ggn_second_vector = at::zeros({N, C}, options);
  if (for_gradients) {
    // z, the deflated matrix's top eigenvector (Lanczos: an estimate, which only the derivative
    // uses); its quotient zᵀ(M − c·yyᵀ)z is the smooth function whose derivative with y and c held
    // fixed is zᵀ dM z (§11.4).
    const TopRitzPair z = top_ritz_pair(M);
    out.ggn_second_value = z.value;
    out.ggn_second_vector = z.vector.view({N, C});
  }
  out.residual_lambda_max = r.value;
  out.residual_allowance = r.allowance;
  out.residual_lambda_min = at::full({}, NAN, options);
  out.residual_majorant = r;
  return out;
}

}  // namespace torch_ws::spectral
