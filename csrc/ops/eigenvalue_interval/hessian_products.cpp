// Closed-form Hessian-vector products (docs/math.md §11.1). For a direction
// v = (dW1, db1, dW2, db2) the product is the derivative along v of the gradient's chain:
//
//   dz = X dW1ᵀ + db1,   da = φ'(A) ∘ dz,   df = da W2ᵀ + Φ dW2ᵀ + db2,   dg_i = S_i df_i,
//   (Hv)_W2 = dgᵀΦ + eᵀ da,   (Hv)_b2 = Σ_i dg_i,
//   dε = φ'(A) ∘ (dg W2 + e dW2) + φ''(A) ∘ dz ∘ (e W2),
//   (Hv)_W1 = dεᵀ X,   (Hv)_b1 = Σ_i dε_i,
//
// with A = X W1ᵀ + b1, Φ = φ(A) and S_i, e_i the loss's (scaled) Hessian and gradient in the
// logits (losses.h). k directions go through in runs of cache size, each run as one set of
// matrix products; with one logit on the CPU the elementwise steps between the two products with
// the data are one pass (fused_one_logit).
#include "ops/eigenvalue_interval/hessian_products.h"

#include "core/activations.h"
#include "core/losses.h"
#include "core/scratch.h"  // reused
#include "core/ws_bound.h"  // kRoundingAllowance

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace torch_ws {

namespace {

double unit_roundoff(at::ScalarType dtype) {
  return dtype == at::kDouble ? 0x1p-53 : 0x1p-24;
}

// One logit on the CPU (binary cross-entropy, squared error): the elementwise steps between the
// two products with the data, fused into one pass over the (N, k, H) array. Per sample i and
// direction j (dz the first layer's product, without vb1):
//   df_ij = Σ_h φ'_ih (dz + vb1)_ijh W2_h + (Φ vW2ᵀ)_ij + vb2_j,   dg_ij = S_i df_ij,
//   dε_ijh = φ'_ih (dg_ij W2_h + e_i vW2_jh) + φ''_ih ẽ_ih (dz + vb1)_ijh   (written over dz),
// and the sums over samples eᵀda (W2's share through e) and Σ_i dε_i (b1's) in fixed blocks of
// samples added in block order, so that the result does not depend on the thread count.
// The same algebra as the unfused steps of `run`, each sum of the same terms (docs/math.md
// §11.3 bounds any order).
struct OneLogitStep {
  at::Tensor dg;      // (N, k)
  at::Tensor e_da;    // Σ_i e_i φ'_i ∘ (dz + vb1)_ij: (k, H)
  at::Tensor eps_sum; // Σ_i dε_ij: (k, H)
};

template <typename T>
OneLogitStep fused_one_logit(at::Tensor& dz, const at::Tensor& phi_v2, const at::Tensor& v_w2,
                             const at::Tensor& v_b1, const at::Tensor& v_b2, const at::Tensor& w2,
                             const at::Tensor& phi1, const at::Tensor& second_order,
                             const at::Tensor& S, const at::Tensor& e) {
  const int64_t N = dz.size(0), k = dz.size(1), H = dz.size(2);
  const int64_t blocks = std::min<int64_t>(N, 64);
  const auto options = dz.options();
  at::Tensor dg = at::empty({N, k}, options);
  at::Tensor partials = at::zeros({blocks, 2, k, H}, options);
  T* dz_p = dz.data_ptr<T>();
  T* dg_p = dg.data_ptr<T>();
  T* part_p = partials.data_ptr<T>();
  const T* phi_v2_p = phi_v2.data_ptr<T>();
  const T* v_w2_p = v_w2.data_ptr<T>();
  const T* v_b1_p = v_b1.defined() ? v_b1.data_ptr<T>() : nullptr;
  const T* v_b2_p = v_b2.defined() ? v_b2.data_ptr<T>() : nullptr;
  const T* w2_p = w2.data_ptr<T>();
  const T* phi1_p = phi1.data_ptr<T>();
  const T* so_p = second_order.data_ptr<T>();
  const T* S_p = S.data_ptr<T>();
  const T* e_p = e.data_ptr<T>();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    // Per sample, the factors every direction shares: φ'_ih W2_h and e_i φ'_ih.
    std::vector<T> phi_w2(H), e_phi(H);
    for (int64_t block = first; block < last; ++block) {
      T* e_da = part_p + block * 2 * k * H;
      T* eps_sum = e_da + k * H;
      for (int64_t i = N * block / blocks; i < N * (block + 1) / blocks; ++i) {
        const T* phi1_i = phi1_p + i * H;
        const T* so_i = so_p + i * H;
        const T e_i = e_p[i];
        T* pw = phi_w2.data();
        T* ep = e_phi.data();
        for (int64_t h = 0; h < H; ++h) {
          pw[h] = phi1_i[h] * w2_p[h];
          ep[h] = e_i * phi1_i[h];
        }
        for (int64_t j = 0; j < k; ++j) {
          T* z = dz_p + (i * k + j) * H;
          const T* v2 = v_w2_p + j * H;
          T df = phi_v2_p[i * k + j] + (v_b2_p ? v_b2_p[j] : T(0));
          // The inner product over h vectorized (omp simd: partial sums in the vector lanes, a
          // fixed order for a given build): a serial sum of H terms was a chain of H dependent
          // additions, most of the pass's time at H = 256.
          if (v_b1_p) {
            const T* b1 = v_b1_p + j * H;
#pragma omp simd reduction(+ : df)
            for (int64_t h = 0; h < H; ++h) {
              z[h] += b1[h];
              df += pw[h] * z[h];
            }
          } else {
#pragma omp simd reduction(+ : df)
            for (int64_t h = 0; h < H; ++h) df += pw[h] * z[h];
          }
          const T dg_ij = S_p[i] * df;
          dg_p[i * k + j] = dg_ij;
          T* e_da_j = e_da + j * H;
          T* eps_j = eps_sum + j * H;
#pragma omp simd
          for (int64_t h = 0; h < H; ++h) {
            const T zh = z[h];
            e_da_j[h] += ep[h] * zh;
            const T eps = dg_ij * pw[h] + ep[h] * v2[h] + so_i[h] * zh;
            z[h] = eps;
            eps_j[h] += eps;
          }
        }
      }
    }
  });
  // The blocks' partial sums added in block order, in one loop (64 tensor additions cost more
  // than the fused pass itself at N = 1000, H = 64: 16% of a product).
  at::Tensor total = partials[0].clone();
  T* total_p = total.data_ptr<T>();
  const int64_t size = 2 * k * H;
  for (int64_t block = 1; block < blocks; ++block) {
    const T* part = part_p + block * size;
    for (int64_t index = 0; index < size; ++index) total_p[index] += part[index];
  }
  return {dg, total[0], total[1]};
}

}  // namespace

