// The parameter-space engine (CPU): the other evaluation order of the same sums.
//
// tr(H²) = sᵀ(G∘G)s + 2sᵀBe + eᵀCe (docs/math.md §4) is ‖H‖²_F for H = Σ_i s_i g_i g_iᵀ + e_i M_i
// (§3). The sample-space engines sum it over pairs of samples: O(N²(8H + D)) work. For a small
// network the n×n Hessian itself is the smaller object, so this engine assembles it in closed form
// from the per-sample tangents g_i = ∇θ z_i and the sparse blocks of M_i, in O(N·n²) work and
// O(n²) memory, and reads tr H and tr(H²) off it. At the papers' scale (N = 200, n = 41) that is
// about ten times less arithmetic than the pairwise sums. It also matters more there that the
// work runs in fused loops over the samples: a few dozen small tensor operations would cost more
// than the arithmetic. Only φ^(k)(A) goes through tensors (the vectorized activation table).
//
// The gradients (docs/math.md §6): with L = ḡ_tr·tr H + ḡ_sq·tr(H²), ∂L/∂H = H̄ = ḡ_tr·I + 2ḡ_sq·H,
// and L changes with sample i through L_i = s_i g_iᵀH̄g_i + e_i⟨H̄, M_i⟩ (H̄ held fixed). So the
// gradients of tr H (H̄ = I) and of tr(H²) (H̄ = 2H) take one more pass over the samples with the
// assembled H, both in the same loops: O(N·n²), no autograd. Both passes run in lanes (lanes.h):
// the assembly by bands of rows of H (every entry summed in one order whatever the thread count),
// the gradient pass by runs of samples.
#include "engines/parameter_space/parameter_space.h"
#include "engines/cpu/lanes.h"
#include "engines/cpu/vector_clones.h"

#include <c10/util/Exception.h>

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <array>
#include <vector>

namespace torch_ws {

namespace {

// Where each parameter sits in θ, i.e. the Hessian's rows. Hidden unit k owns the block
// [W1_k,0 … W1_k,D−1, b1_k] of `block` = D + [b1] entries at k·block; w2 follows at
// `w2_offset`, b2 last. (The traces do not depend on the order; this one keeps each M_i's
// (W1, W1) part in H diagonal blocks of x̃x̃ᵀ.)
struct Layout {
  int64_t in_dim, hidden, block, w2_offset, num_params;
  bool has_b1, has_b2;

