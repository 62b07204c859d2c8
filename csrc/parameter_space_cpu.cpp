// The parameter-space engine (CPU): the other evaluation order of the same sums.
//
// tr(H²) = sᵀ(G∘G)s + 2sᵀBe + eᵀCe (math.md §4) is ‖H‖²_F for H = Σ_i s_i g_i g_iᵀ + e_i M_i
// (§3). The sample-space engines sum it over pairs of samples: O(N²(8H + D)) work. For a small
// network the n×n Hessian itself is the smaller object, so this engine assembles it in closed form
// from the per-sample tangents g_i = ∇θ z_i and the sparse blocks of M_i, in O(N·n²) work and
// O(n²) memory, and reads tr H and tr(H²) off it. At the papers' scale (N = 200, n = 41) that is
// about ten times less arithmetic than the pairwise sums. It also matters more there that the
// work runs in fused loops over the samples: a few dozen small tensor operations would cost more
// than the arithmetic. Only φ^(k)(A) goes through tensors (the vectorized activation table).
//
// The backward: with L = ḡ_tr·tr H + ḡ_sq·tr(H²), ∂L/∂H = H̄ = ḡ_tr·I + 2ḡ_sq·H, and
// L changes with sample i through L_i = s_i g_iᵀH̄g_i + e_i⟨H̄, M_i⟩ (H̄ held fixed). So the
// backward is one more pass over the samples with the saved H: O(N·n²), no autograd.
#include "traces.h"
#include "vector_clones.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

namespace torch_ws {

Engine engine_setting() {
  const char* env = std::getenv("TORCH_WS_ENGINE");
  const std::string value = env ? env : "";
  if (value.empty() || value == "auto") return Engine::Auto;
  if (value == "sample") return Engine::SampleSpace;
  if (value == "parameter") return Engine::ParameterSpace;
  TORCH_CHECK(false, "torch_ws: TORCH_WS_ENGINE must be 'auto', 'sample' or 'parameter', got '",
              value, "'");
}

Engine engine_for(const at::Tensor& x, const at::Tensor& w1, bool has_b1, bool has_b2) {
  const Engine setting = engine_setting();
  if (setting == Engine::SampleSpace || !x.defined() || !w1.defined() || x.dim() != 2 ||
      w1.dim() != 2) {
    return Engine::SampleSpace;
  }
  const int64_t n = x.size(0), in_dim = x.size(1), hidden = w1.size(0);
  const int64_t num_params = count_params(hidden, in_dim, has_b1, has_b2);
  const bool cpu = x.device().is_cpu();
  if (setting == Engine::ParameterSpace) {
    TORCH_CHECK(cpu, "torch_ws: TORCH_WS_ENGINE=parameter runs on the CPU only, but x is on ",
                x.device(), "; unset it or use 'sample'");
    TORCH_CHECK(num_params <= kMaxParameterSpaceParams, "torch_ws: TORCH_WS_ENGINE=parameter "
                "holds the n×n Hessian, and n = ", num_params, " exceeds the limit of ",
                kMaxParameterSpaceParams, "; unset it or use 'sample'");
    return setting;
  }
  if (!cpu || num_params > kMaxParameterSpaceParams) return Engine::SampleSpace;
  // Work per call with autograd: about 2·N·n² multiply-adds here (assembly, then H̄g_i per
  // sample) against about 1.5·N²·(8H + D) for the pairwise sums and their adjoints. This
  // engine's loops run on one thread, and once the n×n Hessian outgrows the caches each pass over
  // it waits on memory, while the pairwise products run as BLAS on every core. So its count is
  // weighted by 0.16·√n: the ratios of time per unit of work measured on 2 cores (float32, with
  // the tiled engine's lanes in parallel) were 2.3 at n = 161, about 4 at n = 577 and about 7 at
  // n = 2177.
  const double weight = 0.16 * std::sqrt(static_cast<double>(num_params));
  const double parameter_work = weight * 2.0 * static_cast<double>(num_params) * num_params * n;
  const double sample_work = 1.5 * static_cast<double>(n) * n * (8 * hidden + in_dim);
  return parameter_work <= sample_work ? Engine::ParameterSpace : Engine::SampleSpace;
}

namespace {

// Where each parameter sits in θ, i.e. the Hessian's rows. Hidden unit k owns the block
// [W1_k,0 … W1_k,D−1, b1_k] of `block` = D + [b1] entries at k·block; w2 follows at
// `w2_offset`, b2 last. (The traces do not depend on the order; this one keeps each M_i's
// (W1, W1) part in H diagonal blocks of x̃x̃ᵀ.)
struct Layout {
  int64_t in_dim, hidden, block, w2_offset, num_params;
  bool has_b1, has_b2;