HessianProducts::HessianProducts(const MlpProblem& p, Uses uses, Curvature curvature)
    : num_samples_(p.num_samples()),
      hidden_(p.hidden()),
      in_dim_(p.in_dim()),
      num_outputs_(p.num_outputs()),
      num_params_(p.num_params()),
      has_b1_(p.b1().has_value()),
      has_b2_(p.b2().has_value()),
      w1_(p.w1()),
      loss_(p.loss) {
  at::Tensor pre = at::matmul(p.x, p.w1().t());
  if (has_b1_) pre = pre + *p.b1();
  const bool certificate = uses == Uses::Certificate;
  const ActivationValues<at::Tensor> phi = activation_values(p.activation, pre, certificate ? 3 : 2);
  phi3_ = phi.phi3;
  at::Tensor logits = at::matmul(phi.phi0, p.w2().t());
  if (has_b2_) logits = logits + *p.b2();
  terms_ = output_terms(p.loss, logits, p.target.view(logits.sizes()), p.loss_scale());
  const OutputTerms& terms = terms_;
  const at::Tensor hidden_residual = at::matmul(terms.e, p.w2());
  values_ = {p.x, p.w2(), phi.phi0, phi.phi1, phi.phi2, terms.S, terms.e, hidden_residual,
             phi.phi2 * hidden_residual};
  // The logits' own rounding, as it reaches S and e (losses.h logit_rounding).
  double logit_allowance = 0;
  if (certificate) {
    const LogitRounding rounding =
        logit_rounding(p.loss, terms.e_magnitude, phi.phi0, p.w2(), p.b2(),
                       p.target.view(logits.sizes()), p.loss_scale());
    logit_allowance = rounding.allowance;
    const at::Tensor& e_magnitude = rounding.e_magnitude;
    const at::Tensor hidden_residual_magnitude = at::matmul(e_magnitude, p.w2().abs());
    magnitudes_ = {p.x.abs(), p.w2().abs(), phi.phi0.abs(), phi.phi1.abs(), phi.phi2.abs(),
                   terms.S.abs(), e_magnitude, hidden_residual_magnitude,
                   phi.phi2.abs() * hidden_residual_magnitude};
  }
  // The Gauss-Newton part: every term of H·v that e enters (eᵀda, e dW2, φ''∘(eW2)) is the
  // residual's, so with e = 0 the chain computes G·v, and exactly: those terms vanish without
  // rounding. The majorant's terms of e go with them; S's rounding (and the logits' share in it)
  // stays in the factor below.
  if (curvature == Curvature::GaussNewton) {
    for (Chain* chain : {&values_, &magnitudes_}) {
      if (!chain->e.defined()) continue;
      chain->e = at::zeros_like(chain->e);
      chain->hidden_residual = at::zeros_like(chain->hidden_residual);
      chain->second_order = at::zeros_like(chain->second_order);
    }
    phi3_ = at::Tensor();  // bilinear_backward differentiates H's forms, not G's
  }
  // The longest chain of sums and products behind one entry of H·v (docs/math.md §11.3): the
  // inner products of lengths D, H, C, C, then the sum over N samples, a dozen operations
  // besides, each coefficient within κu of its magnitude (κ of docs/math.md §5.1) plus the
  // logits' share; doubled for the second-order terms.
  const double depth = static_cast<double>(in_dim_ + 2 * hidden_ + 2 * num_outputs_ +
                                           p.num_samples() + 16) +
                       kRoundingAllowance + logit_allowance;
  const double u = unit_roundoff(p.x.scalar_type());
  error_factor_ = 2 * depth * u / (1 - depth * u);
}