  explicit Layout(const MlpProblem& p)
      : in_dim(p.w1().size(1)),
        hidden(p.w1().size(0)),
        block(in_dim + (p.b1() ? 1 : 0)),
        w2_offset(hidden * block),
        num_params(p.num_params()),
        has_b1(p.b1().has_value()),
        has_b2(p.b2().has_value()) {}
};

// One sample's quantities (docs/math.md §2), in double.
struct Sample {
  std::vector<double> x_ext;                   // x̃: x_i, then 1 if b1 exists (block entries)
  const double *phi0, *phi1, *phi2, *phi3;     // φ^(k)(a_i), rows of H entries
  double s = 0, e = 0, ds_dz = 0;              // c·ℓ'', c·ℓ', c·ℓ''' at z_i (losses.h)
};

// The problem's arrays as contiguous float64 (a copy only for float32 inputs), φ^(k)(A) for the
// samples [begin, end) at once (the tensor form of the activation table: vectorized, unlike one
// std::tanh per entry), and the evaluation of one of them (by its index among all N samples; the
// loss scale is that of all N).
class SampleEvaluator {
 public:
  SampleEvaluator(const MlpProblem& p, const Layout& layout, int num_derivatives,
                  int64_t begin = 0, int64_t end = -1)
      : layout_(layout),
        loss_(p.loss),
        scale_(p.loss_scale()),
        first_(begin) {
    auto as_double = [](const at::Tensor& t) { return t.to(at::kDouble).contiguous(); };
    const int64_t count = (end < 0 ? p.num_samples() : end) - begin;
    x_ = as_double(p.x.narrow(0, begin, count));
    target_ = as_double(p.target.narrow(0, begin, count));
    w1_ = as_double(p.w1());
    w2_ = as_double(p.w2());
    x = x_.data_ptr<double>();
    w1 = w1_.data_ptr<double>();
    // A = X W1ᵀ + b1 by a plain loop: at these sizes a BLAS call (or a broadcast of b1) costs
    // more than its arithmetic.
    const int64_t N = count, D = layout.in_dim, H = layout.hidden;
    const at::Tensor b1 = p.b1() ? as_double(*p.b1()) : at::Tensor();
    const double* bias = p.b1() ? b1.data_ptr<double>() : nullptr;
    at::Tensor pre = at::empty({N, H}, x_.options());
    double* a = pre.data_ptr<double>();
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t k = 0; k < H; ++k) {
        double sum = bias ? bias[k] : 0.0;
        for (int64_t d = 0; d < D; ++d) sum += w1[k * D + d] * x[i * D + d];
        a[i * H + k] = sum;
      }
    }
    ActivationValues<at::Tensor> act = activation_values(p.activation, pre, num_derivatives);
    phi_[0] = act.phi0.contiguous();
    phi_[1] = act.phi1.contiguous();
    phi_[2] = act.phi2.contiguous();
    if (num_derivatives >= 3) phi_[3] = act.phi3.contiguous();
    b2_ = p.b2() ? p.b2()->item<double>() : 0.0;
    w2 = w2_.data_ptr<double>();
    target = target_.data_ptr<double>();
    for (int k = 0; k < 4; ++k) phi[k] = phi_[k].defined() ? phi_[k].data_ptr<double>() : nullptr;
  }

  Sample make_sample() const {
    Sample s;
    s.x_ext.resize(layout_.block);
    return s;
  }

  // Fills `out` and the tangent g (n entries) for sample i.
  void evaluate(int64_t sample, Sample& out, double* g) const {
    const int64_t D = layout_.in_dim, H = layout_.hidden, block = layout_.block;
    const int64_t i = sample - first_;  // its row in the arrays here
    const double* xi = x + i * D;
    for (int64_t d = 0; d < D; ++d) out.x_ext[d] = xi[d];
    if (layout_.has_b1) out.x_ext[D] = 1;
    out.phi0 = phi[0] + i * H;
    out.phi1 = phi[1] + i * H;
    out.phi2 = phi[2] + i * H;
    out.phi3 = phi[3] ? phi[3] + i * H : nullptr;
    double z = b2_;
    for (int64_t k = 0; k < H; ++k) z += w2[k] * out.phi0[k];
    const LogitTerms<double> logit = logit_terms(loss_, z, target[i], scale_);
    out.s = logit.s;
    out.e = logit.e;
    out.ds_dz = logit.ds_dz;
    // g_i: ∂z/∂W1_k = w2_k φ'(a_k) x̃, ∂z/∂w2_k = φ(a_k), ∂z/∂b2 = 1.
    for (int64_t k = 0; k < H; ++k) {
      const double u = w2[k] * out.phi1[k];
      for (int64_t d = 0; d < block; ++d) g[k * block + d] = u * out.x_ext[d];
      g[layout_.w2_offset + k] = out.phi0[k];
    }
    if (layout_.has_b2) g[layout_.num_params - 1] = 1;
  }

  // Raw float64 views of the arrays above.
  const double *x, *w1, *w2, *target;
  const double* phi[4];

 private:
  const Layout& layout_;
  Loss loss_;
  double scale_, b2_;
  int64_t first_;
  at::Tensor x_, target_, w1_, w2_, phi_[4];
};

// Samples go through the O(n²) loops in chunks of kChunk: each pass over the n×n Hessian then
// serves kChunk samples, so the loops are bound by arithmetic rather than by moving H through
// the cache once per sample. A short last chunk is padded with zero tangents.
constexpr int64_t kChunk = 8;