  explicit Layout(const MlpProblem& p)
      : in_dim(p.w1.size(1)),
        hidden(p.w1.size(0)),
        block(in_dim + (p.b1 ? 1 : 0)),
        w2_offset(hidden * block),
        num_params(p.num_params()),
        has_b1(p.b1.has_value()),
        has_b2(p.b2.has_value()) {}
};

// One sample's quantities (math.md §2), in double.
struct Sample {
  std::vector<double> x_ext;                   // x̃: x_i, then 1 if b1 exists (block entries)
  const double *phi0, *phi1, *phi2, *phi3;     // φ^(k)(a_i), rows of H entries
  double y = 0, s = 0, e = 0;                  // σ(z_i), c·y(1−y), c·(y − t_i)
};

// The problem's arrays as contiguous float64 (a copy only for float32 inputs), φ^(k)(A) for all
// samples at once (the tensor form of the activation table: vectorized, unlike one std::tanh
// per entry), and the evaluation of one sample from them.
class SampleEvaluator {
 public:
  SampleEvaluator(const MlpProblem& p, const Layout& layout, int num_derivatives)
      : layout_(layout),
        scale_(p.reduction == Reduction::Mean ? 1.0 / static_cast<double>(p.num_samples()) : 1.0) {
    auto as_double = [](const at::Tensor& t) { return t.to(at::kDouble).contiguous(); };
    x_ = as_double(p.x);
    target_ = as_double(p.target);
    w1_ = as_double(p.w1);
    w2_ = as_double(p.w2);
    x = x_.data_ptr<double>();
    w1 = w1_.data_ptr<double>();
    // A = X W1ᵀ + b1 by a plain loop: at these sizes a BLAS call (or a broadcast of b1) costs
    // more than its arithmetic.
    const int64_t N = p.num_samples(), D = layout.in_dim, H = layout.hidden;
    const at::Tensor b1 = p.b1 ? as_double(*p.b1) : at::Tensor();
    const double* bias = p.b1 ? b1.data_ptr<double>() : nullptr;
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
    b2_ = p.b2 ? p.b2->item<double>() : 0.0;
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
  void evaluate(int64_t i, Sample& out, double* g) const {
    const int64_t D = layout_.in_dim, H = layout_.hidden, block = layout_.block;
    const double* xi = x + i * D;
    for (int64_t d = 0; d < D; ++d) out.x_ext[d] = xi[d];
    if (layout_.has_b1) out.x_ext[D] = 1;
    out.phi0 = phi[0] + i * H;
    out.phi1 = phi[1] + i * H;
    out.phi2 = phi[2] + i * H;
    out.phi3 = phi[3] ? phi[3] + i * H : nullptr;
    double z = b2_;
    for (int64_t k = 0; k < H; ++k) z += w2[k] * out.phi0[k];
    const LogitTerms<double> logit = logit_terms(z, target[i], scale_);
    out.y = logit.y;
    out.s = logit.s;
    out.e = logit.e;
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
  double scale_, b2_;
  at::Tensor x_, target_, w1_, w2_, phi_[4];
};

// Samples go through the O(n²) loops in chunks of kChunk: each pass over the n×n Hessian then
// serves kChunk samples, so the loops are bound by arithmetic rather than by moving H through
// the cache once per sample. A short last chunk is padded with zero tangents.
constexpr int64_t kChunk = 8;

// The upper triangle (q ≥ p) of hessian += Σ_b s_b g_b g_bᵀ over one chunk; G is kChunk × n.
// See vector_clones.h for the attribute.
TORCH_WS_VECTOR_CLONES void add_outer_products(double* __restrict__ hessian,
                                               const double* __restrict__ G,
                                               const double* __restrict__ s, int64_t n) {
  for (int64_t p = 0; p < n; ++p) {
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

}  // namespace

HessianResult hessian_cpu(const MlpProblem& p) {
  TORCH_INTERNAL_ASSERT(p.x.is_cpu());
  const Layout L(p);
  const int64_t n = L.num_params, block = L.block, N = p.num_samples();
  const SampleEvaluator eval(p, L, /*num_derivatives=*/2);
  Sample smp = eval.make_sample();
  at::Tensor hessian = at::zeros({n, n}, p.x.options().dtype(at::kDouble));
  double* h = hessian.data_ptr<double>();
  const double* w2 = eval.w2;
  std::vector<double> tangents(kChunk * n), s_chunk(kChunk);
  // The upper triangle first (row ≤ column), mirrored at the end.
  for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
    std::fill(tangents.begin(), tangents.end(), 0.0);
    std::fill(s_chunk.begin(), s_chunk.end(), 0.0);
    for (int64_t b = 0; b < kChunk && i0 + b < N; ++b) {
      eval.evaluate(i0 + b, smp, tangents.data() + b * n);
      s_chunk[b] = smp.s;
      // e_i M_i (§3): per hidden unit k, the (W1_k, W1_k) block e·w2_k φ''(a_k) x̃x̃ᵀ and the
      // (W1_k, w2_k) column e·φ'(a_k) x̃ (w2 comes after every W1 block: upper triangle).
      for (int64_t k = 0; k < L.hidden; ++k) {
        const double diag = smp.e * w2[k] * smp.phi2[k], cross = smp.e * smp.phi1[k];
        const int64_t base = k * block;
        for (int64_t d1 = 0; d1 < block; ++d1) {
          double* row = h + (base + d1) * n;
          const double xd1 = smp.x_ext[d1];
          for (int64_t d2 = d1; d2 < block; ++d2) row[base + d2] += diag * xd1 * smp.x_ext[d2];
          row[L.w2_offset + k] += cross * xd1;
        }
      }
    }
    // The Gauss-Newton part Σ s_i g_i g_iᵀ.
    add_outer_products(h, tangents.data(), s_chunk.data(), n);
  }
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

MlpGrads hessian_cpu_backward(const MlpProblem& p, double grad_trace, double grad_trace_sq,
                              const at::Tensor& hessian, bool need_grad_x) {
  const Layout L(p);
  const int64_t n = L.num_params, D = L.in_dim, H = L.hidden, block = L.block;
  const int64_t N = p.num_samples();
  TORCH_CHECK(hessian.is_cpu() && hessian.scalar_type() == at::kDouble && hessian.dim() == 2 &&
                  hessian.size(0) == n && hessian.size(1) == n,
              "torch_ws: the saved Hessian must be a float64 CPU tensor of shape (", n, ", ", n,
              "), got ", hessian.scalar_type(), " of shape ", hessian.sizes(), " on ",
              hessian.device());
  const at::Tensor hess = hessian.contiguous();
  const double* h = hess.data_ptr<double>();
  const SampleEvaluator eval(p, L, /*num_derivatives=*/3);
  std::vector<Sample> samples(kChunk, eval.make_sample());
  const double* w1 = eval.w1;
  const double* w2 = eval.w2;
  const double gt = grad_trace, gq2 = 2 * grad_trace_sq;  // H̄ = gt·I + gq2·H

  auto zeros = [&](at::IntArrayRef shape) { return at::zeros(shape, hess.options()); };
  at::Tensor grad_w1 = zeros({H, D}), grad_w2 = zeros({1, H});
  at::Tensor grad_b1 = L.has_b1 ? zeros({H}) : at::Tensor();
  at::Tensor grad_b2 = L.has_b2 ? zeros({1}) : at::Tensor();
  at::Tensor grad_x = need_grad_x ? zeros({N, D}) : at::Tensor();
  double* gw1 = grad_w1.data_ptr<double>();
  double* gw2 = grad_w2.data_ptr<double>();
  double* gb1 = L.has_b1 ? grad_b1.data_ptr<double>() : nullptr;
  double* gx = need_grad_x ? grad_x.data_ptr<double>() : nullptr;
  double gb2 = 0;

  std::vector<double> tangents(kChunk * n), tangents_t(kChunk * n), hessian_g(kChunk * n);
  std::vector<double> alpha(H), beta(H);
  std::vector<double> hbar_kk_x(H * block), hbar_cross(H * block);  // per unit: H̄_kk x̃, H̄[k·, w2_k]
  for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
    const int64_t count = std::min(kChunk, N - i0);
    std::fill(tangents.begin(), tangents.end(), 0.0);
    for (int64_t b = 0; b < count; ++b) {
      eval.evaluate(i0 + b, samples[b], tangents.data() + b * n);
    }
    for (int64_t b = 0; b < kChunk; ++b) {
      for (int64_t r = 0; r < n; ++r) tangents_t[r * kChunk + b] = tangents[b * n + r];
    }
    hessian_times(h, tangents_t.data(), hessian_g.data(), n);
    for (int64_t b = 0; b < count; ++b) {
      const int64_t i = i0 + b;
      const Sample& smp = samples[b];
      const std::vector<double>& xe = smp.x_ext;
      const double* g = tangents.data() + b * n;
      // H̄g and q = gᵀH̄g: the Gauss-Newton term's sensitivity.
      double* hbar_g = hessian_g.data() + b * n;
      double q = 0;
      for (int64_t r = 0; r < n; ++r) {
        hbar_g[r] = gt * g[r] + gq2 * hbar_g[r];
        q += g[r] * hbar_g[r];
      }
      // ⟨H̄, M_i⟩ = Σ_k w2_k φ''_k α_k + 2φ'_k β_k, α_k = x̃ᵀH̄_kk x̃, β_k = x̃ᵀH̄[W1_k, w2_k].
      double residual = 0;
      for (int64_t k = 0; k < H; ++k) {
        const int64_t base = k * block, w2_index = L.w2_offset + k;
        double a_k = 0, b_k = 0;
        for (int64_t d1 = 0; d1 < block; ++d1) {
          const double* row = h + (base + d1) * n;
          double hx = 0;
          for (int64_t d2 = 0; d2 < block; ++d2) hx += row[base + d2] * xe[d2];
          hbar_kk_x[base + d1] = gt * xe[d1] + gq2 * hx;
          hbar_cross[base + d1] = gq2 * row[w2_index];
          a_k += xe[d1] * hbar_kk_x[base + d1];
          b_k += xe[d1] * hbar_cross[base + d1];
        }
        alpha[k] = a_k;
        beta[k] = b_k;
        residual += w2[k] * smp.phi2[k] * a_k + 2 * smp.phi1[k] * b_k;
      }
      // L_i = s·q + e·residual; s = c·y(1−y), e = c·(y − t): ds/dz = s(1 − 2y), de/dz = s.
      const double s = smp.s, e = smp.e;
      const double z_bar = q * s * (1 - 2 * smp.y) + residual * s;
      gb2 += z_bar;
      // ḡ = 2s·H̄g, then through g's blocks (U_k x̃, φ(a_k)), M_i's blocks, and
      // z = w2·φ(a) + b2, to a_k = W1_k·x + b1_k.
      for (int64_t k = 0; k < H; ++k) {
        const int64_t base = k * block;
        const double* g_bar = hbar_g + base;  // times 2s below
        double u_bar = 0;
        for (int64_t d = 0; d < block; ++d) u_bar += g_bar[d] * xe[d];
        u_bar *= 2 * s;
        const double phi0_bar = 2 * s * hbar_g[L.w2_offset + k] + z_bar * w2[k];
        const double phi1_bar = u_bar * w2[k] + 2 * e * beta[k];
        const double phi2_bar = e * w2[k] * alpha[k];
        gw2[k] += z_bar * smp.phi0[k] + u_bar * smp.phi1[k] + e * smp.phi2[k] * alpha[k];
        const double a_bar =
            phi0_bar * smp.phi1[k] + phi1_bar * smp.phi2[k] + phi2_bar * smp.phi3[k];
        for (int64_t d = 0; d < D; ++d) gw1[k * D + d] += a_bar * xe[d];
        if (gb1) gb1[k] += a_bar;
        if (gx) {
          // x enters through a_k, through g's U_k x̃, and through M_i's x̃x̃ᵀ and x̃.
          const double u_k = w2[k] * smp.phi1[k];
          double* gxi = gx + i * D;
          for (int64_t d = 0; d < D; ++d) {
            gxi[d] += w1[k * D + d] * a_bar + u_k * 2 * s * g_bar[d] +
                      2 * e * (w2[k] * smp.phi2[k] * hbar_kk_x[base + d] +
                               smp.phi1[k] * hbar_cross[base + d]);
          }
        }
      }
    }
  }
  if (L.has_b2) grad_b2.fill_(gb2);
  const auto dtype = p.x.scalar_type();
  auto out = [&](const at::Tensor& t) { return t.defined() ? t.to(dtype) : at::empty({0}, p.x.options()); };
  return {out(grad_x), out(grad_w1), out(grad_b1), out(grad_w2), out(grad_b2)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_with_hessian_kernel(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction) {
  MlpProblem p = check_problem("torch_ws", x, target, w1, b1, w2, b2, activation, reduction);
  HessianResult r = hessian_cpu(p);
  const double bound = ws_upper_bound(r.trace, r.trace_sq, p.num_params());
  auto scalar = [&](double v, at::ScalarType dtype) {
    return at::scalar_tensor(v, x.options().dtype(dtype));
  };
  return {scalar(bound, x.scalar_type()), scalar(r.trace, at::kDouble),
          scalar(r.trace_sq, at::kDouble), r.hessian};
}

MlpGrads hessian_traces_backward_from_hessian_kernel(
    const at::Tensor& grad_trace, const at::Tensor& grad_trace_sq, const at::Tensor& hessian,
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view reduction, bool need_grad_x) {
  MlpProblem p = check_problem("torch_ws._hessian_traces_backward_from_hessian", x, target, w1,
                               b1, w2, b2, activation, reduction, /*check_values=*/false);
  return hessian_cpu_backward(p, grad_trace.item<double>(), grad_trace_sq.item<double>(),
                              hessian, need_grad_x);
}

MlpGrads ws_bound_backward_from_hessian_kernel(
    const at::Tensor& grad_bound, const at::Tensor& trace, const at::Tensor& trace_sq,
    const at::Tensor& hessian, const at::Tensor& x, const at::Tensor& target,
    const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, c10::string_view activation, c10::string_view reduction,
    bool need_grad_x) {
  MlpProblem p = check_problem("torch_ws._ws_bound_backward_from_hessian", x, target, w1, b1, w2,
                               b2, activation, reduction, /*check_values=*/false);
  const auto [d_trace, d_trace_sq] = bound_trace_grads(
      grad_bound.item<double>(), trace.item<double>(), trace_sq.item<double>(), p.num_params());
  return hessian_cpu_backward(p, d_trace, d_trace_sq, hessian, need_grad_x);
}

}  // namespace torch_ws