// Twice the family default (core/ritz_certificate.h) for one logit: with the steps between the
// products in one fused pass, runs of 2¹⁸ numbers were faster per vector in one alternation (at
// N = 1000, H = 64 3.1 ms per block of 16 against 3.3, and 233-237 µs per vector against 269-275
// at 2¹⁹; N = 2048, H = 256, one direction a run either way, the same). Four times it for C
// logits, whose steps run in place in the thread's kept scratch: digits (C = 10) 258-266 µs per
// vector against 285 at 2¹⁸ (nine directions a run instead of four; before the scratch was kept
// across calls, 2¹⁹ was the slower, 4.5-6.6 ms a block against 4.1-4.7).
static int64_t one_layer_run_numbers(int64_t num_outputs) {
  return num_outputs == 1 ? int64_t{1} << 18 : int64_t{1} << 19;
}

at::Tensor HessianProducts::apply(const at::Tensor& directions) const {
  return in_runs(directions, num_samples_, std::max(hidden_, num_outputs_),
                 [&](const at::Tensor& rows) { return run(values_, rows); },
                 one_layer_run_numbers(num_outputs_));
}

at::Tensor HessianProducts::majorant(const at::Tensor& directions) const {
  TORCH_INTERNAL_ASSERT(magnitudes_.x.defined(), "HessianProducts::majorant: built for products");
  return in_runs(directions.abs(), num_samples_, std::max(hidden_, num_outputs_),
                 [&](const at::Tensor& rows) { return run(magnitudes_, rows); },
                 one_layer_run_numbers(num_outputs_));
}