// Rows [row_begin, row_end) of the upper triangle (q ≥ p) of hessian += Σ_b s_b g_b g_bᵀ over one
// chunk; G is kChunk × n. See vector_clones.h for the attribute.
TORCH_WS_VECTOR_CLONES void add_outer_products(double* __restrict__ hessian,
                                               const double* __restrict__ G,
                                               const double* __restrict__ s, int64_t n,
                                               int64_t row_begin, int64_t row_end) {
  for (int64_t p = row_begin; p < row_end; ++p) {
    double c[kChunk];
    for (int64_t b = 0; b < kChunk; ++b) c[b] = s[b] * G[b * n + p];
    double* __restrict__ row = hessian + p * n;
#pragma omp simd
    for (int64_t q = p; q < n; ++q) {
      double acc = row[q];
      for (int64_t b = 0; b < kChunk; ++b) acc += c[b] * G[b * n + q];
      row[q] = acc;
    }
  }
}

// out_b = hessian · g_b for one chunk (hessian symmetric and whole). G_t holds the chunk's
// tangents transposed (n × kChunk), so the inner loop runs over the chunk, contiguous; out is
// kChunk × n.
TORCH_WS_VECTOR_CLONES void hessian_times(const double* __restrict__ hessian,
                                          const double* __restrict__ G_t,
                                          double* __restrict__ out, int64_t n) {
  for (int64_t p = 0; p < n; ++p) {
    const double* __restrict__ row = hessian + p * n;
    double acc[kChunk] = {};
    for (int64_t q = 0; q < n; ++q) {
      const double r = row[q];
#pragma omp simd
      for (int64_t b = 0; b < kChunk; ++b) acc[b] += r * G_t[q * kChunk + b];
    }
    for (int64_t b = 0; b < kChunk; ++b) out[b * n + p] = acc[b];
  }
}

// Parallel work pays from about this many multiply-adds per lane (a parallel region costs a few
// microseconds; the papers' scale, N = 200 and n = 41, has 3·10⁵ per pass).
constexpr double kMinWorkPerLane = 5e4;

// H assembled in closed form (the terms of samples [begin, end)), with tr H and ‖H‖²_F.
struct AssembledHessian {
  double trace, trace_sq;
  at::Tensor hessian;  // (n, n) float64, contiguous
};

