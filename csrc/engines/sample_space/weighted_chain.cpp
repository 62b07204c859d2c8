// The chain of docs/math.md §6.1 for the gradient of α·tr H + β·tr(H²) (§6.3), fused on the CPU.
// The ATen form (chain.cpp, after weigh_adjoints and trace_adjoints) makes about twenty passes
// over (N, H) arrays, each a fresh allocation; at the batch sizes of training these cost as much
// as the products with X. Here one pass per row computes tr H's adjoints, weighs them with
// tr(H²)'s, and writes Ā, accumulating w̄2 and b̄1 on the way; then Āᵀ X (and Ā W1) are BLAS.
//
// The weighting and the per-entry arithmetic run in float64 (α and β can exceed the float32 range
// where the spread is tiny; the sums over samples accumulate in float64). Rows go in blocks of a
// size that depends on N only, each block with its own sums, added in block order: the result
// does not depend on the thread count.
#include "engines/cpu/vector_clones.h"
#include "engines/sample_space/chain_terms.h"
#include "engines/sample_space/sample_space.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace torch_ws {
namespace {

// At most this many row blocks (their w̄2, b̄1 sums are 2·H doubles each), of at least kMinRows.
constexpr int64_t kMaxBlocks = 256, kMinRows = 16;

template <typename scalar_t>
struct ChainInputs {
  int64_t hidden;
  double alpha, beta;
  const scalar_t *s, *e, *ds_dz, *k, *q, *r, *v, *w2;             // (N,) and w2 (H,)
  const scalar_t *U, *phi0, *phi1, *phi2, *phi3;                   // (N, H) features
  const scalar_t *U_bar, *V_bar, *phi0_bar, *phi1_bar;             // (N, H) tr(H²)'s adjoints
  const scalar_t *s_bar, *e_bar;                                   // (N,) tr(H²)'s adjoints
  scalar_t* pre_bar;                                               // (N, H) out: Ā
  double *z_bar, *x_factor;                                        // (N,) out: z̄, tr H's X̄ factor
};

// Rows [begin, end): Ā, z̄ and the rows' shares of w̄2 and b̄1 (added to w2_sum, b1_sum).
template <typename scalar_t>
TORCH_WS_VECTOR_CLONES void chain_rows(const ChainInputs<scalar_t>& c, int64_t begin, int64_t end,
                                       double* __restrict__ w2_sum, double* __restrict__ b1_sum) {
  namespace ct = chain_terms;
  const int64_t h = c.hidden;
  const double alpha = c.alpha, beta = c.beta;
  const scalar_t* __restrict__ w2 = c.w2;
  for (int64_t i = begin; i < end; ++i) {
    const double s = c.s[i], e = c.e[i];
    const ct::TraceAdjoints<double> t = ct::trace_adjoints<double>(s, e, c.k[i], c.q[i], c.r[i],
                                                                   c.v[i]);
    const double s_bar = alpha * t.s + beta * c.s_bar[i];
    const double e_bar = alpha * t.e + beta * c.e_bar[i];
    const double z_bar = ct::logit_adjoint<double>(c.ds_dz[i], s, s_bar, e_bar);
    c.z_bar[i] = z_bar;
    c.x_factor[i] = alpha * t.x;
    const double u = alpha * t.u, phi0_factor = alpha * t.phi0, v = alpha * t.v;
    const int64_t row = i * h;
    const scalar_t* __restrict__ U = c.U + row;
    const scalar_t* __restrict__ phi0 = c.phi0 + row;
    const scalar_t* __restrict__ phi1 = c.phi1 + row;
    const scalar_t* __restrict__ phi2 = c.phi2 + row;
    const scalar_t* __restrict__ phi3 = c.phi3 + row;
    const scalar_t* __restrict__ U_sq = c.U_bar + row;
    const scalar_t* __restrict__ V_sq = c.V_bar + row;
    const scalar_t* __restrict__ phi0_sq = c.phi0_bar + row;
    const scalar_t* __restrict__ phi1_sq = c.phi1_bar + row;
    scalar_t* __restrict__ pre_bar = c.pre_bar + row;
#pragma omp simd
    for (int64_t k = 0; k < h; ++k) {
      const double U_bar = u * U[k] + beta * U_sq[k];
      const double V_bar = v + beta * V_sq[k];
      const double phi0_bar = phi0_factor * phi0[k] + beta * phi0_sq[k];
      const double phi1_bar = beta * phi1_sq[k];
      const double a_bar = ct::pre_activation_adjoint<double, double, double>(
          phi0_bar, phi1_bar, U_bar, V_bar, z_bar, w2[k], phi1[k], phi2[k], phi3[k]);
      pre_bar[k] = static_cast<scalar_t>(a_bar);
      b1_sum[k] += a_bar;
      w2_sum[k] += ct::output_weight_adjoint<double, double>(U_bar, V_bar, z_bar, phi0[k],
                                                             phi1[k], phi2[k]);
    }
  }
}

}  // namespace