HessianProducts::Blocks HessianProducts::split(const at::Tensor& directions) const {
  const int64_t k = directions.size(0), H = hidden_, D = in_dim_, C = num_outputs_;
  int64_t offset = 0;
  auto block = [&](int64_t length) {
    at::Tensor view = directions.narrow(1, offset, length);
    offset += length;
    return view;
  };
  Blocks out;
  out.w1 = block(H * D).reshape({k, H, D});
  if (has_b1_) out.b1 = block(H);
  out.w2 = block(C * H).reshape({k, C, H});
  if (has_b2_) out.b2 = block(C);
  return out;
}

HessianProducts::Scratch& HessianProducts::scratch_for(int64_t numbers,
                                                       const at::TensorOptions& options) const {
  // Kept by the thread across calls up to 64 MiB (each call of the op builds a new object, whose
  // own arrays were faulted in again on every call); larger runs take the object's own.
  constexpr int64_t kKeptScratchBytes = int64_t{64} << 20;
  static thread_local Scratch kept;
  const int64_t bytes = numbers * static_cast<int64_t>(options.dtype().itemsize());
  return options.device().is_cpu() && bytes <= kKeptScratchBytes ? kept : scratch_;
}

at::Tensor HessianProducts::run(const Chain& c, const at::Tensor& directions) const {
  const int64_t k = directions.size(0), N = c.x.size(0), H = hidden_, D = in_dim_,
                C = num_outputs_;
  const Blocks v = split(directions);
  // Sample-major layout (N, k, ·): the k directions share every product with the data, so each
  // step is one large GEMM (N rows against k·H or k·C columns), not k small ones.
  const at::TensorOptions options = c.x.options();
  Scratch& scratch = scratch_for(N * k * (3 * H + 2 * C), options);
  at::Tensor dz = reused(scratch.dz, {N, k * H}, options);
  at::mm_out(dz, c.x, v.w1.reshape({k * H, D}).t());
  dz = dz.view({N, k, H});
  // One logit on the CPU: every step between the two products with the data in one pass.
  if (C == 1 && dz.device().is_cpu() &&
      (dz.scalar_type() == at::kDouble || dz.scalar_type() == at::kFloat)) {
    const at::Tensor phi_v2 = at::mm(c.phi0, v.w2.reshape({k, H}).t()).contiguous();  // (N, k)
    const at::Tensor v_w2 = v.w2.reshape({k, H}).contiguous();
    const at::Tensor v_b1 = has_b1_ ? v.b1.contiguous() : at::Tensor();
    const at::Tensor v_b2 = has_b2_ ? v.b2.reshape({k}).contiguous() : at::Tensor();
    const at::Tensor w2 = c.w2.reshape({H}).contiguous(), phi1 = c.phi1.contiguous(),
                     second_order = c.second_order.contiguous(),
                     S = c.S.reshape({N}).contiguous(), e = c.e.reshape({N}).contiguous();
    const OneLogitStep step = AT_DISPATCH_FLOATING_TYPES(dz.scalar_type(), "one_logit_step", [&] {
      return fused_one_logit<scalar_t>(dz, phi_v2, v_w2, v_b1, v_b2, w2, phi1, second_order, S, e);
    });
    const at::Tensor& d_eps = dz;  // overwritten in place
    std::vector<at::Tensor> parts = {at::mm(d_eps.reshape({N, k * H}).t(), c.x).view({k, H * D})};
    if (has_b1_) parts.push_back(step.eps_sum);
    parts.push_back(at::mm(step.dg.t(), c.phi0) + step.e_da);  // (k, H): W2's row
    if (has_b2_) parts.push_back(step.dg.sum(0).unsqueeze(1));
    return at::cat(parts, 1);
  }
  // The other cases in place, each product with its additive term as one addmm, into the
  // object's scratch arrays: the steps between the products are four passes over (N, k, H)
  // arrays (b1, da, dε's two terms), where a dozen ATen steps allocated a fresh array each.
  if (has_b1_) dz.add_(v.b1.unsqueeze(0));
  at::Tensor da = reused(scratch.da, {N, k, H}, options);
  at::mul_out(da, c.phi1.unsqueeze(1), dz);
  at::Tensor df = reused(scratch.df, {N, k * C}, options);
  at::mm_out(df, c.phi0, v.w2.reshape({k * C, H}).t());  // Φ dW2ᵀ
  if (has_b2_) df.view({N, k, C}).add_(v.b2.unsqueeze(0));
  df.view({N * k, C}).addmm_(da.view({N * k, H}), c.w2.t());
  // dg_i = S_i df_i (S_i symmetric); one logit: a scalar per sample.
  at::Tensor dg = reused(scratch.dg, {N, k, C}, options);
  if (C == 1) {
    at::mul_out(dg, df.view({N, k, C}), c.S.view({N, 1, 1}));
  } else {
    at::bmm_out(dg, df.view({N, k, C}), c.S);
  }
  const at::Tensor h_w2 =
      at::mm(dg.reshape({N, k * C}).t(), c.phi0).view({k, C, H}) +
      at::mm(c.e.t(), da.view({N, k * H})).view({C, k, H}).transpose(0, 1);
  // dε = φ'(A) ∘ (dg W2 + e dW2) + φ''(A) ∘ dz ∘ (eW2), into the array of e dW2.
  at::Tensor d_eps = reused(scratch.d_eps, {N, k * H}, options);
  at::mm_out(d_eps, c.e, v.w2.transpose(0, 1).reshape({C, k * H}));
  d_eps.view({N * k, H}).addmm_(dg.view({N * k, C}), c.w2);
  d_eps = d_eps.view({N, k, H});
  d_eps.mul_(c.phi1.unsqueeze(1)).addcmul_(c.second_order.unsqueeze(1), dz);
  const at::Tensor h_w1 = at::mm(d_eps.reshape({N, k * H}).t(), c.x).view({k, H * D});

  std::vector<at::Tensor> parts = {h_w1};
  if (has_b1_) parts.push_back(d_eps.sum(0));
  parts.push_back(h_w2.reshape({k, C * H}));
  if (has_b2_) parts.push_back(dg.sum(0));
  return at::cat(parts, 1);
}