AssembledHessian assemble_hessian(const SampleEvaluator& eval, const Layout& L, int64_t begin,
                                  int64_t end) {
  const int64_t N = end - begin;
  const int64_t n = L.num_params, block = L.block;
  at::Tensor hessian = at::zeros({n, n}, at::TensorOptions().dtype(at::kDouble));
  double* h = hessian.data_ptr<double>();
  const double* w2 = eval.w2;
  // The upper triangle (row ≤ column) first, mirrored at the end, in bands of rows of about
  // equal area (row p has n − p entries): the lanes take turns over the bands, so they write
  // disjoint memory and need no copy of H. At least one band per lane, and more once H outgrows
  // the caches: a band of at most kBandBytes stays cached across the passes of the chunks of
  // samples (one lane streaming all 36 MiB of H at n = 2177 once per chunk was 1.2× slower than
  // two lanes on half of it each). Each band evaluates every sample's tangent, O(n) against its
  // share of the O(n²) products.
  constexpr double kBandBytes = 4 << 20;
  const double area = 0.5 * static_cast<double>(n) * (n + 1);
  const int64_t lanes = lanes_for(area * N, kMinWorkPerLane, n);
  const int64_t bands_for_cache = static_cast<int64_t>(std::ceil(area * sizeof(double) / kBandBytes));
  const int64_t bands =
      std::min<int64_t>(n, (std::max(bands_for_cache, lanes) + lanes - 1) / lanes * lanes);
  std::vector<int64_t> first_row(bands + 1, n);
  first_row[0] = 0;
  for (int64_t p = 0, band = 1; p < n && band < bands; ++p) {
    const double above = static_cast<double>(p + 1) * n - 0.5 * static_cast<double>(p) * (p + 1);
    if (above >= area * band / bands) first_row[band++] = p + 1;
  }
  auto assemble_band = [&](int64_t row_begin, int64_t row_end) {
    auto mine = [&](int64_t row) { return row >= row_begin && row < row_end; };
    Sample smp = eval.make_sample();
    std::vector<double> tangents(kChunk * n), s_chunk(kChunk);
    for (int64_t i0 = begin; i0 < end; i0 += kChunk) {
      std::fill(tangents.begin(), tangents.end(), 0.0);
      std::fill(s_chunk.begin(), s_chunk.end(), 0.0);
      for (int64_t b = 0; b < kChunk && i0 + b < end; ++b) {
        eval.evaluate(i0 + b, smp, tangents.data() + b * n);
        s_chunk[b] = smp.s;
        // e_i M_i (§3): per hidden unit k, the (W1_k, W1_k) block e·w2_k φ''(a_k) x̃x̃ᵀ and the
        // (W1_k, w2_k) column e·φ'(a_k) x̃ (w2 comes after every W1 block: upper triangle).
        for (int64_t k = 0; k < L.hidden; ++k) {
          const double diag = smp.e * w2[k] * smp.phi2[k], cross = smp.e * smp.phi1[k];
          const int64_t base = k * block;
          for (int64_t d1 = 0; d1 < block; ++d1) {
            if (!mine(base + d1)) continue;
            double* row = h + (base + d1) * n;
            const double xd1 = smp.x_ext[d1];
            for (int64_t d2 = d1; d2 < block; ++d2) row[base + d2] += diag * xd1 * smp.x_ext[d2];
            row[L.w2_offset + k] += cross * xd1;
          }
        }
      }
      // The Gauss-Newton part Σ s_i g_i g_iᵀ.
      add_outer_products(h, tangents.data(), s_chunk.data(), n, row_begin, row_end);
    }
  };
  run_lanes(lanes, [&](int64_t lane) {
    for (int64_t band = lane; band < bands; band += lanes) {
      assemble_band(first_row[band], first_row[band + 1]);
    }
  });
  double trace = 0, trace_sq = 0;
  for (int64_t r = 0; r < n; ++r) {
    trace += h[r * n + r];
    trace_sq += h[r * n + r] * h[r * n + r];
    for (int64_t c = r + 1; c < n; ++c) {
      trace_sq += 2 * h[r * n + c] * h[r * n + c];
      h[c * n + r] = h[r * n + c];
    }
  }
  return {trace, trace_sq, hessian};
}

// The gradients of tr H and of tr(H²) are one pass with two right-hand sides: for
// L = ḡ_tr·tr H + ḡ_sq·tr(H²), ∂L/∂H = H̄ = ḡ_tr·I + 2ḡ_sq·H, so tr H has H̄ = I and tr(H²)
// has H̄ = 2H (docs/math.md §6). Side r's H̄ is kIdentity[r]·I + kTwiceH[r]·H.
constexpr int kSides = 2;
constexpr double kIdentity[kSides] = {1, 0}, kTwiceH[kSides] = {0, 2};

// One side's gradient in one lane, accumulated over the lane's samples in float64. The rows of x's
// gradient belong to one sample each, so the lanes share that array (x points into it).
struct GradientAccumulator {
  GradientAccumulator(const Layout& L, double* grad_x)
      : w1(L.hidden * L.in_dim), w2(L.hidden), b1(L.has_b1 ? L.hidden : 0), x(grad_x) {}

  void add(const GradientAccumulator& other) {
    for (size_t k = 0; k < w1.size(); ++k) w1[k] += other.w1[k];
    for (size_t k = 0; k < w2.size(); ++k) w2[k] += other.w2[k];
    for (size_t k = 0; k < b1.size(); ++k) b1[k] += other.b1[k];
    b2 += other.b2;
  }

