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
// matrix products.
#include "ops/eigenvalue_interval/hessian_products.h"

#include "core/activations.h"
#include "core/losses.h"
#include "core/ws_bound.h"  // kRoundingAllowance

#include <algorithm>
#include <vector>

namespace torch_ws {

namespace {

double unit_roundoff(at::ScalarType dtype) {
  return dtype == at::kDouble ? 0x1p-53 : 0x1p-24;
}

}  // namespace

HessianProducts::HessianProducts(const MlpProblem& p, Uses uses)
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

at::Tensor HessianProducts::apply(const at::Tensor& directions) const {
  return in_runs(directions, num_samples_, std::max(hidden_, num_outputs_),
                 [&](const at::Tensor& rows) { return run(values_, rows); });
}

at::Tensor HessianProducts::majorant(const at::Tensor& directions) const {
  TORCH_INTERNAL_ASSERT(magnitudes_.x.defined(), "HessianProducts::majorant: built for products");
  return in_runs(directions.abs(), num_samples_, std::max(hidden_, num_outputs_),
                 [&](const at::Tensor& rows) { return run(magnitudes_, rows); });
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

at::Tensor HessianProducts::run(const Chain& c, const at::Tensor& directions) const {
  const int64_t k = directions.size(0), N = c.x.size(0), H = hidden_, D = in_dim_,
                C = num_outputs_;
  const Blocks v = split(directions);
  // Sample-major layout (N, k, ·): the k directions share every product with the data, so each
  // step is one large GEMM (N rows against k·H or k·C columns), not k small ones.
  at::Tensor dz = at::mm(c.x, v.w1.reshape({k * H, D}).t()).view({N, k, H});
  if (has_b1_) dz = dz + v.b1.unsqueeze(0);
  const at::Tensor da = c.phi1.unsqueeze(1) * dz;
  at::Tensor df = at::mm(da.reshape({N * k, H}), c.w2.t()).view({N, k, C}) +
                  at::mm(c.phi0, v.w2.reshape({k * C, H}).t()).view({N, k, C});
  if (has_b2_) df = df + v.b2.unsqueeze(0);
  // dg_i = S_i df_i (S_i symmetric); one logit: a scalar per sample.
  const at::Tensor dg = C == 1 ? df * c.S.view({N, 1, 1}) : at::bmm(df, c.S);  // (N, k, C)
  const at::Tensor h_w2 =
      at::mm(dg.reshape({N, k * C}).t(), c.phi0).view({k, C, H}) +
      at::mm(c.e.t(), da.reshape({N, k * H})).view({C, k, H}).transpose(0, 1);
  const at::Tensor e_dw2 =
      at::mm(c.e, v.w2.transpose(0, 1).reshape({C, k * H})).view({N, k, H});
  const at::Tensor d_eps =
      c.phi1.unsqueeze(1) * (at::mm(dg.reshape({N * k, C}), c.w2).view({N, k, H}) + e_dw2) +
      c.second_order.unsqueeze(1) * dz;  // (N, k, H)
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
// φ'' (with φ''') and the first layer.
InputGradients HessianProducts::bilinear_backward(const at::Tensor& A, const at::Tensor& B,
                                                  const at::Tensor& coefficients,
                                                  bool need_grad_x) const {
  TORCH_INTERNAL_ASSERT(phi3_.defined(), "HessianProducts::bilinear_backward: built for products");
  const Chain& c = values_;
  const Blocks a = split(A), b = split(B);
  const at::Tensor weight = coefficients.to(A.scalar_type()).view({-1, 1, 1});  // (k, 1, 1)
  auto first_layer = [&](const Blocks& v) {  // X vW1ᵀ + vb1, (k, N, H)
    at::Tensor z = at::matmul(c.x, v.w1.transpose(1, 2));
    return has_b1_ ? z + v.b1.unsqueeze(1) : z;
  };
  auto jacobian = [&](const Blocks& v, const at::Tensor& z) {  // (φ'∘z)W2ᵀ + Φ vW2ᵀ + vb2
    at::Tensor f = at::matmul(c.phi1 * z, c.w2.t()) + at::matmul(c.phi0, v.w2.transpose(1, 2));
    return has_b2_ ? f + v.b2.unsqueeze(1) : f;
  };
  const at::Tensor za = first_layer(a), zb = first_layer(b);
  const at::Tensor fa = jacobian(a, za), fb = jacobian(b, zb);
  const at::Tensor ea = at::matmul(c.e, a.w2), eb = at::matmul(c.e, b.w2);  // (k, N, H)

  // The term fa_iᵀ S_i fb_i: adjoints of S, of fa and fb (through W2, φ', φ and za, zb).
  const at::Tensor S_bar = at::einsum("knc,knd->ncd", {weight * fa, fb});
  const at::Tensor fa_bar = weight * at::matmul(c.S, fb.unsqueeze(-1)).squeeze(-1);
  const at::Tensor fb_bar = weight * at::matmul(c.S, fa.unsqueeze(-1)).squeeze(-1);
  at::Tensor w2_bar = at::einsum("knc,knh->ch", {fa_bar, c.phi1 * za}) +
                      at::einsum("knc,knh->ch", {fb_bar, c.phi1 * zb});
  const at::Tensor ta = at::matmul(fa_bar, c.w2), tb = at::matmul(fb_bar, c.w2);  // (k, N, H)
  at::Tensor phi1_bar = (ta * za + tb * zb).sum(0);
  at::Tensor phi0_bar = (at::matmul(fa_bar, a.w2) + at::matmul(fb_bar, b.w2)).sum(0);
  at::Tensor za_bar = ta * c.phi1, zb_bar = tb * c.phi1;

  // The term Σ_k ẽ_ik φ''_ik za_ik zb_ik.
  const at::Tensor pair = (weight * za * zb).sum(0);  // (N, H)
  const at::Tensor phi2_bar = c.hidden_residual * pair;
  const at::Tensor hidden_residual_bar = c.phi2 * pair;
  at::Tensor e_bar = at::matmul(hidden_residual_bar, c.w2.t());
  w2_bar = w2_bar + at::matmul(c.e.t(), hidden_residual_bar);
  za_bar = za_bar + weight * c.hidden_residual * c.phi2 * zb;
  zb_bar = zb_bar + weight * c.hidden_residual * c.phi2 * za;

  // The term Σ_k φ'_ik ((e_i aW2)_k zb_ik + (e_i bW2)_k za_ik).
  phi1_bar = phi1_bar + (weight * (ea * zb + eb * za)).sum(0);
  e_bar = e_bar + (at::matmul(weight * c.phi1 * zb, a.w2.transpose(1, 2)) +
                   at::matmul(weight * c.phi1 * za, b.w2.transpose(1, 2))).sum(0);
  zb_bar = zb_bar + weight * c.phi1 * ea;
  za_bar = za_bar + weight * c.phi1 * eb;

  // The logits z = ΦW2ᵀ + b2 carry S and e; the hidden pre-activations carry φ, φ', φ''.
  const at::Tensor z_bar = output_terms_backward(loss_, terms_, S_bar, e_bar);
  w2_bar = w2_bar + at::matmul(z_bar.t(), c.phi0);
  phi0_bar = phi0_bar + at::matmul(z_bar, c.w2);
  const at::Tensor pre_bar = phi0_bar * c.phi1 + phi1_bar * c.phi2 + phi2_bar * phi3_;

  InputGradients out;
  out.w1 = at::matmul(pre_bar.t(), c.x);
  if (has_b1_) out.b1 = pre_bar.sum(0);
  out.w2 = w2_bar;
  if (has_b2_) out.b2 = z_bar.sum(0);
  if (need_grad_x) {
    out.x = at::matmul(pre_bar, w1_) + (at::matmul(za_bar, a.w1) + at::matmul(zb_bar, b.w1)).sum(0);
  }
  return out;
}

}  // namespace torch_ws