// docs/math.md §11.4. Per sample i and pair j, with za = X aW1ᵀ + ab1, fa = (φ'∘za)W2ᵀ + Φ aW2ᵀ +
// ab2 (the Jacobian times a) and the same for b:
//   ⟨a, H b⟩ = Σ_i [ fa_iᵀ S_i fb_i + Σ_k ẽ_ik φ''_ik za_ik zb_ik
//                    + Σ_k φ'_ik ((e_i aW2)_k zb_ik + (e_i bW2)_k za_ik) ],   ẽ = eW2,
// whose reverse pass runs through S and e (losses.h' output_terms_backward), the logits, φ, φ',
// φ'' (with φ''') and the first layer. The pairs go through in runs of the products' length
// (run_length), each adding its share to the adjoints of the per-sample values (Adjoints); the
// pass through the logits and the pre-activations runs once, after the last run. The arrays are
// sample-major (N, k, ·), as in `run`, so that each step with the data or a layer is one matrix
// product over the run. Where a = b (Rayleigh quotients) each of za, fa, ea is computed once.
struct HessianProducts::Adjoints {
  at::Tensor S, e, w2, phi0, phi1, x;  // S̄ (N, C, C), ē (N, C), W̄2 (C, H), Φ̄, φ̄' (N, H), x̄ (N, D)
  at::Tensor pair;                     // Σ_j c_j za_j ∘ zb_j (N, H): what φ'' and ẽ get
};