  // The gradients in `dtype`, undefined for absent biases and an x not asked for.
  InputGradients result(const Layout& L, const at::Tensor& grad_x, at::ScalarType dtype) const {
    auto out = [&](const std::vector<double>& v, at::IntArrayRef shape) {
      at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
      AT_DISPATCH_FLOATING_TYPES(dtype, "torch_ws_parameter_space_gradients", [&] {
        std::copy(v.begin(), v.end(), t.data_ptr<scalar_t>());
      });
      return t;
    };
    return {grad_x.defined() ? grad_x.to(dtype) : at::Tensor(), out(w1, {L.hidden, L.in_dim}),
            L.has_b1 ? out(b1, {L.hidden}) : at::Tensor(), out(w2, {1, L.hidden}),
            L.has_b2 ? out({b2}, {1}) : at::Tensor()};
  }

  std::vector<double> w1, w2, b1;
  double b2 = 0;
  double* x;  // (N, D), shared; nullptr when x's gradient is not asked for
};

// What one sample reads from the saved Hessian H (not H̄): H g, and per hidden unit k the
// products H_kk x̃ and the column H[W1_k, w2_k].
struct HessianReads {
  const double* hessian_g;
  const double* kk_x;   // H × block
  const double* cross;  // H × block
};

// One side's products with H̄ for the current sample.
struct SideScratch {
  explicit SideScratch(const Layout& L)
      : hbar_g(L.num_params), hbar_kk_x(L.hidden * L.block), hbar_cross(L.hidden * L.block),
        alpha(L.hidden), beta(L.hidden) {}
  std::vector<double> hbar_g, hbar_kk_x, hbar_cross, alpha, beta;
};

// Adds sample i's share of both gradients: L_i = s_i g_iᵀH̄g_i + e_i⟨H̄, M_i⟩ with H̄ held fixed
// (docs/math.md §6), differentiated through g_i, M_i and the loss terms down to W1, b1, w2, b2, x.
// The two sides share the sample's reads and loops.
void accumulate_sample(const Layout& L, const SampleEvaluator& eval, const Sample& smp, int64_t i,
                       const double* g, const HessianReads& reads, SideScratch (&scratch)[kSides],
                       std::array<GradientAccumulator, kSides>& acc) {
  const int64_t n = L.num_params, D = L.in_dim, H = L.hidden, block = L.block;
  const std::vector<double>& xe = smp.x_ext;
  const double* w1 = eval.w1;
  const double* w2 = eval.w2;
  const double s = smp.s, e = smp.e;
  double z_bar[kSides];
  for (int r = 0; r < kSides; ++r) {
    SideScratch& sc = scratch[r];
    const double gt = kIdentity[r], gq2 = kTwiceH[r];
    // H̄g and q = gᵀH̄g: the Gauss-Newton term's sensitivity.
    double q = 0;
    for (int64_t p = 0; p < n; ++p) {
      sc.hbar_g[p] = gt * g[p] + gq2 * reads.hessian_g[p];
      q += g[p] * sc.hbar_g[p];
    }
    // ⟨H̄, M_i⟩ = Σ_k w2_k φ''_k α_k + 2φ'_k β_k, α_k = x̃ᵀH̄_kk x̃, β_k = x̃ᵀH̄[W1_k, w2_k].
    double residual = 0;
    for (int64_t k = 0; k < H; ++k) {
      const int64_t base = k * block;
      double a_k = 0, b_k = 0;
      for (int64_t d = 0; d < block; ++d) {
        sc.hbar_kk_x[base + d] = gt * xe[d] + gq2 * reads.kk_x[base + d];
        sc.hbar_cross[base + d] = gq2 * reads.cross[base + d];
        a_k += xe[d] * sc.hbar_kk_x[base + d];
        b_k += xe[d] * sc.hbar_cross[base + d];
      }
      sc.alpha[k] = a_k;
      sc.beta[k] = b_k;
      residual += w2[k] * smp.phi2[k] * a_k + 2 * smp.phi1[k] * b_k;
    }
    // L_i = s·q + e·residual, with ds/dz = c·ℓ''' and de/dz = s (losses.h).
    z_bar[r] = q * smp.ds_dz + residual * s;
    acc[r].b2 += z_bar[r];
  }
  // ḡ = 2s·H̄g, then through g's blocks (U_k x̃, φ(a_k)), the blocks of M_i, and
  // z = w2·φ(a) + b2, to a_k = W1_k·x + b1_k.
  for (int64_t k = 0; k < H; ++k) {
    const int64_t base = k * block;
    const double phi0 = smp.phi0[k], phi1 = smp.phi1[k], phi2 = smp.phi2[k], phi3 = smp.phi3[k];
    for (int r = 0; r < kSides; ++r) {
      const SideScratch& sc = scratch[r];
      GradientAccumulator& out = acc[r];
      const double* g_bar = sc.hbar_g.data() + base;  // times 2s below
      double u_bar = 0;
      for (int64_t d = 0; d < block; ++d) u_bar += g_bar[d] * xe[d];
      u_bar *= 2 * s;
      const double alpha = sc.alpha[k], beta = sc.beta[k];
      const double phi0_bar = 2 * s * sc.hbar_g[L.w2_offset + k] + z_bar[r] * w2[k];
      const double phi1_bar = u_bar * w2[k] + 2 * e * beta;
      const double phi2_bar = e * w2[k] * alpha;
      out.w2[k] += z_bar[r] * phi0 + u_bar * phi1 + e * phi2 * alpha;
      const double a_bar = phi0_bar * phi1 + phi1_bar * phi2 + phi2_bar * phi3;
      for (int64_t d = 0; d < D; ++d) out.w1[k * D + d] += a_bar * xe[d];
      if (L.has_b1) out.b1[k] += a_bar;
      if (out.x) {
        // x enters through a_k, through g's U_k x̃, and through the x̃x̃ᵀ and x̃ blocks of M_i.
        const double u_k = w2[k] * phi1;
        double* gxi = out.x + i * D;
        for (int64_t d = 0; d < D; ++d) {
          gxi[d] += w1[k * D + d] * a_bar + u_k * 2 * s * g_bar[d] +
                    2 * e * (w2[k] * phi2 * sc.hbar_kk_x[base + d] +
                             phi1 * sc.hbar_cross[base + d]);
        }
      }
    }
  }
}