InputGradients weighted_chain_cpu(const MlpProblem& p, const SampleFeatures& f,
                                  const Diagonals& d, double alpha, double beta,
                                  const SampleAdjoints& trace_sq_adjoints, bool need_grad_x) {
  const SampleAdjoints& b = trace_sq_adjoints;
  const int64_t n = f.x.size(0), h = f.U.size(1);
  const int64_t blocks = std::max<int64_t>(1, std::min(kMaxBlocks, n / kMinRows));
  const int64_t rows_per_block = (n + blocks - 1) / blocks;
  const auto dtype = f.x.scalar_type();
  at::Tensor pre_bar = at::empty({n, h}, f.x.options());
  auto doubles = f.x.options().dtype(at::kDouble);
  at::Tensor z_bar = at::empty({n}, doubles), x_factor = at::empty({n}, doubles);
  at::Tensor sums = at::zeros({blocks, 2, h}, doubles);  // per block: w̄2's and b̄1's shares
  // Every array the loop reads, contiguous (the engine's are already: no copies), kept alive here.
  std::vector<at::Tensor> read;
  AT_DISPATCH_FLOATING_TYPES(dtype, "torch_ws_weighted_chain_cpu", [&] {
    auto in = [&](const at::Tensor& t) {
      read.push_back(t.contiguous());
      return read.back().const_data_ptr<scalar_t>();
    };
    ChainInputs<scalar_t> c;
    c.hidden = h;
    c.alpha = alpha;
    c.beta = beta;
    c.s = in(f.s), c.e = in(f.e), c.ds_dz = in(f.ds_dz);
    c.k = in(d.k), c.q = in(d.q), c.r = in(d.r), c.v = in(d.v), c.w2 = in(p.output_row());
    c.U = in(f.U), c.phi0 = in(f.phi0), c.phi1 = in(f.phi1), c.phi2 = in(f.phi2);
    c.phi3 = in(f.phi3);
    c.U_bar = in(b.U), c.V_bar = in(b.V), c.phi0_bar = in(b.phi0), c.phi1_bar = in(b.phi1);
    c.s_bar = in(b.s), c.e_bar = in(b.e);
    c.pre_bar = pre_bar.mutable_data_ptr<scalar_t>();
    c.z_bar = z_bar.mutable_data_ptr<double>();
    c.x_factor = x_factor.mutable_data_ptr<double>();
    double* block_sums = sums.mutable_data_ptr<double>();
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t block = first; block < last; ++block) {
        const int64_t begin = block * rows_per_block, end = std::min(n, begin + rows_per_block);
        double* own = block_sums + block * 2 * h;
        chain_rows(c, begin, end, own, own + h);
      }
    });
  });
  // The blocks' sums in block order, and b̄2 = Σ z̄ in row order.
  at::Tensor totals = at::zeros({2 * h}, doubles);
  double* total = totals.mutable_data_ptr<double>();
  const double* block_sums = sums.const_data_ptr<double>();
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t k = 0; k < 2 * h; ++k) total[k] += block_sums[block * 2 * h + k];
  }
  const double* z = z_bar.const_data_ptr<double>();
  double z_sum = 0;
  for (int64_t i = 0; i < n; ++i) z_sum += z[i];
  InputGradients g;
  g.w1 = at::mm(pre_bar.t(), f.x);
  if (need_grad_x) {
    // X̄ = α·(tr H's factor)∘X + β·(tr(H²)'s X̄), then x enters A too.
    const at::Tensor x_bar =
        (x_factor.unsqueeze(1) * f.x.to(at::kDouble) + beta * b.x.to(at::kDouble)).to(dtype);
    g.x = at::addmm(x_bar, pre_bar, p.w1());
  }
  // Copies (also in float64): the op's outputs must not share `totals`.
  if (p.b1()) g.b1 = totals.narrow(0, h, h).to(dtype, false, /*copy=*/true);
  g.w2 = totals.narrow(0, 0, h).to(dtype, false, /*copy=*/true).reshape_as(p.w2());
  if (p.b2()) g.b2 = at::full({1}, z_sum, f.x.options());
  return g;
}

}  // namespace torch_ws