void HessianProducts::accumulate(Adjoints& adj, const at::Tensor& A, const at::Tensor& B,
                                 const at::Tensor& coefficients, bool need_grad_x) const {
  const Chain& c = values_;
  const bool symmetric = !B.defined();
  const int64_t k = A.size(0), N = num_samples_, H = hidden_, D = in_dim_, C = num_outputs_;
  const Blocks a = split(A);
  const Blocks b = symmetric ? a : split(B);
  const at::Tensor weight = coefficients.to(A.scalar_type()).view({1, k, 1});
  const at::Tensor phi1 = c.phi1.unsqueeze(1);
  auto first_layer = [&](const Blocks& v) {  // X vW1ᵀ + vb1
    at::Tensor z = at::mm(c.x, v.w1.reshape({k * H, D}).t()).view({N, k, H});
    return has_b1_ ? z + v.b1.unsqueeze(0) : z;
  };
  auto jacobian = [&](const Blocks& v, const at::Tensor& z) {  // (φ'∘z)W2ᵀ + Φ vW2ᵀ + vb2
    at::Tensor f = at::mm((phi1 * z).reshape({N * k, H}), c.w2.t()).view({N, k, C}) +
                   at::mm(c.phi0, v.w2.reshape({k * C, H}).t()).view({N, k, C});
    return has_b2_ ? f + v.b2.unsqueeze(0) : f;
  };
  auto hidden_error = [&](const Blocks& v) {  // e_i vW2
    return at::mm(c.e, v.w2.transpose(0, 1).reshape({C, k * H})).view({N, k, H});
  };
  auto times_s = [&](const at::Tensor& f) {  // S_i f_ij (S_i symmetric)
    return C == 1 ? f * c.S.view({N, 1, 1}) : at::bmm(f, c.S);
  };
  auto through_w2 = [&](const at::Tensor& f) {  // f_ij W2, (N, k, H)
    return at::mm(f.reshape({N * k, C}), c.w2).view({N, k, H});
  };
  // Sums over the run's pairs j as one product each: Σ_j f_ij vW2_j (N, H), Σ_j m_ij vW2_jᵀ
  // (N, C), Σ_ij f_ijᵀ m_ij (C, H), Σ_j m_ij vW1_j (N, D).
  auto sum_through = [&](const at::Tensor& f, const Blocks& v) {
    return at::mm(f.reshape({N, k * C}), v.w2.reshape({k * C, H}));
  };
  auto sum_against = [&](const at::Tensor& m, const Blocks& v) {
    return at::mm(m.reshape({N, k * H}), v.w2.transpose(1, 2).reshape({k * H, C}));
  };
  auto sum_outer = [&](const at::Tensor& f, const at::Tensor& m) {
    return at::mm(f.reshape({N * k, C}).t(), m.reshape({N * k, H}));
  };
  auto sum_first_layer = [&](const at::Tensor& m, const Blocks& v) {
    return at::mm(m.reshape({N, k * H}), v.w1.reshape({k * H, D}));
  };
  auto add = [](at::Tensor& to, const at::Tensor& value) { to = to.defined() ? to + value : value; };

  const at::Tensor za = first_layer(a), fa = jacobian(a, za), ea = hidden_error(a);
  // The term fa_iᵀ S_i fb_i: adjoints of S, of fa and fb (through W2, φ', φ and za, zb).
  // The terms ẽ φ'' za zb (its pair; φ'' and ẽ after the last run) and φ'((e aW2) zb + (e bW2) za).
  const at::Tensor curvature = c.hidden_residual.unsqueeze(1) * c.phi2.unsqueeze(1);
  if (symmetric) {
    const at::Tensor fa_bar = weight * times_s(fa), ta = through_w2(fa_bar);
    add(adj.S, at::bmm((weight * fa).transpose(1, 2), fa));
    add(adj.w2, 2 * sum_outer(fa_bar, phi1 * za));
    add(adj.phi1, 2 * ((ta + weight * ea) * za).sum(1));
    add(adj.phi0, 2 * sum_through(fa_bar, a));
    add(adj.e, 2 * sum_against(weight * phi1 * za, a));
    add(adj.pair, (weight * za * za).sum(1));
    if (need_grad_x) {
      add(adj.x, sum_first_layer(2 * (ta * phi1 + weight * (curvature * za + phi1 * ea)), a));
    }
    return;
  }
  const at::Tensor zb = first_layer(b), fb = jacobian(b, zb), eb = hidden_error(b);
  const at::Tensor fa_bar = weight * times_s(fb), fb_bar = weight * times_s(fa);
  const at::Tensor ta = through_w2(fa_bar), tb = through_w2(fb_bar);
  add(adj.S, at::bmm((weight * fa).transpose(1, 2), fb));
  add(adj.w2, sum_outer(fa_bar, phi1 * za) + sum_outer(fb_bar, phi1 * zb));
  add(adj.phi1, (ta * za + tb * zb + weight * (ea * zb + eb * za)).sum(1));
  add(adj.phi0, sum_through(fa_bar, a) + sum_through(fb_bar, b));
  add(adj.e, sum_against(weight * phi1 * zb, a) + sum_against(weight * phi1 * za, b));
  add(adj.pair, (weight * za * zb).sum(1));
  if (need_grad_x) {
    add(adj.x, sum_first_layer(ta * phi1 + weight * (curvature * zb + phi1 * eb), a) +
                   sum_first_layer(tb * phi1 + weight * (curvature * za + phi1 * ea), b));
  }
}