// (gradient of tr H, gradient of tr(H²)) from the assembled Hessian, in `dtype`, through the
// terms of samples [begin, end) of N. Lanes take contiguous runs of chunks of samples, each with
// its own accumulators (x's rows are disjoint), summed in lane order.
std::pair<InputGradients, InputGradients> trace_gradients(const SampleEvaluator& eval,
                                                          const Layout& L, int64_t N,
                                                          int64_t begin, int64_t end,
                                                          const at::Tensor& hessian,
                                                          bool need_grad_x, at::ScalarType dtype) {
  const int64_t n = L.num_params, H = L.hidden, block = L.block;
  const double* h = hessian.data_ptr<double>();
  const at::Tensor grad_x[kSides] = {
      need_grad_x ? at::zeros({N, L.in_dim}, hessian.options()) : at::Tensor(),
      need_grad_x ? at::zeros({N, L.in_dim}, hessian.options()) : at::Tensor()};
  auto x_ptr = [&](int r) { return need_grad_x ? grad_x[r].data_ptr<double>() : nullptr; };
  const int64_t num_chunks = (end - begin + kChunk - 1) / kChunk;
  const int64_t lanes =
      lanes_for(static_cast<double>(end - begin) * n * n, kMinWorkPerLane, num_chunks);
  std::vector<std::array<GradientAccumulator, kSides>> acc(
      lanes, {GradientAccumulator(L, x_ptr(0)), GradientAccumulator(L, x_ptr(1))});
  run_lanes(lanes, [&](int64_t lane) {
    std::vector<Sample> samples(kChunk, eval.make_sample());
    SideScratch scratch[kSides] = {SideScratch(L), SideScratch(L)};
    std::vector<double> tangents(kChunk * n), tangents_t(kChunk * n), hessian_g(kChunk * n);
    std::vector<double> kk_x(H * block), cross(H * block);
    const int64_t chunk_end = num_chunks * (lane + 1) / lanes;
    for (int64_t chunk = num_chunks * lane / lanes; chunk < chunk_end; ++chunk) {
      const int64_t i0 = begin + chunk * kChunk, count = std::min(kChunk, end - i0);
      std::fill(tangents.begin(), tangents.end(), 0.0);
      for (int64_t b = 0; b < count; ++b) {
        eval.evaluate(i0 + b, samples[b], tangents.data() + b * n);
      }
      for (int64_t b = 0; b < kChunk; ++b) {
        for (int64_t r = 0; r < n; ++r) tangents_t[r * kChunk + b] = tangents[b * n + r];
      }
      hessian_times(h, tangents_t.data(), hessian_g.data(), n);
      for (int64_t b = 0; b < count; ++b) {
        const Sample& smp = samples[b];
        for (int64_t k = 0; k < H; ++k) {
          const int64_t base = k * block, w2_index = L.w2_offset + k;
          for (int64_t d1 = 0; d1 < block; ++d1) {
            const double* row = h + (base + d1) * n;
            double hx = 0;
            for (int64_t d2 = 0; d2 < block; ++d2) hx += row[base + d2] * smp.x_ext[d2];
            kk_x[base + d1] = hx;
            cross[base + d1] = row[w2_index];
          }
        }
        const HessianReads reads{hessian_g.data() + b * n, kk_x.data(), cross.data()};
        accumulate_sample(L, eval, smp, i0 + b, tangents.data() + b * n, reads, scratch,
                          acc[lane]);
      }
    }
  });
  for (int64_t lane = 1; lane < lanes; ++lane) {
    for (int r = 0; r < kSides; ++r) acc[0][r].add(acc[lane][r]);
  }
  return {acc[0][0].result(L, grad_x[0], dtype), acc[0][1].result(L, grad_x[1], dtype)};
}

}  // namespace

ParameterSpaceResult parameter_space_cpu(const MlpProblem& p, bool with_gradients,
                                         bool need_grad_x) {
  TORCH_INTERNAL_ASSERT(p.x.is_cpu());
  const Layout L(p);
  // One evaluation of the samples (φ, φ', φ'' and, for the gradients, φ''') serves both passes.
  const SampleEvaluator eval(p, L, /*num_derivatives=*/with_gradients ? 3 : 2);
  const AssembledHessian assembled = assemble_hessian(eval, L, 0, p.num_samples());
  ParameterSpaceResult out{assembled.trace, assembled.trace_sq, std::nullopt};
  if (with_gradients) {
    out.gradients = trace_gradients(eval, L, p.num_samples(), 0, p.num_samples(),
                                    assembled.hessian, need_grad_x,
                                    p.x.scalar_type());
  }
  return out;
}

at::Tensor parameter_space_hessian_cpu(const MlpProblem& p, int64_t begin, int64_t end) {
  TORCH_INTERNAL_ASSERT(p.x.is_cpu() && p.one_logit());
  const Layout L(p);
  const SampleEvaluator eval(p, L, /*num_derivatives=*/2, begin, end);
  return assemble_hessian(eval, L, begin, end).hessian;
}

InputGradients parameter_space_hessian_backward_cpu(const MlpProblem& p,
                                                    const at::Tensor& hessian_bar,
                                                    int64_t begin, int64_t end,
                                                    bool need_grad_x) {
  TORCH_INTERNAL_ASSERT(p.x.is_cpu() && p.one_logit());
  const Layout L(p);
  const SampleEvaluator eval(p, L, /*num_derivatives=*/3, begin, end);
  // The tr(H²) side reads its matrix as half its H̄ (H̄ = 2H): given H̄/2 it differentiates
  // ⟨H̄, H⟩ (the tr H side comes along in the same loops and is dropped).
  const at::Tensor half = (0.25 * (hessian_bar + hessian_bar.t())).contiguous();
  return trace_gradients(eval, L, p.num_samples(), begin, end, half, need_grad_x,
                         p.x.scalar_type())
      .second;
}

}  // namespace torch_ws