InputGradients HessianProducts::bilinear_backward(const std::vector<Forms>& forms,
                                                  bool need_grad_x) const {
  TORCH_INTERNAL_ASSERT(phi3_.defined(), "HessianProducts::bilinear_backward: needs Uses::Certificate and Curvature::Hessian");
  const Chain& c = values_;
  const int64_t step = run_length(num_samples_, std::max(hidden_, num_outputs_));
  Adjoints adj;
  for (const Forms& f : forms) {
    for (int64_t first = 0; first < f.left.size(0); first += step) {
      const int64_t count = std::min(step, f.left.size(0) - first);
      accumulate(adj, f.left.narrow(0, first, count),
                 f.right.defined() ? f.right.narrow(0, first, count) : at::Tensor(),
                 f.coefficients.narrow(0, first, count), need_grad_x);
    }
  }
  TORCH_INTERNAL_ASSERT(adj.pair.defined(), "HessianProducts::bilinear_backward: no form");
  // ẽ φ'' za zb summed over the pairs: the adjoints of φ'' and of ẽ = eW2.
  const at::Tensor phi2_bar = c.hidden_residual * adj.pair;
  const at::Tensor hidden_residual_bar = c.phi2 * adj.pair;
  const at::Tensor e_bar = adj.e + at::mm(hidden_residual_bar, c.w2.t());
  at::Tensor w2_bar = adj.w2 + at::mm(c.e.t(), hidden_residual_bar);

  // The logits z = ΦW2ᵀ + b2 carry S and e; the hidden pre-activations carry φ, φ', φ''.
  const at::Tensor z_bar = output_terms_backward(loss_, terms_, adj.S, e_bar);
  w2_bar = w2_bar + at::mm(z_bar.t(), c.phi0);
  const at::Tensor phi0_bar = adj.phi0 + at::mm(z_bar, c.w2);
  const at::Tensor pre_bar = phi0_bar * c.phi1 + adj.phi1 * c.phi2 + phi2_bar * phi3_;

  InputGradients out;
  out.w1 = at::mm(pre_bar.t(), c.x);
  if (has_b1_) out.b1 = pre_bar.sum(0);
  out.w2 = w2_bar;
  if (has_b2_) out.b2 = z_bar.sum(0);
  if (need_grad_x) out.x = at::mm(pre_bar, w1_) + adj.x;
  return out;
}

}  // namespace torch_ws
